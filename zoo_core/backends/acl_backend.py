"""Ascend backend: runs an ``.om`` through ais_bench's ``InferSession`` (over ``aclruntime``).

Built to the documented API (REFERENCE 5.1): ``InferSession(device_id, model_path)``,
``get_inputs()``/``get_outputs()``, ``infer(feeds, mode)`` returning numpy arrays,
``set_dynamic_batchsize(int)`` for dynamic-batch OMs (aclruntime binds ``int SetDynamicBatchsize(int)`` through
pybind11, so a string is a TypeError on the device although REFERENCE 5.1 writes ``"4"``), ``free_resource()``
where it exists. Imported
lazily; without the Ascend packages it fails with a message naming what to install.
``options``: ``device_id``, ``dynamic_batch`` (bool) and ``gears`` (the ``atc.dynamic_batch`` list).

An OM converted with image-size gears (``--dynamic_image_size``; its ``<om>.gears.json`` lists them,
see :mod:`zoo_core.backends.image_gears`; a plan of one gear, left by an older zoo, is ignored with a warning:
ATC compiles one size as a fixed-size OM) takes each batch at the smallest gear holding its input
(the pipeline batches only same-shape inputs): the input is padded at the bottom / right up to the gear,
``set_dynamic_hw(height, width)`` selects the gear, ``infer(feeds, mode="dymhw")`` runs it and the outputs are
cropped back. The first argument is the HEIGHT although ais_bench names the Python parameters ``(w, h)``
(REFERENCE 5.1): ais_bench's own CLI passes ``--dymHW "h,w"`` in that order, and aclruntime hands the pair to
``aclmdlSetDynamicHWSize(..., height, width)``.
"""
from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zoo_core.api.errors import ConfigError, PluginError, ZooError
from zoo_core.backends.base import Backend, Batch, ModelIO
from zoo_core.backends.image_gears import crop_outputs, gear_for, gears_file, pad_to, read_gears, read_planned_sizes
from zoo_core.pipeline.batching import pad

log = logging.getLogger("zoo")

INSTALL_HINT = ("install Ascend's ais_bench and aclruntime wheels (Ascend/tools: ais-bench_workload/tool/ais_bench, "
                "aclruntime-*.whl then ais_bench-*.whl) on a machine with the CANN toolkit and an NPU driver")


def _exec_ms(entry: Any) -> float:
    """One ``exec_time_list`` entry in ms: a float (2023 ais_bench) or a ``(start, end)`` pair (newer)."""
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        return float(entry[1]) - float(entry[0])
    return float(entry)


def _recorded_gears(om: Path) -> str:
    """``": [1, 2, 4]"`` when ``om``'s convert record names its dynamic-batch gears (for a hint), else ``""``."""
    from zoo_core.runs.model_files import read_record

    try:
        gears = (read_record(om.with_suffix(".json")).get("settings") or {}).get("dynamic_batch")
    except Exception:  # only a hint: an unreadable record is said when the OM is checked
        return ""
    return f": {gears}" if isinstance(gears, list) and all(type(g) is int for g in gears) else ""


