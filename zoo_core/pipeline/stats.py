"""Run statistics of one stream: counts, host/device time, the device-call latency distribution."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RunStats:
    """What one :class:`zoo_core.pipeline.stream.Stream` run measured (times in seconds)."""

    images: int = 0
    batches: int = 0
    preprocess_cpu_s: float = 0.0
    device_s: float = 0.0
    postprocess_s: float = 0.0
    wait_for_input_s: float = 0.0
    first_input_s: float = 0.0
    first_device_s: float = 0.0
    last_device_s: float = 0.0
    wall_s: float = 0.0
    parent_cpu_s: float = 0.0  # CPU of this process (every thread) during the stream
    inputs_in_place: int = 0  # items the device read where the worker wrote them (no copy)
    skipped: list[dict] = field(default_factory=list)
    device_calls_ms: list[float] = field(default_factory=list)

    def summary(self, batch_size: int) -> dict[str, Any]:
        """The ``perf.json`` numbers (throughput, steady throughput, per-image host/device costs)."""
        n = max(self.images, 1)
        calls = np.asarray(self.device_calls_ms or [0.0])
        steady = self.last_device_s - self.first_device_s
        return {
            "images": self.images,
            "batches": self.batches,
            "batch_size": batch_size,
            "wall_s": round(self.wall_s, 4),
            "throughput_img_s": round(self.images / self.wall_s, 3) if self.wall_s > 0 else None,
            "first_input_s": round(self.first_input_s, 4),
            "steady_throughput_img_s": round(self.images / steady, 3) if steady > 0 else None,
            "host_preprocess_ms_per_img": round(1000 * self.preprocess_cpu_s / n, 3),
            "device_ms_per_img": round(1000 * self.device_s / n, 3),
            "postprocess_ms_per_img": round(1000 * self.postprocess_s / n, 3),
            "parent_cpu_ms_per_img": round(1000 * self.parent_cpu_s / n, 3),
            "inputs_in_place": self.inputs_in_place,
            "device_idle_waiting_for_host_s": round(self.wait_for_input_s, 4),
            "device_call_ms": {"mean": round(float(calls.mean()), 3), "median": round(float(np.median(calls)), 3),
                               "p99": round(float(np.percentile(calls, 99)), 3)},
            "device_utilisation": round(self.device_s / self.wall_s, 4) if self.wall_s > 0 else None,
            "skipped": len(self.skipped),
        }
