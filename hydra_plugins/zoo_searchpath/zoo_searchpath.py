"""Hydra SearchPathPlugin owned by zoo-core: adds every installed model plugin's ``conf/`` tree."""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ZooSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from zoo_core.confpaths import add_plugin_search_paths

        add_plugin_search_paths(search_path)