class AclBackend(Backend):
    name = "acl"
    model_kind = "om"

    def __init__(self, model_file: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 io: ModelIO | None = None):
        super().__init__(model_file, options, io)
        try:
            from ais_bench.infer.interface import InferSession
        except ImportError as exc:
            raise PluginError(f"backend=acl cannot import ais_bench.infer.interface ({exc})",
                              hint=INSTALL_HINT) from exc
        self.dynamic = bool(self.options.get("dynamic_batch", False))
        if self.model_file is None or not self.model_file.is_file():
            raise ZooError("OM file not found", path=self.model_file,
                           hint="run stage=convert first (on a machine with atc), or pass model_file=<.om>")
        self.device_id = int(self.options.get("device_id", 0) or 0)
        self.session = InferSession(self.device_id, str(self.model_file))
        self.input_names = [i.name for i in self.session.get_inputs()]
        if self.io.input_specs is not None:
            self._check_feeds([s.name for s in self.io.input_specs()])
        self.gears: list[int] = []
        self.image_gears = read_gears(self.model_file)
        if self.image_gears is not None and len(self.image_gears) < 2:
            # ATC compiles --dynamic_image_size from 2..100 gears: a one-gear plan (written by an older zoo) lies
            # beside a fixed-size OM, which set_dynamic_hw / mode "dymhw" would fail on
            log.warning("%s lists %d image-size gear(s): %s is a fixed-size OM, run without gears (re-run "
                        "stage=convert to remove the plan)", gears_file(self.model_file), len(self.image_gears),
                        self.model_file.name)
            self.image_gears = None
        self.planned_sizes = read_planned_sizes(self.model_file) if self.image_gears else set()
        self.unplanned: Counter[tuple[int, int]] = Counter()
        if self.image_gears and self.dynamic:
            raise ConfigError(f"{self.model_file} has image-size gears ({gears_file(self.model_file).name}); "
                              "ATC does not combine them with dynamic batch: pass backend.dynamic_batch=false")
        if self.dynamic:
            gears = self.options.get("gears")
            if not gears:
                raise ConfigError("backend.dynamic_batch=true needs atc.dynamic_batch=[gears] (as used by convert)")
            self.gears = sorted(int(g) for g in gears)
            self.fixed_batch = None
        else:
            shape = list(self.session.get_inputs()[0].shape)
            if shape and int(shape[0]) < 0 and not self.image_gears:
                raise ConfigError(f"{self.model_file} is a dynamic-batch OM (its input batch is {shape[0]}), loaded "
                                  "without backend.dynamic_batch=true: a static run cannot select a batch gear",
                                  hint="pass backend.dynamic_batch=true atc.dynamic_batch=[the gears it was converted "
                                       f"with{_recorded_gears(self.model_file)}], or the OM of one batch size")
            self.fixed_batch = int(shape[0]) if shape and int(shape[0]) > 0 else int(self.options.get("batch_size", 1))

    def _check_feeds(self, given: list[str]) -> None:
        """Every OM input has a feed of that name (the session takes the feeds as a list in the OM's input
        order, so a feed of another name would silently be dropped or land in the wrong input)."""
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise ZooError(f"OM input(s) {missing} have no feed: the {self.io.model} preprocess gives {sorted(given)}",
                           path=self.model_file,
                           hint="the OM was converted from an ONNX with other input names: re-export and re-run "
                                "stage=convert (or pass the OM of this model)")

    def _gear(self, n: int) -> int:
        i = bisect.bisect_left(self.gears, n)
        if i == len(self.gears):
            raise ConfigError(f"batch of {n} exceeds the largest dynamic-batch gear {self.gears[-1]}")
        return self.gears[i]

    def _infer_image_gear(self, feeds: list[np.ndarray]) -> list[np.ndarray]:
        spatial = [f for f in feeds if f.ndim == 4]
        h, w = (int(d) for d in spatial[0].shape[-2:])
        gear = gear_for(self.image_gears or [], h, w)
        if gear is None:
            raise ZooError(f"an input of {h}x{w} fits none of the OM's image-size gears "
                           f"({', '.join(f'{a}x{b}' for a, b in self.image_gears or [])})",
                           path=gears_file(str(self.model_file)),
                           hint="re-run stage=convert with atc.dynamic_image_size=true on this dataset")
        if (h, w) != gear and self.planned_sizes and (h, w) not in self.planned_sizes:
            if not self.unplanned:
                log.warning("%s: %dx%d inputs are not among the sizes its image-size gears were planned for: "
                            "padded into the %dx%d gear, their outputs differ from an unpadded run "
                            "(re-run stage=convert atc.dynamic_image_size=true with this run's config and dataset)",
                            self.model_file, h, w, gear[0], gear[1])
            self.unplanned[(h, w)] += len(spatial[0])
        feeds = [np.ascontiguousarray(pad_to(f, *gear)) if f.ndim == 4 else f for f in feeds]
        if self.fixed_batch:
            feeds = [pad(f, self.fixed_batch) for f in feeds]
        self.session.set_dynamic_hw(int(gear[0]), int(gear[1]))  # (height, width): see the module docstring
        out = self.session.infer(feeds, mode="dymhw")
        return crop_outputs(out, h, w, gear)

    def infer(self, batch: Batch) -> list[np.ndarray]:
        self._check_feeds(list(batch.inputs))
        feeds = [np.ascontiguousarray(batch.inputs[n]) for n in self.input_names]
        if self.image_gears:
            out = self._infer_image_gear(feeds)
        elif self.dynamic:
            gear = self._gear(batch.size)
            feeds = [pad(f, gear) for f in feeds]
            self.session.set_dynamic_batchsize(int(gear))  # a pybind11 int argument: a str is a TypeError
            out = self.session.infer(feeds, mode="dymbatch")
        else:
            out = self.session.infer(feeds, mode="static")
        return [np.asarray(o)[: batch.size] for o in out]

    def device_times_ms(self) -> list[float] | None:
        """``exec_time_list`` of the session's summary (``sumary()`` in the 2023 ais_bench, ``summary()`` later;
        REFERENCE 5.1): the NPU compute time of each ``infer`` call, ms. The 2023 list holds one float per call;
        newer aclruntime keeps ``(start, end)`` pairs, whose ``end - start`` is the time (as ais_bench computes
        it)."""
        for name in ("summary", "sumary"):
            get = getattr(self.session, name, None)
            if callable(get):
                times = getattr(get(), "exec_time_list", None)
                if times is not None:
                    return [_exec_ms(t) for t in times]
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_file": str(self.model_file), "device_id": self.device_id,
                "dynamic_batch_gears": self.gears or None, "fixed_batch": self.fixed_batch,
                "image_size_gears": [list(g) for g in self.image_gears] if self.image_gears else None}

    def close(self) -> None:
        if self.unplanned:
            log.warning("%s: %d input(s) of %d size(s) the gears were not planned for were padded into larger gears "
                        "(%s)", self.model_file, sum(self.unplanned.values()), len(self.unplanned),
                        ", ".join(f"{h}x{w}: {n}" for (h, w), n in sorted(self.unplanned.items())[:5]))
        free = getattr(self.session, "free_resource", None)
        if callable(free):
            free()
