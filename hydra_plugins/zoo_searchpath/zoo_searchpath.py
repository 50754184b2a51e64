"""Hydra's discovery entry for zoo-core's SearchPathPlugin (the class lives in zoo_core.config.searchpath)."""
from zoo_core.config.searchpath import ZooSearchPathPlugin

__all__ = ["ZooSearchPathPlugin"]
