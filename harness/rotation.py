"""What the timing loop writes into a kernel's input buffers between samples, and the
checks it makes inside the loop.

A kernel must not be able to serve a timed run from a result it kept: so no two samples
see the same inputs. Before each sample the spec's rotated inputs (the activations) of
one of the job's two input sets are written again with their elements shuffled afresh:
a permutation for small arrays, a rotation by a random offset for large ones (a copy, so
that shuffling costs no more than writing). The values stay those of the set, so the
work, and the time it takes, do not change.

At a few sample numbers drawn at random (one within the first segment's minimum, then
each sample with probability SPOT_PROBABILITY, at most MAX_SPOTS), a spot set goes in
instead: shuffled the same way, but with its reference known (a harness.accuracy
Yardstick). Right after such a sample, outside the timed region, the outputs are read
back through the kernel's own outputs() and judged, and the time outputs() took is held
against a plain read of the same buffers just before: an outputs() that computes what
run() left undone (slow even in its fastest of RECHECKS more reads, each after a run of
its own, so that bursts of load on a busy machine are not taken for work) makes the
figure invalid, and a wrong answer fails the
check. The kernel cannot
tell a spot from any other sample. Inputs are always written with Prepared.refresh
itself, never an override: writing inputs is all that happens between samples.
"""

from __future__ import annotations

import time

import numpy as np

from harness.backends import Prepared

SPOT_SETS = 2  # spot sets per job, shared by its implementations
SPOT_PROBABILITY = 0.1
MAX_SPOTS = 4
SHUFFLE_LIMIT = 1 << 16  # elements: a permutation at or below, a random rotation above
# outputs() may take this fraction of a sample's time beyond reading the outputs back
# (and 3x that read) before the figure is invalid
OUTPUTS_SPARE = 0.25
# read-back pairs measured again before a slow outputs() is called work done after run()
RECHECKS = 5


def shuffled(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """a's elements in another order (same shape and dtype, a new array)."""
    flat = np.asarray(a).reshape(-1)
    if flat.size <= 1:
        return np.array(a, copy=True)
    if flat.size <= SHUFFLE_LIMIT:
        return flat[rng.permutation(flat.size)].reshape(np.shape(a))
    return np.roll(flat, int(rng.integers(1, flat.size))).reshape(np.shape(a))


def shuffled_set(values: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: shuffled(v, rng) for k, v in values.items()}


class Rotation:
    """The callbacks of one implementation's timing loop: before(i) writes sample i's
    inputs, after(i, seconds) checks a spot sample. `sets`: the job's two input sets
    (runner._Set); `spots`: its spot sets; `problems` (wrong outputs) and `invalid`
    (work outside the timed run) collect what was seen."""

    def __init__(self, timed: Prepared, sets, spots, seed: int, first_spot_within: int):
        self.timed, self.sets, self.spots = timed, sets, spots
        self.rng = np.random.default_rng(seed)
        self.first_spot = int(self.rng.integers(0, max(1, first_spot_within)))
        self.pending = None
        self.checked = 0
        self.problems: list[str] = []
        self.invalid: list[str] = []

    def _is_spot(self, i: int) -> bool:
        if not self.spots or self.checked >= MAX_SPOTS:
            return False
        return i == self.first_spot or (i > self.first_spot and self.rng.random() < SPOT_PROBABILITY)

    def before(self, i: int) -> None:
        if self._is_spot(i):
            self.pending = self.spots[self.checked % len(self.spots)]
            values = self.pending.rotated
        else:
            self.pending = None
            values = shuffled_set(self.sets[i % 2].rotated, self.rng)
        Prepared.refresh(self.timed, values)

    def after(self, i: int, seconds: float) -> None:
        spot, self.pending = self.pending, None
        if spot is None:
            return
        self.checked += 1
        outputs, through_kernel, plain = self._read_back()
        verdict = spot.yard.judge(outputs)
        if not verdict.passed:
            self.problems.append(f"in the timing loop, at sample {i}: " + "; ".join(verdict.reasons))
        if self._slow(through_kernel, plain, seconds):
            # RECHECKS more pairs, each after a run of its own, the plain read first in
            # every other pair, judged by their minima: load only ever adds time, so a
            # kernel computing in outputs() is slow in its fastest read too, while a burst of
            # load on a busy machine (lavapipe's read-backs took 1 to 12 ms at random with
            # two other test runs going) is not
            pairs = []
            for k in range(RECHECKS):
                self.timed.backend.synchronize()
                self.timed.run()
                self.timed.backend.synchronize()
                pairs.append(self._read_back(plain_first=k % 2 == 0)[1:])
            again, plain_again = (min(x) for x in zip(*pairs))
            if self._slow(again, plain_again, seconds):
                self.invalid.append(f"outputs() took {through_kernel * 1e3:.3g} ms at sample {i} (at least "
                                    f"{again * 1e3:.3g} ms in {RECHECKS} more runs), against {plain_again * 1e3:.3g} "
                                    f"ms for reading the outputs back: work done after run() returned")

    def _read_back(self, plain_first: bool = True) -> tuple[dict, float, float]:
        """(outputs through the kernel's outputs(), its seconds, the seconds of a plain read
        of the same buffers, taken before it or, with plain_first=False, after it)."""
        backend = self.timed.backend

        def plain() -> float:
            t0 = time.perf_counter()
            backend.synchronize()
            for buf in self.timed.out.values():
                backend.download(buf)
            return time.perf_counter() - t0

        before = plain() if plain_first else None
        t0 = time.perf_counter()
        outputs = self.timed.outputs()
        through = time.perf_counter() - t0
        return outputs, through, before if plain_first else plain()

    @staticmethod
    def _slow(through_kernel: float, plain: float, seconds: float) -> bool:
        return through_kernel - plain > max(OUTPUTS_SPARE * seconds, 1e-4) and through_kernel > 3 * plain
