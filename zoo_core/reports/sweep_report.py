"""Hydra callback: at the end of a multirun, aggregate every job into one report at the sweep root.

Writes ``sweep_report.csv`` (every field of every job), ``sweep_report.md`` (a titled table: swept
values, status, throughput, latency mean/p99, accuracy, model file; a convert sweep shows the OM file
and ATC status instead; failed jobs' full errors as numbered notes) and ``sweep_report.png``
(throughput vs batch size, one line per combination of the other swept keys, or throughput per job;
plus accuracy vs throughput with its Pareto front when the jobs have both).

A sweep over ``dataset.shard`` with ``stage=eval`` (or ``postprocess``) is also merged: the union of
the shards' detections is scored once into ``merged/metrics.json`` and reported as a ``merged`` row
(:mod:`zoo_core.reports.shard_merge`). ``python -m zoo_core.reports.sweep_report <dir>`` rebuilds the
report of a finished sweep (e.g. one whose jobs ran elsewhere). Failed jobs (``error.json``) and
failed merges make ``zoo run`` exit 1.

Each job's own process also writes ``result.json`` (what the stage returned, and the host it ran
on) into its records when it ends (:meth:`SweepReport.on_job_end`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most
from zoo_core.api.errors import ZooError
from zoo_core.json_numbers import finite_number, shown
from zoo_core.printable import printable
from zoo_core.reports.job_files import JobFiles, find_job

log = logging.getLogger("zoo")

#: Environment variable naming a file where the callback writes the sweep's status (the CLI reads it).
STATUS_ENV = "ZOO_SWEEP_STATUS"

MAX_MD_METRICS = 4
#: Preferred accuracy metric for the Pareto plot, in order; else the first metric of the jobs.
ACCURACY_METRICS = ("AP", "mAP", "easy", "AP50", "accuracy")
#: Swept keys that split a workload rather than change what runs (no Pareto plot over them).
SPLIT_KEYS = ("dataset.shard", "resume")


def read_record(p: Path) -> str:
    """The text of a job's record file (JSON or YAML) as UTF-8. A :class:`ZooError` naming it when it is missing,
    not a regular file (a FIFO would block the read forever, ``/dev/zero`` never end) or larger than
    :data:`~zoo_core.api.checkpoint.MAX_RECORD_BYTES`; a ``ValueError`` when it is not UTF-8."""
    return read_at_most(p, MAX_RECORD_BYTES, "record file").decode("utf-8")


def read_json(p: Path) -> dict | None:
    """The JSON object in ``p``, or None when it is missing or unreadable (not a regular file, too large
    (:func:`read_record`), not JSON, or JSON of another type than an object: ``[1, 2]``, ``"x"``)."""
    try:
        value = json.loads(read_record(p))
    except (ZooError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def as_dict(value) -> dict:
    """``value`` when it is a dict (a JSON object), else an empty one: a record's field of the wrong type
    (``"latency_ms": "fast"``) is read as missing."""
    return value if isinstance(value, dict) else {}


def read_yaml(p: Path):
    """The YAML document in ``p`` (``yaml.safe_load``), or None when it is missing or unreadable (not a regular
    file, too large (:func:`read_record`), not YAML, or a tag safe_load refuses, such as ``!!python/object``)."""
    import yaml

    try:
        return yaml.safe_load(read_record(p))
    except (ZooError, ValueError, RecursionError, yaml.YAMLError):
        return None


def read_overrides(p: Path) -> list[str]:
    """A job's ``.hydra/overrides.yaml``: its list of ``key=value`` strings. Raises ValueError naming the file
    when it is unreadable (also: not a regular file, too large) or not a list of strings (as Hydra writes it)."""
    import yaml

    try:
        value = yaml.safe_load(read_record(p))
    except ZooError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{p}: not readable as Hydra's list of overrides ({first})") from None
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise ValueError(f"{p}: not a list of overrides as Hydra writes it (a {type(value).__name__}"
                         f"{'' if not isinstance(value, list) else ' holding other things than strings'})")
    return value


def _hydra_overrides(sweep_dir: Path) -> list[str]:
    cfg = as_dict(read_yaml(sweep_dir / "multirun.yaml"))
    found = as_dict(as_dict(cfg.get("hydra")).get("overrides")).get("hydra")
    return [o for o in found if isinstance(o, str)] if isinstance(found, list) else []


def _is_patch(hydra_overrides) -> bool:
    return any(str(o).lstrip("+~").startswith("hydra.sweep.subdir=") for o in hydra_overrides or [])


def is_patch_sweep(sweep_dir: Path) -> bool:
    """Whether the last sweep into ``sweep_dir`` re-ran chosen jobs in place (``hydra.sweep.subdir=``
    given, as the shard merge's re-run command does): the other jobs then still belong to the sweep."""
    return _is_patch(_hydra_overrides(sweep_dir))


#: The sweep's jobs (job dir name -> stage), written by each report; a sweep that is not a patch sweep
#: empties it when it starts (:meth:`SweepReport.on_multirun_start`).
MANIFEST = "sweep_jobs.json"


def _jobs_since(found: dict[str, JobFiles], t0: float) -> dict[str, JobFiles]:
    return {name: f for name, f in found.items() if f.overrides.stat().st_mtime >= t0 - 1.0}


def sweep_jobs(sweep_dir: Path) -> list[JobFiles]:
    """The sweep's jobs, in job order, each with the records of the stage it ran last (a chained sweep's
    job dir holds one record dir per stage).

    Jobs left in the dir by an older sweep are ignored: a sweep's jobs are those written since it
    started (``multirun.yaml``). A patch sweep (:func:`is_patch_sweep`) adds the jobs it re-ran to the
    sweep's jobs listed in :data:`MANIFEST` (or, when the sweep that emptied it never got to its report,
    to the jobs written since then); without a manifest (a dir made by hand, an older zoo) every job dir
    counts."""
    found = {p.name: f for p in sweep_dir.iterdir() if p.is_dir() and (f := find_job(p)) is not None}
    started = sweep_dir / "multirun.yaml"
    if started.is_file():
        jobs = _jobs_since(found, started.stat().st_mtime)
        if is_patch_sweep(sweep_dir):
            jobs = {**_manifest_jobs(sweep_dir, found), **jobs}
    else:
        jobs = found
    return sorted(jobs.values(), key=lambda f: (not is_job_number(f.root.name),
                                                int(f.root.name) if is_job_number(f.root.name) else f.root.name))


def is_job_number(name: str) -> bool:
    """Whether a job dir's name is a job number as Hydra names them (``0``, ``12``): ASCII digits only (``'²'`` is a
    digit to :meth:`str.isdigit` but not a number to :func:`int`), at most 18 of them."""
    return name.isascii() and name.isdigit() and len(name) <= 18


def _manifest_jobs(sweep_dir: Path, found: dict[str, JobFiles]) -> dict[str, JobFiles]:
    path = sweep_dir / MANIFEST
    manifest = read_json(path)
    if manifest is None:
        return found
    listed = manifest.get("jobs")
    if not isinstance(listed, dict):  # emptied when the sweep started, never written by its report
        return _jobs_since(found, path.stat().st_mtime)
    jobs = {}
    for name, stage in listed.items():
        f = find_job(sweep_dir / str(name), str(stage)) if "/" not in str(name) else None
        if f is not None:
            jobs[str(name)] = f
    return jobs


def write_manifest(sweep_dir: Path, jobs: list[JobFiles] | None) -> None:
    """Record the sweep's jobs (None: a new sweep started, none reported yet)."""
    from zoo_core.api.atomic import write_json

    write_json(sweep_dir / MANIFEST, {"schema": 1, "jobs": None if jobs is None else
                                      {f.root.name: f.records.name for f in jobs}})


def _job_config(f: JobFiles) -> dict:
    """The job's ``.hydra/config.yaml``, or an empty dict when it is missing or not a readable mapping."""
    return as_dict(read_yaml(f.config))


def _name(cfg: dict, section: str) -> str | None:
    node = cfg.get(section)
    return str(node.get("name")) if isinstance(node, dict) and node.get("name") is not None else None


def collect_rows(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """One row per job, and the keys whose values differ between jobs (the swept keys)."""
    rows = []
    for f in sweep_jobs(sweep_dir):
        try:
            overrides = read_overrides(f.overrides)
        except ValueError as exc:
            log.warning("%s: the job's swept values are unknown", exc)
            overrides = []
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        perf = _record(f.perf) or {}
        metrics = _record(f.metrics) or {}
        error = _record(f.error)
        if error is None and (f.error.exists() or f.error.is_symlink()):  # written only when the job failed
            error = {"error": f"the job failed, but its {f.error} is not a readable JSON object"}
        result = _record(f.result) or {}
        run = _record(f.run) or {}
        cfg = _job_config(f)
        if not cfg and f.config.exists():
            log.warning("%s is not a readable config mapping: the sweep report reads it as missing", f.config)
        lat = _field(perf, "latency_ms" if perf.get("latency_ms") else "device_call_ms", f.perf)
        timed = perf.get("images") != 0  # 0: every image was resumed from an earlier run, nothing was timed
        if not timed:
            lat = {}
        converted = result.get("converted")
        row = {
            "job": f.root.name,
            **{f"@{k}": v for k, v in values.items()},
            "status": "failed" if error else ("ok" if (perf or metrics or converted is not None
                                                       or run.get("status") == "ok") else "no result"),
            "model": _name(cfg, "model"),
            "stage": _name(cfg, "stage"),
            "backend": _name(cfg, "backend"),
            "host": result.get("host"),
            "throughput": _number(perf, "throughput" if "throughput" in perf else "throughput_img_s", f.perf)
            if timed else None,
            "latency_mean_ms": _number(lat, "mean", f.perf),
            "latency_p99_ms": _number(lat, "p99", f.perf),
            "model_file": perf.get("model_file"),
            "model_sha256": _field(_field(run, "inputs", f.run), "model_file", f.run).get("sha256"),
            "om_file": result.get("om"),
            "atc": (None if converted is None else "converted" if converted
                    else f"not run (atc not on PATH): wrote {Path(str(result.get('script'))).name}"),
            "error": as_dict(error).get("error"),
        }
        if not timed:
            row["note"] = untimed_note(perf)
        if row["stage"] == "convert":
            row["backend"] = f"atc {as_dict(cfg.get('atc')).get('soc_version', '')}".strip()
            if error:
                row["atc"] = "failed"
        scores = _field(metrics, "metrics", f.metrics)
        for k in scores:
            if "/" not in k:
                row[f"metric:{k}"] = _number(scores, k, f.metrics)
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("@")))
    swept = [k[1:] for k in keys if len({str(r.get(k)) for r in rows}) > 1 or len(rows) == 1]
    return rows, swept


