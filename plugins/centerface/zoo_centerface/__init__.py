"""zoo model plugin: centerface."""

__version__ = "0.1.0"
