"""Merge a sharded evaluation: score the union of the shards' detections once, as an unsharded run.

A sweep over ``dataset.shard`` (stage ``eval`` or ``postprocess``) is merged per combination of the
other swept keys into ``<sweep dir>/merged/`` (or ``merged/<key=value,...>/``).

A merge is refused (its report row is failed, and the sweep exits 1) when

* a shard is missing (no job ran it), failed (``error.json``) or has no result (killed);
  the message names the shard and gives the command that re-runs just that shard into the sweep
  (``hydra.sweep.subdir=<its job dir>/<stage>``; ``resume=true`` when the job left something to resume
  and did not fail refusing to resume); once it has run, the merge completes;
* the shards did not run the same thing: their model, dataset (except ``shard``) and backend config
  (for ``backend=torch`` with the thread count torch ran, which changes its outputs in the last bits),
  weights, model file and dataset annotation files (sha256, from each job's ``run.json``) must agree;
* a shard's detections are not what it scored (:func:`shard_detections`: gone, chunks that differ from its
  ``detections/index.jsonl``, other images than its shard's); it is named with its re-run command;
* the shards' outputs were made by different backends (their ``detections/state.json``); the one they agree
  on is the backend the merged scores are judged for (``made_by``), as an unsharded postprocess does.
* the first shard's ``.hydra/config.yaml`` (which the merge scores with) uses YAML anchors / aliases or calls a
  resolver other than :data:`MERGE_RESOLVERS` (:func:`merge_config`).

With ``gate=true`` a merged scoring that does not reproduce its reference keeps its record (``metrics.json``
written, as an unsharded run's) and its row is failed with its metrics.

A shard is complete with its ``metrics.json``, or with ``stage.score=false`` its ``eval.json`` /
``postprocess.json`` (``scored: false``): the merge scores the union either way. A refused merge leaves
no record (its dir is emptied); a merge starts from an empty dir; and after merging, the records of
every ``merged/`` dir this report did not merge are removed, so nothing from an earlier state of the
sweep looks current. A ``merged/`` that is a symbolic link is refused (every merge's row failed, naming it)
before anything is cleared or written through it. A merge's dir name is its label made safe (no ``/``, at most
:data:`MAX_LABEL_CHARS` characters, a hash of the label when it had to change).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zoo_core.reports.job_files import JobFiles
from zoo_core.reports.sweep_report import (
    as_dict,
    is_job_number,
    read_json,
    read_overrides,
    read_record,
    read_yaml,
    sweep_jobs,
)
from zoo_core.runs.fingerprint import PRODUCER_KEYS, RUNTIME_BACKEND_KEYS, backend_section

log = logging.getLogger("zoo")

MERGEABLE_STAGES = ("eval", "postprocess")

#: Keys that may differ between the shards of one merge: they change where or how fast a job ran,
#: not its detections.
RUNTIME_KEYS = ("resume", "progress", "num_workers", "device_id", "work_dir", "model_dir", "allow_skips")
RUNTIME_PREFIXES = ("pin.", "hydra.")


def is_runtime_key(key: str) -> bool:
    return (key in RUNTIME_KEYS or key.startswith(RUNTIME_PREFIXES)
            or key in {f"backend.{k}" for k in RUNTIME_BACKEND_KEYS})


#: Longest merge dir name under ``merged/`` (file systems allow 255 bytes).
MAX_LABEL_CHARS = 100


def _label(values: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def label_dir_name(label: str) -> str:
    """The dir under ``merged/`` of the merge labelled ``label``: the label when it is a safe file name,
    else its unsafe characters replaced and the name cut, with 10 hex digits of the label's sha256 added
    (so that two labels never share a dir)."""
    safe = re.sub(r"[^\w.,=+@:-]", "_", label)
    if safe == label and len(label) <= MAX_LABEL_CHARS and not label.startswith("."):
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:10]
    return f"{safe.lstrip('.')[:MAX_LABEL_CHARS - 11]}-{digest}"


def _is_label_dir(p: Path) -> bool:
    """Whether ``p`` (an entry of ``merged/``) is a labelled merge's dir, not a file of the unlabelled one."""
    return p.is_dir() and not p.is_symlink() and "=" in p.name


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def clear_record_dir(out_dir: Path, merged_root: Path) -> None:
    """Empty a merge's record dir (for the unlabelled merge, ``merged/`` itself: its labelled subdirs stay)."""
    if out_dir == merged_root:
        if merged_root.is_dir():
            for p in merged_root.iterdir():
                if not _is_label_dir(p):
                    _remove(p)
    elif out_dir.exists() or out_dir.is_symlink():
        _remove(out_dir)