def _record(p: Path) -> dict | None:
    """:func:`read_json` of a job's record, with a warning naming a file that is there but is not a readable
    JSON object (the report reads it as missing)."""
    rec = read_json(p)
    if rec is None and (p.exists() or p.is_symlink()):
        log.warning("%s is not a readable JSON object: the sweep report reads it as missing", p)
    return rec


def _field(rec: dict, key: str, path: Path) -> dict:
    """``rec[key]`` of a job's record when it is a JSON object; missing or null, an empty one; of another type
    (``"latency_ms": "fast"``), an empty one and a warning naming the file and the key."""
    value = rec.get(key)
    if value is not None and not isinstance(value, dict):
        log.warning("%s: %r is not a JSON object: the sweep report reads it as missing", path, key)
    return as_dict(value)


def _number(rec: dict, key: str, path: Path) -> int | float | None:
    """``rec[key]``, a throughput, a time or a metric of a job's record, when it is a finite number; missing or null,
    None; of another type, NaN, an infinity (``1e400``) or an integer beyond the float range (``1`` and 400 zeros:
    no float, no plot, no decimals), None and a warning naming the file and the key (zoo writes no such number:
    an undefined metric is null)."""
    value = rec.get(key)
    if value is None or finite_number(value):
        return value
    log.warning("%s: %r is %s, not a finite number: the sweep report reads it as missing", path, key, shown(value))
    return None


