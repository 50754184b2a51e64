"""``report.html``: one self-contained page per run (or stage record dir) and per sweep.

:func:`render_run_report` reads what a stage wrote in its record dir: ``metrics.json`` (metrics, their
95% intervals ``"ci95"`` and reference verdicts ``"reference"`` when present, info, skipped items),
``perf.json`` (throughput, latency, per-image cost by pipeline part), ``run.json`` (config, versions,
input files) and every ``*.png`` (PR curves, ...). :func:`render_sweep_report` reads a sweep dir's
``sweep_report.csv`` / ``.md`` / ``.png``. Pictures are embedded as ``data:`` URIs and the style is
inline, so the file can be mailed or archived alone; there is no script. Every file is optional: a
missing one leaves its section out; so does an unreadable one (not JSON, not an object, not a regular file), with
a warning naming it.

``python -m zoo_core.reports.html <dir>`` writes ``<dir>/report.html`` (a sweep dir or a record dir).
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoo_core.api.checkpoint import MAX_RECORD_BYTES, read_at_most
from zoo_core.api.errors import ZooError
from zoo_core.json_numbers import finite_number, shown

#: perf.json keys shown as the per-image cost of each part of the streaming pipeline, in pipeline order.
PERF_PARTS = (("host_preprocess_ms_per_img", "decode + preprocess"), ("device_ms_per_img", "inference"),
              ("postprocess_ms_per_img", "postprocess"))
MAX_PLOTS = 12
#: The most bytes of one ``*.png`` embedded (zoo's charts take < 1 MB); a larger one is left out with a warning.
MAX_PNG_BYTES = 32 << 20

log = logging.getLogger("zoo")

CSS = """
:root { --fg:#1d2330; --muted:#5d6778; --line:#e3e7ee; --bg:#f6f8fb; --card:#fff; --accent:#2f6fde;
        --ok:#1e8e3e; --okbg:#e6f4ea; --bad:#c5221f; --badbg:#fce8e6; --warn:#a56300; --warnbg:#fef3e0; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.5 -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, sans-serif; }
main { max-width:1120px; margin:0 auto; padding:24px 20px 40px; }
header { margin-bottom:18px; }
h1 { font-size:24px; margin:0 0 4px; font-weight:650; }
h1 .tag { font-size:13px; font-weight:600; color:var(--accent); background:#e8f0fe; border-radius:10px;
          padding:2px 9px; vertical-align:middle; margin-left:6px; }
h2 { font-size:16px; margin:0 0 10px; font-weight:650; }
.sub { color:var(--muted); margin:0; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px 18px;
          margin:0 0 16px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(170px, 1fr)); gap:12px; margin:0 0 16px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:24px; font-weight:650; font-variant-numeric:tabular-nums; margin-top:2px; }
