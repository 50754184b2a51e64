"""Inference backends (entry-point group ``zoo.backends``)."""
from .base import Backend, Batch

__all__ = ["Backend", "Batch"]
