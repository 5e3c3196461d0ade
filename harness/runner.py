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
    reference = spec.decompose(NumpyOps("float64"), **inputs, **attrs)
    chain = spec.decompose(NumpyOps(dtype), **inputs, **attrs)
    magnitude = spec.magnitude(inputs, attrs) if spec.magnitude else None
    cost = spec.cost(dims, dtype)
    bound = spec.nmse_bound[dtype]
    for impl in job.impls:
        on_impl(impl)
        rec = {**impl_fields(impl), "case": case.id, "model": case.model, "params": case.params, "dtype": dtype,
               "seed": seed, "bytes": cost.bytes, "flops": cost.flops, "nmse_bound": bound, "case_file": f"{case.file}:{case.line}"}
        prepared = None
        started = time.perf_counter()
        try:
            backend = get_backend(impl.backend)
            too_big = memory_shortfall(cost.bytes * DEVICE_COPIES, backend.memory_available(), "device memory")
            if too_big:
                raise TooLarge(too_big)
            prepared = impl.prepare(spec, inputs, attrs, dtype)
            prepared.poison()
            prepared.run()
            verdict = judge(prepared.outputs(), reference, chain, dtype, bound, spec.k_vs_chain, magnitude)
            reasons = list(verdict.reasons)
            changed = [k for k in inputs if not np.array_equal(inputs[k].view(np.uint8), pristine[k].view(np.uint8))]
            if changed:
                reasons.append(f"inputs modified by the kernel: {', '.join(changed)}")
                for k in changed:
                    inputs[k][...] = pristine[k]
            if opts.bench:
                time.sleep(opts.settle_s)
                t = measure(backend, prepared, budget_s=opts.budget_s, warmup_s=opts.warmup_s,
                            min_samples=opts.min_samples, target_noise=opts.target_noise, cold=opts.cold)
                prepared.poison()
                prepared.run()
                after = judge(prepared.outputs(), reference, chain, dtype, bound, spec.k_vs_chain, magnitude)
                if not after.passed:
                    reasons.append("after the timing loop: " + "; ".join(after.reasons))
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
        rec["duration_s"] = time.perf_counter() - started  # wall time of the check (and timing)
        on_record(rec)


# What a job holds on the host, in float64 copies of its inputs and outputs: the float64
# draw, the reference outputs, the rounded inputs with their pristine copies, the chain's
# outputs and intermediates (an estimate; a case above it is skipped, not attempted).
HOST_COPIES = 4
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
    return {"time": t.as_dict(), "median_s": t.median, "p20_s": t.p20, "p80_s": t.p80, "min_s": t.min,
            "n": t.n, "noise": t.noise, "gbps": gbps, "gflops": gflops, "peak": peak, "frac_bw": frac_bw,
            "frac_flops": frac_flops, "frac_peak": max(fracs) if fracs else None,
            "invalid": kind != "reference" and bool(fracs and max(fracs) > 1.0 + max(PEAK_MARGIN, 3 * t.noise))}