def untimed_note(perf: dict) -> str:
    """Why a job whose ``perf.json`` timed no image has no throughput or latency."""
    resumed, skipped = perf.get("resumed_images") or 0, perf.get("skipped") or 0
    if resumed:
        why = f"all {resumed} images were resumed from an earlier run"
    elif skipped:
        why = f"all {skipped} images were skipped (on_error=skip)"
    else:
        why = "its share of the dataset holds no image (more shards than images)"
    return f"{why}: no throughput or latency measured"


def write_csv(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in cols})
    return buf.getvalue()


def decimals_for(values: list) -> int:
    """One number of decimals for a whole column: about 4 significant digits for its largest value."""
    nums = [abs(float(v)) for v in values if finite_number(v)]  # (an integer beyond the float range: not counted)
    if not nums or max(nums) == 0:
        return 2
    return min(4, max(1, 3 - math.floor(math.log10(max(nums)))))


def _md(v) -> str:
    """A markdown cell or note: ``|`` escaped, newlines flattened, control characters (an ESC from a job's
    ``error.json``) shown as escapes (:func:`zoo_core.printable.printable`): the report is printed and read."""
    return printable(str(v).replace("|", "\\|").replace("\n", " "))


def short_paths(paths: list[str]) -> dict[str, str]:
    """How to show each file so that different files look different: the file name when the names
    differ, else the path relative to the files' common directory."""
    paths = sorted({p for p in paths if p})
    names = {Path(p).name for p in paths}
    if len(names) == len(paths):
        return {p: Path(p).name for p in paths}
    try:
        common = os.path.commonpath(paths)
    except ValueError:
        return {p: p for p in paths}
    if common in paths:
        common = os.path.dirname(common)
    return {p: os.path.relpath(p, common) for p in paths}


