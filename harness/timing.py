"""One measure() for every backend.

Time-based warm-up, then samples until the relative noise of the median is under a
threshold or the time budget ends (never fewer than `min_samples`). Each sample is one
`backend.time_run(prepared)`: device time where the backend can (CUDA events, WebGPU
timestamp queries), else the host clock around the run and a synchronisation. In cold
mode (the default) the backend's cache is flushed before every sample.

Noise is the standard error of the median relative to the median, estimated robustly
from the inter-quartile range: 1.2533 * (IQR / 1.349) / sqrt(n) / median.

Two guards against results that are too good to be true:
- `between(i)` runs before sample i, outside the timed region: the runner uses it to
  write fresh inputs into the kernel's input buffers, alternating two input sets, so a
  kernel that caches its result across calls does its work anyway (and fails the check
  after the loop).
- On a device-timed backend the host clock runs around every sample too. What it sees
  beyond the launch (the host time inside run(), and the encoding of its dispatches
  where the backend records them at submission, Backend.last_encode_s) and the reported
  device time is the timer's own overhead, unless the kernel left work the device timer does not see (on
  another stream, in a side submission). `unaccounted` is the median of that remainder
  minus the backend's measured overhead (Backend.timer_overhead); the runner flags a
  result whose unaccounted time is large against its device time.
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
    # median host seconds per sample not covered by the launch, the device time and the
    # timer's overhead (device-timed backends only; None elsewhere)
    unaccounted: float | None = None

    def as_dict(self, with_samples: bool = True) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def summarize(samples: list[float], mode: str, unaccounted: float | None = None) -> Timing:
    s = np.asarray(samples, dtype=np.float64)
    med = float(np.median(s))
    q25, q75 = np.percentile(s, [25, 75])
    noise = 1.2533 * (float(q75 - q25) / 1.349) / np.sqrt(len(s)) / med if med > 0 else float("inf")
    return Timing(med, float(np.percentile(s, 20)), float(np.percentile(s, 80)), float(s.min()), len(s),
                  float(noise), mode, [float(x) for x in s], unaccounted)


class _Launch:
    """prepared, with the host time of its last run() kept (the launch, for the host check)."""

    def __init__(self, prepared):
        self.prepared = prepared
        self.seconds = 0.0

    def run(self):
        t0 = time.perf_counter()
        self.prepared.run()
        self.seconds = time.perf_counter() - t0


def measure(backend, prepared, *, budget_s: float = 1.0, warmup_s: float = 0.1, min_samples: int = 10,
            max_samples: int = 500, target_noise: float = 0.01, cold: bool = True, between=None) -> Timing:
    """Time `prepared.run()` on `backend`; see the module docstring."""
    t_end = time.perf_counter() + warmup_s
    while True:  # warm-up: at least one run, then until warmup_s has passed
        backend.time_run(prepared)
        if time.perf_counter() >= t_end:
            break
    overhead = backend.timer_overhead() if backend.device_timed else None
    launch = _Launch(prepared)
    samples: list[float] = []
    spare: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(samples) < max_samples:
        if between is not None:
            between(len(samples))
        if cold:
            backend.flush_cache()
        t0 = time.perf_counter()
        d = backend.time_run(launch)
        spare.append(time.perf_counter() - t0 - launch.seconds - backend.last_encode_s - d)
        samples.append(d)
        if len(samples) >= min_samples:
            if time.perf_counter() >= t_end or summarize(samples, "").noise <= target_noise:
                break
    unaccounted = float(np.median(spare)) - overhead if overhead is not None else None
    return summarize(samples, "cold" if cold else "hot", unaccounted)