def remove_stale_merges(merged_root: Path, ok_dirs: set[Path]) -> None:
    """Remove the records of every merge under ``merged_root`` that is not in ``ok_dirs`` (merged now)."""
    if not merged_root.is_dir():
        return
    if merged_root not in ok_dirs:
        clear_record_dir(merged_root, merged_root)
    for p in merged_root.iterdir():
        if _is_label_dir(p) and p not in ok_dirs:
            _remove(p)
    if not any(merged_root.iterdir()):
        merged_root.rmdir()


#: a merge missing more shards than this says so in one line (a crafted ``dataset.num_shards: 10**12`` would
#: otherwise be walked shard by shard)
MAX_MISSING_LISTED = 100


@dataclass
class Shard:
    index: int
    row: dict
    files: JobFiles


def merge_shards(sweep_dir: Path, rows: list[dict], swept: list[str]) -> list[dict]:
    """Score the union of an ``eval`` sweep over ``dataset.shard``, once per combination of the other
    swept keys. Returns one report row per merge (``status`` ok, or failed with the reason)."""
    if "dataset.shard" not in swept:
        return []
    from zoo_core.stages.scoring import GateFailed

    jobs = {f.root.name: f for f in sweep_jobs(sweep_dir)}
    others = [k for k in swept if k != "dataset.shard" and not is_runtime_key(k)]
    groups = shard_groups(rows, others, jobs)
    merged_rows = []
    merged_root = sweep_dir / "merged"
    linked = linked_merged_root(merged_root)
    ok_dirs: set[Path] = set()
    free = iter(range(max((int(p.name) for p in sweep_dir.iterdir() if is_job_number(p.name)), default=-1) + 1,
                      1 << 62))
    for label, members in groups.items():
        row = {"job": "merged" + (f"[{label}]" if label else ""),
               **{f"@{k}": members[0].get("@" + k) for k in others}, "@dataset.shard": "all"}
        try:
            cfg, stage, n = merge_config(jobs[members[0]["job"]])
        except ValueError as exc:
            merged_rows.append({**row, "status": "failed", "error": f"not merged: {exc}"})
            continue
        if stage not in MERGEABLE_STAGES:
            return []
        shards = pick_shards(members, jobs)
        never_ran = n - sum(1 for i in shards if 0 <= i < n)
        if never_ran > MAX_MISSING_LISTED:  # one line, not one problem and one re-run command per shard
            merged_rows.append({**row, "status": "failed",
                                "error": f"not merged: {never_ran} of the dataset.num_shards={n} shards never ran "
                                         f"(no job of this merge ran their dataset.shard); run them, then the merge "
                                         f"completes"})
            continue
        ran_otherwise = {shard_number(r["@dataset.shard"]): r for g, m in groups.items() if g != label for r in m}
        problems = [p for p in (shard_problem(i, shards.get(i), n) if i in shards or i not in ran_otherwise
                                else ran_with_other_settings(i, n, ran_otherwise[i], members[0], others)
                                for i in range(n)) if p]
        problems += [f"job {s.row['job']} ran dataset.shard={i}, outside dataset.num_shards={n}"
                     for i, s in shards.items() if not 0 <= i < n]
        if not problems:
            problems = fingerprint_problems([shards[i] for i in range(n)])
        rerun = {i for i in range(n) if shard_problem(i, shards.get(i), n)}
        if linked:  # nothing cleared or written through the link; no shard re-run helps
            merged_rows.append({**row, "status": "failed", "error": f"not merged: {linked}"})
            continue
        out_dir = merged_root / label_dir_name(label) if label else merged_root
        # a merge from an earlier state of the sweep must not look current: refused, it leaves nothing;
        # merged, it starts from an empty dir (no plot or prediction file of an earlier merge left)
        clear_record_dir(out_dir, merged_root)
        if not problems:
            try:
                with merge_log(out_dir):
                    record = score_union(cfg, [shards[i] for i in range(n)], out_dir)
            except NotMergeable as exc:
                problems, rerun = exc.problems, exc.shards
            except GateFailed as exc:  # scored and recorded like an unsharded run, which exits 1 after writing it
                log.error("merged shards%s: %s", f" [{label}]" if label else "", exc)
                ok_dirs.add(out_dir)
                record = read_json(out_dir / "metrics.json") or {}
                failures = "; ".join(exc.failures) or str(exc).split("\n", 1)[0]
                merged_rows.append({**row, "status": "failed", "images": record.get("images"),
                                    **_metric_cells(record), "error": f"gate: {failures}"})
                continue
            except Exception as exc:
                log.error("merging shards failed: %s", exc)
                clear_record_dir(out_dir, merged_root)
                merged_rows.append({**row, "status": "failed", "error": f"merge failed: {exc}"})
                continue
        if problems:
            clear_record_dir(out_dir, merged_root)
            reruns = [rerun_shard(sweep_dir, i, shards.get(i), jobs[members[0]["job"]],
                                  None if shards.get(i) else str(next(free)))  # a job dir of its own each
                      for i in range(n) if i in rerun]
            error = "not merged: " + "; ".join(problems)
            if reruns:
                error += ". Re-run " + ("it" if len(reruns) == 1 else "them") + ", then the merge completes: " \
                         + " ; ".join(reruns)
            merged_rows.append({**row, "status": "failed", "error": error})
            continue
        ok_dirs.add(out_dir)
        row.update(status="ok", images=record["images"], **_metric_cells(record))
        merged_rows.append(row)
    if not linked:
        remove_stale_merges(merged_root, ok_dirs)
    return merged_rows