def title_of(rows: list[dict], host: str | None = None) -> str:
    """``model · stage · backend · host`` of the jobs (several values joined by commas)."""
    def values(key: str) -> str:
        seen = list(dict.fromkeys(str(r[key]) for r in rows if r.get(key)))
        return ", ".join(seen) if seen else "?"

    hosts = list(dict.fromkeys(str(r["host"]) for r in rows if r.get("host"))) or [host or socket.gethostname()]
    return f"{values('model')} · {values('stage')} · {values('backend')} · host {', '.join(hosts)}"


def write_markdown(rows: list[dict], swept: list[str], title: str | None = None, stopped: str | None = None) -> str:
    """The report as Markdown: title, table, and as numbered notes the full text of every failure, the
    re-run command of every job without a result, and why a job has no timing. ``stopped``: why the
    launcher stopped the sweep before every job finished."""
    jobs = [r for r in rows if not str(r["job"]).startswith("merged")]
    merges = [r for r in rows if str(r["job"]).startswith("merged")]
    metric_cols = list(dict.fromkeys(k for r in rows for k in r if k.startswith("metric:")))[:MAX_MD_METRICS]
    cols = [f"@{k}" for k in swept] + ["status"]
    for c in ("throughput", "latency_mean_ms", "latency_p99_ms"):
        if any(r.get(c) is not None for r in rows):
            cols.append(c)
    cols += metric_cols
    if any(r.get("om_file") or r.get("atc") for r in rows):
        cols += ["om_file", "atc"]
    if any(r.get("model_file") for r in rows):
        cols.append("model_file")
    heads = [{"throughput": "throughput (img/s)", "latency_mean_ms": "latency mean (ms)",
              "latency_p99_ms": "latency p99 (ms)", "model_file": "model file", "om_file": "OM file",
              "atc": "ATC"}.get(c, c.lstrip("@").replace("metric:", "")) for c in cols]
    decimals = {c: 4 if c.startswith("metric:") else decimals_for([r.get(c) for r in rows]) for c in cols}
    files = short_paths([str(r[k]) for r in rows for k in ("model_file", "om_file") if r.get(k)])
    notes: list[str] = []
    lines = []
    if title:
        lines += [f"# Sweep report: {title}", ""]
    failed_jobs = sum(r["status"] == "failed" for r in jobs)
    undone = sum(r["status"] in ("no result", "not started") for r in jobs)
    summary = f"{len(jobs)} job{'s' * (len(jobs) != 1)} ({failed_jobs} failed" \
              + (f", {undone} without a result)" if undone else ")")
    if merges:
        summary += f", {len(merges)} shard merge{'s' * (len(merges) != 1)} " \
                   f"({sum(r['status'] == 'failed' for r in merges)} failed)"
    if stopped:
        lines += [f"**The sweep was stopped**: {_md(stopped).rstrip('.')}. Jobs without a result are listed below with "
                  "the command that re-runs each into this sweep.", ""]
    lines += [summary, "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [_md_cell(r, c, decimals[c], files) for c in cols]
        note = _row_note(r)
        if note:
            notes.append(f"{len(notes) + 1}. job `{r['job']}`: {_md(note)}")
            cells[cols.index("status")] = f"{r['status']} [{len(notes)}]"
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:" if any(r["status"] == "ok" and r.get("note") for r in rows) else "Failures:", "",
                  *notes]
    return printable("\n".join(lines)) + "\n"  # (a title or a column from a job's files: no control characters)


