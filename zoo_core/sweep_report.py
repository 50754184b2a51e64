"""Hydra callback: at the end of a multirun, aggregate every job into one report at the sweep root.

Writes ``sweep_report.csv``, ``sweep_report.md`` (one row per job: swept values, status,
throughput, latency mean/p99, accuracy) and ``sweep_report.png`` (throughput vs batch size, one line
per combination of the other swept keys). A sweep over ``dataset.shard`` with ``stage=eval`` is also
merged: the union of the shards' detections is scored once into ``merged/metrics.json``.
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


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").is_file()]
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
    keys = sorted({k for r in rows for k in r if k.startswith("@")})
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
    heads = [c.lstrip("@").replace("metric:", "") for c in cols]
    heads = [{"throughput": "throughput (img/s)", "latency_mean_ms": "latency mean (ms)",
              "latency_p99_ms": "latency p99 (ms)"}.get(h, h) for h in heads]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [_fmt(r.get(c)) for c in cols]
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
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def merge_shards(sweep_dir: Path, rows: list[dict], swept: list[str]) -> dict | None:
    """Score the union of an ``eval`` sweep over ``dataset.shard`` as one run in ``merged/``."""
    if "dataset.shard" not in swept:
        return None
    from omegaconf import OmegaConf, open_dict

    from .context import RunContext
    from .detstore import DetectionStore
    from .plugins import ZooPluginManager
    from .stages.scoring import score

    dirs = job_dirs(sweep_dir)
    cfg = OmegaConf.load(dirs[0] / ".hydra" / "config.yaml")
    if str(cfg.stage.name) not in ("eval", "postprocess"):
        return None
    if any(r["status"] != "ok" for r in rows):
        log.error("not merging shards: some shard jobs failed")
        return None
    with open_dict(cfg):
        cfg.dataset.shard = 0
        cfg.dataset.num_shards = 1
    detections = {}
    skipped = []
    for d in dirs:
        detections.update(DetectionStore(d / "detections").load())
        skipped += (_read_json(d / "metrics.json") or {}).get("skipped", [])
    ctx = RunContext(cfg, ZooPluginManager(), sweep_dir / "merged")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    record = score(ctx, detections, skipped, {"merged_from": [d.name for d in dirs]})
    return record


class SweepReport(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from .atomic import write_bytes, write_text

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        rows, swept = collect_rows(sweep_dir)
        if not rows:
            return
        merged = None
        try:
            merged = merge_shards(sweep_dir, rows, swept)
        except Exception as exc:
            log.error("merging shards failed: %s", exc)
            rows.append({"job": "merged", "status": "failed", "error": str(exc)})
        write_text(sweep_dir / "sweep_report.csv", write_csv(rows))
        md = write_markdown(rows, swept)
        if merged:
            md += "\nMerged shards: " + ", ".join(
                f"{k} {v:.4f}" for k, v in merged["metrics"].items() if "/" not in k) + "\n"
        write_text(sweep_dir / "sweep_report.md", md)
        png = plot_png(rows, swept)
        if png:
            write_bytes(sweep_dir / "sweep_report.png", png)
        failed = sum(r["status"] == "failed" for r in rows)
        LAST_SWEEP.update(jobs=len(rows), failed=failed, report=str(sweep_dir / "sweep_report.md"))
        print(f"\nsweep report ({len(rows)} jobs, {failed} failed): {sweep_dir / 'sweep_report.md'}\n{md}")
