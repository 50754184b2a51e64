"""Hydra callback: at the end of a multirun, aggregate every job into one report at the sweep root.

Writes ``sweep_report.csv``, ``sweep_report.md`` (one row per job: swept values, status,
throughput, latency mean/p99, accuracy) and ``sweep_report.png`` (throughput vs batch size, one line
per combination of the other swept keys). A sweep over ``dataset.shard`` with ``stage=eval`` (or
``postprocess``) is also merged: the union of the shards' detections is scored once into
``merged/metrics.json`` and reported as a ``merged`` row. ``python -m zoo_core.reports.sweep_report <dir>``
rebuilds the report of a finished sweep (e.g. one whose jobs ran elsewhere).
Failed jobs (``error.json`` in their dir) appear as failed with their error, and ``zoo run`` exits 1.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("zoo")

#: Filled at multirun end: {"jobs", "failed", "report"} (read by the CLI for its exit code).
LAST_SWEEP: dict[str, Any] = {}

MAX_MD_METRICS = 4
MERGEABLE_STAGES = ("eval", "postprocess")


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job dirs, in job order; dirs left from an older sweep into the same dir are ignored."""
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").is_file()]
    started = sweep_dir / "multirun.yaml"
    if started.is_file():
        t0 = started.stat().st_mtime - 1.0
        dirs = [p for p in dirs if (p / ".hydra" / "overrides.yaml").stat().st_mtime >= t0]
    return sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else p.name))


def collect_rows(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """One row per job, and the keys whose values differ between jobs (the swept keys)."""
    import yaml

    rows = []
    for d in job_dirs(sweep_dir):
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        perf = _read_json(d / "perf.json") or {}
        metrics = _read_json(d / "metrics.json") or {}
        error = _read_json(d / "error.json")
        lat = perf.get("latency_ms") or perf.get("device_call_ms") or {}
        row = {
            "job": d.name,
            **{f"@{k}": v for k, v in values.items()},
            "status": "failed" if error else ("ok" if (perf or metrics) else "no result"),
            "throughput": perf.get("throughput", perf.get("throughput_img_s")),
            "latency_mean_ms": lat.get("mean"),
            "latency_p99_ms": lat.get("p99"),
            "model_file": perf.get("model_file"),
            "error": (error or {}).get("error"),
        }
        for k, v in (metrics.get("metrics") or {}).items():
            if "/" not in k:
                row[f"metric:{k}"] = v
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("@")))
    swept = [k[1:] for k in keys if len({str(r.get(k)) for r in rows}) > 1 or len(rows) == 1]
    return rows, swept


