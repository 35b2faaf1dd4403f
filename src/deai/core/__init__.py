"""The domain, pure: specs, money, market matching, ledger postings, errors.

Nothing here performs I/O or imports a web framework, database driver, HTTP
client or torch; ``tests/test_layers.py`` enforces it.
"""