@contextlib.contextmanager
def merge_log(out_dir: Path) -> Iterator[None]:
    """Log what the merge's scoring logs (zoo's summary, the evaluator's output marked file-only, which
    reaches no console) to ``<out_dir>/zoo.log``, as a run's job logging does; INFO records included."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "zoo.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if level > logging.INFO:  # (python -m zoo_core.reports.sweep_report: its console handler stays at WARNING)
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def linked_merged_root(merged_root: Path) -> str | None:
    """Why the merges cannot be written when ``merged_root`` (``<sweep dir>/merged``) is a symbolic link (each
    merge clears its dir before it writes: through a link it would delete and write files elsewhere), or None."""
    from zoo_core.api.errors import ZooError
    from zoo_core.runs.layout import refuse_symlink

    try:
        refuse_symlink(merged_root)
    except ZooError as exc:
        reason = str(exc).split("\n", 1)[0]
        return (f"{reason}. Remove the link, then rebuild the report (the merges are written there): "
                f"python -m zoo_core.reports.sweep_report {shlex.quote(str(merged_root.parent))}")
    return None


def shard_groups(rows: list[dict], others: list[str], jobs: dict[str, JobFiles]) -> dict[str, list[dict]]:
    """The rows of the shard jobs, by merge label (the values of the ``others`` swept keys); a job whose
    ``dataset.shard`` is not a number is in no merge (said in a warning naming its overrides file)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        shard = r.get("@dataset.shard")
        if shard is None:
            continue
        if shard_number(shard) is None:
            text = str(shard)
            log.warning("job %s ran dataset.shard=%s, not a shard number (its %s): it is in no merge", r["job"],
                        text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)",
                        jobs[r["job"]].overrides)
            continue
        groups.setdefault(_label({k: r.get("@" + k) for k in others}), []).append(r)
    return groups


