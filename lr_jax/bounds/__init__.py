"""The bound machinery: the shared core and one module per method."""
