"""zoo-core's default ``dataset``, ``evaluate`` and ``read_detections`` hook implementations (registered by the
plugin manager).

They are ``trylast``: the selected model's own implementation is called first and wins with any
non-``None`` answer. They answer only for a ``cfg.dataset`` with a ``kind`` (see
:mod:`zoo_core.datasets`), and return ``None`` otherwise.
"""
from __future__ import annotations

from zoo_core import datasets as _datasets
from zoo_core import hookimpl

#: The name this module is registered under in the plugin manager.
PLUGIN_NAME = "zoo-core:datasets"
#: The model hooks zoo-core answers for a dataset with a ``kind``.
DEFAULT_HOOKS = ("dataset", "evaluate", "read_detections")


@hookimpl(trylast=True)
def dataset(cfg):
    """Open ``cfg.dataset`` when it has a ``kind`` zoo-core reads."""
    if _datasets.kind_of(cfg.get("dataset")) is None:
        return None
    return _datasets.open_dataset(cfg)


@hookimpl(trylast=True)
def evaluate(cfg, detections, dataset, samples, out_dir):
    """Score with the dataset's kind when ``cfg.dataset`` has one."""
    if _datasets.kind_of(cfg.get("dataset")) is None:
        return None
    return _datasets.evaluate(cfg, detections, dataset, samples, out_dir)


@hookimpl(trylast=True)
def read_detections(cfg, path, dataset, samples):
    """Read a WIDER prediction tree / COCO results json with the dataset's kind (``None``: not its format)."""
    return _datasets.read_detections(cfg, path, dataset, samples)
