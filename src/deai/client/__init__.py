"""The client side: keys, the SDK over the native API, and the ``deai`` CLI."""
