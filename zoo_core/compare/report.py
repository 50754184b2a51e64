"""compare.json, compare.md, compare.png and the terminal lines of a compare run."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

#: compare.json schema version (keys are only ever added).
SCHEMA = 1


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _g(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.{digits + 1}g}"
    return str(v)


def _near(v: Any, limit: Any) -> str:
    """``v`` as :func:`_g` prints it, or every digit when that would print the same as ``limit`` (a max abs
    of 3.5683 beyond an atol of 3.568 is not shown as "3.568" next to "atol 3.568")."""
    text = _g(v)
    if isinstance(v, float) and isinstance(limit, (int, float)) and text == _g(float(limit)) and v != limit:
        return repr(v)
    return text


def _pct(share: float) -> str:
    """A share of elements as a percentage that is not 0 unless none is beyond (``0.00038%``, ``1.25%``)."""
    return f"{share:.2%}" if share >= 1e-4 or share == 0 else f"{share * 100:.2g}%"


def _count(o: dict[str, Any]) -> str:
    """``1 of 262,144 values (0.00038%)`` beyond tolerance (the share alone in a record without the count)."""
    pct = _pct(o["beyond_tolerance"])
    if o.get("beyond_count") is None or not o.get("elements"):
        return f"{pct} of values"
    return f"{o['beyond_count']:,} of {o['elements']:,} values ({pct})"


def _tol(v: Any) -> str:
    """A tolerance as given (every digit: ``atol 3.5683`` is not ``3.568``)."""
    return repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _f4(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _cos(v: Any) -> str:
    """Six decimals; a cosine below 1 that would print as 1.000000 (a scaled layer) as ``1-1.8e-07``."""
    if v is None:
        return "n/a"
    text = f"{v:.6f}"
    return f"1-{1.0 - v:.1e}" if text == "1.000000" and v < 1.0 else text


def side_label(side: dict[str, Any]) -> str:
    """``onnxruntime (model/x.onnx)``, ``torch (weights ckpt.pth)``..."""
    name = side.get("backend", "?")
    if side.get("model_file"):
        return f"{name} ({side['model_file']})"
    if side.get("dir"):
        return f"{name} (dump {side['dir']})"
    if side.get("weights"):
        return f"{name} (weights {side['weights']})"
    return f"{name} ({side.get('note', 'default weights')})" if name in ("torch", "oracle") else name


def verdict_line(result: dict[str, Any]) -> str:
    tol = result["tolerance"]
    word = "PASSED" if result["passed"] else "NOT PASSED"
    return (f"{word} (atol {_tol(tol['atol'])}, rtol {_tol(tol['rtol'])} of max |reference|, "
            f"min cosine {tol['min_cosine']})")


def failure_reasons(result: dict[str, Any]) -> list[str]:
    """One phrase per output beyond tolerance (what ``passed: false`` is about)."""
    tol = result["tolerance"]
    out = []
    for name, o in result["outputs"].items():
        if o["passed"]:
            continue
        why = []
        if o["beyond_tolerance"] > 0:
            why.append(f"{_count(o)} beyond atol + rtol*max|ref| "
                       f"(max abs {_near(o['max_abs'], tol['atol'])}, max rel {_near(o['max_rel'], tol['rtol'])})")
        if o["cosine"] is not None and o["cosine"] < tol["min_cosine"]:
            why.append(f"cosine {_cos(o['cosine'])} < {tol['min_cosine']}")
        out.append(f"output {name}: " + "; ".join(why or ["failed"]))
    if not result["outputs"]:
        out.append("no image was compared")
    return out


def _shifts(d: dict[str, Any]) -> str:
    """How far the matched detections moved; with none matched, no shift was measured (not 0)."""
    if not d["matched"] or d.get("max_box_shift") is None:
        return "largest box shift and score change n/a (no detections matched)"
    return f"largest box shift {_g(d['max_box_shift'])} px, largest score change {_g(d['max_score_change'])}"


def _unmatched(lay: dict[str, Any]) -> str:
    """`` (3 reference tensors unmatched)`` or nothing (records without the key: nothing)."""
    um = lay.get("unmatched") or {}
    return f" ({um['count']} {um['side']} {um['what']} unmatched)" if um.get("count") else ""


def _first_text(lay: dict[str, Any], bold: bool = False) -> str:
    """The first divergent layer in words: which op differs, and the unmatched layers before it."""
    first = lay["first_divergent"]
    if first is None:
        text = "none beyond tolerance"
    else:
        name = f"**{first['name']}**" if bold else first["name"]
        op = f"op differs ({first['op_differs']}); " if first.get("op_differs") else ""
        n = first.get("unmatched_before") or 0
        text = (f"first divergent{' among matched layers' if n else ''}: {name} ({op}max abs {_g(first['max_abs'])}, "
                f"max rel {_g(first['max_rel'])}, cosine {_cos(first['cosine'])})")
        if n:
            names = first.get("unmatched_before_layers") or []
            shown = ", ".join(names[:5]) + (f", ... ({n - 5} more in compare.json)" if n > 5 else "")
            text += f"; {n} unmatched layer{'s' if n != 1 else ''} before it: {shown}"
    if lay.get("op_differs"):
        text += (f"; {lay['op_differs']} beyond tolerance where the int8 quantizer fused a Relu/Clip into the op "
                 f"before it (not counted)")
    return text


def summary_lines(result: dict[str, Any], record_dir: Path | None = None) -> list[str]:
    """The few lines the terminal reporter prints for a compare run."""
    lines = [f"{result['model']} compare on {result['dataset']} ({result['images']} images"
             + (f", {len(result['skipped'])} skipped" if result.get("skipped") else "") + "):",
             f"  reference  {side_label(result['reference'])}",
             f"  candidate  {side_label(result['candidate'])}",
             f"  {'output':<12} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'beyond':>8}"]
    for name, o in result["outputs"].items():
        lines.append(f"  {name:<12} {_g(o['max_abs']):>10} {_g(o['max_rel']):>10} {_cos(o['cosine']):>10} "
                     f"{_pct(o['beyond_tolerance']):>8}  {'ok' if o['passed'] else 'BEYOND TOLERANCE'}")
    d = result.get("detections")
    if d:
        lines.append(f"  detections: {d['matched']} matched of {d['reference']} / {d['candidate']} "
                     f"(match rate {d['match_rate']:.4f}), {_shifts(d)}")
    m = result.get("metrics")
    if m:
        for k, ref in m["reference"].items():
            if "/" not in k:
                cand, delta = m["candidate"].get(k), m["delta"].get(k)
                lines.append(f"  {k:<12} reference {_f4(ref)}, candidate {_f4(cand)} "
                             f"(delta {'n/a' if delta is None else format(delta, '+.4f')})")
    lay = result.get("layers")
    if lay:
        lines.append(f"  layers: {lay['compared']} of {lay['matched']} matched layers compared{_unmatched(lay)}, "
                     f"{_first_text(lay)}" + (f" [{lay['note']}]" if lay.get("note") else ""))
    lines.append("  " + verdict_line(result))
    if record_dir is not None:
        lines.append(f"  -> {Path(record_dir) / 'compare.md'}")
    return lines


def markdown(result: dict[str, Any], plot: str | None) -> str:  # noqa: C901 (one section after another)
    """The human-readable report."""
    tol = result["tolerance"]
    ref, cand = result["reference"], result["candidate"]
    out = [f"# compare: {result['model']} on {result['dataset']}", "",
           f"**{verdict_line(result)}**", ""]
    reasons = failure_reasons(result)
    if not result["passed"]:
        out += [f"- {r}" for r in reasons] + [""]
    out += ["| side | backend | model | ms per image |", "|---|---|---|---|"]
    for label, s in (("reference", ref), ("candidate", cand)):
        ms = s.get("ms_per_image")
        out.append(f"| {label} | {s.get('backend')} | {side_label(s).partition(' (')[2].rstrip(')') or '-'} | "
                   f"{'-' if ms is None else f'{ms:.1f}'} |")
    out += ["", f"{result['images']} images, the same preprocessed arrays through both sides. An element is beyond "
            f"tolerance when |candidate - reference| > atol + rtol * max|reference| (of that output on that image, "
            f"atol {_tol(tol['atol'])}, rtol {_tol(tol['rtol'])}); an output passes when no element is and its cosine "
            f"is at least {tol['min_cosine']} on every image.", "", "## Outputs", "",
            "| output | shape | max abs | max rel | cosine (lowest) | beyond tolerance | worst image | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for name, o in result["outputs"].items():
        shape = "x".join(map(str, o["shape"])) if o["shape"] is not None else "varies"
        out.append(f"| {name} | {shape} | {_g(o['max_abs'])} | {_g(o['max_rel'])} | "
                   f"{_cos(o['cosine'])} | {_count(o)} | {o['worst_image']} | "
                   f"{'ok' if o['passed'] else '**beyond tolerance**'} |")
    d = result.get("detections")
    if d:
        out += ["", f"## Detections (same class, IoU >= {d['iou']})", "",
                f"{d['matched']} matched of {d['reference']} reference / {d['candidate']} candidate detections "
                f"(match rate {d['match_rate']:.4f}); {d['images_fully_matched']} of {result['images']} images fully "
                f"matched; {_shifts(d)}."]
        for k, v in (d.get("max_extras_change") or {}).items():
            out[-1] += f" Largest {k} change {_g(v)} px."
        rows = sorted(d.get("per_image", []), key=lambda r: (r["matched"] - max(r["reference"], r["candidate"]),
                                                             -(r["max_box_shift"] or 0.0)))[:20]
        if rows:
            out += ["", "| image | reference | candidate | matched | largest box shift (px) | largest score change |",
                    "|---|---|---|---|---|---|"]
            out += [f"| {r['id']} | {r['reference']} | {r['candidate']} | {r['matched']} | {_g(r['max_box_shift'])} | "
                    f"{_g(r['max_score_change'])} |" for r in rows]
            if len(d.get("per_image", [])) > len(rows):
                out.append(f"\n(the {len(rows)} least matched images; all of them in compare.json)")
    m = result.get("metrics")
    if m:
        out += ["", "## Metrics on the ground truth", "", "| metric | reference | candidate | delta |",
                "|---|---|---|---|"]
        for k, v in m["reference"].items():
            delta = m["delta"].get(k)
            out.append(f"| {k} | {_f4(v)} | {_f4(m['candidate'].get(k))} | "
                       f"{'n/a' if delta is None else format(delta, '+.4f')} |")
    elif result.get("metrics_note"):
        out += ["", "## Metrics on the ground truth", "", result["metrics_note"]]
    lay = result.get("layers")
    if lay:
        first = lay["first_divergent"]
        text = _first_text(lay, bold=True)
        out += ["", "## Layers", "",
                f"{lay['matched']} layers matched ({lay['reference']} reference, {lay['candidate']} candidate)"
                f"{_unmatched(lay)}, compared on {', '.join(lay['images'])}, in graph order; "
                f"{text[0].upper() + text[1:]}."]
        if lay.get("note"):
            out += ["", lay["note"]]
        um = lay.get("unmatched") or {}
        if um.get("count"):
            names = [u["name"] for u in um["layers"]]
            out += ["", f"Unmatched {um['side']} {um['what']} (no counterpart on the other side, not compared; "
                        f"graph order): " + ", ".join(names[:50])
                    + (f", ... ({len(names) - 50} more in compare.json)" if len(names) > 50 else "") + "."]
        out += ["", "| # | layer | op | max abs | max rel | cosine | verdict |", "|---|---|---|---|---|---|---|"]
        for r in lay["rows"]:
            i = r["order"]
            name = r["name"] + (f" (+ {r['folded']} folded)" if r.get("folded") else "")
            name += f" (+ fused {', '.join(r['fused'])})" if r.get("fused") else ""
            if r["status"] == "shape":
                out.append(f"| {i} | {name} | {r['op'] or ''} | | | | shapes differ: {r['reference_shape']} vs "
                           f"{r['candidate_shape']} |")
                continue
            verdict = "ok" if r["status"] == "ok" else "**diverged**"
            if first is not None and r["name"] == first["name"] and r["order"] == first["order"]:
                verdict = "**first divergent**"
            if r.get("quantizer_fused"):  # the quantizer's Relu/Clip removal: never the first divergent
                verdict = (f"{verdict if r['status'] == 'ok' else 'beyond tolerance'}, op differs: "
                           f"{r['op_differs']} (Relu/Clip fused by the int8 quantizer)")
            elif r.get("op_differs"):
                verdict += f", op differs ({r['op_differs']})"
            out.append(f"| {i} | {name} | {r['op'] or ''} | {_g(r['max_abs'])} | {_g(r['max_rel'])} | "
                       f"{_cos(r['cosine'])} | {verdict} |")
    if plot:
        out += ["", f"![candidate vs reference]({plot})"]
    return "\n".join(out) + "\n"


def plot(path: Path, samples: dict[str, list[tuple[np.ndarray, np.ndarray]]], result: dict[str, Any]) -> bool:
    """compare.png: candidate against reference for a sample of each output's values, and (with layers)
    max rel / 1 - cosine per layer in graph order. Returns False when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    import io

    from zoo_core.api.atomic import write_bytes
    from zoo_core.reports.plotting import plain_text

    with plain_text():  # output and layer names come from the model file: drawn as written, never as mathtext
        names = [n for n in result["outputs"] if n in samples]
        layers = (result.get("layers") or {}).get("rows") or []
        cols = max(len(names), 1)
        rows = 2 if layers else 1
        fig = Figure(figsize=(max(3.2 * cols, 8), 3.4 * rows), dpi=110)
        FigureCanvasAgg(fig)
        for i, name in enumerate(names):
            ax = fig.add_subplot(rows, cols, i + 1)
            r = np.concatenate([a for a, _ in samples[name]])
            c = np.concatenate([b for _, b in samples[name]])
            ax.scatter(r, c, s=2, alpha=0.4, linewidths=0)
            lo, hi = float(min(r.min(), c.min())), float(max(r.max(), c.max()))
            ax.plot([lo, hi], [lo, hi], lw=0.6, color="0.6", zorder=0)
            o = result["outputs"][name]
            ax.set_title(f"{name}: max rel {_g(o['max_rel'])}, cos {_cos(o['cosine'])}", fontsize=8)
            ax.set_xlabel("reference", fontsize=8)
            ax.set_ylabel("candidate", fontsize=8)
            ax.tick_params(labelsize=7)
        if layers:
            ax = fig.add_subplot(rows, 1, 2)
            tol = result["tolerance"]
            floor = 1e-12
            idx = [i for i, r in enumerate(layers) if r["status"] != "shape"]
            rel = [max(layers[i]["max_rel"] or floor, floor) for i in idx]
            cos = [max(1.0 - (layers[i]["cosine"] if layers[i]["cosine"] is not None else 0.0), floor) for i in idx]
            ax.semilogy(idx, rel, ".-", lw=0.8, ms=3, label="max rel")
            ax.semilogy(idx, cos, ".-", lw=0.8, ms=3, label="1 - cosine")
            ax.axhline(max(tol["rtol"], floor), ls="--", lw=0.8, color="C0")
            ax.axhline(max(1 - tol["min_cosine"], floor), ls=":", lw=0.8, color="C1")
            first = result["layers"]["first_divergent"]
            if first is not None:
                k = next(i for i, r in enumerate(layers) if r["name"] == first["name"] and r["order"] == first["order"])
                ax.axvline(k, color="r", lw=0.8)
                ax.annotate(first["name"], (k, ax.get_ylim()[1]), fontsize=7, color="r", ha="left", va="top")
            ax.set_xlabel("layer (graph order)", fontsize=8)
            ax.legend(fontsize=7)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())
    return True
