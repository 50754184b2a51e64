"""Compare a scored run with the references its plugin declares (hook ``references``).

For each declared :class:`~zoo_core.api.types.Reference` the run is either

* **about something else**: a ``subject`` key (variant, dataset, backend) differs: ignored;
* a **match**: every protocol key has the reference's value: the metric gets a verdict,
  ``{"expected", "tolerance", "source", "within", "measured", "delta", "protocol"}`` (+ ``"in_ci95"`` with
  ``bootstrap``), written to ``metrics.json["reference"][<metric>]``;
* a **protocol mismatch**: the subject agrees but another protocol key differs (IoU 0.5 against a 0.4
  reference), or only part of the dataset was scored (``dataset.limit``, one shard, another number of images
  than the reference's ``images``): listed in
  ``metrics.json["reference_mismatches"]`` with the differing keys, never compared.

When several references of one metric match, the one naming the most protocol keys wins (an Ascend OM
number declared with ``backend.name: acl`` over the PyTorch number on an ``acl`` run); the others are kept
under ``"also"``. Mismatches are reported only for metrics without a match.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from zoo_core.api.types import Reference

_UNSET = object()


def config_value(cfg: Any, key: str) -> Any:
    """The run's value of a dotted config key, ``_UNSET`` when the key is not in the configuration."""
    v = OmegaConf.select(cfg, key, default=_UNSET, throw_on_missing=False)
    if v is _UNSET:
        return _UNSET
    if isinstance(v, enum.Enum):  # a typed plugin schema's enum field compares as the YAML value
        return v.value
    return OmegaConf.to_container(v, resolve=True, enum_to_str=True) if OmegaConf.is_config(v) else v


