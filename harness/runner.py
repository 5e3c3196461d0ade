"""The check / bench loop shared by every CLI command.

For each (case, dtype): make fresh inputs once, compute the float64 reference and the
same-dtype NumPy chain (the accuracy yardstick), then for each selected implementation:
prepare (upload, compile; untimed), poison outputs, run, judge. When benchmarking, the
implementations that passed through are timed with `harness.timing.Sampler` in
`Options.rounds` interleaved rounds (each takes a share of the budget in turn, every
other round in reverse order, so that a drift of the machine's speed falls on all of
them alike), as many at once as the backend's memory holds; then each is poisoned, run
and judged again on both input sets (a kernel that is only right on its first call
fails). A record goes to `on_record` as soon as it is final: at once for a check that
fails or a run without timing, after the rounds for a timed one.

An implementation that raises is recorded as an error with its reason and the loop goes
on; one whose backend is unavailable on this machine is recorded once as unavailable.
"""

from __future__ import annotations

import time
import traceback
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from harness.accuracy import Yardstick
from harness.backends import BackendUnavailable, Prepared, get_backend
from harness.cases import Case
from harness.registry import Implementation, Registry


@dataclass
class Options:
    bench: bool = False
    seed: int = 0
    budget_s: float = 0.5
    warmup_s: float = 0.05
    min_samples: int = 10
    target_noise: float = 0.01
    cold: bool = True
    dtypes: tuple[str, ...] | None = None
    value_shape: str = "normal"  # harness.spec.VALUE_SHAPES
    # Before each timed segment, wait (at most this long) until the process's other
    # threads are idle (harness.timing.settle): BLAS and OpenMP worker threads of the
    # library used just before keep spinning for a while and steal the cores.
    settle_s: float = 0.5
    # Implementations of a job on one backend are timed in this many interleaved rounds
    # (each a share of the budget; every other round in reverse order, A B B A A B B A),
    # so that a drift of the machine's speed falls on all of them alike (with an even
    # number, a steady drift exactly so); 1 times each in one block, one after the other.
    rounds: int = 4


@dataclass
class Job:
    case: Case
    dtype: str
    impls: list[Implementation] = field(default_factory=list)
    timed: bool = True  # False: checked only, whatever the options say (run's smoke cases)
    kept: bool = True  # False: a warm-up (compile caches filled ahead of a timed job); records dropped


def plan(cases: list[Case], impls: list[Implementation], dtypes=None) -> list[Job]:
    """One job per (case, dtype) with the implementations that claim that dtype."""
    jobs = []
    for case in cases:
        for dtype in case.dtypes:
            if dtypes and dtype not in dtypes:
                continue
            chosen = [i for i in impls if i.fusion == case.fusion and dtype in i.dtypes]
            if chosen:
                jobs.append(Job(case, dtype, chosen))
    return jobs


def case_seed(case: Case, dtype: str, seed: int) -> int:
    return zlib.crc32(f"{case.fusion}/{case.id}/{dtype}/{seed}".encode())


def unavailable_records(impls: list[Implementation]) -> tuple[list[dict], list[Implementation]]:
    """(records for the implementations this machine cannot run, the ones it can)."""
    records, usable = [], []
    for impl in impls:
        ok, why = impl.available()
        if ok:
            usable.append(impl)
        else:
            records.append({**impl_fields(impl), "case": "-", "dtype": "-", "status": "unavailable", "reason": why})
    return records, usable


def impl_fields(impl: Implementation) -> dict:
    return {"fusion": impl.fusion, "backend": impl.backend, "variant": impl.variant, "kind": impl.kind,
            "impl": impl.key}


