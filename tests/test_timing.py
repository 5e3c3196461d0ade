"""measure(): warm-up, at least min_samples, statistics that describe the samples."""

from __future__ import annotations

import itertools

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