def _md_cell(r: dict, c: str, decimals: int, files: dict[str, str]) -> str:
    v = r.get(c)
    if v is None or v == "":
        return ""
    if c in ("model_file", "om_file"):
        sha = r.get("model_sha256") if c == "model_file" else None
        return _md(files.get(v, v) + (f" ({sha[:8]})" if sha else ""))
    if isinstance(v, float):
        return f"{v:.{decimals}f}"
    return _md(v)


def _row_note(r: dict) -> str | None:
    """The numbered note of a report row: a failure's error, a job without a result's re-run command,
    or why a job has no timing."""
    if r["status"] == "failed":
        return str(r.get("error") or "no error recorded")
    if r["status"] == "not started" and r.get("rerun"):
        return f"not started (the launcher stopped first). Run it: {r['rerun']}"
    if r["status"] != "ok" and r.get("rerun"):
        return f"no result (killed, or still running). Re-run it: {r['rerun']}"
    return str(r["note"]) if r.get("note") else None


def _series_label(r: dict, keys: list[str]) -> str:
    """The values of ``keys`` in row ``r`` (the keys themselves are named in the legend's title)."""
    return ", ".join(str(r.get("@" + k)) for k in keys)


def varying_keys(rows: list[dict], keys: list[str]) -> list[str]:
    """The ``keys`` that take more than one value among ``rows``."""
    return [k for k in keys if len({str(r.get("@" + k)) for r in rows}) > 1]


def accuracy_metric(rows: list[dict]) -> str | None:
    """The metric the Pareto plot uses: the first of :data:`ACCURACY_METRICS` the jobs have, else their first."""
    have = list(dict.fromkeys(k[len("metric:"):] for r in rows for k in r if k.startswith("metric:")))
    for m in ACCURACY_METRICS:
        if m in have:
            return m
    return have[0] if have else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def figure(rows: list[dict], swept: list[str], title: str | None = None):
    """The report's matplotlib figure: throughput (vs batch size when it was swept, else per job) and,
    when the jobs have both, accuracy vs throughput with the Pareto front; None when there is nothing
    to plot. Axes are labelled ``throughput`` / ``pareto`` (``ax.get_label()``)."""
    jobs = [r for r in rows if not str(r["job"]).startswith("merged") and r["status"] == "ok"]
    tp = [r for r in jobs if r.get("throughput") is not None]
    varying = [k for k in swept if k not in SPLIT_KEYS]
    metric = accuracy_metric(jobs)
    pareto = [r for r in tp if metric and r.get(f"metric:{metric}") is not None] if varying else []
    panels = (["throughput"] if tp else []) + (["pareto"] if pareto else [])
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo_core.reports.plotting import plain_text

    with plain_text():  # job labels, sweep values and metric names drawn as written, never as mathtext
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 4.2 * len(panels)), dpi=100, squeeze=False)
        for ax, panel in zip(axes[:, 0], panels):
            ax.set_label(panel)
            if panel == "throughput":
                _plot_throughput(ax, tp, swept)
            else:
                _plot_pareto(ax, pareto, varying, str(metric))
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return fig


