"""One measure() for every backend.

Time-based warm-up, then samples until the relative noise of the median is under a
threshold or the time budget ends (never fewer than `min_samples`). Each sample is one
`backend.time_run(prepared)`: device time where the backend can (CUDA events, WebGPU
timestamp queries), else the host clock around the run and a synchronisation. In cold
mode (the default) the backend's cache is flushed before every sample.

Noise is the standard error of the median relative to the median, estimated robustly
from the inter-quartile range: 1.2533 * (IQR / 1.349) / sqrt(n) / median.

Two guards against results that are too good to be true:
- `between(i)` runs before sample i and `after(i, seconds)` after it, both outside the
  timed region: the runner writes inputs never seen before into the kernel's input
  buffers, and checks the outputs of a few samples drawn at random (harness.rotation),
  so a kernel that keeps results across calls must do its work anyway.
- A sample after which the process has more threads than before the run left work
  running beyond run()'s return (`threads_left`); the runner flags the figure.
- On a device-timed backend the host clock runs around every sample too. What it sees
  beyond the launch (the host time inside run(), and the encoding of its dispatches
  where the backend records them at submission, Backend.last_encode_s) and the reported
  device time is the timer's own overhead, unless the kernel left work the device timer
  does not see (on another stream, in a side submission). That overhead is measured in
  the same loop: before each sample (after the cache flush, so under the same cold
  conditions) the backend's minimal run is timed the same way. `unaccounted` is the
  median over samples of the kernel's remainder minus the probe's just before it, and
  `overhead` the median of the probe's; the runner flags a result whose unaccounted
  time is large against its device time. (An overhead measured once, apart from the
  loop, drifted by 0.3-1 ms on lavapipe and missed what a cold cache adds to the host
  path, which made honest multi-dispatch chains look like side submissions.)
"""

from __future__ import annotations

import os
import resource
import threading
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
    # median host seconds the timer's minimal probe cost beyond its own device time and
    # launch, measured in the same loop (device-timed backends only)
    overhead: float | None = None
    # samples after which the process had more threads than before the run: work left
    # running after run() returned
    threads_left: int = 0
    # the share of the machine's cores that other processes used while the samples were
    # taken (Linux /proc/stat; None where unknown): a busy machine makes figures noisy
    busy_other: float | None = None

    def as_dict(self, with_samples: bool = True) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def summarize(samples: list[float], mode: str, unaccounted: float | None = None,
              overhead: float | None = None, threads_left: int = 0, busy_other: float | None = None) -> Timing:
    s = np.asarray(samples, dtype=np.float64)
    med = float(np.median(s))
    q25, q75 = np.percentile(s, [25, 75])
    noise = 1.2533 * (float(q75 - q25) / 1.349) / np.sqrt(len(s)) / med if med > 0 else float("inf")
    return Timing(med, float(np.percentile(s, 20)), float(np.percentile(s, 80)), float(s.min()), len(s),
                  float(noise), mode, [float(x) for x in s], unaccounted, overhead, threads_left, busy_other)


class _Launch:
    """prepared, with the host time of its last run() kept (the launch, for the host check)."""

    def __init__(self, prepared):
        self.prepared = prepared
        self.seconds = 0.0

    def run(self):
        t0 = time.perf_counter()
        self.prepared.run()
        self.seconds = time.perf_counter() - t0


def _timed(backend, launch: _Launch) -> tuple[float, float]:
    """(device seconds, host seconds beyond them and the launch) of one time_run."""
    t0 = time.perf_counter()
    d = backend.time_run(launch)
    return d, time.perf_counter() - t0 - launch.seconds - backend.last_encode_s - d


