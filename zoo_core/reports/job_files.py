"""Where a sweep job keeps its files: the one place the sweep report and the shard merge look them up.

A job dir is a *run root*: chained artifacts (``detections/``, ``outputs/``, ``inputs/``) live in it,
and each stage writes its records (``run.json``, ``perf.json``, ``metrics.json``, ``error.json``,
``result.json``, Hydra's ``.hydra/`` and ``zoo.log``) in ``<root>/<stage>/`` (docs/run-directory.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobFiles:
    """The paths of one job's files (they need not exist)."""

    root: Path
    records: Path

    @property
    def metrics(self) -> Path:
        return self.records / "metrics.json"

    @property
    def perf(self) -> Path:
        return self.records / "perf.json"

    @property
    def run(self) -> Path:
        return self.records / "run.json"

    @property
    def error(self) -> Path:
        return self.records / "error.json"

    @property
    def result(self) -> Path:
        """What the stage returned and where it ran (written by the sweep report callback)."""
        return self.records / "result.json"

    @property
    def log(self) -> Path:
        return self.records / "zoo.log"

    @property
    def overrides(self) -> Path:
        return self.records / ".hydra" / "overrides.yaml"

    @property
    def config(self) -> Path:
        return self.records / ".hydra" / "config.yaml"

    @property
    def detections(self) -> Path:
        return self.root / "detections"


def job_files(job_dir: str | Path, stage: str) -> JobFiles:
    """The files of the job (run root) ``job_dir`` for its stage ``stage``."""
    root = Path(job_dir)
    return JobFiles(root=root, records=root / stage)


def find_job(job_dir: str | Path, stage: str | None = None) -> JobFiles | None:
    """The files of the job in ``job_dir``: of its ``stage``, or by default of the stage it ran last (the
    record whose ``.hydra/overrides.yaml`` is the newest: stages chained through one job dir each keep
    their records there); None when it holds no Hydra job (of that stage)."""
    from zoo_core.config.schema import STAGES

    newest: tuple[int, JobFiles] | None = None
    for name in STAGES if stage is None else (stage,):
        files = job_files(job_dir, name)
        try:
            mtime = files.overrides.stat().st_mtime_ns
        except OSError:
            continue
        if files.overrides.is_file() and (newest is None or mtime > newest[0]):
            newest = (mtime, files)
    return None if newest is None else newest[1]
