"""What an ``evaluate`` hook may return: the one rule the run (the plugin manager's hook boundary,
``metrics.json``) and the contract kit (:func:`zoo_core.testing.checks.check_eval_result`) both apply.

- ``metrics``: a non-empty ``{str: number}`` dict. A number is an ``int`` / ``float`` or a numpy integer /
  floating scalar (what ``.mean()`` of a float32 array gives), stored as a plain ``int`` / ``float``;
  ``bool`` / ``np.bool_`` are not numbers here. NaN and infinities are accepted: ``metrics.json`` stores
  them as ``null`` with the reason in ``null_metrics``. An integer beyond the float range is refused.
- ``files``: ``{relative name: bytes}``, no absolute name nor ``..``.
- ``info``: a dict JSON can write (no NaN / infinity: ``metrics.json`` is strict JSON).
- ``ci95``: ``{str: (lo, hi)}``, each bound a finite number or ``None`` (undefined).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.types import EvalResult


class EvalResultError(ValueError):
    """An ``EvalResult`` breaks the rule above (the message says which field and how)."""


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} chars)"


def metric_number(v: Any) -> int | float | None:
    """``v`` as a plain ``int`` / ``float`` when it is a metric number (see the module doc), else None."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    return int(v) if isinstance(v, (int, np.integer)) else float(v)


def _as_float(n: int | float) -> float | None:
    try:
        return float(n)
    except OverflowError:  # an int beyond the float range (a 401-digit 10**400)
        return None


def checked_eval_result(result: Any) -> EvalResult:
    """``result`` with plain-Python metrics and intervals, or :class:`EvalResultError` saying what is wrong."""
    if not isinstance(result, EvalResult):
        raise EvalResultError(f"must return zoo_core.api.types.EvalResult, got {type(result).__name__}")
    metrics = _checked_metrics(result.metrics)
    _check_files(result.files)
    if not isinstance(result.info, dict):
        raise EvalResultError(f"info must be a dict, got {type(result.info).__name__}")
    try:
        json.dumps(result.info, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EvalResultError(f"info must be JSON-serialisable (no NaN or infinity): {exc}") from None
    return dataclasses.replace(result, metrics=metrics, ci95=_checked_ci95(result.ci95))


def _checked_metrics(given: Any) -> dict[str, int | float]:
    if not isinstance(given, dict) or not given:
        raise EvalResultError(f"metrics must be a non-empty dict, got {_shown(given)}")
    metrics: dict[str, int | float] = {}
    for k, v in given.items():
        if not isinstance(k, str):
            raise EvalResultError(f"metric names must be str, got {k!r}")
        n = metric_number(v)
        if n is None:
            raise EvalResultError(f"metric {k!r} must be a number (flat dict), got {type(v).__name__} {_shown(v)}")
        if _as_float(n) is None:
            raise EvalResultError(f"metric {k!r} is {_shown(n)}, beyond the float range")
        metrics[k] = n
    return metrics


def _check_files(files: Any) -> None:
    if not isinstance(files, dict):
        raise EvalResultError(f"files must be a dict {{relative name: bytes}}, got {type(files).__name__}")
    for name, data in files.items():
        if not isinstance(name, str):
            raise EvalResultError(f"file names must be str, got {name!r}")
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise EvalResultError(f"file name {name!r} must be relative to the run directory")
        if not isinstance(data, (bytes, bytearray)):
            raise EvalResultError(f"file {name!r} must be bytes, got {type(data).__name__}")


def _checked_ci95(given: Any) -> dict[str, tuple[float | None, float | None]]:
    if not isinstance(given, dict):
        raise EvalResultError(f"ci95 must be a dict {{metric: (lo, hi)}}, got {type(given).__name__}")
    ci95: dict[str, tuple[float | None, float | None]] = {}
    for k, pair in given.items():
        if not isinstance(k, str):
            raise EvalResultError(f"ci95 names must be str, got {k!r}")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise EvalResultError(f"ci95[{k!r}] must be a (lo, hi) pair, got {type(pair).__name__} {_shown(pair)}")
        bounds = []
        for b in pair:
            n = None if b is None else metric_number(b)
            f = None if n is None else _as_float(n)
            if b is not None and (f is None or not math.isfinite(f)):
                raise EvalResultError(f"ci95[{k!r}] bounds must be finite numbers or None, got {_shown(pair)}")
            bounds.append(f)
        ci95[k] = (bounds[0], bounds[1])
    return ci95
