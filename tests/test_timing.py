"""measure(): warm-up, at least min_samples, statistics that describe the samples."""

from __future__ import annotations

import itertools

import pytest

from harness.backends import Backend
from harness.timing import measure, summarize


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, times):
        super().__init__()
        self.times = itertools.cycle(times)
        self.flushes = 0

    def time_run(self, prepared):
        return next(self.times)

    def flush_cache(self):
        self.flushes += 1


def test_measure_takes_min_samples_and_flushes_when_cold():
    b = FakeBackend([1.0, 2.0, 3.0, 4.0, 5.0])
    t = measure(b, None, budget_s=0.0, warmup_s=0.0, min_samples=10)
    assert t.n == 10 and b.flushes == 10 and t.mode == "cold"
    assert t.min == 1.0 and t.p20 <= t.median <= t.p80 and t.median == 3.0
    hot = FakeBackend([2.0])
    t = measure(hot, None, budget_s=0.0, warmup_s=0.0, min_samples=12, cold=False)
    assert hot.flushes == 0 and t.noise == 0 and t.n == 12


def test_noise_shrinks_with_samples():
    few = summarize([1.0, 1.1, 0.9, 1.2, 0.8] * 2, "cold")
    many = summarize([1.0, 1.1, 0.9, 1.2, 0.8] * 40, "cold")
    assert many.noise < few.noise


# --- interleaved rounds and settling -------------------------------------------------------


def _drifting_impls(period_s: float):
    """Two identical implementations (rmsnorm_gemm's CPU kernel plus a sleep) on a machine
    whose speed drifts steadily: each run sleeps 3 ms * (1 + t / period_s), t the seconds
    since the first run of either (so that however long the job took to get there, on a
    loaded machine or with a first compilation, the drift starts with the runs)."""
    import time

    from harness.registry import Implementation
    from impls.rmsnorm_gemm.cpu import RmsNormGemmCpu

    start = []

    class Drifting(RmsNormGemmCpu):
        def run(self):
            super().run()
            now = time.perf_counter()
            if not start:
                start.append(now)
            time.sleep(0.003 * (1 + (now - start[0]) / period_s))

    return [Implementation("rmsnorm_gemm", "cpu", name, "fused", Drifting, ("float32",), origin=__name__)
            for name in ("drift_a", "drift_b")]


# A burst of load on the 2-core machine can fall on one kernel's samples more than on the
# other's; the timing tests measure again, at most this many times, before they judge.
ATTEMPTS = 3


def test_interleaved_rounds_share_a_steady_drift(registry):
    """One after the other, the second of two identical kernels reads slower by the drift
    between them; in rounds A B B A A B B A the drift falls on both alike. Each attempt
    times both ways; a runner that did not interleave would show the drift in every one."""
    import numpy as np

    from harness.cases import Case
    from harness.runner import Job, Options, run_job

    case = Case("rmsnorm_gemm", "t.drift", "test", {"M": 2, "H": 64, "N": 32}, ("float32",), ("smoke",), "t.toml", 1)
    seen = []
    for _ in range(ATTEMPTS):
        log_ratio = {}
        for rounds in (1, 4):
            records = []
            opts = Options(bench=True, budget_s=0.4, warmup_s=0.0, min_samples=8, settle_s=0.0, cold=False,
                           rounds=rounds, target_noise=0.0)
            run_job(registry, Job(case, "float32", _drifting_impls(0.4)), opts, records.append)
            by = {r["variant"]: r for r in records}
            assert all(r["verdict"] == "pass" and r["segments"] == rounds for r in records), records
            log_ratio[rounds] = float(np.log(by["drift_b"]["median_s"] / by["drift_a"]["median_s"]))
        seen.append(log_ratio)
        # B ran about 0.4 s later: about 1.7x slower; interleaved, within a third of that
        if log_ratio[1] > np.log(1.3) and abs(log_ratio[4]) < 0.5 * log_ratio[1]:
            break
    else:
        pytest.fail(f"log(B/A) one after the other (1) and interleaved (4), {ATTEMPTS} attempts: {seen}")
    print("log(B/A) one after the other, interleaved:", seen)


def test_settle_waits_for_busy_threads_and_not_for_idle_ones():
    """settle() waits while this process's other threads are busy, up to its limit. How long
    a sleep or a spinning thread takes on a loaded machine varies, so each attempt spins a
    thread of its own and the three waits are judged together, at most ATTEMPTS times."""
    import threading
    import time

    from harness.timing import settle

    def spin(stop):
        while time.perf_counter() < stop:
            pass

    seen = []
    for _ in range(ATTEMPTS):
        quiet = settle(1.0)  # nothing else running: the first quiet step ends it
        t = threading.Thread(target=spin, args=(time.perf_counter() + 0.4,))
        t.start()
        capped = settle(0.05)  # busy: it waits its limit (within a step), no longer
        waited = settle(1.0)  # until the spinning thread stopped
        t.join()
        seen.append((round(quiet, 3), round(capped, 3), round(waited, 3)))
        if quiet < 0.2 and 0.05 <= capped < 0.1 and 0.25 <= waited < 0.6:
            break
    else:
        pytest.fail(f"settle() quiet (< 0.2 s), capped at 0.05 s, waited for 0.4 s of spinning: {seen}")


def test_other_processes_keeping_a_core_busy_are_seen():
    """A process spinning beside the sampler shows as a share of the machine's cores
    (about 1 / cores); records carry it as machine_busy, and the report ranks no figure
    timed on a machine that busy (report.BUSY_LIMIT)."""
    import os
    import subprocess
    import sys
    import time

    from harness.timing import OtherLoad

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 3\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.3)
        load = OtherLoad()
        load.start()
        time.sleep(1.0)
        load.stop()
    finally:
        spinner.kill()
        spinner.wait()
    cores = os.cpu_count() or 1
    assert load.share is not None and load.share >= 0.6 / cores, (load.share, cores)