def thread_count() -> int:
    """Threads of this process now (Linux: /proc/self/task; elsewhere Python's own)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class OtherLoad:
    """CPU time the rest of the machine used while this process sampled, as a share of
    all cores: the whole machine's busy time (/proc/stat, steal included) minus this
    process's own (getrusage), accumulated over the windows between start() and stop()."""

    def __init__(self):
        self.other = self.wall = 0.0
        self._mark = None
        self._cores = os.cpu_count() or 1

    @staticmethod
    def _machine_busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        busy = self._machine_busy()
        self._mark = None if busy is None else (busy, _cpu_seconds(), time.perf_counter())

    def stop(self) -> None:
        busy = self._machine_busy()
        if self._mark is None or busy is None:
            return
        b0, own0, t0 = self._mark
        self.other += max(0.0, (busy - b0) - (_cpu_seconds() - own0))
        self.wall += time.perf_counter() - t0
        self._mark = None

    @property
    def share(self) -> float | None:
        return self.other / (self.wall * self._cores) if self.wall > 0.05 else None


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (getrusage: microseconds, not clock ticks)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def settle(max_s: float, step_s: float = 0.02, busy: float = 0.1) -> float:
    """Wait until this process's other threads are idle, at most `max_s`; returns the wait.

    BLAS and OpenMP worker threads spin for a while after their library's last call and
    steal the cores from the next kernel (measured here: a numba GEMV at 7.1 ms right after
    NumPy's, 4.5 ms once OpenBLAS's threads had stopped). Idle means the process used at
    most `busy` of one core during a `step_s` sleep: about 0.14 s after OpenBLAS, 0.04 s
    after numba on this VM, instead of a fixed pause."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_s:
        c0, w0 = _cpu_seconds(), time.perf_counter()
        time.sleep(step_s)
        if _cpu_seconds() - c0 <= busy * (time.perf_counter() - w0):
            break
    return time.perf_counter() - start


# Never more samples than this per implementation, whatever the budget.
MAX_SAMPLES = 500


class Sampler:
    """The samples of one implementation, taken in one or more segments (`take`): the
    runner's interleaved rounds time several implementations of a job in turns, so that
    a drift of the machine's speed between them (10-25 % over seconds on the 2-core VM)
    falls on all of them alike instead of on whichever ran last. Inputs rotate by sample
    number across segments; `timing()` summarises every sample taken."""

    def __init__(self, backend, prepared, *, cold: bool = True, between=None, after=None):
        self.backend, self.cold, self.between, self.after = backend, cold, between, after
        self.launch = _Launch(prepared)
        self.probe = _Launch(backend.minimal_prepared()) if backend.device_timed else None
        self.samples: list[float] = []
        self.beyond: list[float] = []  # the kernel's host remainder minus the probe's, per sample
        self.probed: list[float] = []
        self.segments = 0
        self.threads_left = 0
        self.load = OtherLoad()

    def take(self, *, budget_s: float, warmup_s: float | None, min_samples: int, max_samples: int,
             target_noise: float) -> None:
        """Warm up (at least one run; none when `warmup_s` is None), then add samples
        until this segment has `min_samples` and either `budget_s` has passed or the noise
        of all samples so far is at most `target_noise`; never beyond `max_samples` in all."""
        backend, probe = self.backend, self.probe
        t_end = time.perf_counter() + (warmup_s or 0.0)
        while warmup_s is not None:
            backend.time_run(self.launch.prepared)
            if probe is not None:
                backend.time_run(probe)
            if time.perf_counter() >= t_end:
                break
        first = len(self.samples)
        t_end = time.perf_counter() + budget_s
        self.load.start()
        while len(self.samples) < max_samples:
            if self.between is not None:
                self.between(len(self.samples))
            if self.cold:
                backend.flush_cache()
                backend.wake(self.launch.prepared)
            if probe is not None:
                self.probed.append(_timed(backend, probe)[1])
            threads = thread_count()
            d, spare = _timed(backend, self.launch)
            self.threads_left += thread_count() > threads
            self.samples.append(d)
            if probe is not None:
                self.beyond.append(spare - self.probed[-1])
            if self.after is not None:
                self.after(len(self.samples) - 1, d)
            if len(self.samples) - first >= min_samples:
                if time.perf_counter() >= t_end or summarize(self.samples, "").noise <= target_noise:
                    break
        self.load.stop()
        self.segments += 1

    def timing(self) -> Timing:
        unaccounted = float(np.median(self.beyond)) if self.beyond else None
        overhead = float(np.median(self.probed)) if self.probed else None
        return summarize(self.samples, "cold" if self.cold else "hot", unaccounted, overhead, self.threads_left,
                         self.load.share)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.prepared.close()


def measure(backend, prepared, *, budget_s: float = 1.0, warmup_s: float = 0.1, min_samples: int = 10,
            max_samples: int = MAX_SAMPLES, target_noise: float = 0.01, cold: bool = True, between=None) -> Timing:
    """Time `prepared.run()` on `backend` in one segment; see the module docstring."""
    sampler = Sampler(backend, prepared, cold=cold, between=between)
    try:
        sampler.take(budget_s=budget_s, warmup_s=warmup_s, min_samples=min_samples, max_samples=max_samples,
                     target_noise=target_noise)
    finally:
        sampler.close()
    return sampler.timing()