def plot_png(rows: list[dict], swept: list[str], title: str | None = None) -> bytes | None:
    """:func:`figure` as PNG bytes (None when there is nothing to plot)."""
    fig = figure(rows, swept, title)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    from zoo_core.reports.plotting import plain_text

    buf = io.BytesIO()
    try:
        with plain_text():
            fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _plot_throughput(ax, rows: list[dict], swept: list[str]) -> None:
    sizes = sorted({int(r["@batch_size"]) for r in rows if r.get("@batch_size") is not None})
    if "batch_size" in swept and len(sizes) > 1 and all(r.get("@batch_size") is not None for r in rows):
        others = varying_keys(rows, [k for k in swept if k not in ("batch_size", *SPLIT_KEYS)])
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            series.setdefault(_series_label(r, others), []).append((int(r["@batch_size"]), float(r["throughput"])))
        for label, xy in sorted(series.items()):
            xy.sort()
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label or None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(x) for x in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        if others:
            ax.legend(fontsize=8, title=", ".join(others), title_fontsize=8)
        ax.set_title("throughput vs batch size", fontsize=9)
    else:
        keys = varying_keys(rows, [k for k in swept if k != "resume"])
        labels = [_series_label(r, keys) or r["job"] for r in rows]
        long = max(map(len, labels)) > 10
        ax.bar(range(len(rows)), [float(r["throughput"]) for r in rows], color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, rotation=30 if long else 0, ha="right" if long else "center",
                      fontsize=8)
        ax.set_xlabel(", ".join(keys) or "job")
        ax.set_title("throughput per job", fontsize=9)
    ax.set_ylabel("throughput (img/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)


def _plot_pareto(ax, rows: list[dict], keys: list[str], metric: str) -> None:
    keys = varying_keys(rows, keys)
    pts = [(float(r["throughput"]), float(r[f"metric:{metric}"])) for r in rows]
    front = pareto_front(pts)
    ax.scatter([x for x, _ in pts], [y for _, y in pts], color="tab:gray", zorder=2, label="job")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:red", marker="o", zorder=3,
            label="Pareto front")
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    for n, i in enumerate(order):  # alternate label offsets so that neighbours do not overlap
        ax.annotate(_series_label(rows[i], keys) or rows[i]["job"], pts[i], textcoords="offset points",
                    xytext=(4, 6 if n % 2 == 0 else -12), fontsize=7)
    top = max(y for _, y in pts)
    ax.set_xlim(0, max(x for x, _ in pts) * 1.2)
    ax.set_ylim(0, 1.08 if top <= 1 else top * 1.1)
    ax.set_xlabel("throughput (img/s)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs throughput, points labelled by {', '.join(keys) or 'job'} (upper right is better)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")


def build_report(sweep_dir: str | Path, stopped: str | None = None, planned: list[list[str]] | None = None) -> dict:
    """Write ``sweep_report.{csv,md,png}``, ``report.html`` (and shard merges) for ``sweep_dir``; returns a
    summary. ``stopped``: why the launcher stopped the sweep (said at the top of the report); ``planned``:
    the overrides of each of its jobs, by job number: a job without a dir is reported ``not started``,
    with the command that runs it. The callback at the end of a sweep, ``zoo run`` after a launcher
    stopped one, and ``python -m zoo_core.reports.sweep_report`` all build it here."""
    from zoo_core.api.atomic import write_bytes, write_text

    sweep_dir = Path(os.path.abspath(sweep_dir))  # re-run commands name it: absolute, wherever they run
    rows, swept = collect_rows(sweep_dir)
    if not rows:
        return {"jobs": 0, "failed": 0, "no_result": 0, "merges": 0, "failed_merges": 0, "report": None,
                "markdown": "", "merged": []}
    jobs = {f.root.name: f for f in sweep_jobs(sweep_dir)}
    write_manifest(sweep_dir, list(jobs.values()))  # what a later patch sweep adds its jobs to
    from zoo_core.reports.shard_merge import merge_shards, rerun_command

    for r in rows:
        if r["status"] == "no result":
            try:
                r["rerun"] = rerun_command(sweep_dir, jobs[r["job"]])
            except (OSError, ValueError) as exc:  # a job dir too damaged to read its overrides
                log.warning("no re-run command for job %s: %s", r["job"], exc)
    merged = merge_shards(sweep_dir, rows, swept)
    if planned and not is_patch_sweep(sweep_dir):
        rows = rows + not_started_rows(sweep_dir, rows, planned)
    all_rows = rows + merged
    title = title_of(rows)
    write_text(sweep_dir / "sweep_report.csv", write_csv(all_rows))
    md = write_markdown(all_rows, swept, title, stopped)
    from zoo_core.reports.plotting import draw_or_warn

    png = draw_or_warn(str(sweep_dir / "sweep_report.png"), lambda: plot_png(rows, swept, title))
    if png:
        write_bytes(sweep_dir / "sweep_report.png", png)
        md += "\n![sweep report](sweep_report.png)\n"
    else:
        (sweep_dir / "sweep_report.png").unlink(missing_ok=True)  # not a picture of an earlier state
    write_text(sweep_dir / "sweep_report.md", md)
    try:
        from zoo_core.reports.html import write_report

        write_report(sweep_dir)
    except Exception as exc:  # the report page must never fail the sweep
        log.warning("could not write %s: %s", sweep_dir / "report.html", exc)
    return {"jobs": len(rows), "failed": sum(r["status"] == "failed" for r in rows),
            "no_result": sum(r["status"] in ("no result", "not started") for r in rows),
            "merges": len(merged), "failed_merges": sum(r["status"] == "failed" for r in merged),
            "report": str(sweep_dir / "sweep_report.md"), "markdown": md, "merged": merged}


