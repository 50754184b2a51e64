"""Everything a stage needs: the config, the selected model's hooks, the run root and record dir, the dataset."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo_core.api.errors import ConfigError
from zoo_core.api.types import Sample
from zoo_core.plugins.manager import ModelHooks, ZooPluginManager
from zoo_core.runs.layout import PinnedDir
from zoo_core.runs.weights import WeightsChoice, choose_weights, user_weights

log = logging.getLogger("zoo")


@dataclass
class RunContext:
    """One stage run: ``root`` holds the chained artifacts (``inputs/``, ``outputs/``, ``detections/``),
    ``record_dir`` (default ``<root>/<stage>``) this stage's own records (run.json, metrics.json...)."""

    cfg: DictConfig
    manager: ZooPluginManager
    root: Path
    record_dir: Path = None  # type: ignore[assignment]
    hooks: ModelHooks = field(init=False)
    weights_used: WeightsChoice | None = field(init=False, default=None)
    #: Facts the stage adds to its ``run.json`` when it finishes (e.g. ``int8_calibration``: the images an INT8
    #: model was calibrated on and those ``on_error=skip`` left out).
    notes: dict[str, Any] = field(init=False, default_factory=dict)
    #: The backend the stage opened (``backend``, ``model_file``), set by ``open_backend``: a run that fails after
    #: it (``gate=true`` once metrics.json is written) still names the model file in ``run.json``.
    opened_backend: dict[str, Any] | None = field(init=False, default=None)
    #: ``record_dir`` as the run found it (pinned when it exists, else at the first :meth:`record`): each
    #: :meth:`record` checks it was not replaced during the run (:class:`~zoo_core.runs.layout.PinnedDir`).
    record_pinned: PinnedDir = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.record_dir = Path(self.record_dir) if self.record_dir is not None else self.root / self.stage
        self.record_pinned = PinnedDir(self.record_dir)
        if self.record_dir.is_dir() and not self.record_dir.is_symlink():
            self.record_pinned.pin()
        self.hooks = self.manager.hooks_for(str(self.cfg.model.name))
        if int(self.cfg.batch_size) < 1:
            raise ConfigError(f"batch_size={self.cfg.batch_size} is invalid: it must be a whole number >= 1")
        if int(self.cfg.num_workers) < 0:
            raise ConfigError(f"num_workers={self.cfg.num_workers} is invalid: it must be >= 0")
        check_limits()

    @property
    def model_name(self) -> str:
        return str(self.cfg.model.name)

    @property
    def stage(self) -> str:
        return str(self.cfg.stage.name)

    @cached_property
    def dataset(self) -> Any:
        return self.hooks.dataset(cfg=self.cfg)

    @cached_property
    def samples(self) -> list[Sample]:
        """The dataset's samples after ``dataset.limit`` and deterministic sharding."""
        samples = list(self.dataset.samples())
        return select_samples(samples, self.cfg.dataset)

    @property
    def skip_errors(self) -> bool:
        """``on_error=skip``: bad inputs are skipped and listed instead of stopping the run."""
        return str(self.cfg.on_error).split(".")[-1] == "skip"

    def path(self, *parts: str) -> Path:
        """A path in the run root (chained artifacts)."""
        return self.root.joinpath(*parts)

    def record(self, *parts: str) -> Path:
        """A path in this stage's record dir (which is checked to be the one the run started with, and made)."""
        return self.record_pinned.check().joinpath(*parts)

    def weights(self) -> str | None:
        """The ``weights=`` file (checked to be a regular file), or ``None`` when unset or ``random``."""
        return user_weights(self.cfg)

    def weights_choice(self) -> WeightsChoice:
        """The weights this stage runs, chosen (and said on stderr) once; see :mod:`zoo_core.runs.weights`.

        Called only where the model is built or exported, so stages and backends that need no weights
        never ask; ``run.json`` records the choice when one was made."""
        if self.weights_used is None:
            self.weights_used = choose_weights(self.cfg, self.stage, self.model_name)
        return self.weights_used

    def resolved_config(self) -> dict:
        return OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def check_limits() -> None:
    """The environment's size limits are valid (else one ConfigError line), checked in the main process
    before any worker starts: ``ZOO_MAX_IMAGE_PIXELS`` (and OpenCV's own variable, which it would abort
    on), ``ZOO_MAX_CHECKPOINT_RATIO``, ``ZOO_MAX_MAT_MB``."""
    from zoo_core.api.checkpoint import max_checkpoint_ratio
    from zoo_core.api.imaging import max_image_pixels
    from zoo_core.datasets.matfile import max_mat_bytes

    max_image_pixels()
    max_checkpoint_ratio()
    max_mat_bytes()


def select_samples(samples: list[Sample], dcfg) -> list[Sample]:
    """Apply ``limit`` then keep shard ``shard`` of ``num_shards`` (round-robin over the sorted ids).

    Round-robin over ids sorted by name is deterministic, independent of the dataset's own order,
    and balances shards to within one image.
    """
    limit = dcfg.get("limit") if dcfg is not None else None
    if limit is not None:
        if int(limit) < 0:
            raise ConfigError(f"dataset.limit={limit} must be >= 0")
        samples = samples[: int(limit)]
    n = dcfg.get("num_shards") if dcfg is not None else None
    i = dcfg.get("shard") if dcfg is not None else None
    n = 1 if n is None else int(n)
    i = 0 if i is None else int(i)
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"dataset.shard={i} / dataset.num_shards={n}: "
                          f"need num_shards >= 1 and 0 <= shard < num_shards")
    if n == 1:
        return samples
    ids = sorted(s.id for s in samples)
    mine = set(ids[i::n])
    return [s for s in samples if s.id in mine]
