"""One measure() for every backend.

Time-based warm-up, then samples until the relative noise of the median is under a
threshold or the time budget ends (never fewer than `min_samples`). Each sample is one
`backend.time_run(prepared)`: device time where the backend can (CUDA events, WebGPU
timestamp queries), else the host clock around the run and a synchronisation. In cold
mode (the default) the backend's cache is flushed before every sample.

Noise is the standard error of the median relative to the median, estimated robustly
from the inter-quartile range: 1.2533 * (IQR / 1.349) / sqrt(n) / median.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Timing:
    median: float
    p20: float
    p80: float
    min: float
    n: int
    noise: float
    mode: str  # "cold" or "hot"
    samples: list[float]

    def as_dict(self, with_samples: bool = True) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def summarize(samples: list[float], mode: str) -> Timing:
    s = np.asarray(samples, dtype=np.float64)
    med = float(np.median(s))
    q25, q75 = np.percentile(s, [25, 75])
    noise = 1.2533 * (float(q75 - q25) / 1.349) / np.sqrt(len(s)) / med if med > 0 else float("inf")
    return Timing(med, float(np.percentile(s, 20)), float(np.percentile(s, 80)), float(s.min()), len(s),
                  float(noise), mode, [float(x) for x in s])


def measure(backend, prepared, *, budget_s: float = 1.0, warmup_s: float = 0.1, min_samples: int = 10,
            max_samples: int = 500, target_noise: float = 0.01, cold: bool = True) -> Timing:
    """Time `prepared.run()` on `backend`; see the module docstring."""
    t_end = time.perf_counter() + warmup_s
    while True:  # warm-up: at least one run, then until warmup_s has passed
        backend.time_run(prepared)
        if time.perf_counter() >= t_end:
            break
    samples: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(samples) < max_samples:
        if cold:
            backend.flush_cache()
        samples.append(backend.time_run(prepared))
        if len(samples) >= min_samples:
            if time.perf_counter() >= t_end or summarize(samples, "").noise <= target_noise:
                break
    return summarize(samples, "cold" if cold else "hot")
