"""Error metrics and the accuracy verdict.

Metrics per output (the reference rounded to the output dtype decides where ±Inf is
expected: an exact result beyond the dtype's range must come out as Inf): max abs error,
max relative error (floored at 1e-3 of the reference's RMS, so near-zero references do
not explode it), NMSE Σ(a−b)²/Σb², max ULP distance in the output dtype, and the count of
non-finite mismatches.

The verdict holds each output to three rules, with e = output − reference, ‖·‖ the
root of the summed squares and σ the per-element allowance of the rounding model
(harness.error_model: one rounding of every stored result and of every product, random
walk, plus float32 accumulation):

1. model bound: ‖e‖ ≤ BOUND_UNITS·‖σ‖. For a correctly rounded output σ ≥ u·|y|, and a
   dot product's σ is about u·√(2·Σ terms²) ≈ 1.4·u·|y|; so in bfloat16 the bound is
   near 2.7 % of ‖y‖ (NMSE 7e-4), in float16 0.35 %. The old bound measured error
   against Σ|terms| (√K·|y| and more: 30-8000× |y| on the Llama cases), which in
   bfloat16 admitted more error than the output's own size: an output of zeros passed.
2. the chain: ‖e‖ ≤ max(k·‖e_chain‖, floor), k = spec.k_vs_chain (2), where e_chain
   is the same-dtype NumPy chain's error (each op in float32, every intermediate stored
   in the dtype) and floor = min(CHAIN_FLOOR_UNITS·‖σ‖, FLOOR_CAP·‖y‖): the floor
   covers a chain that happens to be exact, and never exceeds 1/32 of the output's norm.
3. every row (the last axis: one token, one head) by itself: ‖e_r‖ ≤ ROW_SLACK·
   max(k·‖e_chain,r‖, CHAIN_FLOOR_UNITS·‖σ_r‖), so that one wrong token or head among
   many fails even where the whole output's error is small.

A kernel one rounding coarser than its dtype (float32 kept as TF32, float16 as bfloat16,
bfloat16 with 3 mantissa bits) fails rule 2: its error is about 3.7·u·‖y‖ against the
chain's 0.5-0.7·u·‖y‖. A rounding one bit coarser (1.4× the error) cannot be told from a
chain with one more stored intermediate, and is not claimed.

NaN or Inf fails unless the reference has the same value at the same place; shapes must
match. Each failed rule says its figures: the value, the bound, how far over, the worst row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from harness.dtypes import np_dtype, to_f64, ulp_distance

REL_FLOOR = 1e-3
BOUND_UNITS = 8.0  # rule 1, in units of the model's allowance σ
CHAIN_FLOOR_UNITS = 1.0  # rules 2 and 3: the floor under k x the chain's error, in σ
FLOOR_CAP = 1.0 / 32  # rule 2: the floor never exceeds this fraction of the output's norm
ROW_SLACK = 4.0  # rule 3: a row's error may be this many times its row threshold


@dataclass
class Metrics:
    max_abs: float
    max_rel: float
    nmse: float
    max_ulp: float
    nonfinite_mismatch: int
    shape_ok: bool
    # the NMSE the verdict allowed this output (rules 1 and 2 together); None: not judged
    nmse_bound: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def metrics(out: np.ndarray, ref: np.ndarray, dtype: str) -> Metrics:
    """Compare one output with its float64 reference (both any float dtype)."""
    a, b = to_f64(out), to_f64(ref)
    if a.shape != b.shape:
        return Metrics(math.inf, math.inf, math.inf, math.inf, int(max(a.size, b.size)), False)
    b, both, mismatch = _finite_pairs(a, b, dtype)
    if not np.any(both):
        return Metrics(0.0, 0.0, 0.0, 0.0, mismatch, True)
    d = a[both] - b[both]
    rb = b[both]
    denom = float(np.sum(rb * rb))
    err = float(np.sum(d * d))
    nmse = err / denom if denom > 0 else (0.0 if err == 0 else math.inf)
    rms_ref = math.sqrt(denom / rb.size)
    rel = np.abs(d) / np.maximum(np.abs(rb), REL_FLOOR * rms_ref if rms_ref > 0 else 1e-300)
    ulps = ulp_distance(a[both], b[both], dtype) if dtype != "float64" else np.zeros(1)
    return Metrics(float(np.max(np.abs(d))), float(np.max(rel)), nmse, float(np.max(ulps)), mismatch, True)


def _finite_pairs(a: np.ndarray, b: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(the reference with ±Inf where the exact value overflows the dtype, where both are
    finite, how many places the two disagree on a non-finite value)."""
    with np.errstate(over="ignore"):
        b_stored = to_f64(b.astype(np_dtype(dtype))) if dtype != "float64" else b
    fa, fb = np.isfinite(a), np.isfinite(b_stored)
    b = np.where(fb, b, b_stored)
    same_nonfinite = (~fa & ~fb) & ((a == b) | (np.isnan(a) & np.isnan(b)))
    mismatch = int(np.count_nonzero((fa != fb) | (~fa & ~fb & ~same_nonfinite)))
    return b, fa & fb, mismatch


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    metrics: dict[str, Metrics]
    chain_nmse: dict[str, float]

    @property
    def worst(self) -> Metrics:
        """The worst figure of each metric over all outputs; the NMSE bound is that of the
        output closest to its bound."""
        ms = list(self.metrics.values())
        bounded = [m for m in ms if m.nmse_bound]
        closest = max(bounded, key=lambda m: m.nmse / m.nmse_bound, default=None)
        return Metrics(max(m.max_abs for m in ms), max(m.max_rel for m in ms), max(m.nmse for m in ms),
                       max(m.max_ulp for m in ms), sum(m.nonfinite_mismatch for m in ms), all(m.shape_ok for m in ms),
                       closest.nmse_bound if closest else None)


