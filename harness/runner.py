"""The check / bench loop shared by every CLI command.

For each (case, dtype): make fresh inputs once, compute the float64 reference and the
same-dtype NumPy chain (the accuracy yardstick), then for each selected implementation:
prepare (upload, compile; untimed), poison outputs, run, judge; when benchmarking, time
with `harness.timing.measure`, then poison, run and judge again (a kernel that is only
right on its first call fails). Each finished record goes to `on_record` at once.

An implementation that raises is recorded as an error with its reason and the loop goes
on; one whose backend is unavailable on this machine is recorded once as unavailable.
"""

from __future__ import annotations

import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from harness.accuracy import judge
from harness.backends import BackendUnavailable, get_backend
from harness.cases import Case
from harness.ops import NumpyOps
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
    # Idle pause before each measurement: BLAS and OpenMP worker threads of the library
    # used just before keep spinning for a while and steal the cores (measured here: a
    # numba kernel at 13-21 ms right after NumPy/torch work, 4.2 ms after a 0.3 s pause).
    settle_s: float = 0.3


@dataclass
class Job:
    case: Case
    dtype: str
    impls: list[Implementation] = field(default_factory=list)


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
    from harness.timing import measure

    case, dtype = job.case, job.dtype
    spec = reg.fusions[case.fusion]
    dims, attrs = spec.split(case.params)
    seed = case_seed(case, dtype, opts.seed)
    too_big = memory_shortfall(spec.cost(dims, "float64").bytes * HOST_COPIES, host_memory_available(), "RAM")
    if too_big:
        for impl in job.impls:
            on_record({**impl_fields(impl), "case": case.id, "model": case.model, "params": case.params,
                       "dtype": dtype, "seed": seed, "case_file": f"{case.file}:{case.line}",
                       "status": "skipped", "reason": too_big})
        return
    inputs = spec.make_inputs(dims, dtype, seed, opts.value_shape)
    pristine = {k: v.copy() for k, v in inputs.items()}
    first = _Set(spec, inputs, attrs, dtype)
    again = first.again(pristine)
    second = None  # the fresh input set timed runs alternate with (drawn for the first timing)
    cost = spec.cost(dims, dtype)
    bound = spec.nmse_bound[dtype]
    for impl in job.impls:
        on_impl(impl)
        rec = {**impl_fields(impl), "case": case.id, "model": case.model, "params": case.params, "dtype": dtype,
               "seed": seed, "bytes": cost.bytes, "flops": cost.flops, "nmse_bound": bound, "case_file": f"{case.file}:{case.line}"}
        prepared = None
        rotated = False
        started = time.perf_counter()
        try:
            backend = get_backend(impl.backend)
            too_big = memory_shortfall(cost.bytes * DEVICE_COPIES, backend.memory_available(), "device memory")
            if too_big:
                raise TooLarge(too_big)
            prepared = impl.prepare(spec, inputs, attrs, dtype)
            prepared.poison()
            prepared.run()
            verdict = first.judge(prepared, bound)
            reasons = list(verdict.reasons)
            changed = [k for k in inputs if not _same(inputs[k], pristine[k])]
            if changed:
                reasons.append(f"inputs modified by the kernel: {', '.join(changed)}")
                for k in changed:
                    inputs[k][...] = pristine[k]
            reasons += _device_inputs_changed(prepared, pristine, changed)
            if opts.bench:
                if second is None:
                    second = first.fresh(dims, seed, opts.value_shape)
                sets = (second, again)
                between, why = _rotation(prepared, sets)
                if why:
                    reasons.append(why)
                rotated = between is not None
                time.sleep(opts.settle_s)
                t = measure(backend, prepared, budget_s=opts.budget_s, warmup_s=opts.warmup_s,
                            min_samples=opts.min_samples, target_noise=opts.target_noise, cold=opts.cold,
                            between=between)
                # Both input sets checked again, the fresh one first (a kernel that kept the
                # result of its first call fails it), then the first set, left in place.
                for label, current in (("fresh inputs", sets[0]), ("the first inputs", sets[1])):
                    if not rotated and current is sets[0]:
                        continue
                    if rotated:
                        prepared.refresh(current.rotated)
                    prepared.poison()
                    prepared.run()
                    after = current.judge(prepared, bound)
                    if not after.passed:
                        reasons.append(f"after the timing loop, on {label}: " + "; ".join(after.reasons))
                reasons += [f"after the timing loop: {r}" for r in _device_inputs_changed(prepared, pristine, [])]
                rec.update(_timing_fields(t, cost, backend, dtype, impl.kind))
            rec.update(status="ok" if not reasons else "fail", verdict="pass" if not reasons else "fail",
                       reason="; ".join(reasons), **verdict.worst.as_dict(),
                       chain_nmse=max(verdict.chain_nmse.values(), default=None),
                       outputs={k: m.as_dict() for k, m in verdict.metrics.items()})
        except TooLarge as e:  # refused before anything was allocated on the device
            rec.update(status="skipped", reason=str(e))
        except BackendUnavailable as e:  # e.g. a chain primitive this backend does not have
            rec.update(status="unavailable", reason=str(e))
        except Exception as e:  # one broken kernel must not take the run down
            tb = traceback.format_exc(limit=6)
            rec.update(status="error", verdict="fail", reason=f"{type(e).__name__}: {e}", traceback=tb)
        finally:
            if prepared is not None:
                prepared.close()
            if rotated:  # a CPU kernel reads the job's own arrays: the next one must see the first set
                for k in second.rotated:
                    inputs[k][...] = pristine[k]
        rec["duration_s"] = time.perf_counter() - started  # wall time of the check (and timing)
        on_record(rec)


