"""Hydra's discovery entry for zoo-core's SearchPathPlugin and the ConfigSource of the plugins' ``conf/`` trees
(the classes live in zoo_core.config.searchpath)."""
from zoo_core.config.searchpath import ZooPluginConfigSource, ZooSearchPathPlugin

__all__ = ["ZooPluginConfigSource", "ZooSearchPathPlugin"]
