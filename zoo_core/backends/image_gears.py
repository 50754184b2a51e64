"""Image-size gears for an OM built with ATC ``--dynamic_image_size`` (models whose input size varies per image,
e.g. CenterNet ``keep_res``), and the gear an input takes.

``stage=convert`` runs the model's ``preprocess`` over the dataset, counts the input sizes (H, W), and plans
at most ``atc.max_image_gears`` gears (ATC takes at most 100, REFERENCE 5.2): every distinct size is a gear
when they fit; beyond the cap, ``atc.image_gear_policy=pad`` merges sizes into larger gears (greedily, the
merge adding the fewest padded pixels first) and reports how many images are padded and by how much, and
``refuse`` stops naming the count. The plan is written next to the OM (``<om>.gears.json``); the ``acl``
backend reads it, picks for each batch the smallest gear that holds the batch's input, pads the input at the
bottom / right (edge values) up to the gear, and crops the outputs back in proportion.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.atc import MAX_GEARS
from zoo_core.api.errors import ConfigError, ZooError

POLICIES = ("pad", "refuse")
Size = tuple[int, int]


@dataclass
class GearPlan:
    """The gears (``[(h, w), ...]``, ascending by area) and what mapping the dataset onto them costs."""

    gears: list[Size]
    sizes: dict[Size, int]                      # distinct input size -> number of images
    assignment: dict[Size, Size] = field(default_factory=dict)  # input size -> its gear

    @property
    def images(self) -> int:
        return sum(self.sizes.values())

    def padding(self) -> dict[str, Any]:
        """How many images are padded up to a larger gear, and by how much (rows, columns, share of pixels)."""
        padded = [(s, g, n) for s, n in self.sizes.items() if (g := self.assignment[s]) != s]
        n_padded = sum(n for _, _, n in padded)
        extra = [(g[0] * g[1] - s[0] * s[1]) / (s[0] * s[1]) for s, g, _ in padded]
        weights = [n for _, _, n in padded]
        return {"padded_images": n_padded, "images": self.images,
                "max_extra_rows": max((g[0] - s[0] for s, g, _ in padded), default=0),
                "max_extra_cols": max((g[1] - s[1] for s, g, _ in padded), default=0),
                "mean_extra_pixels": float(np.average(extra, weights=weights)) if padded else 0.0,
                "max_extra_pixels": float(max(extra, default=0.0))}

    def to_json(self) -> dict[str, Any]:
        return {"dynamic_image_size": [list(g) for g in self.gears], **self.padding(),
                "sizes": [[h, w, n] for (h, w), n in sorted(self.sizes.items())]}


def gear_for(gears: Sequence[Size], h: int, w: int) -> Size | None:
    """The smallest-area gear with ``gh >= h`` and ``gw >= w`` (ties: the lower one); ``None`` if none holds it."""
    fits = [g for g in gears if g[0] >= h and g[1] >= w]
    return min(fits, key=lambda g: (g[0] * g[1], g[0])) if fits else None


def _merge_to(sizes: dict[Size, int], n: int) -> list[Size]:
    """Greedy: merge the two gears whose union (max h, max w) adds the fewest padded pixels, until ``n`` remain."""
    gears = sorted(sizes)
    counts = [sizes[g] for g in gears]
    hw = np.array(gears, np.int64).reshape(-1, 2)
    c = np.array(counts, np.int64)
    while len(hw) > n:
        mh = np.maximum(hw[:, None, 0], hw[None, :, 0])
        mw = np.maximum(hw[:, None, 1], hw[None, :, 1])
        area = hw[:, 0] * hw[:, 1]
        cost = (c[:, None] + c[None, :]) * mh * mw - (c * area)[:, None] - (c * area)[None, :]
        np.fill_diagonal(cost, np.iinfo(np.int64).max)
        i, j = divmod(int(np.argmin(cost)), len(hw))
        merged = np.array([[mh[i, j], mw[i, j]]])
        keep = [k for k in range(len(hw)) if k not in (i, j)]
        hw = np.concatenate([hw[keep], merged])
        c = np.concatenate([c[keep], [c[i] + c[j]]])
    return [(int(h), int(w)) for h, w in hw]


def plan_gears(input_sizes: Iterable[Sequence[int]], max_gears: int = MAX_GEARS, policy: str = "pad") -> GearPlan:
    """Plan at most ``max_gears`` gears for the per-image input sizes ``[(h, w), ...]``.

    :raises ConfigError: ``max_gears`` outside 1..100, an unknown ``policy``, or (``refuse``) more distinct
        sizes than ``max_gears`` (the message names the count).
    """
    if not 1 <= int(max_gears) <= MAX_GEARS:
        raise ConfigError(f"atc.max_image_gears={max_gears} must be in 1..{MAX_GEARS} (ATC's limit)")
    if policy not in POLICIES:
        raise ConfigError(f"atc.image_gear_policy={policy!r} must be one of {', '.join(POLICIES)}")
    sizes = dict(Counter((int(h), int(w)) for h, w in input_sizes))
    if not sizes:
        raise ZooError("no images to plan image-size gears from (the dataset is empty)")
    if len(sizes) <= max_gears:
        gears = sorted(sizes)
    elif policy == "refuse":
        raise ConfigError(f"the dataset's {sum(sizes.values())} images have {len(sizes)} distinct input sizes, more "
                          f"than atc.max_image_gears={max_gears} (ATC takes at most {MAX_GEARS} gears)",
                          hint="pass atc.image_gear_policy=pad to pad sizes up into that many gears")
    else:
        gears = _merge_to(sizes, int(max_gears))
    gears = sorted(set(gears), key=lambda g: (g[0] * g[1], g))
    assignment = {s: gear_for(gears, *s) for s in sizes}
    return GearPlan(gears, sizes, assignment)  # type: ignore[arg-type]


def gears_file(om: str | Path) -> Path:
    """``<om>.gears.json``: the plan written by ``stage=convert`` next to an image-size-gear OM."""
    return Path(str(om) + ".gears.json")


def read_gears(om: str | Path) -> list[Size] | None:
    """The gears of ``om`` from its ``<om>.gears.json`` (``None`` when there is none: a fixed-size OM)."""
    p = gears_file(om)
    if not p.is_file():
        return None
    return [(h, w) for h, w, *_ in _read_sizes(p, "dynamic_image_size", 2)]


def read_planned_sizes(om: str | Path) -> set[Size]:
    """The input sizes ``stage=convert`` planned the gears of ``om`` for (its ``<om>.gears.json`` ``sizes``);
    empty when the plan lists none."""
    return {(r[0], r[1]) for r in _read_sizes(gears_file(om), "sizes", 2, required=False)}


def _read_sizes(p: Path, key: str, n: int, required: bool = True) -> list[list[int]]:
    """``key`` of the gears file ``p``: rows of at least ``n`` whole numbers > 0; a ZooError naming the file
    when it is not (``Infinity``, ``1.5``, ``-3``, a string...)."""
    try:
        rec = json.loads(p.read_text())
        rows = rec[key] if required else rec.get(key, [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ZooError("unreadable image-size gears file", path=p) from None
    if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) >= n and all(type(v) is int and v > 0 for v in r[:n]) for r in rows):
        raise ZooError(f"unreadable image-size gears file: {key!r} is not a list of [height, width] in whole "
                       f"numbers > 0", path=p)
    return rows


def pad_to(array: np.ndarray, h: int, w: int) -> np.ndarray:
    """``array`` (``..., H, W``) padded at the bottom / right to ``h x w`` with its edge values."""
    dh, dw = h - array.shape[-2], w - array.shape[-1]
    if dh == 0 and dw == 0:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, dh), (0, dw)]
    return np.pad(array, pad, mode="edge")


def crop_outputs(outputs: Sequence[np.ndarray], h: int, w: int, gear: Size) -> list[np.ndarray]:
    """Outputs of a gear-sized input cropped back to the ``h x w`` input (4-d outputs, in proportion)."""
    if (h, w) == tuple(gear):
        return list(outputs)
    out = []
    for o in outputs:
        o = np.asarray(o)
        if o.ndim == 4:
            oh, ow = o.shape[-2:]
            o = o[..., : oh * h // gear[0], : ow * w // gear[1]]
        out.append(o)
    return out
