"""The coordinator: admits providers, matches tasks, escrows and settles, publishes events."""