def not_started_rows(sweep_dir: Path, rows: list[dict], planned: list[list[str]]) -> list[dict]:
    """A ``not started`` row, with the command that runs it into the sweep, for each planned job without a
    job dir among ``rows`` (the launcher stopped before it)."""
    from zoo_core.reports.shard_merge import rerun_command

    have = {r["job"] for r in rows}
    template = next(f for f in sweep_jobs(sweep_dir) if f.root.name == rows[0]["job"])
    out = []
    for num, overrides in enumerate(planned):
        if str(num) in have:
            continue
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        out.append({"job": str(num), **{f"@{k}": v for k, v in values.items()}, "status": "not started",
                    "rerun": rerun_command(sweep_dir, template, job=str(num), resume=False, overrides=overrides)})
    return out


def _jsonable(value):
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return None


class SweepReport(Callback):
    """Writes each job's ``result.json`` in the job's process, and builds the sweep report in the
    launching process once every job has finished."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        from zoo_core.api.atomic import write_json
        from zoo_core.reports.job_files import job_files

        try:
            if config.hydra.mode != RunMode.MULTIRUN:
                return
            from zoo_core.runs.lock import RunDirInUse

            if job_return.status == JobStatus.FAILED and isinstance(getattr(job_return, "_return_value", None),
                                                                   RunDirInUse):
                return  # refused: the record dir is another run's, nothing of this job goes there
            value = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
            record = (_jsonable(value) if isinstance(value, dict) else None) or {}
            record.update(host=socket.gethostname(), pid=os.getpid())
            write_json(job_files(Path(str(config.hydra.runtime.output_dir)).parent, str(config.stage.name)).result,
                       record)
        except Exception as exc:  # a report detail must never fail the job
            log.warning("could not write the job's result.json: %s", exc)
        finally:
            from zoo_core.runs.lock import release_job_locks

            release_job_locks()  # the job's run root, locked when Hydra opened its log

    def on_multirun_start(self, config, **kwargs) -> None:
        """Take the sweep dir's lock (another sweep writing there: :class:`~zoo_core.runs.lock.RunDirInUse`
        before anything of this sweep is written) and refuse a ``multirun.yaml`` there that is a symbolic or
        hard link (the sweeper rewrites it in place next); remove the temp files a killed writer left there;
        empty the sweep's :data:`MANIFEST` unless this sweep re-runs chosen jobs of it; tell ``zoo run``
        (:data:`STATUS_ENV`) where the sweep writes and which launcher runs it, so that it can still build the
        report when the launcher raises and ``on_multirun_end`` never comes."""
        from zoo_core.api.errors import ZooError
        from zoo_core.runs.layout import refuse_linked_file
        from zoo_core.runs.lock import SWEEP_LOCK_NAME, RunDirInUse, RunLock, SweepRefused

        sweep_dir = Path(str(config.hydra.sweep.dir))
        lock = RunLock(sweep_dir, "sweep", name=SWEEP_LOCK_NAME)
        try:
            lock.acquire()
        except RunDirInUse as exc:
            raise SweepRefused(RunDirInUse(exc.root, exc.who, hint="another sweep is writing into this sweep dir; "
                               "nothing of this one was written: wait for it to finish, or pass another "
                               "hydra.sweep.dir=")) from None
        try:
            refuse_linked_file(sweep_dir / "multirun.yaml")
        except ZooError as exc:
            lock.release()
            raise SweepRefused(exc) from None
        self._sweep_lock = lock  # released at the end of on_multirun_end, or when this process exits
        from zoo_core.api.atomic import sweep_stale_temps

        # the temp files a killed sweep left here (sweep_jobs.json, sweep_report.*, report.html, multirun.yaml);
        # the job dirs' own are swept by their runs (before: nothing ever removed these)
        for p in sweep_stale_temps(sweep_dir, max_depth=1):
            log.info("removed %s, left by a killed sweep", p)
        try:
            from omegaconf import OmegaConf

            overrides = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)  # as typed
            if not _is_patch(overrides):  # a new sweep: the jobs listed earlier are not its own
                write_manifest(Path(str(config.hydra.sweep.dir)), None)
        except Exception as exc:  # a report detail must never stop the sweep
            log.warning("could not reset the sweep's %s: %s", MANIFEST, exc)
        status = os.environ.get(STATUS_ENV)
        if not status:
            return
        try:
            choices = config.hydra.runtime.choices
            write_status(Path(status), {"sweep_dir": str(config.hydra.sweep.dir),
                                        "launcher": str(choices.get("hydra/launcher") or "basic")})
        except Exception as exc:  # a report detail must never stop the sweep
            log.warning("could not record the sweep dir: %s", exc)

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            self._report(config)
        finally:
            lock = self.__dict__.pop("_sweep_lock", None)
            if lock is not None:
                lock.release()

    def _report(self, config) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        summary = build_report(sweep_dir)
        status = os.environ.get(STATUS_ENV)
        if not summary["jobs"]:  # never silent: the jobs wrote their records elsewhere (hydra.sweep.subdir=a/b/...)
            error = (f"{sweep_dir}: the sweep report found no job of this sweep (a job dir <n>/ with "
                     f"<stage>/.hydra/overrides.yaml written since the sweep started): no report written")
            if status:  # zoo run says it and exits 1
                write_status(Path(status), {**_read_status(Path(status)), "finished": True, "jobs": 0,
                                            "error": error})
            else:
                log.error(error)
            return
        if status:
            write_status(Path(status), {**_read_status(Path(status)), "finished": True,
                                        **{k: summary[k] if k != "report" else str(summary[k])
                                           for k in ("jobs", "failed", "merges", "failed_merges", "report")}})
        merges = (f", {summary['merges']} shard merge{'s' * (summary['merges'] != 1)} "
                  f"({summary['failed_merges']} failed)" if summary["merges"] else "")
        print(f"\nsweep report ({summary['jobs']} jobs, {summary['failed']} failed{merges}): {summary['report']}\n"
              f"{summary['markdown']}")


def _read_status(path: Path) -> dict[str, Any]:
    return read_json(path) or {}


def write_status(path: Path, status: dict[str, Any]) -> None:
    from zoo_core.api.atomic import write_json

    write_json(path, status)


def main(argv: list[str] | None = None) -> int:
    """``python -m zoo_core.reports.sweep_report <sweep dir>``: rebuild the report of a finished sweep."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m zoo_core.reports.sweep_report <sweep dir>  (e.g. multirun/<model>/<date_time>)"
    if len(args) != 1 or args[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    path = Path(args[0])
    if not path.is_dir():
        reason = "is a file, not a sweep directory" if path.exists() else "no such directory"
        print(f"error: {path}: {reason}; give the sweep dir that holds the job dirs 0/, 1/, ...\n{usage}",
              file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:  # run as a tool: warnings as zoo's console prints them ("warning: ...")
        from zoo_core.config.logging_filters import HideFileOnly
        from zoo_core.reports.logfmt import ConsoleFormatter

        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(ConsoleFormatter("%(message)s"))
        console.setLevel(logging.WARNING)  # (a shard merge logs its scoring at INFO to its merged/zoo.log)
        console.addFilter(HideFileOnly())
        logging.basicConfig(handlers=[console])
    summary = build_report(path)
    if not summary["jobs"]:
        print(f"error: {path}: no sweep jobs found (job dirs with <stage>/.hydra/overrides.yaml)", file=sys.stderr)
        return 2
    try:
        print(summary["markdown"], flush=True)
    except BrokenPipeError:  # piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if summary["failed"] or summary["failed_merges"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