class _Set:
    """One input set of a job with what judging a kernel on it needs: the float64
    reference, the same-dtype NumPy chain and the magnitude of the terms. `rotated` holds
    the inputs a rotation writes (the spec's rotated inputs; all of them for a job's
    first set)."""

    def __init__(self, spec, inputs, attrs, dtype, names=None, outputs_of: "_Set | None" = None):
        self.spec, self.inputs, self.attrs, self.dtype = spec, inputs, attrs, dtype
        self.rotated = {k: inputs[k] for k in (names if names is not None else inputs)}
        if outputs_of is not None:
            self.reference, self.chain, self.magnitude = outputs_of.reference, outputs_of.chain, outputs_of.magnitude
            self.judged = outputs_of.judged
            return
        self.judged: dict = {}  # what judge() computes once per set (the chain's error)
        self.reference = spec.decompose(NumpyOps("float64"), **inputs, **attrs)
        self.chain = spec.decompose(NumpyOps(dtype), **inputs, **attrs)
        self.magnitude = spec.magnitude(inputs, attrs) if spec.magnitude else None

    def judge(self, prepared, bound):
        return judge(prepared.outputs(), self.reference, self.chain, self.dtype, bound, self.spec.k_vs_chain,
                     self.magnitude, cache=self.judged)

    def fresh(self, dims, seed: int, value_shape: str) -> "_Set":
        """A second set: the spec's rotated inputs drawn again (from another seed), the
        others (weights) shared with this one."""
        names = self.spec.rotated_inputs()
        drawn = self.spec.make_inputs(dims, self.dtype, seed ^ 0x5EED, value_shape)
        return _Set(self.spec, {**self.inputs, **{k: drawn[k] for k in names}}, self.attrs, self.dtype, names)

    def again(self, inputs) -> "_Set":
        """This set from other arrays holding the same values (its pristine copies)."""
        return _Set(self.spec, inputs, self.attrs, self.dtype, self.spec.rotated_inputs(), outputs_of=self)


def _rotation(prepared, sets):
    """(between, problem): the callback measure() runs before each sample, writing set
    i % 2 into the kernel's input buffers; None and the reason where the implementation
    does not declare them (its figures then cannot rule out a cached result)."""
    missing = [k for k in sets[0].rotated if k not in prepared.inputs]
    if missing:
        return None, (f"cannot rotate fresh inputs between timed runs: the implementation does not declare its "
                      f"input buffer(s) {', '.join(missing)} (Prepared.bind_inputs)")

    def between(i):
        prepared.refresh(sets[i % 2].rotated)

    return between, ""


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


def _timing_fields(t, cost, backend, dtype: str, kind: str) -> dict:
    peak = backend.peak()
    gbps = cost.bytes / t.median / 1e9
    gflops = cost.flops / t.median / 1e9
    bw = peak.get("copy_gbps")
    fl = peak.get(f"matmul_gflops_{dtype}") or peak.get("matmul_gflops")
    frac_bw = gbps / bw if bw else None
    frac_flops = gflops / fl if fl else None
    fracs = [f for f in (frac_bw, frac_flops) if f is not None]
    why = []
    if kind != "reference" and fracs and max(fracs) > 1.0 + max(PEAK_MARGIN, 3 * t.noise):
        why.append(f"{100 * max(fracs):.0f}% of the measured peak")
    overhead = t.overhead if t.unaccounted is not None else None
    if overhead is not None and t.unaccounted > max(UNSEEN_FRACTION * t.median, UNSEEN_OVERHEADS * overhead):
        why.append(f"the host clock saw {t.unaccounted * 1e3:.3g} ms per run beyond the launch, the "
                   f"{t.median * 1e3:.3g} ms of device time and the timer's {overhead * 1e3:.2g} ms overhead: "
                   f"work the device timer did not see (another stream, a side submission)")
    return {"time": t.as_dict(), "median_s": t.median, "p20_s": t.p20, "p80_s": t.p80, "min_s": t.min,
            "n": t.n, "noise": t.noise, "gbps": gbps, "gflops": gflops, "peak": peak, "frac_bw": frac_bw,
            "frac_flops": frac_flops, "frac_peak": max(fracs) if fracs else None,
            "unaccounted_s": t.unaccounted, "timer_overhead_s": overhead,
            "invalid": bool(why), "invalid_reason": "; ".join(why)}