def run_job(reg: Registry, job: Job, opts: Options, on_record: Callable[[dict], None],
            on_impl: Callable[[Implementation], None] = lambda i: None) -> None:
    case, dtype = job.case, job.dtype
    spec = reg.fusions[case.fusion]
    dims, attrs = spec.split(case.params)
    seed = case_seed(case, dtype, opts.seed)
    too_big = memory_shortfall(spec.cost(dims, "float64").bytes * HOST_COPIES, host_memory_available(), "RAM")
    if too_big:
        for impl in job.impls:
            on_record({**impl_fields(impl), "case": case.id, "model": case.model, "params": case.params,
                       "dtype": dtype, "seed": seed, "case_file": case.where,
                       "status": "skipped", "reason": too_big})
        return
    if not job.timed:
        opts = replace(opts, bench=False)
    inputs = spec.make_inputs(dims, dtype, seed, opts.value_shape)
    ctx = _JobContext(spec, dims, attrs, dtype, seed, inputs, opts)
    held: list[_Trial] = []  # checked, awaiting their timing (interleaved rounds)
    for impl in job.impls:
        on_impl(impl)
        trial = _Trial(ctx, impl, case)
        if not trial.check():
            on_record(trial.finish())
            continue
        if opts.rounds <= 1 or not ctx.fits(len(held) + 1, trial.backend):
            _time_together(held, ctx, on_record, on_impl)  # what is held first, then this one alone
            held = []
            _time_together([trial], ctx, on_record, on_impl)
        else:
            held.append(trial)
    _time_together(held, ctx, on_record, on_impl)


def _time_together(trials: list["_Trial"], ctx: "_JobContext", on_record, on_impl) -> None:
    """Time the trials in `ctx.opts.rounds` interleaved rounds (one segment when there is
    only one), then check each again and record it."""
    if not trials:
        return
    rounds = ctx.opts.rounds if len(trials) > 1 else 1
    for r in range(rounds):
        for trial in (trials if r % 2 == 0 else trials[::-1]):
            if trial.failed:
                continue
            on_impl(trial.impl)
            trial.sample(r, rounds)
    for trial in trials:
        on_record(trial.finish())


class _JobContext:
    """What every implementation of one job shares: the inputs, their pristine copies,
    the first input set (reference and chain) and the fresh set timed runs alternate with."""

    def __init__(self, spec, dims, attrs, dtype, seed, inputs, opts):
        self.spec, self.dims, self.attrs, self.dtype, self.seed, self.opts = spec, dims, attrs, dtype, seed, opts
        self.inputs = inputs
        self.pristine = {k: v.copy() for k, v in inputs.items()}
        self.first = _Set(spec, inputs, attrs, dtype)
        self.again = self.first.again(self.pristine)
        self.second = None  # drawn for the first timing
        self.spots = None  # spot sets, made for the first timing
        self.cost = spec.cost(dims, dtype)

    def fresh(self) -> "_Set":
        if self.second is None:
            self.second = self.first.fresh(self.dims, self.seed, self.opts.value_shape)
        return self.second

    def spot_sets(self) -> list["_Set"]:
        """The job's spot sets (harness.rotation): the first set's rotated inputs shuffled,
        with their references; made once, for the first implementation timed."""
        if self.spots is None:
            from harness.rotation import SPOT_SETS, shuffled_set

            rng = np.random.default_rng(self.seed ^ 0x5B01)
            names = self.spec.rotated_inputs()
            self.spots = [_Set(self.spec, {**self.first.inputs, **shuffled_set({k: self.pristine[k] for k in names}, rng)},
                               self.attrs, self.dtype, names) for _ in range(SPOT_SETS)]
        return self.spots

    def fits(self, n: int, backend) -> bool:
        """Whether n implementations' buffers fit in `backend`'s memory at once."""
        return not memory_shortfall(self.cost.bytes * DEVICE_COPIES * n, backend.memory_available(), "memory")