#: The resolvers a job config read back by a merge may call: those that read only the config itself or Hydra's own
#: run (``oc.select``; ``hydra`` and ``now``, which Hydra writes unresolved into every job's config when a sweep passes
#: e.g. ``'model_dir=${hydra:runtime.output_dir}/../model'``, as docs/sweeps.md advises). Any other
#: (``${oc.env:...}``, ``${oc.decode:...}``, a plugin's) would be resolved on the machine that builds the report.
MERGE_RESOLVERS = frozenset({"oc.select", "hydra", "now"})


class _RefusedConfig(Exception):
    """A job config the merge does not read: its reason is the whole message."""


def shard_number(value) -> int | None:
    """A job's ``dataset.shard`` override as a shard number, or None when it is none: not an integer, or one of more
    than 18 digits (no sweep has that many shards; :func:`int` refuses 4301 digits and more with a ValueError)."""
    text = str(value).strip()
    return int(text) if re.fullmatch(r"[+-]?\d{1,18}", text) else None


def merge_config(files: JobFiles) -> tuple:
    """``(config, stage name, dataset.num_shards)`` of the job whose ``.hydra/config.yaml`` a merge scores with;
    a ValueError naming the file when it is not a readable job config (not YAML, a list, no stage name...), or
    when it uses YAML anchors / aliases (Hydra writes none; ``OmegaConf.create`` would copy every alias, so a 1 KB
    alias bomb takes the report's memory and time without end) or calls a resolver other than
    :data:`MERGE_RESOLVERS` (``${oc.env:SECRET}`` would put the report builder's environment into the merged
    record)."""
    from omegaconf import DictConfig, OmegaConf

    try:
        text = read_record(files.config)  # (a FIFO or /dev/zero: refused unopened)
        _refuse_yaml_aliases(text)
        cfg = OmegaConf.create(text)
        if not isinstance(cfg, DictConfig):
            raise TypeError(f"a {type(cfg).__name__}, not a mapping")
        _refuse_resolvers(OmegaConf.to_container(cfg, resolve=False))
        n = OmegaConf.select(cfg, "dataset.num_shards", default=1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _RefusedConfig(f"sets dataset.num_shards={n!r}: zoo runs only a whole number >= 1")
        return cfg, str(cfg.stage.name), n
    except _RefusedConfig as exc:
        raise ValueError(f"{files.config} {exc}") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{files.config} is not a readable job config ({first})") from None


def _refuse_yaml_aliases(text: str) -> None:
    """Raise :class:`_RefusedConfig` when the YAML ``text`` defines an anchor or uses an alias (read as parser events,
    nothing built)."""
    import yaml

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RefusedConfig(f"uses YAML anchors or aliases (&{event.anchor} at line "
                                 f"{event.start_mark.line + 1}), which Hydra never writes: the merge does not read it")


def _refuse_resolvers(value) -> None:
    """Raise :class:`_RefusedConfig` when a string in ``value`` (the unresolved config) calls a resolver other than
    :data:`MERGE_RESOLVERS`."""
    from omegaconf.grammar_parser import OmegaConfGrammarParser, parse

    if isinstance(value, dict):
        for v in value.values():
            _refuse_resolvers(v)
    elif isinstance(value, list):
        for v in value:
            _refuse_resolvers(v)
    elif isinstance(value, str) and "${" in value:
        try:
            tree = parse(value)
        except Exception:  # not an interpolation OmegaConf resolves (it fails there, named)
            return
        stack = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
                name = node.resolverName().getText()
                if name not in MERGE_RESOLVERS:
                    raise _RefusedConfig(f"calls the resolver ${{{name}:...}} ({value!r}): the merge resolves no "
                                         "resolver but oc.select, hydra and now in a job config (it would run on this "
                                         "machine, e.g. read its environment into the merged record); pass the value "
                                         "itself in the sweep's overrides")
            stack.extend(getattr(node, "children", None) or [])


def _metric_cells(record: dict) -> dict:
    metrics = record.get("metrics")
    return {f"metric:{k}": v for k, v in metrics.items() if "/" not in k} if isinstance(metrics, dict) else {}


def pick_shards(members: list[dict], jobs: dict[str, JobFiles]) -> dict[int, Shard]:
    """The job of each shard index; when a shard ran more than once, an ok run wins, then the newest."""
    best: dict[int, Shard] = {}
    for r in members:
        i = shard_number(r["@dataset.shard"])
        if i is None:  # (not in a merge group: shard_groups left it out)
            continue
        cand = Shard(i, r, jobs[r["job"]])
        cur = best.get(i)
        if cur is None or _rank(cand) > _rank(cur):
            best[i] = cand
    return best


def _rank(s: Shard) -> tuple:
    return (s.row["status"] == "ok", s.files.overrides.stat().st_mtime)


def shard_problem(i: int, shard: Shard | None, n: int) -> str | None:
    """Why shard ``i`` cannot be merged, or None."""
    if shard is None:
        return f"shard {i} of {n} is missing (no job ran dataset.shard={i})"
    status = shard.row["status"]
    if status == "failed":
        return f"shard {i} (job {shard.row['job']}) failed: {shard.row.get('error') or 'unknown error'}"
    if status != "ok" or not (shard.files.metrics.is_file() or unscored_record(shard.files)):
        return f"shard {i} (job {shard.row['job']}) has no result (killed, or still running)"
    return None


def ran_with_other_settings(i: int, n: int, ran: dict, wanted: dict, keys: list[str]) -> str:
    """Shard ``i`` of a merge ran, but only with other values of the swept ``keys`` (job ``ran``, e.g. a
    shard re-run with a changed setting) than the merge's (those of job ``wanted``)."""
    def setting(row: dict, k: str) -> str:
        v = row.get("@" + k)
        return f"{k} not set" if v is None else f"{k}={v}"

    diff = [k for k in keys if ran.get("@" + k) != wanted.get("@" + k)]
    return (f"shard {i} of {n} ran only with other settings (job {ran['job']}: "
            f"{', '.join(setting(ran, k) for k in diff)}; this merge: {', '.join(setting(wanted, k) for k in diff)})")


def unscored_record_path(files: JobFiles) -> Path:
    """Where a stage that ran with ``stage.score=false`` writes its record: ``<record dir>/<stage>.json``."""
    return files.records / f"{files.records.name}.json"


def unscored_record(files: JobFiles) -> dict | None:
    """The record of a shard that ran with ``stage.score=false`` (``<stage>.json``, ``scored: false``)."""
    rec = read_json(unscored_record_path(files))
    return rec if isinstance(rec, dict) and rec.get("scored") is False else None


def merge_identity(files: JobFiles) -> dict | None:
    """What must be equal between the shards of one merge, from the job's ``run.json``; None when it is
    missing or not shaped as zoo writes it (a ``config`` or ``inputs`` entry of another JSON type). The plugin's
    and zoo-core's versions (``producer``) count: shards made before and after an upgrade are not one result (a
    ``run.json`` of a zoo that did not record them reads as versions unknown, so it differs from a newer one's)."""
    rec = read_json(files.run)
    if not rec or "config" not in rec:
        return None
    cfg, inputs = rec["config"], rec.get("inputs") or {}
    if not isinstance(cfg, dict) or not isinstance(inputs, dict):
        return None
    sections = {k: cfg.get(k) or {} for k in ("model", "dataset", "backend", "stage")}
    hashed = {k: inputs.get(k) or {} for k in ("weights", "model_file")}
    dataset_files = inputs.get("dataset_files") or []
    if (not all(isinstance(v, dict) for v in (*sections.values(), *hashed.values()))
            or not isinstance(dataset_files, list) or not all(isinstance(f, dict) for f in dataset_files)):
        return None
    ran = rec.get("backend")  # what the backend's describe() said: the thread count torch ran
    producer = rec.get("producer")
    return {
        "versions": {k: producer.get(k) for k in PRODUCER_KEYS} if isinstance(producer, dict)
        else dict.fromkeys(PRODUCER_KEYS),
        "model": cfg.get("model"),
        "dataset": {k: v for k, v in sections["dataset"].items() if k != "shard"},
        "backend": backend_section(sections["backend"], ran if isinstance(ran, dict) else None),
        "stage": sections["stage"].get("name"),
        "weights": hashed["weights"].get("sha256"),
        "model file": hashed["model_file"].get("sha256"),
        "annotation files": [f.get("sha256", f.get("bytes")) for f in dataset_files],
    }


def fingerprint_problems(shards: list[Shard]) -> list[str]:
    """One message per shard whose identity differs from the first shard's."""
    ids = [(s, merge_identity(s.files)) for s in shards]
    problems = [f"shard {s.index} (job {s.row['job']}) has no readable run.json to check what it ran ({s.files.run} "
                "is missing or not shaped as zoo writes it)" for s, ident in ids if ident is None]
    if problems:
        return problems
    ref, ref_id = ids[0]
    assert ref_id is not None
    for s, ident in ids[1:]:
        assert ident is not None
        diff = [k for k in ref_id if ref_id[k] != ident[k]]
        if diff:
            details = ", ".join(_describe_diff(k, ref_id[k], ident[k]) for k in diff)
            problems.append(f"shard {s.index} (job {s.row['job']}) did not run what shard {ref.index} "
                            f"(job {ref.row['job']}) ran: {details}")
    return problems


def _describe_diff(key: str, a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        what = key if key == "versions" else f"{key} config"
        return f"{what} ({', '.join(f'{k}: {a.get(k)!r} vs {b.get(k)!r}' for k in keys)})"
    if isinstance(a, str) and isinstance(b, str):
        return f"{key} (sha256 {a[:12]} vs {b[:12]})"
    return f"{key} ({a!r} vs {b!r})"


def can_resume(files: JobFiles) -> bool:
    """Whether re-running the job with ``resume=true`` keeps something: it left a resumable artifact dir
    (``state.json``) and did not fail refusing to resume it (:class:`zoo_core.runs.resume.ResumeRefused`:
    it would refuse again)."""
    from zoo_core.runs.resume import RESUME_REFUSED, ResumeRefused

    error = read_json(files.error) or {}
    if error.get("type") == ResumeRefused.__name__ or RESUME_REFUSED in str(error.get("error", "")):
        return False
    return any((files.root / d / "state.json").is_file() for d in ("detections", "outputs", "inputs"))


def rerun_shard(sweep_dir: Path, i: int, shard: Shard | None, template: JobFiles, new_job: str | None) -> str:
    """The ``zoo run`` that re-runs shard ``i`` alone into this sweep: into its job dir, or for a shard that
    never ran into ``new_job`` (a caller listing several missing shards gives each its own)."""
    if shard is not None:
        return rerun_command(sweep_dir, shard.files)
    return rerun_command(sweep_dir, template, shard=i, job=new_job, resume=False)


def rerun_command(sweep_dir: Path, template: JobFiles, shard: int | None = None, job: str | None = None,
                  resume: bool | None = None, overrides: list[str] | None = None) -> str:
    """The ``zoo run`` that runs the job of ``template`` again into this sweep (the sweep's launcher
    overrides repeated): into the template's job dir, or ``job``; ``shard`` replaces its
    ``dataset.shard``, ``overrides`` all its task overrides. ``resume=true`` is added when ``resume`` says
    so (default: :func:`can_resume`); a torch job is pinned to the thread count its sweep pinned it to
    (:func:`pinned_threads`)."""
    from zoo_core.config.validate import hydra_quote, shell_word

    if overrides is None:
        overrides = read_overrides(template.overrides)  # (a ValueError naming the file when unreadable)
    args = []
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if key == "dataset.shard" and shard is not None:
            o = f"dataset.shard={shard}"
        if key != "resume":
            args.append(str(o))
    args += pinned_threads(template, args)
    hydra_file = template.overrides.parent / "hydra.yaml"
    launcher = []
    if hydra_file.is_file():
        hcfg = read_yaml(hydra_file)  # (None when unreadable: not a regular file, too large, not YAML)
        hydra_overrides = as_dict(as_dict(as_dict(hcfg).get("hydra")).get("overrides")).get("hydra")
        if not isinstance(hydra_overrides, list):
            log.warning("%s is not Hydra's record of the job (no list hydra.overrides.hydra): the re-run command "
                        "names no launcher", hydra_file)
            hydra_overrides = []
        launcher = [o for o in hydra_overrides if isinstance(o, str)
                    and o.lstrip("+~").startswith(("hydra/launcher", "hydra.launcher"))]
    if resume is None:
        resume = job is None and can_resume(template)
    # <job>/<stage>/: the job's run root, then its stage record dir
    stage = next((a.split("=", 1)[1] for a in args if a.lstrip("+~").startswith("stage=")), template.records.name)
    # the paths in Hydra's override grammar (a space or a non-ASCII letter must be quoted for Hydra), then for
    # the shell; the job's own overrides are Hydra's record, in its grammar already
    argv = ["zoo", "run", "-m", *launcher, *args, f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}",
            f"hydra.sweep.subdir={hydra_quote(f'{job or template.root.name}/{stage}')}"] + \
        (["resume=true"] if resume else [])
    return " ".join(shell_word(a) for a in argv)


def pinned_threads(template: JobFiles, args: list[str]) -> list[str]:
    """``["pin.cores=<n>", "pin.jobs=1"]`` when ``template`` ran ``backend=torch`` with ``n`` threads its sweep
    pinned (``run.json``'s config says ``n``, Hydra's composed ``.hydra/config.yaml`` another count) and
    ``args``, the re-run's task overrides, do not give ``backend.threads``: torch's outputs change with its
    thread count, and a job re-run alone is not pinned as it was among the sweep's jobs (joblib's ``n_jobs``,
    submitit_local), so its resume would be refused and its detections would not merge with the other
    shards'. Pinning it again (rather than ``backend.threads=<n>``) keeps the re-run's task overrides those of
    its shard's merge group."""
    from zoo_core.config.pinning import explicit_keys

    backend = ((read_json(template.run) or {}).get("config") or {}).get("backend")
    threads = backend.get("threads") if isinstance(backend, dict) and backend.get("name") == "torch" else None
    if type(threads) is not int or threads <= 0 or "backend.threads" in explicit_keys(args):
        return []
    chosen = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+~") == "backend"]
    if chosen and chosen[-1] != "torch":
        return []
    composed = as_dict(as_dict(read_yaml(template.config)).get("backend")).get("threads")
    return [] if composed == threads else [f"pin.cores={threads}", "pin.jobs=1"]


class NotMergeable(Exception):
    """The shards' detections are not what they scored: ``problems`` (one per shard), ``shards`` to re-run."""

    def __init__(self, problems: list[str], shards: set[int]):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.shards = shards


def shard_detections(shard: Shard, samples: list, n: int, num_classes: int | None) -> tuple[dict, dict, str | None]:
    """``(detections, record, backend)`` of a finished shard: its detections by image, its ``metrics.json``
    (or unscored record) and the backend its ``detections/state.json`` says made them. Raises
    :class:`NotMergeable` when the detections are not what the shard scored: gone, chunks that differ from
    the sizes and CRC-32 its ``index.jsonl`` recorded (or not listed there), or other images than the
    shard's (``samples``, the unsharded run's, split as ``dataset.shard`` does) less those it skipped."""
    from zoo_core.api.errors import ZooError
    from zoo_core.runs.context import select_samples
    from zoo_core.runs.detstore import DetectionStore

    f = shard.files
    name = f"shard {shard.index} (job {shard.row['job']})"
    record, record_path = read_json(f.metrics), f.metrics
    if not record:
        record, record_path = unscored_record(f), unscored_record_path(f)
    record = record if isinstance(record, dict) else {}
    listed = record.get("skipped")
    if listed is not None and not (isinstance(listed, list) and all(isinstance(e, dict) for e in listed)):
        what = f"a list holding a {next(type(e).__name__ for e in listed if not isinstance(e, dict))}" \
            if isinstance(listed, list) else f"a {type(listed).__name__}"
        raise NotMergeable([f"{name}: {record_path}: \"skipped\" is {what}, not the list of objects zoo writes "
                            "(one {\"id\", \"path\", \"reason\"} per skipped image)"], {shard.index})
    state = read_json(f.detections / "state.json")
    if not isinstance(state, dict):
        raise NotMergeable([f"{name}: its detections are gone ({f.detections / 'state.json'} is missing or "
                            "unreadable)"], {shard.index})
    store = DetectionStore(f.detections, num_classes=num_classes)
    problem = store.chunk_problem()
    if problem:
        raise NotMergeable([f"{name}: its detections are not those it wrote: {problem}"], {shard.index})
    try:
        part = store.load()
    except ZooError as exc:
        raise NotMergeable([f"{name}: {exc}"], {shard.index}) from None
    skipped = {e.get("id") for e in record.get("skipped") or [] if isinstance(e, dict)}
    wanted = {s.id for s in select_samples(samples, {"num_shards": n, "shard": shard.index})} - skipped
    missing, extra = sorted(wanted - set(part)), sorted(set(part) - wanted)
    if missing or extra:
        what = (f"{len(wanted) - len(missing)} of the {len(wanted)} images it scored (missing: {missing[0]!r}"
                f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''})" if missing
                else f"{len(extra)} image(s) that are not its shard's (first: {extra[0]!r})")
        raise NotMergeable([f"{name}: its detections in {f.detections} hold {what}"], {shard.index})
    images = record.get("images")
    if isinstance(images, int) and not isinstance(images, bool) and images != len(part):
        raise NotMergeable([f"{name}: it scored {images} images but its detections in {f.detections} hold "
                            f"{len(part)}"], {shard.index})
    backend = state.get("backend")
    return part, record, backend if isinstance(backend, str) else None


