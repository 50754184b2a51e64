"""Inference backends (entry-point group ``zoo.backends``)."""
from zoo_core.backends.base import Backend, Batch

__all__ = ["Backend", "Batch"]