def same_value(run: Any, ref: Any) -> bool:
    """Numbers compare as numbers (``0.4 == 0.40000001`` within 1e-9); everything else exactly."""
    numeric = (int, float)
    if isinstance(run, numeric) and isinstance(ref, numeric) and not isinstance(run, bool) \
            and not isinstance(ref, bool):
        return math.isclose(float(run), float(ref), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(run, (list, tuple)) and isinstance(ref, (list, tuple)):
        return len(run) == len(ref) and all(same_value(a, b) for a, b in zip(run, ref))
    return type(run) is type(ref) and run == ref


def comparable(run: Any, ref: Any) -> bool:
    """Whether :func:`same_value` can ever hold for a run value of ``run``'s type and ``ref``: numbers with
    numbers (bool is not a number), lists with lists (item by item), anything else with its own type; a
    ``None`` on either side can (a key that may be unset)."""
    if run is None or ref is None:
        return True
    numeric = (int, float)
    if isinstance(run, numeric) and isinstance(ref, numeric):
        return isinstance(run, bool) == isinstance(ref, bool)
    if isinstance(run, (list, tuple)) and isinstance(ref, (list, tuple)):
        return all(comparable(a, b) for a, b in zip(run, ref))
    return type(run) is type(ref)


def _shown(v: Any) -> Any:
    return "<not set>" if v is _UNSET else v


def _run_value(cfg: Any, key: str, made_by: str | None) -> Any:
    """The run's value of ``key``; ``backend.name`` is ``made_by`` when given (the backend that made the
    scored outputs, when another stage made them)."""
    return made_by if key == "backend.name" and made_by is not None else config_value(cfg, key)


def _differences(cfg: Any, ref: Reference, made_by: str | None = None) -> tuple[dict[str, dict], bool]:
    """``({key: {"reference", "run"}}, about_this_run)`` for the protocol keys that differ."""
    diffs: dict[str, dict] = {}
    about = True
    for key, want in ref.protocol.items():
        have = _run_value(cfg, key, made_by)
        if have is _UNSET or not same_value(have, want):
            diffs[key] = {"reference": want, "run": _shown(have)}
            if key in ref.subject:
                about = False
    return diffs, about


#: Implicit protocol of every reference: the whole dataset was scored (no ``dataset.limit``, no single shard),
#: unless the reference names these keys itself; and a model's outputs were scored, not ``backend=oracle``'s
#: encoded ground truth, unless the reference names ``backend.name``.
WHOLE_DATASET = {"dataset.limit": None, "dataset.num_shards": 1}


def _subset(cfg: Any, ref: Reference, made_by: str | None = None, images: int | None = None) -> dict[str, dict]:
    diffs: dict[str, dict] = {}
    if ref.images is not None and images is not None and images != ref.images:
        diffs["images"] = {"reference": ref.images, "run": images}
    for key, want in WHOLE_DATASET.items():
        if key in ref.protocol:
            continue
        have = config_value(cfg, key)
        if have is not _UNSET and not same_value(have, want):
            diffs[key] = {"reference": want, "run": have}
    if "backend.name" not in ref.protocol and _run_value(cfg, "backend.name", made_by) == "oracle":
        # the oracle encodes the ground truth: it reproduces no model's number unless the reference says so
        diffs["backend.name"] = {"reference": "a model's outputs (not named)", "run": "oracle"}
    return diffs


def judge(cfg: Any, refs: Sequence[Reference], metrics: Mapping[str, float | None],
          ci95: Mapping[str, Sequence[float | None]] | None = None,
          made_by: str | None = None, images: int | None = None) -> tuple[dict[str, dict], list[dict]]:
    """``(verdicts by metric, protocol mismatches)`` of a run scored ``metrics`` under ``cfg``.

    A run that scored part of the dataset (``dataset.limit``, one shard of several) is a protocol mismatch
    for every reference that does not name those keys itself. ``made_by``: the backend that made the scored
    outputs when not this run's ``backend`` (``evaluate`` of saved detections, ``postprocess`` of a dump):
    it stands for ``backend.name``, so ``backend=oracle`` detections are judged as ``eval`` judged them.
    ``images``: the number of images scored, checked against a reference's ``images``.
    """
    matched: dict[str, list[Reference]] = {}
    mismatched: dict[str, list[tuple[Reference, dict]]] = {}
    for ref in refs:
        diffs, about = _differences(cfg, ref, made_by)
        if about:
            diffs.update(_subset(cfg, ref, made_by, images))
        if not diffs:
            matched.setdefault(ref.metric, []).append(ref)
        elif about:
            mismatched.setdefault(ref.metric, []).append((ref, diffs))
    verdicts = {}
    for metric, cands in matched.items():
        best = max(cands, key=lambda r: len(r.protocol))  # max keeps the first of equals
        v = _verdict(best, metrics.get(metric, None), metric in metrics, (ci95 or {}).get(metric))
        others = [r for r in cands if r is not best]
        if others:
            v["also"] = [r.as_dict() for r in others]
        verdicts[metric] = v
    mismatches = []
    for metric, items in mismatched.items():
        if metric in matched:
            continue
        for ref, diffs in items:
            mismatches.append({**ref.as_dict(), "measured": metrics.get(metric), "differs": diffs})
    return verdicts, mismatches


def _verdict(ref: Reference, measured: float | None, reported: bool,
             ci: Sequence[float | None] | None) -> dict[str, Any]:
    v: dict[str, Any] = {"expected": float(ref.expected), "tolerance": float(ref.tolerance), "source": ref.source,
                         "protocol": dict(ref.protocol)}
    if ref.note:
        v["note"] = ref.note
    if measured is None:
        v.update(measured=None, delta=None, within=False,
                 why="the evaluator did not report this metric" if not reported else "the metric is undefined (null)")
        return v
    delta = float(measured) - float(ref.expected)
    v.update(measured=float(measured), delta=delta, within=bool(abs(delta) <= ref.tolerance + 1e-12))
    if ci is not None and ci[0] is not None and ci[1] is not None:
        v["in_ci95"] = bool(float(ci[0]) <= ref.expected <= float(ci[1]))
    return v


def gate_failures(verdicts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per matched reference the run does not reproduce (out of tolerance, or outside the interval)."""
    out = []
    for metric, v in verdicts.items():
        if not v["within"]:
            if v["measured"] is None:
                out.append(f"{metric}: {v.get('why')} (reference {v['expected']:.4f})")
            else:
                d = _digits(v["delta"], v["tolerance"])
                out.append(f"{metric}: measured {v['measured']:.{d}f}, reference {v['expected']:.{d}f} "
                           f"± {v['tolerance']:g}: off by {v['delta']:+.{d}f}")
        elif v.get("in_ci95") is False:
            out.append(f"{metric}: reference {v['expected']:.4f} lies outside the 95% interval of the measured "
                       f"{v['measured']:.4f}")
    return out


def _fmt(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else format(v, f".{digits}f")


def _digits(delta: float, tolerance: float) -> int:
    """Decimals to print a verdict's numbers with: 4, or more while the rounded |delta| equals the rounded
    tolerance (0.00499 and 0.00501 both print 0.0050 against ± 0.005), so the verdict shows in the numbers."""
    d = 4
    while d < 12 and abs(abs(delta) - tolerance) > 1e-12 and round(abs(delta), d) == round(tolerance, d):
        d += 1
    return d


def verdict_lines(record: Mapping[str, Any]) -> list[str]:
    """The terminal lines for ``metrics.json``'s ``reference`` / ``reference_mismatches`` / ``ci95``."""
    lines = []
    verdicts = record.get("reference") or {}
    by_source: dict[str, list[str]] = {}
    for metric, v in verdicts.items():
        by_source.setdefault(v["source"], []).append(metric)
    for source, names in by_source.items():
        lines.append(f"  reference: {source}")
        for metric in names:
            v = verdicts[metric]
            if v["measured"] is None:
                lines.append(f"    {metric:<10} n/a    vs {_fmt(v['expected'])}: NOT REPRODUCED ({v.get('why')})")
                continue
            mark = "ok" if v["within"] else "OUT OF TOLERANCE"
            if v["within"] and v.get("in_ci95") is False:
                mark = "ok, but the reference is outside the 95% interval"
            d = _digits(v["delta"], v["tolerance"])
            lines.append(f"    {metric:<10} {_fmt(v['measured'], d)} vs {_fmt(v['expected'], d)} ± {v['tolerance']:g} "
                         f"(delta {v['delta']:+.{d}f}): {mark}")
        lines += [f"    (note: {n})" for n in dict.fromkeys(verdicts[m].get("note") for m in names) if n]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for m in record.get("reference_mismatches") or []:
        diffs = ", ".join(f"{k} is {d['run']!r} here, {d['reference']!r} there" for k, d in m["differs"].items())
        groups.setdefault((m["source"], diffs, m.get("note") or ""), []).append(f"{m['metric']} {_fmt(m['expected'])}")
    for (source, diffs, note), items in groups.items():
        lines.append(f"  reference not compared, protocol mismatch ({diffs}): {', '.join(items)} [{source}]"
                     + (f" (note: {note})" if note else ""))
    ci = record.get("ci95") or {}
    if ci:
        b = record.get("bootstrap") or {}
        lines.append(f"  95% intervals (bootstrap over images, N={b.get('n')}, seed {b.get('seed')}):")
        for metric, (lo, hi) in ci.items():
            lines.append(f"    {metric:<10} [{_fmt(lo)}, {_fmt(hi)}]")
    elif (record.get("bootstrap") or {}).get("note"):
        lines.append(f"  (bootstrap: {record['bootstrap']['note']})")
    return lines