class _Trial:
    """One implementation on one job: prepare and check, sample (in one or more
    segments), check again after the timing loop, and the record."""

    def __init__(self, ctx: _JobContext, impl: Implementation, case: Case):
        self.ctx, self.impl = ctx, impl
        self.rec = {**impl_fields(impl), "case": case.id, "model": case.model, "params": case.params,
                    "dtype": ctx.dtype, "seed": ctx.seed, "bytes": ctx.cost.bytes, "flops": ctx.cost.flops,
                    "case_file": case.where}
        self.prepared = None
        self.rotation = None  # harness.rotation.Rotation: inputs between samples, spot checks
        self.timed = None  # what the timing loop runs: prepared, or a graph of it (Backend.timing_target)
        self.backend = None
        self.sampler = None
        self.sets = None
        self.rotated = False
        self.verdict = None
        self.reasons: list[str] = []
        self.failed = False
        self.seconds = 0.0

    def _guard(self, step) -> bool:
        """Run step(); on an exception, record why and mark the trial failed."""
        started = time.perf_counter()
        try:
            step()
            return True
        except TooLarge as e:  # refused before anything was allocated on the device
            self.rec.update(status="skipped", reason=str(e))
        except BackendUnavailable as e:  # e.g. a chain primitive this backend does not have
            self.rec.update(status="unavailable", reason=str(e))
        except Exception as e:  # one broken kernel must not take the run down
            tb = traceback.format_exc(limit=6)
            self.rec.update(status="error", verdict="fail", reason=f"{type(e).__name__}: {e}", traceback=tb)
        finally:
            self.seconds += time.perf_counter() - started
        self.failed = True
        return False

    def check(self) -> bool:
        """Prepare, run once on poisoned outputs, judge. True when it is to be timed."""
        # the float64 reference is the yardstick, not a contender: checked, never timed
        return self._guard(self._check) and self.ctx.opts.bench and self.impl.kind != "reference"

    def _check(self):
        ctx = self.ctx
        self.backend = get_backend(self.impl.backend)
        too_big = memory_shortfall(ctx.cost.bytes * DEVICE_COPIES, self.backend.memory_available(), "device memory")
        if too_big:
            raise TooLarge(too_big)
        self.prepared = self.impl.prepare(ctx.spec, ctx.inputs, ctx.attrs, ctx.dtype)
        if getattr(self.prepared, "path", None):  # the library path a peer took (TorchPeer)
            self.rec["path"] = self.prepared.path
        self.prepared.poison()
        self.prepared.run()
        self.verdict = ctx.first.judge(self.prepared)
        self.reasons = list(self.verdict.reasons)
        changed = [k for k in ctx.inputs if not _same(ctx.inputs[k], ctx.pristine[k])]
        if changed:
            self.reasons.append(f"inputs modified by the kernel: {', '.join(changed)}")
            for k in changed:
                ctx.inputs[k][...] = ctx.pristine[k]
        self.reasons += _device_inputs_changed(self.prepared, ctx.pristine, changed)

    def sample(self, r: int, rounds: int) -> None:
        """Segment r of `rounds`: each takes an equal share of the budget and of the
        minimum sample count (10 in 4 rounds: 3, 3, 2, 2), so slow kernels, whose count
        is their minimum, cost no more samples than in one block."""
        self._guard(lambda: self._sample(r, rounds))

    def _sample(self, r: int, rounds: int):
        from harness.timing import MAX_SAMPLES, Sampler, settle

        ctx, opts = self.ctx, self.ctx.opts
        if self.sampler is None:
            self.sets = (ctx.fresh(), ctx.again)
            self.timed, self.rec["timing_method"] = self.backend.timing_target(self.prepared)
            self.rec["launches"] = self.backend.launches(self.timed)  # before other trials run
            self.rotation, why = _rotation(self.timed, self.sets, ctx, opts)
            if why:
                self.reasons.append(why)
            self.rotated = self.rotation is not None
            self.sampler = Sampler(self.backend, self.timed, cold=opts.cold,
                                   between=self.rotation.before if self.rotated else None,
                                   after=self.rotation.after if self.rotated else None)
        settle(opts.settle_s)
        share = opts.budget_s / rounds
        # Later rounds warm up with one run only where a run is cheap against their share
        # of the budget (a 5 s kernel would otherwise pay a run per round).
        done = self.sampler.samples
        warmup = opts.warmup_s if r == 0 else (0.0 if float(np.median(done)) < 0.1 * share else None)
        self.sampler.take(budget_s=share, warmup_s=warmup,
                          min_samples=opts.min_samples // rounds + (r < opts.min_samples % rounds),
                          max_samples=MAX_SAMPLES, target_noise=opts.target_noise)

    def finish(self) -> dict:
        """Check both input sets again after timing, close, and return the record."""
        if not self.failed and self.sampler is not None:
            self._guard(self._after_timing)
        if not self.failed:
            reasons = self.reasons
            self.rec.update(status="ok" if not reasons else "fail", verdict="pass" if not reasons else "fail",
                            reason="; ".join(reasons), **self.verdict.worst.as_dict(),
                            chain_nmse=max(self.verdict.chain_nmse.values(), default=None),
                            outputs={k: m.as_dict() for k, m in self.verdict.metrics.items()})
        self._close()
        self.rec["duration_s"] = self.seconds  # wall time of the check (and timing)
        return self.rec

    def _after_timing(self):
        # Both input sets checked again, the fresh one first (a kernel that kept the result
        # of its first call fails it), then the first set, left in place.
        ctx, sets, prepared = self.ctx, self.sets, self.timed  # what was timed is what is checked
        if self.rotated:
            self.reasons += self.rotation.problems
        for label, current in (("fresh inputs", sets[0]), ("the first inputs", sets[1])):
            if not self.rotated and current is sets[0]:
                continue
            if self.rotated:
                Prepared.refresh(prepared, current.rotated)  # inputs written, nothing else
            prepared.poison()
            prepared.run()
            after = current.judge(prepared)
            if not after.passed:
                self.reasons.append(f"after the timing loop, on {label}: " + "; ".join(after.reasons))
        self.reasons += [f"after the timing loop: {r}" for r in _device_inputs_changed(prepared, ctx.pristine, [])]
        t = self.sampler.timing()
        self.rec.update(_timing_fields(t, ctx.cost, self.backend, ctx.dtype, self.impl.kind,
                                       self.rotation.invalid if self.rotated else []))
        self.rec["segments"] = self.sampler.segments
        self.rec["latency_s"] = self._latency(t)

    def _latency(self, t) -> float:
        """Host seconds from calling run() to its end on an idle device (the launches
        included): the timing itself where the host clock timed it, else a few direct runs
        (as many as fit in the budget, 1 to 5)."""
        if not self.backend.device_timed:
            return t.median
        runs = int(min(5, max(1, self.ctx.opts.budget_s / max(t.median, 1e-9))))
        return self.backend.latency(self.prepared, runs, self.ctx.opts.cold)

    def _close(self):
        if self.sampler is not None:
            self.sampler.close()
        if self.timed is not None and self.timed is not self.prepared:
            self.timed.close()
        if self.prepared is not None:
            self.prepared.close()
        if self.rotated:  # a CPU kernel reads the job's own arrays: the next one must see the first set
            for k in self.ctx.second.rotated:
                self.ctx.inputs[k][...] = self.ctx.pristine[k]



