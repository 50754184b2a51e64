"""zoo model plugin: centernet."""

__version__ = "0.1.0"
