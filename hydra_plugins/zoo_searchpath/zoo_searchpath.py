"""Hydra's discovery entry for zoo-core's SearchPathPlugin (the class lives in zoo_core.searchpath)."""
from zoo_core.searchpath import ZooSearchPathPlugin

__all__ = ["ZooSearchPathPlugin"]
