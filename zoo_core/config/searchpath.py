"""The Hydra SearchPathPlugin that puts every installed model plugin's ``conf/`` tree on the search path,
and the ConfigSource that reads those trees.

Hydra discovers both through ``hydra_plugins/zoo_searchpath`` (shipped in the zoo-core wheel);
:func:`register` also registers them directly, so an editable install whose ``hydra_plugins``
namespace portion is not importable still finds the plugins' configs.

A plugin's tree is read as files are (Hydra's ``file://`` source) with one addition
(:class:`ZooPluginConfigSource`): a model or dataset file is completed with the keys its schema
(``ZOO_CONFIG_SCHEMAS``, else ``ModelConfig`` / ``DatasetConfig``) declares but the YAML leaves out, at
their declared defaults. Hydra checks ``model.<key>=value`` against the composed files before zoo types
the sections, so without them a declared key such as ``report_both_iou`` (inherited from
``WiderFaceModelConfig``), shown by ``zoo info``, was refused as an unknown key.
"""
from __future__ import annotations

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.config_source import ConfigResult
from hydra.plugins.search_path_plugin import SearchPathPlugin

#: The search-path scheme of a model plugin's ``conf/`` tree.
SCHEME = "zoo-plugin"


class ZooSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from zoo_core.config.confpaths import add_plugin_search_paths

        add_plugin_search_paths(search_path)


class ZooPluginConfigSource(FileConfigSource):
    """A model plugin's ``conf/`` tree: its YAML files, each model / dataset section completed with the
    keys its schema declares (:func:`zoo_core.config.plugin_schema.complete_with_schema`)."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def load_config(self, config_path: str) -> ConfigResult:
        result = super().load_config(config_path)
        from zoo_core.config.plugin_schema import complete_with_schema

        complete_with_schema(result.config, self._normalize_file_name(config_path), result.header.get("package"))
        return result


def register() -> None:
    """Register the plugin and the config source with Hydra (idempotent: Hydra keeps one entry per class)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(ZooSearchPathPlugin)
    Plugins.instance().register(ZooPluginConfigSource)