class _Set:
    """One input set of a job with what judging a kernel on it needs
    (harness.accuracy.Yardstick: the float64 reference, the same-dtype NumPy chain and
    the rounding model's allowance). `rotated` holds the inputs a rotation writes (the
    spec's rotated inputs; all of them for a job's first set)."""

    def __init__(self, spec, inputs, attrs, dtype, names=None, yard: Yardstick | None = None):
        self.spec, self.inputs, self.attrs, self.dtype = spec, inputs, attrs, dtype
        self.rotated = {k: inputs[k] for k in (names if names is not None else inputs)}
        self.yard = yard if yard is not None else Yardstick.for_inputs(spec, inputs, attrs, dtype)

    @property
    def reference(self) -> dict:
        return self.yard.reference

    def judge(self, prepared):
        return self.yard.judge(prepared.outputs())

    def fresh(self, dims, seed: int, value_shape: str) -> "_Set":
        """A second set: the spec's rotated inputs drawn again (from another seed), the
        others (weights) shared with this one."""
        names = self.spec.rotated_inputs()
        drawn = self.spec.make_inputs(dims, self.dtype, seed ^ 0x5EED, value_shape)
        return _Set(self.spec, {**self.inputs, **{k: drawn[k] for k in names}}, self.attrs, self.dtype, names)

    def again(self, inputs) -> "_Set":
        """This set from other arrays holding the same values (its pristine copies)."""
        return _Set(self.spec, inputs, self.attrs, self.dtype, self.spec.rotated_inputs(), yard=self.yard)


