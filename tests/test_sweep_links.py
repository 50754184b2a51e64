"""Links planted in a sweep dir are refused as in a single run: nothing is written through them.

Before, only ``zoo run`` of a single run checked its record dir for links (``refuse_links``): a sweep job's
``.hydra/config.yaml`` and ``zoo.log`` links were written through (their targets overwritten), and a
``<sweep dir>/multirun.yaml`` link had its target truncated and rewritten by Hydra's sweeper.
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest

from zoo_core.api.errors import ZooError
from zoo_core.runs import lock
from zoo_core.runs.lock import JobRefused, RunLock, RunLogHandler


def planted(record: Path, tmp_path: Path, *names: str) -> dict[Path, str]:
    """Links ``record/<name>`` to files of their own outside the run; returns each target and its text."""
    targets = {}
    for name in names:
        target = tmp_path / f"victim-{name.replace('/', '_')}"
        target.write_text(f"precious {name}\n")
        (record / name).parent.mkdir(parents=True, exist_ok=True)
        (record / name).symlink_to(target)
        targets[target] = target.read_text()
    return targets


@pytest.mark.parametrize("name", ["zoo.log", ".hydra/config.yaml"])
def test_the_job_log_handler_refuses_a_link_in_the_jobs_record_dir_before_opening_the_log(tmp_path, monkeypatch,
                                                                                        name):
    """RunLogHandler is the first thing Hydra's run_job opens in a sweep job's record dir (before it writes
    .hydra/): it refuses the job there, and lets the job's lock go."""
    record = tmp_path / "sweep" / "0" / "eval"
    record.mkdir(parents=True)
    targets = planted(record, tmp_path, name)
    monkeypatch.setattr(lock, "_hydra_output_dir", lambda: record)
    with pytest.raises(JobRefused) as err:
        RunLogHandler(str(record / "zoo.log"), mode="w")
    assert str(err.value).startswith(f"{record / name}: is a symbolic link (to {tmp_path}/victim-"), err.value
    assert {t: t.read_text() for t in targets} == targets
    with RunLock(record.parent, "eval"):  # released, not held until the process exits
        pass


def as_remote_traceback(error: BaseException) -> RuntimeError:
    """``error`` as a job process hands it back through joblib: the text of its traceback, wrapped the way
    joblib's ``_RemoteTraceback`` is."""
    try:
        raise error
    except BaseException:
        remote = traceback.format_exc()
    return RuntimeError(f'\n"""\n{remote}"""')


def test_a_refused_job_stops_the_sweep_with_its_one_line_also_from_another_process(tmp_path):
    """launcher_stopped: the refusal comes through logging.config's ValueError (the basic launcher) or, from a
    joblib / submitit job process, as the text of a remote traceback."""
    from zoo_core.cli.app import launcher_stopped

    refusal = JobRefused(f"{tmp_path}/0/eval/zoo.log: is a symbolic link (to /x)\n  hint: remove the link")
    exc = ValueError("Unable to configure handler 'file'")
    exc.__cause__ = refusal
    with pytest.raises(JobRefused) as got:
        launcher_stopped(exc, tmp_path / "status.json")
    assert got.value is refusal
    exc = ValueError("Unable to configure handler 'file'")
    exc.__cause__ = as_remote_traceback(refusal)
    with pytest.raises(JobRefused) as got:
        launcher_stopped(exc, tmp_path / "status.json")
    assert str(got.value) == str(refusal)


@pytest.mark.parametrize("kind", ["symbolic", "hard"])
def test_a_linked_multirun_yaml_stops_the_sweep_before_the_sweeper_writes_it(tmp_path, kind):
    """on_multirun_start runs before Hydra's sweeper rewrites <sweep dir>/multirun.yaml in place; a refusal there
    must stop the sweep (SweepRefused: Hydra turns any Exception of a callback into a warning)."""
    from omegaconf import OmegaConf

    from zoo_core.reports.sweep_report import SweepReport
    from zoo_core.runs.lock import SWEEP_LOCK_NAME, SweepRefused

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (sweep / "multirun.yaml").symlink_to(victim) if kind == "symbolic" else os.link(victim, sweep / "multirun.yaml")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "overrides": {"hydra": []},
                                      "runtime": {"choices": {}}}})
    with pytest.raises(SweepRefused) as err:
        SweepReport().on_multirun_start(cfg)
    assert isinstance(err.value.error, ZooError)
    reason = "is a symbolic link (to " if kind == "symbolic" else "has 2 hard links: this file is rewritten in place"
    assert str(err.value.error).startswith(f"{sweep / 'multirun.yaml'}: {reason}"), err.value.error
    assert victim.read_text() == "precious\n"
    with RunLock(sweep, "sweep", name=SWEEP_LOCK_NAME):  # the sweep lock was let go
        pass


def test_a_sweep_writes_nothing_through_links_planted_in_its_dir_and_exits_2(zoo, tmp_path):
    """The wiring, through the CLI: a multirun.yaml link stops the sweep before any job; links in a job's
    record dir stop it at that job. Each says the link's path in one line (and a hint), exit 2."""
    sweep = zoo.cwd / "sweep"
    sweep.mkdir()
    args = ("run", "-m", "model=fixture", "backend=oracle", "stage=eval", "dataset.limit=2", f"hydra.sweep.dir={sweep}")
    targets = planted(sweep, tmp_path, "multirun.yaml")
    rc, out, err = zoo(*args)
    assert rc == 2 and "Traceback" not in err, out + err
    assert err.startswith(f"error: {sweep / 'multirun.yaml'}: is a symbolic link (to {tmp_path}/victim-"), err
    assert not (sweep / "0").exists()
    (sweep / "multirun.yaml").unlink()
    targets |= planted(sweep / "0" / "eval", tmp_path, "zoo.log", ".hydra/config.yaml")
    rc, out, err = zoo(*args)
    assert rc == 2 and "Traceback" not in err, out + err
    assert err.startswith(f"error: {sweep / '0' / 'eval' / 'zoo.log'}: is a symbolic link (to {tmp_path}/victim-"), err
    assert len(err.strip().splitlines()) == 2  # the error and its hint
    assert {t: t.read_text() for t in targets} == targets
    assert not (sweep / "0" / "eval" / "error.json").exists() and not (sweep / "sweep_report.md").exists()
