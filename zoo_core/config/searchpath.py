"""The Hydra SearchPathPlugin that puts every installed model plugin's ``conf/`` tree on the search path.

Hydra discovers it through ``hydra_plugins/zoo_searchpath`` (shipped in the zoo-core wheel);
:func:`register` also registers it directly, so an editable install whose ``hydra_plugins``
namespace portion is not importable still finds the plugins' configs.
"""
from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ZooSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from zoo_core.config.confpaths import add_plugin_search_paths

        add_plugin_search_paths(search_path)


def register() -> None:
    """Register the plugin with Hydra (idempotent: Hydra keeps one entry per class)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(ZooSearchPathPlugin)
