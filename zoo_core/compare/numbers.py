"""How far a candidate tensor is from a reference tensor, and the one rule that says "within tolerance".

An element is *beyond tolerance* when ``|candidate - reference| > atol + rtol * max|reference|``, where
``max|reference|`` is taken over the same tensor of the same image (so ``rtol`` is relative to the
tensor's scale, not to each element, which would blow up near zero). It is evaluated as
``(|candidate - reference| - atol) / max|reference| > rtol`` (``> atol`` for an all-zero reference): the
division the reported ``max_rel`` is, so ``rtol`` set to a reported ``max_rel`` (or ``atol`` to a reported
``max_abs``) passes, where ``atol + rtol * max|reference|`` could round below the value it came from.
A tensor passes when no element is beyond tolerance **and** its cosine similarity is at least
``min_cosine``: cosine alone misses a layer that is scaled (cosine 1.0, every value 10% off), the bound
alone misses noise spread thinly over a large tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Defaults of ``compare.atol``, ``compare.rtol`` and ``compare.min_cosine``. fp32 backends differ by
#: ~1e-6 of max|reference|; an fp16 OM by ~1e-3; these accept both and catch a wrong layer.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-2
DEFAULT_MIN_COSINE = 0.999


@dataclass(frozen=True)
class Tolerance:
    """``atol`` (absolute), ``rtol`` (of max |reference| of the tensor) and ``min_cosine``."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    min_cosine: float = DEFAULT_MIN_COSINE

    def bound(self, ref_max_abs: float) -> float:
        """The largest allowed ``|candidate - reference|`` for a tensor whose max |reference| is given."""
        return self.atol + self.rtol * ref_max_abs

    def as_dict(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine}


def cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    """Cosine similarity of two flattened tensors in float64 (1.0 when both are zero, 0.0 when one is)."""
    r = np.asarray(ref, np.float64).ravel()
    c = np.asarray(cand, np.float64).ravel()
    nr, nc = float(r @ r), float(c @ c)
    if nr == 0.0 or nc == 0.0:
        return 1.0 if nr == nc else 0.0
    return float(np.clip((r @ c) / math.sqrt(nr * nc), -1.0, 1.0))


@dataclass
class TensorDiff:
    """The difference of one candidate tensor from its reference (one image, or one layer capture)."""

    max_abs: float
    ref_max_abs: float
    cosine: float
    beyond: int
    size: int
    nonfinite: int = 0

    @property
    def max_rel(self) -> float | None:
        """``max_abs / max|reference|`` (``None`` when the reference is all zero and the candidate is not)."""
        if self.ref_max_abs > 0:
            return self.max_abs / self.ref_max_abs
        return 0.0 if self.max_abs == 0 else None

    def passed(self, tol: Tolerance) -> bool:
        return self.nonfinite == 0 and self.beyond == 0 and self.cosine >= tol.min_cosine

    def as_dict(self, tol: Tolerance) -> dict[str, Any]:
        out = {"max_abs": self.max_abs, "max_rel": self.max_rel, "cosine": self.cosine,
               "beyond_tolerance": self.beyond / self.size if self.size else 0.0, "beyond_count": self.beyond,
               "max_abs_reference": self.ref_max_abs, "elements": self.size, "passed": self.passed(tol)}
        if self.nonfinite:
            out["nonfinite"] = self.nonfinite
        return out


def beyond_count(d: np.ndarray, ref_max: float, tol: Tolerance) -> int:
    """Elements of ``d = |candidate - reference|`` beyond tolerance, in the terms ``max_rel`` is reported in."""
    if ref_max > 0:
        return int(np.count_nonzero((d - tol.atol) / ref_max > tol.rtol))
    return int(np.count_nonzero(d > tol.atol))


def diff(ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> TensorDiff:
    """Compare two tensors of one shape. Non-finite candidate values count as beyond tolerance."""
    r = np.asarray(ref, np.float64)
    c = np.asarray(cand, np.float64)
    if r.shape != c.shape:
        raise ValueError(f"shapes differ: reference {r.shape}, candidate {c.shape}")
    if r.size == 0:
        return TensorDiff(0.0, 0.0, 1.0, 0, 0)
    bad = ~(np.isfinite(r) & np.isfinite(c))
    nonfinite = int(np.count_nonzero(bad))
    if nonfinite:
        r, c = np.where(bad, 0.0, r), np.where(bad, 0.0, c)
    d = np.abs(c - r)
    ref_max = float(np.abs(r).max())
    beyond = beyond_count(d, ref_max, tol) + nonfinite
    max_abs = math.inf if nonfinite else float(d.max())
    return TensorDiff(max_abs, ref_max, cosine(r, c), beyond, int(r.size), nonfinite)


@dataclass
class OutputStats:
    """One model output over many images: the worst image decides (largest difference, lowest cosine)."""

    tol: Tolerance
    max_abs: float = 0.0
    max_rel: float | None = 0.0
    cosine: float = 1.0
    beyond: int = 0
    elements: int = 0
    ref_max_abs: float = 0.0
    images: int = 0
    failed_images: int = 0
    worst_image: str | None = None
    lowest_cosine_image: str | None = None
    shape: list[int] | None = None  # per item; None when it varies between images

    def add(self, item_id: str, ref: np.ndarray, cand: np.ndarray) -> TensorDiff:
        d = diff(ref, cand, self.tol)
        self.shape = list(np.shape(ref)) if self.images == 0 or self.shape == list(np.shape(ref)) else None
        self.images += 1
        self.failed_images += not d.passed(self.tol)
        self.beyond += d.beyond
        self.elements += d.size
        self.ref_max_abs = max(self.ref_max_abs, d.ref_max_abs)
        rel = d.max_rel
        if self.worst_image is None or d.max_abs > self.max_abs:
            self.max_abs, self.worst_image = d.max_abs, item_id
        if self.max_rel is not None:
            self.max_rel = None if rel is None else max(self.max_rel, rel)
        if self.lowest_cosine_image is None or d.cosine < self.cosine:
            self.cosine, self.lowest_cosine_image = d.cosine, item_id
        return d

    @property
    def passed(self) -> bool:
        return self.images > 0 and self.failed_images == 0

    def as_dict(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "cosine": self.cosine,
                "beyond_tolerance": self.beyond / self.elements if self.elements else 0.0,
                "beyond_count": self.beyond, "elements": self.elements,
                "max_abs_reference": self.ref_max_abs, "shape": self.shape, "images": self.images,
                "failed_images": self.failed_images, "worst_image": self.worst_image,
                "lowest_cosine_image": self.lowest_cosine_image, "passed": self.passed}