def write_csv(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in cols})
    return buf.getvalue()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def write_markdown(rows: list[dict], swept: list[str]) -> str:
    metric_cols = list(dict.fromkeys(k for r in rows for k in r if k.startswith("metric:")))[:MAX_MD_METRICS]
    cols = [f"@{k}" for k in swept] + ["status", "throughput", "latency_mean_ms", "latency_p99_ms"] + metric_cols
    if any(r.get("model_file") for r in rows):
        cols.append("model_file")
    heads = [c.lstrip("@").replace("metric:", "") for c in cols]
    heads = [{"throughput": "throughput (img/s)", "latency_mean_ms": "latency mean (ms)",
              "latency_p99_ms": "latency p99 (ms)", "model_file": "model file"}.get(h, h) for h in heads]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [_fmt(Path(str(r[c])).name if c == "model_file" and r.get(c) else r.get(c)) for c in cols]
        if r["status"] == "failed":
            cells[cols.index("status")] = f"failed: {_fmt(r.get('error'))[:200]}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_png(rows: list[dict], swept: list[str]) -> bytes | None:
    """Throughput vs batch size, one line per combination of the other swept keys."""
    pts = [r for r in rows if r.get("@batch_size") is not None and r.get("throughput") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in swept if k != "batch_size"]
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in pts:
        label = ", ".join(f"{k}={r.get('@' + k)}" for k in others) or "throughput"
        lines.setdefault(label, []).append((int(r["@batch_size"]), float(r["throughput"])))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, xy in sorted(lines.items()):
        xy.sort()
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (img/s)")
    ax.set_xscale("log", base=2)
    sizes = sorted({x for xy in lines.values() for x, _ in xy})
    ax.set_xticks(sizes, [str(x) for x in sizes])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _label(values: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def merge_shards(sweep_dir: Path, rows: list[dict], swept: list[str]) -> list[dict]:
    """Score the union of an ``eval`` sweep over ``dataset.shard``, once per combination of the other
    swept keys, into ``merged/`` (or ``merged/<key=value,...>/``). Returns one report row per merge.

    A merge needs every shard ``0..num_shards-1`` present and ok; otherwise its row is failed.
    """
    if "dataset.shard" not in swept:
        return []
    from omegaconf import OmegaConf

    dirs = {d.name: d for d in job_dirs(sweep_dir)}
    others = [k for k in swept if k != "dataset.shard"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_label({k: r.get("@" + k) for k in others}), []).append(r)
    merged_rows = []
    for label, members in groups.items():
        cfg = OmegaConf.load(dirs[members[0]["job"]] / ".hydra" / "config.yaml")
        if str(cfg.stage.name) not in MERGEABLE_STAGES:
            return []
        row = {"job": "merged" + (f"[{label}]" if label else ""),
               **{f"@{k}": members[0].get("@" + k) for k in others}, "@dataset.shard": "all"}
        n = int(cfg.dataset.get("num_shards", 1))
        shards = sorted(int(r["@dataset.shard"]) for r in members)
        bad = [r["job"] for r in members if r["status"] != "ok"]
        if bad:
            merged_rows.append({**row, "status": "failed", "error": f"not merged: shard job(s) {', '.join(bad)} failed"})
            continue
        if shards != list(range(n)):
            merged_rows.append({**row, "status": "failed",
                                "error": f"not merged: shards {shards} do not cover dataset.num_shards={n}"})
            continue
        out_dir = sweep_dir / "merged" / label if label else sweep_dir / "merged"
        try:
            record = score_union(cfg, [dirs[r["job"]] for r in members], out_dir)
        except Exception as exc:
            log.error("merging shards failed: %s", exc)
            merged_rows.append({**row, "status": "failed", "error": f"merge failed: {exc}"})
            continue
        row.update(status="ok", images=record["images"])
        row.update({f"metric:{k}": v for k, v in record["metrics"].items() if "/" not in k})
        merged_rows.append(row)
    return merged_rows


def score_union(cfg, shard_dirs: list[Path], out_dir: Path) -> dict:
    """Score the detections of all ``shard_dirs`` as one unsharded run in ``out_dir``."""
    from omegaconf import open_dict

    from zoo_core.runs.context import RunContext
    from zoo_core.runs.detstore import DetectionStore
    from zoo_core.plugins.manager import ZooPluginManager
    from zoo_core.stages.scoring import score

    with open_dict(cfg):
        cfg.dataset.shard = 0
        cfg.dataset.num_shards = 1
    detections: dict = {}
    skipped: list = []
    for d in shard_dirs:
        part = DetectionStore(d / "detections").load()
        overlap = set(part) & set(detections)
        if overlap:
            raise ValueError(f"shards overlap on {len(overlap)} image(s), e.g. {sorted(overlap)[0]}")
        detections.update(part)
        skipped += (_read_json(d / "metrics.json") or {}).get("skipped", [])
    ctx = RunContext(cfg, ZooPluginManager(), out_dir)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    return score(ctx, detections, skipped, {"merged_from": [str(d) for d in shard_dirs]})


def build_report(sweep_dir: str | Path) -> dict:
    """Write ``sweep_report.{csv,md,png}`` (and shard merges) for ``sweep_dir``; returns a summary."""
    from zoo_core.api.atomic import write_bytes, write_text

    sweep_dir = Path(sweep_dir)
    rows, swept = collect_rows(sweep_dir)
    if not rows:
        return {"jobs": 0, "failed": 0, "report": None, "markdown": "", "merged": []}
    merged = merge_shards(sweep_dir, rows, swept)
    all_rows = rows + merged
    write_text(sweep_dir / "sweep_report.csv", write_csv(all_rows))
    md = write_markdown(all_rows, swept)
    write_text(sweep_dir / "sweep_report.md", md)
    png = plot_png(rows, swept)
    if png:
        write_bytes(sweep_dir / "sweep_report.png", png)
    failed = [r for r in all_rows if r["status"] == "failed"]
    return {"jobs": len(all_rows), "failed": len(failed), "report": str(sweep_dir / "sweep_report.md"),
            "markdown": md, "merged": merged}


class SweepReport(Callback):
    """Builds the sweep report in the launching process once every job has finished."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        summary = build_report(sweep_dir)
        if not summary["jobs"]:
            return
        LAST_SWEEP.update(jobs=summary["jobs"], failed=summary["failed"], report=summary["report"])
        merges = len(summary["merged"])
        print(f"\nsweep report ({summary['jobs'] - merges} jobs, {merges} shard merges, {summary['failed']} failed): "
              f"{summary['report']}\n{summary['markdown']}")


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
    summary = build_report(path)
    if not summary["jobs"]:
        print(f"error: {path}: no sweep jobs found (job dirs with .hydra/overrides.yaml)", file=sys.stderr)
        return 2
    print(summary["markdown"])
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
