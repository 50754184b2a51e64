"""The default reporter: prints each stage's summary when it finishes (``zoo_stage_finished``).

Stages never print; they return a summary dict and this plugin (registered by the core in every
plugin manager, like a third-party observer would be) turns it into a few lines on stdout.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from zoo_core import hookimpl


def _metrics_lines(model: str, result: dict[str, Any], record_dir: Path) -> list[str]:
    head = f"{model} on {result.get('dataset', '')} ({result.get('images', 0)} images"
    if result.get("skipped"):
        head += f", {len(result['skipped'])} skipped"
    lines = [head + "):"]
    for k, v in (result.get("metrics") or {}).items():
        if "/" not in k:
            lines.append(f"  {k:<12} {'n/a' if v is None else format(v, '.4f')}")
    for k, v in (result.get("info") or {}).items():
        if isinstance(v, (str, int, float)):
            lines.append(f"  ({k}: {v})")
    if result.get("outputs_dir"):
        lines.append(f"  (outputs from {result['outputs_dir']}; "
                     f"file suffixes start at _{result.get('output_suffix_base')})")
    from zoo_core.runs.references import verdict_lines

    lines.extend(verdict_lines(result))
    lines.append(f"  -> {record_dir / 'metrics.json'}")
    return lines


def _gear_lines(result: dict[str, Any]) -> list[str]:
    gears = result.get("image_size_gears")
    if not gears:
        return []
    where = result.get("gears_file") or "one size: a fixed-size OM, no gear plan"
    line = (f"  image-size gears: {len(gears)} ({'; '.join(f'{h}x{w}' for h, w in gears[:8])}"
            f"{'; ...' if len(gears) > 8 else ''}) -> {where}")
    pad = (f"  {result['padded_images']} of {result['images']} images padded up to a larger gear (up to "
           f"{result['max_extra_rows']} rows / {result['max_extra_cols']} columns, "
           f"{100 * result['mean_extra_pixels']:.1f}% more pixels on average)") if result.get("padded_images") else ""
    return [line, pad] if pad else [line]


def format_summary(model: str, stage: str, record_dir: Path, result: dict[str, Any]) -> list[str]:
    """The lines printed for one finished stage."""
    if stage == "compare":
        from zoo_core.compare.report import summary_lines

        return summary_lines(result, record_dir)
    if "metrics" in result:
        return _metrics_lines(model, result, record_dir)
    if stage == "perf":
        lat = result["latency_ms"]
        return [f"{model} perf, backend {result.get('backend', {}).get('backend')}, batch {result['batch_size']}: "
                f"mean {lat['mean']:.2f} ms, median {lat['median']:.2f} ms, p99 {lat['p99']:.2f} ms, "
                f"throughput {result['throughput']:.2f} img/s", f"  -> {record_dir / 'perf.json'}"]
    if stage == "preprocess":
        return [f"preprocessed {result['images']} images ({result.get('resumed_images', 0)} already done, "
                f"{len(result.get('skipped', []))} skipped) -> {result['inputs_dir']}"]
    if stage == "infer":
        done = f", {result['resumed_images']} already done" if result.get("resumed_images") else ""
        return [f"inferred {result['images']} images -> {result['outputs_dir']} "
                f"({result['perf'].get('throughput_img_s')} img/s{done})", f"  -> {record_dir / 'perf.json'}"]
    if stage == "export":
        keys = (result.get("fingerprint") or {}).get("model_config") or {}
        shape = ", ".join(f"{k}={v}" for k, v in keys.items())
        return [f"exported {model} for {result['target']}: {result['onnx']}",
                f"  inputs {result['input_names']} outputs {result['output_names']}",
                f"  export keys (changing one re-exports): {shape or '(none declared)'}"]
    if stage == "convert":
        gears = _gear_lines(result)
        if not result.get("converted"):
            return [f"{result['reason']}.", *gears, f"The exact command was written to {result['script']}:",
                    f"  {shlex.join(result['argv'])}"]
        return [f"converted {result['onnx']} -> {result['om']}", *gears]
    if stage == "postprocess" and not result.get("scored", True):
        skipped = f", {len(result['skipped'])} skipped" if result.get("skipped") else ""
        return [f"decoded {result['images']} images{skipped} (not scored) -> {result['written']}"]
    if stage == "quantize":
        if result.get("target") == "ascend":
            if not result.get("quantized"):
                return [f"{result['reason']}.", f"The exact command was written to {result['script']}:",
                        f"  {shlex.join(result['argv'])}"]
            return [f"AMCT quantized {model} on {result['calibration']['images']} images -> {result['deploy_model']}"]
        cal = result["calibration"]
        return [f"quantized {model} to INT8 ({result['fingerprint']['quantize']['method']} calibration on "
                f"{cal['images']} images): {result['onnx']}",
                f"  {result['bytes']:,} bytes ({100 * result['size_ratio']:.1f}% of the FP32 model); "
                f"FP32 nodes kept: {', '.join(f'{k} x{v}' for k, v in result['fp32_nodes'].items()) or 'none'}"]
    if stage == "predict":
        lines = [f"{p['image']}: {p['detections']} detections -> {p['picture']}" for p in result["predictions"]]
        return [*lines, f"  -> {result['predictions_dir']}"]
    return [f"{stage} finished -> {record_dir}"]


class TerminalReporter:
    """Prints a stage's summary on stdout."""

    @hookimpl
    def zoo_stage_finished(self, cfg: Any, stage: str, run_dir: Path, result: dict[str, Any]) -> None:
        from zoo_core.printable import printable

        # (a path or a value from a plugin's result: no control character reaches the terminal)
        print(printable("\n".join(format_summary(str(cfg.model.name), stage, Path(run_dir), result))), flush=True)
        sys.stdout.flush()