.card .u { font-size:13px; color:var(--muted); font-weight:500; }
.card .s { font-size:12.5px; color:var(--muted); font-variant-numeric:tabular-nums; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
table.kv, table.metrics { width:auto; min-width:min(100%, 560px); } table.kv td.num { text-align:left; }
table.metrics td:first-child { min-width:180px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.03em;
     background:#fafbfd; }
th.num { text-align:right; }
td.num { text-align:right; font-family:ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; white-space:nowrap; }
tbody tr:nth-child(even) td { background:#fbfcfe; }
code, pre, .mono { font-family:ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size:12.5px; }
pre { background:#f3f5f9; border:1px solid var(--line); border-radius:8px; padding:12px; overflow:auto;
      max-height:520px; margin:8px 0 0; }
.badge { display:inline-block; border-radius:10px; padding:1px 9px; font-size:12px; font-weight:600; }
.ok { color:var(--ok); background:var(--okbg); } .bad { color:var(--bad); background:var(--badbg); }
.warn { color:var(--warn); background:var(--warnbg); } .muted { color:var(--muted); }
figure { margin:0; } figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
figcaption { color:var(--muted); font-size:12px; margin-top:4px; }
.plots { display:grid; grid-template-columns:repeat(auto-fill, minmax(420px, 1fr)); gap:16px; }
.stack { display:flex; height:26px; border-radius:6px; overflow:hidden; margin:6px 0 8px; background:#eef1f6; }
.stack div { color:#fff; font-size:12px; line-height:26px; padding:0 8px; white-space:nowrap; overflow:hidden; }
.legend span { display:inline-block; margin-right:16px; color:var(--muted); font-size:12.5px; }
.legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:5px; }
.bar { background:#e8f0fe; border-radius:3px; height:8px; min-width:1px; }
details summary { cursor:pointer; color:var(--accent); font-weight:600; margin:4px 0; }
.grid2 { display:grid; grid-template-columns:repeat(auto-fill, minmax(330px, 1fr)); gap:0 24px; }
footer { color:var(--muted); font-size:12px; margin-top:8px; }
a { color:var(--accent); }
"""
PART_COLORS = ("#5b8def", "#2f6fde", "#7b61d9", "#f29d38")


# -- small helpers ---------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


#: The sections of a record file the run page reads, and their JSON types (absent or null is fine).
_SECTIONS: dict[str, dict[str, type]] = {
    "metrics.json": {"metrics": dict, "info": dict, "reference": dict, "ci95": dict, "null_metrics": dict,
                     "skipped": list},
    "run.json": {"config": dict, "versions": dict, "inputs": dict},
}


def _read_json(path: Path) -> dict | None:
    """A record file as a JSON object (``None`` when absent or unreadable); a :class:`ZooError` naming it when a
    section the page reads has another type (``"metrics": [...]``). A FIFO or a device is left unopened (absent); a
    file over :data:`~zoo_core.api.checkpoint.MAX_RECORD_BYTES` is left unread (absent), with a warning."""
    if not path.is_file():
        if path.exists():
            log.warning("%s: not a regular file; the report leaves it out unopened", path)
        return None
    try:
        data = json.loads(read_at_most(path, MAX_RECORD_BYTES, "record file"))
    except ZooError as exc:
        log.warning("%s; the report leaves it out", exc)
        return None
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s: not readable as JSON (%s); the report leaves it out", path, first[:200])
        return None
    if not isinstance(data, dict):
        log.warning("%s: a JSON %s, not the object zoo writes; the report leaves it out", path, type(data).__name__)
        return None
    for key, kind in _SECTIONS.get(path.name, {}).items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise ZooError(f"{key!r} is a {type(data[key]).__name__}, not a JSON "
                           f"{'object' if kind is dict else 'list'} as zoo writes it", path=path)
    return data


def _section(d: dict, key: str) -> dict:
    """``d[key]`` when it is a JSON object, else ``{}``."""
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def fmt_number(value: Any, trim: bool = False) -> str:
    """Numbers as a reader wants them: 4 decimals below 10, 2 below 10 000, none above; thousands separated.

    ``trim`` drops trailing zeros (``0.5`` rather than ``0.5000``) for settings, where the digits mean nothing.
    An integer beyond the float range (a hand-edited record) is shown as its first digits and its length.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if finite_number(value) else shown(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) < 10:
            text = f"{value:.4f}"
        elif abs(value) < 10000:
            text = f"{value:,.2f}"
        else:
            text = f"{value:,.0f}"
        if trim and "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    return str(value)


def fmt_measure(value: Any) -> str:
    """A throughput or a time: 2 decimals, none from 10 000 up (not a finite number: as :func:`fmt_number`)."""
    if not finite_number(value):
        return fmt_number(value)
    return f"{value:,.2f}" if abs(value) < 10000 else f"{value:,.0f}"


def _num_cell(value: Any, trim: bool = False) -> str:
    return f'<td class="num">{_e(fmt_number(value, trim))}</td>'


def _png_data_uri(path: Path) -> str | None:
    if not path.is_file():  # a FIFO named x.png would block the read forever; a directory, a device: no picture
        return None
    try:
        data = read_at_most(path, MAX_PNG_BYTES, "picture")
    except ZooError as exc:
        log.warning("%s; the report leaves it out", exc)
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(path: Path, caption: str) -> str:
    uri = _png_data_uri(path)
    if uri is None:
        return ""
    return (f'<figure><img src="{uri}" alt="{_e(path.name)}" loading="eager">'
            f'<figcaption>{_e(caption)}</figcaption></figure>')


def _when(paths: Iterable[Path]) -> str:
    times = [p.stat().st_mtime for p in paths if p.is_file()]
    if not times:
        return ""
    return _dt.datetime.fromtimestamp(max(times)).strftime("%Y-%m-%d %H:%M")


def _page(title: str, body: str, footer: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><style>{CSS}</style></head>\n'
            f'<body><main>\n{body}\n<footer>{footer}</footer></main></body></html>\n')


def _kv_table(items: Iterable[tuple[str, Any]], key_head: str = "key", value_head: str = "value") -> str:
    rows = []
    for k, v in items:
        if (isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None:
            cell = _num_cell(v, trim=True)
        elif isinstance(v, (list, dict)):
            cell = f'<td class="mono">{_e(json.dumps(v))}</td>'
        else:
            cell = f"<td>{_e(v)}</td>"
        rows.append(f"<tr><td>{_e(k)}</td>{cell}</tr>")
    if not rows:
        return ""
    return (f'<table class="kv"><thead><tr><th>{_e(key_head)}</th><th>{_e(value_head)}</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


# -- run report ------------------------------------------------------------------------------------

def _verdict(ref: dict | None) -> str:
    if not isinstance(ref, dict):
        return '<td class="muted">—</td>'
    within = ref.get("within")
    if within is True:
        return '<td><span class="badge ok">✓ within</span></td>'
    if within is False:
        return '<td><span class="badge bad">✗ outside</span></td>'
    note = ref.get("note") or ref.get("reason") or "not compared"
    return f'<td><span class="badge warn">{_e(note)}</span></td>'


def _reference_cell(ref: dict | None) -> str:
    if not isinstance(ref, dict) or ref.get("expected") is None:
        return '<td class="num muted">—</td>'
    tol = ref.get("tolerance")
    text = fmt_number(ref["expected"]) + (f" ± {fmt_number(tol, trim=True)}" if tol is not None else "")
    return f'<td class="num">{_e(text)}</td>'


def _metrics_section(metrics: dict) -> str:
    values = metrics.get("metrics") or {}
    refs = metrics.get("reference") or {}
    ci = metrics.get("ci95") or {}
    main = [(k, v) for k, v in values.items() if "/" not in k]
    per_class = [(k, v) for k, v in values.items() if "/" in k]
    has_ref, has_ci = bool(refs), bool(ci)
    heads = ["metric", "value"] + (["95% interval"] if has_ci else []) + (["reference", "verdict", "source"]
                                                                          if has_ref else [])
    rows = []
    for k, v in main:
        cells = [f"<td><b>{_e(k)}</b></td>", _num_cell(v)]
        if has_ci:
            lo_hi = ci.get(k)
            cells.append(f'<td class="num">{_e(fmt_number(lo_hi[0]))} \u2013 {_e(fmt_number(lo_hi[1]))}</td>'
                         if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2 else '<td class="num muted">—</td>')
        if has_ref:
            ref = refs.get(k)
            cells += [_reference_cell(ref), _verdict(ref),
                      f'<td class="muted">{_e((ref or {}).get("source", "")) if isinstance(ref, dict) else ""}</td>']
        rows.append(f"<tr>{''.join(cells)}</tr>")
    th = "".join(f'<th class="num">{_e(h)}</th>' if h in ("value", "95% interval", "reference") else f"<th>{_e(h)}</th>"
                 for h in heads)
    parts = [f'<section id="metrics"><h2>Metrics</h2>'
             f'<table class="metrics"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>']
    if per_class:
        top = max([abs(float(v)) for _, v in per_class if finite_number(v)] or [1.0]) or 1.0
        cells = []
        for k, v in per_class:
            width = max(0.0, float(v)) / top * 100 if finite_number(v) else 0
            cells.append(f'<tr><td>{_e(k.split("/", 1)[1])}</td>{_num_cell(v)}'
                         f'<td style="width:40%"><div class="bar" style="width:{width:.1f}%"></div></td></tr>')
        group = per_class[0][0].split("/", 1)[0]
        half = (len(cells) + 1) // 2
        tables = "".join(f'<table><tbody>{"".join(c)}</tbody></table>' for c in (cells[:half], cells[half:]) if c)
        parts.append(f'<details><summary>{_e(group)} per class ({len(per_class)})</summary>'
                     f'<div class="grid2">{tables}</div></details>')
    info = metrics.get("info") or {}
    if info:
        parts.append(f'<details open><summary>evaluation details</summary>{_kv_table(info.items())}</details>')
    skipped = metrics.get("skipped") or []
    if skipped:
        items = "".join(f"<li class=mono>{_e(s if isinstance(s, str) else json.dumps(s))}</li>" for s in skipped[:200])
        more = f"<li>… {len(skipped) - 200} more</li>" if len(skipped) > 200 else ""
        parts.append(f'<details open><summary><span class="badge warn">{len(skipped)} skipped</span></summary>'
                     f"<ul>{items}{more}</ul></details>")
    parts.append("</section>")
    return "".join(parts)


def _perf_numbers(perf: dict) -> tuple[Any, dict]:
    throughput = perf.get("throughput", perf.get("throughput_img_s"))
    latency = perf.get("latency_ms") or perf.get("device_call_ms") or {}
    return throughput, latency if isinstance(latency, dict) else {}


def _perf_section(perf: dict) -> str:
    parts = ['<section id="performance"><h2>Performance</h2>']
    parts_ms = [(label, float(perf[key])) for key, label in PERF_PARTS if finite_number(perf.get(key))]
    total = sum(v for _, v in parts_ms)
    if parts_ms and total > 0:
        segs, legend = [], []
        for (label, v), color in zip(parts_ms, PART_COLORS):
            pct = v / total * 100
            segs.append(f'<div style="width:{pct:.2f}%;background:{color}" title="{_e(label)}: {v:.2f} ms">'
                        f"{_e(label) if pct > 12 else ''}</div>")
            legend.append(f'<span><i style="background:{color}"></i>{_e(label)} {_e(fmt_measure(v))} ms/img</span>')
        parts.append(f'<p class="muted">Cost per image by part of the pipeline (the parts run concurrently, '
                     f'so the slowest one sets the pace):</p><div class="stack">{"".join(segs)}</div>'
                     f'<div class="legend">{"".join(legend)}</div>')
    table = _kv_table(_flatten(perf))
    parts.append(f"<details{' open' if not parts_ms else ''}><summary>all timings</summary>{table}</details></section>")
    return "".join(parts)


def _cards(metrics: dict | None, perf: dict | None) -> str:
    cards = []
    refs = (metrics or {}).get("reference") or {}
    for k, v in list(((metrics or {}).get("metrics") or {}).items()):
        if "/" in k:
            continue
        ref = refs.get(k) if isinstance(refs, dict) else None
        badge = ""
        if isinstance(ref, dict) and ref.get("within") is not None:
            badge = ('<span class="badge ok">✓</span>' if ref["within"] else '<span class="badge bad">✗</span>')
        cards.append(f'<div class="card"><div class="k">{_e(k)}</div>'
                     f'<div class="v">{_e(fmt_number(v))} {badge}</div></div>')
        if len(cards) == 4:
            break
    if perf:
        throughput, latency = _perf_numbers(perf)
        if throughput is not None:
            cards.append(f'<div class="card"><div class="k">throughput</div>'
                         f'<div class="v">{_e(fmt_measure(throughput))} <span class="u">img/s</span></div></div>')
        if latency.get("mean") is not None:
            p99 = (f'<div class="s">p99 {_e(fmt_measure(latency["p99"]))} ms</div>'
                   if latency.get("p99") is not None else "")
            cards.append(f'<div class="card"><div class="k">latency mean</div><div class="v">'
                         f'{_e(fmt_measure(latency["mean"]))} <span class="u">ms</span></div>{p99}</div>')
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _config_yaml(config: dict) -> str:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.create(config))
    except Exception:
        return json.dumps(config, indent=2)


def _inputs_table(inputs: dict) -> str:
    rows = []
    for name, rec in inputs.items():
        for r in rec if isinstance(rec, list) else [rec]:
            if not isinstance(r, dict):
                continue
            sha = str(r.get("sha256") or "")  # (a hand-edited record: any JSON value)
            rows.append(f'<tr><td>{_e(name)}</td><td class="mono" title="{_e(r.get("path", ""))}">'
                        f'{_e(r.get("path", ""))}</td>{_num_cell(r.get("bytes"))}'
                        f'<td class="mono" title="{_e(sha)}">{_e(sha[:12])}</td></tr>')
    if not rows:
        return ""
    return ('<table><thead><tr><th>input</th><th>path</th><th class="num">bytes</th><th>sha256</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def render_run_report(record_dir: str | Path) -> str:
    """The HTML page of one stage run, from the files in ``record_dir`` (each optional).

    :raises FileNotFoundError: ``record_dir`` holds none of metrics.json, perf.json, run.json.
    :raises ZooError: those it holds are all unreadable (each was named in a warning).
    """
    d = Path(record_dir)
    names = ("metrics.json", "perf.json", "run.json")
    metrics, perf, run = (_read_json(d / n) for n in names)
    if metrics is None and perf is None and run is None:
        there = [n for n in names if (d / n).exists() or (d / n).is_symlink()]
        if there:
            raise ZooError(f"{' and '.join(there)} {'is' if len(there) == 1 else 'are'} not readable (the warnings "
                           "above say why): nothing to report", path=d)
        raise FileNotFoundError(f"{d}: no metrics.json, perf.json or run.json to report")
    run = run or {}
    config = run.get("config") or {}
    model = (metrics or {}).get("model") or run.get("model") or _section(config, "model").get("name") or "?"
    stage = (metrics or {}).get("stage") or run.get("stage") or (perf or {}).get("stage") or \
        _section(config, "stage").get("name") or ""
    dataset = (metrics or {}).get("dataset") or _section(config, "dataset").get("name")
    facts = []
    if dataset and dataset != "none":
        facts.append(f"dataset <b>{_e(dataset)}</b>")
    images = (metrics or {}).get("images", (perf or {}).get("images"))
    if images is not None:
        facts.append(f"{_e(fmt_number(images))} images")
    backend = (perf or {}).get("backend") or _section(config, "backend").get("name")
    if backend:
        facts.append(f"backend <b>{_e(backend)}</b>")
    batch = (perf or {}).get("batch_size", config.get("batch_size"))
    if batch is not None:
        facts.append(f"batch {_e(batch)}")
    when = _when(d / n for n in ("metrics.json", "perf.json", "run.json"))
    if when:
        facts.append(_e(when))
    body = [f'<header><h1>{_e(model)}<span class="tag">{_e(stage)}</span></h1>'
            f'<p class="sub">{" · ".join(facts)}</p></header>', _cards(metrics, perf)]
    if metrics and (metrics.get("metrics") or metrics.get("info")):
        body.append(_metrics_section(metrics))
    plots = sorted(d.glob("*.png"))[:MAX_PLOTS]
    figures = [f for f in (_figure(p, p.stem.replace("_", " ")) for p in plots) if f]
    if figures:
        body.append(f'<section id="plots"><h2>Plots</h2><div class="plots">{"".join(figures)}</div></section>')
    if perf:
        body.append(_perf_section(perf))
    versions = run.get("versions") or {}
    if versions:
        body.append(f'<section id="versions"><h2>Versions</h2>{_kv_table(versions.items(), "package", "version")}'
                    f"</section>")
    inputs = _inputs_table(run.get("inputs") or {})
    if inputs:
        body.append(f'<section id="inputs"><h2>Inputs</h2>{inputs}</section>')
    if config:
        body.append(f'<section id="config"><h2>Configuration</h2><details><summary>resolved config</summary>'
                    f"<pre>{_e(_config_yaml(config))}</pre></details></section>")
    title = f"zoo · {model} · {stage}" + (f" · {dataset}" if dataset and dataset != "none" else "")
    return _page(title, "\n".join(b for b in body if b), _footer(d))


def _footer(d: Path) -> str:
    from zoo_core import __version__

    return f"zoo-core {_e(__version__)} · <span class=mono>{_e(d.resolve())}</span>"


# -- sweep report ----------------------------------------------------------------------------------

#: Column headings of the sweep CSV's known columns.
SWEEP_HEADS = {"job": "job", "status": "status", "throughput": "throughput (img/s)",
               "latency_mean_ms": "latency mean (ms)", "latency_p99_ms": "latency p99 (ms)",
               "model_file": "model file", "error": "error", "images": "images"}


def column_decimals(values: Iterable[Any]) -> int | None:
    """One number of decimals for a whole column, from its largest magnitude (4 below 10, 2 below 10 000, else 0)."""
    values = list(values)
    nums = [abs(float(v)) for v in values if finite_number(v)]  # (an integer beyond the float range: not counted)
    if not nums or all(isinstance(v, int) for v in values if v is not None):
        return None
    top = max(nums)
    return 4 if top < 10 else 2 if top < 10000 else 0


def _csv_value(text: str) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _job_link(sweep: Path, job: str) -> str | None:
    """The relative URL (``./3/eval/report.html``) of the page of the job in the CSV's ``job`` cell, or None. Each
    path part is percent-encoded and the URL starts with ``./``, so a folder name is never read as a URL scheme
    (``javascript:...``); a job that is an absolute path or climbs out of the sweep dir (``..``) gets no link and a
    warning."""
    parts = Path(job).parts
    if not parts:
        return None
    if Path(job).is_absolute() or ".." in parts:
        log.warning("%s: job %r is not a folder of the sweep dir; the report does not link it",
                    sweep / "sweep_report.csv", job)
        return None
    for cand in [sweep / job / "report.html", *sorted((sweep / job).glob("*/report.html"))]:
        if cand.is_file():
            return "./" + "/".join(urllib.parse.quote(os.fsencode(part)) for part in cand.relative_to(sweep).parts)
    return None


def _markdown_notes(md: str) -> str:
    """The sweep markdown's title and notes (its table is rendered from the CSV)."""
    out = []
    for line in md.splitlines():
        s = line.strip()
        if not s or s.startswith("|"):
            continue
        if s.startswith("#"):
            continue  # the page has its own title
        out.append(f"<p class=muted>{_e(s.lstrip('*-> ').strip())}</p>")
    return "".join(out)


def _sweep_notes(md: Path) -> str:
    """The text of ``sweep_report.md``; an empty one and a warning naming it when it cannot be read (not a regular
    file, too large, not UTF-8): the page then has no notes, its table comes from the CSV."""
    try:
        return read_at_most(md, MAX_RECORD_BYTES, "sweep report").decode("utf-8")
    except UnicodeDecodeError as exc:
        log.warning("%s: not UTF-8 text (byte %#04x at offset %d); the report leaves its notes out", md,
                    exc.object[exc.start], exc.start)
    except ZooError as exc:
        log.warning("%s; the report leaves its notes out", exc)
    return ""


def render_sweep_report(sweep_dir: str | Path) -> str:
    """The HTML page of a sweep: its jobs table (from ``sweep_report.csv``), notes and plot.

    :raises FileNotFoundError: ``sweep_dir`` has no ``sweep_report.csv``.
    """
    d = Path(sweep_dir)
    csv_path = d / "sweep_report.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{d}: no sweep_report.csv (is this a sweep dir whose report was built?)")
    try:
        text = read_at_most(csv_path, MAX_RECORD_BYTES, "sweep report").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ZooError(f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}), not the CSV zoo "
                       f"writes", path=csv_path,
                       hint=f"rebuild it: python -m zoo_core.reports.sweep_report {d}") from None
    rows = [{k: _csv_value(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text, newline=""))]
    cols = list(rows[0]) if rows else []
    constant = {c: rows[0][c] for c in cols if c.startswith("@") and len({str(r.get(c)) for r in rows}) == 1
                and len(rows) > 1}
    shown = [c for c in cols if c not in constant and not (c == "error" and not any(r.get("error") for r in rows))]
    heads = []
    for c in shown:
        name = SWEEP_HEADS.get(c, c[1:] if c.startswith("@") else c.replace("metric:", ""))
        numeric = any(isinstance(r.get(c), (int, float)) for r in rows) and c not in ("job",) and not c.startswith("@")
        heads.append((c, name, numeric, column_decimals(r.get(c) for r in rows) if numeric else None))
    body_rows = []
    for r in rows:
        cells = []
        for c, _, numeric, decimals in heads:
            v = r.get(c)
            if c == "job":
                link = _job_link(d, str(v))
                cells.append(f'<td><a href="{_e(link)}">{_e(v)}</a></td>' if link else f"<td>{_e(v)}</td>")
            elif c == "status":
                cls = {"ok": "ok", "failed": "bad"}.get(str(v), "warn")
                cells.append(f'<td><span class="badge {cls}">{_e(v)}</span></td>')
            elif c == "model_file" and v:
                cells.append(f'<td class="mono" title="{_e(v)}">{_e(Path(str(v)).name)}</td>')
            elif c == "error" and v:
                cells.append(f'<td class="mono" style="white-space:pre-wrap">{_e(v)}</td>')
            elif numeric and decimals is not None and isinstance(v, (int, float)) and finite_number(v):
                cells.append(f'<td class="num">{float(v):,.{decimals}f}</td>')
            elif numeric:
                cells.append(_num_cell(v))
            else:
                cells.append(f"<td>{_e('—' if v is None else v)}</td>")
        body_rows.append(f"<tr>{''.join(cells)}</tr>")
    th = "".join(f'<th class="num">{_e(n)}</th>' if num else f"<th>{_e(n)}</th>" for _, n, num, _ in heads)
    failed = sum(1 for r in rows if r.get("status") == "failed")
    merged = sum(1 for r in rows if str(r.get("job", "")).startswith("merged"))
    jobs = len(rows) - merged
    model = constant.get("@model") or next((r.get("@model") for r in rows if r.get("@model")), None)
    stage = constant.get("@stage") or next((r.get("@stage") for r in rows if r.get("@stage")), None)
    title = "sweep" + (f" · {model}" if model else "") + (f" · {stage}" if stage else "")
    facts = [f"{jobs} jobs"] + ([f"{merged} shard merges"] if merged else []) + \
        [f'<span class="badge {"bad" if failed else "ok"}">{failed} failed</span>']
    facts += [f"{_e(k[1:])} <b>{_e(v)}</b>" for k, v in constant.items() if k not in ("@model", "@stage")]
    when = _when([csv_path])
    if when:
        facts.append(_e(when))
    body = [f'<header><h1>{_e(model or "sweep")}<span class="tag">{_e(stage or "sweep")}</span>'
            f'<span class="tag">sweep</span></h1><p class="sub">{" · ".join(facts)}</p></header>']
    md = d / "sweep_report.md"
    notes = _markdown_notes(_sweep_notes(md)) if md.is_file() else ""
    body.append(f'<section id="jobs"><h2>Jobs</h2>{notes}<div style="overflow-x:auto"><table><thead><tr>{th}</tr>'
                f'</thead><tbody>{"".join(body_rows)}</tbody></table></div></section>')
    fig = _figure(d / "sweep_report.png", "sweep_report.png")
    if fig:
        body.append(f'<section id="plots"><h2>Plot</h2>{fig}</section>')
    return _page(f"zoo · {title}", "\n".join(body), _footer(d))


# -- files -----------------------------------------------------------------------------------------

def write_report(directory: str | Path) -> Path:
    """Write ``report.html`` into ``directory``: the sweep page if it has ``sweep_report.csv``, else the run page."""
    from zoo_core.api.atomic import write_text

    d = Path(directory)
    page = render_sweep_report(d) if (d / "sweep_report.csv").is_file() else render_run_report(d)
    return write_text(d / "report.html", page)


def main(argv: list[str] | None = None) -> int:
    """``python -m zoo_core.reports.html <dir>``: write ``<dir>/report.html``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m zoo_core.reports.html <sweep dir or run record dir>", file=sys.stderr)
        return 2
    d = Path(args[0])
    if not d.is_dir():
        print(f"error: {d}: no such directory", file=sys.stderr)
        return 2
    try:
        print(write_report(d))
    except (FileNotFoundError, ZooError) as exc:
        from zoo_core.printable import printable

        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
