"""The plugin contract as pytest tests: subclass :class:`PluginContract` in a plugin's test module::

    from zoo_core.testing.contract import PluginContract

    class TestContract(PluginContract):
        model = "mymodel"

and pytest runs every ``test_*`` method against the *installed* plugin (entry point
``zoo.models:mymodel``), its Hydra config and a few samples of its dataset. The checks themselves live
in :mod:`zoo_core.testing.checks` (plain Python; :func:`check_plugin` runs them without pytest) and are
re-exported here.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from zoo_core.api.optional import MissingDependencyError
from zoo_core.testing.checks import (
    CHECKS,
    REQUIRED_HOOKS,
    SYNTHETIC_SHAPES,
    ContractError,
    PluginUnderTest,
    check_api_version,
    check_atc_args,
    check_config,
    check_dataset,
    check_detections,
    check_eval_result,
    check_evaluate,
    check_export,
    check_lazy_torch,
    check_plugin,
    check_preprocess,
    check_references,
    check_registration,
    check_roundtrip,
    stack_batch,
)

__all__ = ["CHECKS", "REQUIRED_HOOKS", "SYNTHETIC_SHAPES", "ContractError", "PluginContract", "PluginUnderTest",
           "check_api_version", "check_atc_args", "check_config", "check_dataset", "check_detections",
           "check_eval_result", "check_evaluate", "check_export", "check_lazy_torch", "check_plugin",
           "check_preprocess", "check_references", "check_registration", "check_roundtrip", "stack_batch"]


@contextmanager
def _skip_if_missing_dependency() -> Iterator[None]:
    try:
        yield
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


class PluginContract:
    """Subclass in a plugin's tests and set ``model``; pytest then runs the contract checks.

    Class attributes: ``model`` (entry-point name), ``overrides`` (extra Hydra overrides),
    ``n_samples`` (dataset samples used), ``atc_target`` (export target whose ONNX ``atc_args``
    gets; ``ascend``, what ATC converts; ``None`` skips ``test_atc_args``, which is also skipped for a
    plugin that does not implement ``atc_args``: no Ascend path), ``atc_overrides`` (extra overrides for
    that export and the ``atc_args`` call only), ``compare_torch`` / ``rtol`` / ``atol`` (torch vs onnxruntime
    agreement). When ``ZOO_CACHE_DIR`` is unset, generated datasets go to a temporary directory.
    The tests that export (``test_export_runs_in_onnxruntime``, ``test_evaluate_returns_flat_numbers``,
    ``test_atc_args``) are skipped, with the pip line, when the export needs an optional package that is
    not installed (``MissingDependencyError``, e.g. torch); every other failure fails them.
    """

    model: str = ""
    overrides: Sequence[str] = ()
    n_samples: int = 2
    atc_target: str | None = "ascend"
    atc_overrides: Sequence[str] = ()
    compare_torch: bool = True
    rtol: float = 1e-3
    atol: float = 1e-4

    @pytest.fixture(scope="class")
    @classmethod
    def zoo_plugin(cls, tmp_path_factory):
        """The :class:`PluginUnderTest` shared by this class's tests."""
        if not cls.model:
            pytest.fail(f"{cls.__name__}.model is not set")
        with pytest.MonkeyPatch.context() as mp:
            if not os.environ.get("ZOO_CACHE_DIR"):
                mp.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("zoo_cache")))
            yield PluginUnderTest(cls.model, cls.overrides, tmp_path_factory.mktemp(f"contract_{cls.model}"),
                                  cls.n_samples)

    @pytest.fixture(scope="class")
    @classmethod
    def exported_detections(cls, zoo_plugin):
        """Detections of the exported ONNX run by onnxruntime (export checked once per class)."""
        with _skip_if_missing_dependency():
            return check_export(zoo_plugin, compare_torch=cls.compare_torch, rtol=cls.rtol, atol=cls.atol)

    def test_registered_with_required_hooks(self, zoo_plugin):
        check_registration(zoo_plugin)

    def test_declares_hook_api_version(self, zoo_plugin):
        check_api_version(zoo_plugin)

    def test_config_composes(self, zoo_plugin):
        check_config(zoo_plugin)

    def test_dataset_lists_existing_unique_samples(self, zoo_plugin):
        check_dataset(zoo_plugin)

    def test_preprocess_matches_input_spec(self, zoo_plugin):
        check_preprocess(zoo_plugin)

    def test_preprocess_postprocess_round_trip(self, zoo_plugin):
        check_roundtrip(zoo_plugin)

    def test_export_runs_in_onnxruntime(self, exported_detections, zoo_plugin):
        assert set(exported_detections) == {it.sample.id for it in zoo_plugin.prepared}

    def test_evaluate_returns_flat_numbers(self, zoo_plugin, exported_detections):
        check_evaluate(zoo_plugin, exported_detections)

    def test_atc_args(self, zoo_plugin):
        if self.atc_target is None or not zoo_plugin.implements("atc_args"):
            pytest.skip("no Ascend path: atc_target is None or the plugin does not implement atc_args "
                        "(only stage=convert needs it)")
        with _skip_if_missing_dependency():
            check_atc_args(zoo_plugin, self.atc_target, self.atc_overrides)

    def test_import_does_not_import_torch(self, zoo_plugin):
        check_lazy_torch(zoo_plugin)

    def test_references_are_well_formed(self, zoo_plugin):
        check_references(zoo_plugin)