def _rows(a: np.ndarray) -> np.ndarray:
    """The array as (rows, last axis): a row is one token, one head, one query."""
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 1 and a.shape[-1] else a.reshape(-1, 1)


def _row_norms(d: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(_rows(d) ** 2, axis=1))


@dataclass
class _Yard:
    """What one output is judged against, computed once for every implementation."""

    ref: np.ndarray  # float64, ±Inf where the exact value overflows the dtype
    sigma_norm: float
    ref_norm: float
    chain_err: float
    chain_nmse: float
    row_threshold: np.ndarray  # per row, before ROW_SLACK


@dataclass
class Yardstick:
    """The reference, the same-dtype chain and the rounding model's allowance σ² for one
    input set; `judge(outputs)` gives the verdict of any implementation run on it."""

    reference: dict[str, np.ndarray]
    chain: dict[str, np.ndarray]
    allowance: dict[str, np.ndarray]  # σ² per element
    dtype: str
    k: float = 2.0
    _yards: dict[str, _Yard] = field(default_factory=dict, repr=False)

    @classmethod
    def for_inputs(cls, spec, inputs: dict, attrs: dict, dtype: str) -> "Yardstick":
        """Run the decomposition twice: on the error model (reference and σ²) and as the
        NumPy chain in `dtype`."""
        from harness.error_model import reference_and_allowance
        from harness.ops import NumpyOps

        reference, allowance = reference_and_allowance(spec, inputs, attrs, dtype)
        chain = spec.decompose(NumpyOps(dtype), **inputs, **attrs)
        return cls(reference, chain, allowance, dtype, spec.k_vs_chain)

    def _yard(self, name: str) -> _Yard:
        if name not in self._yards:
            ref = to_f64(self.reference[name])
            chain = to_f64(self.chain[name]) if name in self.chain else None
            ref_stored, both, _ = _finite_pairs(ref, ref, self.dtype)
            sigma2 = np.where(both, self.allowance[name], 0.0)
            with np.errstate(invalid="ignore", over="ignore"):
                e_chain = np.where(both & np.isfinite(chain), chain - ref_stored, 0.0) if chain is not None \
                    else np.full(ref.shape, np.inf)
            row_sigma = np.sqrt(np.sum(_rows(sigma2), axis=1))
            self._yards[name] = _Yard(
                ref_stored, math.sqrt(float(np.sum(sigma2))), math.sqrt(float(np.sum(np.where(both, ref, 0.0) ** 2))),
                math.sqrt(float(np.sum(e_chain**2))),
                metrics(chain, ref, self.dtype).nmse if chain is not None else math.inf,
                np.maximum(self.k * _row_norms(e_chain), CHAIN_FLOOR_UNITS * row_sigma))
        return self._yards[name]

    def judge(self, outputs: dict[str, np.ndarray]) -> Verdict:
        reasons: list[str] = []
        ms: dict[str, Metrics] = {}
        chain_nmse: dict[str, float] = {}
        for name, ref in self.reference.items():
            if name not in outputs:
                reasons.append(f"{name}: output missing")
                continue
            m = ms[name] = metrics(outputs[name], ref, self.dtype)
            if not m.shape_ok:
                reasons.append(f"{name}: shape {np.shape(outputs[name])} != reference {np.shape(ref)}")
                continue
            if m.nonfinite_mismatch:
                reasons.append(f"{name}: {m.nonfinite_mismatch} NaN/Inf where the reference differs (unwritten?)")
            yard = self._yard(name)
            chain_nmse[name] = yard.chain_nmse
            out = to_f64(outputs[name])
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both overflow
                err = np.where(np.isfinite(out) & np.isfinite(yard.ref), out - yard.ref, 0.0)
            reasons += self._rules(name, err, yard, m)
        return Verdict(not reasons, reasons, ms, chain_nmse)

    def _rules(self, name: str, err: np.ndarray, yard: _Yard, m: Metrics) -> list[str]:
        reasons = []
        e = math.sqrt(float(np.sum(err**2)))
        y = yard.ref_norm
        bound = BOUND_UNITS * yard.sigma_norm
        floor = min(CHAIN_FLOOR_UNITS * yard.sigma_norm, FLOOR_CAP * y)
        by_chain = max(self.k * yard.chain_err, floor)
        allowed = min(bound, by_chain)
        m.nmse_bound = (allowed / y) ** 2 if y > 0 else 0.0
        nmse = f" (NMSE {m.nmse:.3g})" if y > 0 else ""
        if not e <= bound:
            reasons.append(f"{name}: model bound: error {e:.3g}{nmse} > {BOUND_UNITS:g} sigma = {bound:.3g} "
                           f"(NMSE {(bound / y) ** 2 if y > 0 else 0:.3g}) for {self.dtype}, {_times(e, bound)} over")
        if not e <= by_chain:
            reasons.append(f"{name}: chain rule: error {e:.3g}{nmse} > {self.k:g}x the unfused chain's "
                           f"{yard.chain_err:.3g} and > the floor {floor:.3g}, {_times(e, by_chain)} over")
        row_err = _row_norms(err)
        over = row_err > ROW_SLACK * yard.row_threshold
        if np.any(over):
            ratio = np.where(over, row_err / np.maximum(ROW_SLACK * yard.row_threshold, 1e-300), 0.0)
            worst = int(np.argmax(ratio))
            where = np.unravel_index(worst, yard.ref.shape[:-1]) if yard.ref.ndim > 1 else ()
            reasons.append(f"{name}: row rule: {int(np.count_nonzero(over))} of {over.size} rows off; worst row "
                           f"{tuple(int(i) for i in where)}: error {row_err[worst]:.3g} > "
                           f"{ROW_SLACK * yard.row_threshold[worst]:.3g} "
                           f"(row norm {_row_norms(np.where(np.isfinite(yard.ref), yard.ref, 0.0))[worst]:.3g}), "
                           f"{_times(row_err[worst], ROW_SLACK * yard.row_threshold[worst])} over")
        return reasons


def _times(value: float, limit: float) -> str:
    return f"{value / limit:.3g}x" if limit > 0 else "infinitely"


def judge(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], chain: dict[str, np.ndarray],
          dtype: str, allowance: dict[str, np.ndarray] | None = None, k: float = 2.0) -> Verdict:
    """The verdict for outputs against explicit arrays (see the module docstring). Without
    an `allowance` (σ² per element) each element may be off by one rounding: σ = u·|ref|."""
    from harness.dtypes import UNIT_ROUNDOFF

    if allowance is None:
        u = UNIT_ROUNDOFF[dtype]
        allowance = {k_: (u * to_f64(v)) ** 2 for k_, v in reference.items()}
    return Yardstick(reference, chain, allowance, dtype, k).judge(outputs)