def _rotation(timed, sets, ctx, opts):
    """(Rotation, problem): what the timing loop writes into the kernel's input buffers
    before each sample and checks after some (harness.rotation); None and the reason where
    the implementation does not declare its input buffers (its figures then cannot rule
    out a kept result)."""
    from harness.rotation import Rotation

    missing = [k for k in sets[0].rotated if k not in timed.inputs]
    if missing:
        return None, (f"cannot rotate fresh inputs between timed runs: the implementation does not declare its "
                      f"input buffer(s) {', '.join(missing)} (Prepared.bind_inputs)")
    return Rotation(timed, sets, ctx.spot_sets(), ctx.seed ^ 0x5B07, max(1, opts.min_samples // opts.rounds)), ""


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical values (a is cast to b's dtype first: the reference holds float64)."""
    a = np.asarray(a)
    if a.dtype != b.dtype:
        a = a.astype(b.dtype)
    return a.shape == b.shape and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def _device_inputs_changed(prepared, pristine, already) -> list[str]:
    """A reason when the input buffers the kernel declares no longer hold the inputs."""
    changed = [k for k, v in prepared.input_values().items()
               if k in pristine and k not in already and not _same(v, pristine[k])]
    return [f"inputs modified by the kernel on its device: {', '.join(changed)}"] if changed else []


# What a job holds on the host, in float64 copies of its inputs and outputs: the float64
# draw, the reference outputs, the rounded inputs with their pristine copies, the chain's
# outputs and intermediates, the second (fresh) draw timed runs alternate with (an
# estimate; a case above it is skipped, not attempted).
HOST_COPIES = 5
# What an implementation holds on its device: inputs and outputs, plus the unfused
# chain's intermediates or a kernel's workspace of about the same size.
DEVICE_COPIES = 2


class TooLarge(Exception):
    """A case that would not fit in the memory where it would run."""


def host_memory_available() -> int | None:
    """Bytes of RAM available to a new allocation (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_shortfall(need: int, available: int | None, where: str) -> str:
    """A reason to skip when `need` bytes do not fit in 90 % of `available`, else ""."""
    if available is None or need <= 0.9 * available:
        return ""
    return f"too large for this machine: needs about {need / 2**30:.1f} GiB of {where}, {available / 2**30:.1f} GiB available"


# Host time per sample that neither the launch, the device time nor the timer's overhead
# explains is work the device timer missed; beyond this fraction of the device time (and
# this many times the overhead, whose own jitter it must clear) the figure is invalid.
UNSEEN_FRACTION = 0.5
UNSEEN_OVERHEADS = 3.0

# A measured peak is itself a noisy measurement: a kernel within this margin above it
# (plus three times its own noise) is reported as it is, beyond it flagged invalid.
PEAK_MARGIN = 0.02


def _timing_fields(t, cost, backend, dtype: str, kind: str, seen: list[str] = ()) -> dict:
    """The record's timing figures; `seen`: what the loop's checks found that makes the
    figure invalid (harness.rotation)."""
    gbps = cost.bytes / t.median / 1e9
    gflops = cost.flops / t.median / 1e9

    def fractions(peak):
        bw = peak.get("copy_gbps")
        fl = peak.get(f"matmul_gflops_{dtype}") or peak.get("matmul_gflops")
        return (gbps / bw if bw else None), (gflops / fl if fl else None)

    def beyond(fracs):
        fracs = [f for f in fracs if f is not None]
        return kind != "reference" and fracs and max(fracs) > 1.0 + max(PEAK_MARGIN, 3 * t.noise)

    peak = backend.peak()
    frac_bw, frac_flops = fractions(peak)
    if beyond((frac_bw, frac_flops)):  # the peak itself may have been measured under load
        peak = backend.repeak()
        frac_bw, frac_flops = fractions(peak)
    fracs = [f for f in (frac_bw, frac_flops) if f is not None]
    why = []
    if beyond(fracs):
        why.append(f"{100 * max(fracs):.0f}% of the measured peak")
    why += list(seen)
    if t.threads_left:
        why.append(f"run() left a thread running after it returned ({t.threads_left} of {t.n} samples): work the "
                   f"timer did not see")
    overhead = t.overhead  # None together with t.unaccounted: a host-timed backend
    if overhead is not None and t.unaccounted > max(UNSEEN_FRACTION * t.median, UNSEEN_OVERHEADS * overhead):
        why.append(f"the host clock saw {t.unaccounted * 1e3:.3g} ms per run beyond the launch, the "
                   f"{t.median * 1e3:.3g} ms of device time and the timer's {overhead * 1e3:.2g} ms overhead: "
                   f"work the device timer did not see (another stream, a side submission)")
    return {"time": t.as_dict(), "median_s": t.median, "machine_busy": t.busy_other, "p20_s": t.p20, "p80_s": t.p80, "min_s": t.min,
            "n": t.n, "noise": t.noise, "gbps": gbps, "gflops": gflops, "peak": peak, "frac_bw": frac_bw,
            "frac_flops": frac_flops, "frac_peak": max(fracs) if fracs else None,
            "unaccounted_s": t.unaccounted, "timer_overhead_s": overhead,
            "invalid": bool(why), "invalid_reason": "; ".join(why)}
