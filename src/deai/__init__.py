"""DeAI: an open marketplace for AI compute that verifies the work itself."""

__version__ = "0.1.0"