def score_union(cfg, shards: list[Shard], out_dir: Path) -> dict:
    """Score the detections of all ``shards`` as one unsharded run in ``out_dir``; raises
    :class:`NotMergeable` (before writing anything) when a shard's detections are not what it scored
    (:func:`shard_detections`) or the shards' outputs were made by different backends."""
    from omegaconf import open_dict

    from zoo_core.plugins import get_manager
    from zoo_core.runs.context import RunContext
    from zoo_core.runs.detstore import class_count
    from zoo_core.stages.scoring import score

    with open_dict(cfg):
        cfg.dataset.shard = 0
        cfg.dataset.num_shards = 1
    ctx = RunContext(cfg, get_manager(), out_dir, out_dir)
    parts, problems, bad = [], [], set()
    for s in shards:
        try:
            parts.append((s, *shard_detections(s, ctx.samples, len(shards), class_count(cfg))))
        except NotMergeable as exc:
            problems += exc.problems
            bad |= exc.shards
    if problems:
        raise NotMergeable(problems, bad)
    made_by = {s.index: backend for s, _part, _rec, backend in parts}
    if len(set(made_by.values())) > 1:
        raise NotMergeable(["the shards' model outputs were made by different backends (their detections/state.json: "
                            + ", ".join(f"shard {i} {b!r}" for i, b in made_by.items()) + ")"], set())
    detections: dict = {}
    skipped: list = []
    for _s, part, record, _backend in parts:
        detections.update(part)  # disjoint: each holds exactly its own shard's images
        skipped += record.get("skipped") or []
    extra: dict = {"merged_from": [str(s.files.root) for s in shards]}
    if str(cfg.stage.name) == "postprocess":  # what the unsharded record says of its outputs, when the shards agree
        for key in ("outputs_dir", "output_suffix_base"):
            values = [rec.get(key, extra) for _s, _p, rec, _b in parts]
            if values[0] is not extra and all(v == values[0] for v in values):
                extra[key] = values[0]
    ctx.record_dir.mkdir(parents=True, exist_ok=True)
    return score(ctx, detections, skipped, extra, made_by=next(iter(made_by.values()), None))
