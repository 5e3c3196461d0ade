"""Error metrics and the accuracy verdict.

Metrics per output (the reference rounded to the output dtype decides where ±Inf is
expected: an exact result beyond the dtype's range must come out as Inf): max abs error, max relative error (floored at 1e-3 of the
reference's RMS, so near-zero references do not explode it), NMSE Σ(a−b)²/Σb², max ULP
distance in the output dtype, and the count of non-finite mismatches.

Verdict (DESIGN.md): pass when every output has the reference's shape, NaN/Inf exactly
where the reference has them, NMSE under the dtype's bound, and RMS error at most k times
the same-dtype unfused chain's (k = spec.k_vs_chain), with a floor of 4 unit roundoffs so
that an output one ULP from the reference passes even where the chain happens to be exact.

Where a spec gives the magnitude of the terms behind each output (for a dot product,
Σ|a·b| rather than |Σ a·b|), the bound and the floor are taken against that magnitude:
rounding error scales with it, and with heavy cancellation |y| itself is no yardstick
(a correct kernel and the chain then differ by chance). `nmse` is always reported
against the reference itself; `scaled_nmse` is what the bound is checked on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from harness.dtypes import UNIT_ROUNDOFF, np_dtype, to_f64, ulp_distance

REL_FLOOR = 1e-3
ULP_FLOOR = 4.0  # in unit roundoffs of the storage dtype


@dataclass
class Metrics:
    max_abs: float
    max_rel: float
    nmse: float
    max_ulp: float
    nonfinite_mismatch: int
    shape_ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def metrics(out: np.ndarray, ref: np.ndarray, dtype: str) -> Metrics:
    """Compare one output with its float64 reference (both any float dtype)."""
    a, b = to_f64(out), to_f64(ref)
    if a.shape != b.shape:
        return Metrics(math.inf, math.inf, math.inf, math.inf, int(max(a.size, b.size)), False)
    # where the exact result overflows the output dtype, ±Inf is the right answer
    with np.errstate(over="ignore"):
        b_stored = to_f64(b.astype(np_dtype(dtype))) if dtype != "float64" else b
    fa, fb = np.isfinite(a), np.isfinite(b_stored)
    b = np.where(fb, b, b_stored)
    same_nonfinite = (~fa & ~fb) & ((a == b) | (np.isnan(a) & np.isnan(b)))
    mismatch = int(np.count_nonzero((fa != fb) | (~fa & ~fb & ~same_nonfinite)))
    both = fa & fb
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


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    metrics: dict[str, Metrics]
    chain_nmse: dict[str, float]

    @property
    def worst(self) -> Metrics:
        """The worst figure of each metric over all outputs."""
        ms = list(self.metrics.values())
        return Metrics(max(m.max_abs for m in ms), max(m.max_rel for m in ms), max(m.nmse for m in ms),
                       max(m.max_ulp for m in ms), sum(m.nonfinite_mismatch for m in ms), all(m.shape_ok for m in ms))


def _sq_err(a: np.ndarray, b: np.ndarray) -> float:
    """Σ(a−b)² over the elements finite in both."""
    a, b = to_f64(a), to_f64(b)
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.sum((a[both] - b[both]) ** 2))


def judge(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], chain: dict[str, np.ndarray],
          dtype: str, nmse_bound: float, k: float = 2.0, magnitude: dict[str, np.ndarray] | None = None,
          cache: dict | None = None) -> Verdict:
    """The verdict for one implementation's outputs (see the module docstring). `cache`: a
    dict kept with one input set, where what depends only on the reference, the chain and
    the magnitude (the energy, the chain's error and NMSE) is computed once for all the
    implementations judged on it (at Llama-3-8B S = 2048 that was half of each check)."""
    cache = {} if cache is None else cache
    reasons: list[str] = []
    ms: dict[str, Metrics] = {}
    chain_nmse: dict[str, float] = {}
    u = ULP_FLOOR * UNIT_ROUNDOFF[dtype]
    for name, ref in reference.items():
        if name not in outputs:
            reasons.append(f"{name}: output missing")
            continue
        m = ms[name] = metrics(outputs[name], ref, dtype)
        if not m.shape_ok:
            reasons.append(f"{name}: shape {np.shape(outputs[name])} != reference {np.shape(ref)}")
            continue
        if m.nonfinite_mismatch:
            reasons.append(f"{name}: {m.nonfinite_mismatch} NaN/Inf where the reference differs (unwritten?)")
        if name not in cache:
            scale = to_f64(magnitude[name]) if magnitude and name in magnitude else to_f64(ref)
            finite = np.isfinite(scale)
            cache[name] = (float(np.sum(scale[finite] ** 2)) or 1e-300,
                           _sq_err(chain[name], ref) if name in chain else math.inf,
                           metrics(chain[name], ref, dtype).nmse if name in chain else math.inf)
        energy, chain_err, chain_nmse[name] = cache[name]
        err = _sq_err(outputs[name], ref)
        scaled = err / energy
        if not scaled <= nmse_bound:
            what = "NMSE" if not (magnitude and name in magnitude) else "NMSE against the terms' magnitude"
            reasons.append(f"{name}: {what} {scaled:.3g} > bound {nmse_bound:.3g} for {dtype}")
        allowed = max(k * math.sqrt(chain_err), u * math.sqrt(energy))
        if not math.sqrt(err) <= allowed:
            reasons.append(f"{name}: error {math.sqrt(err):.3g} (root of the summed squares) > {k:g}x the unfused "
                           f"chain's {math.sqrt(chain_err):.3g} and > the floor {u * math.sqrt(energy):.3g}")
    return Verdict(not reasons, reasons, ms, chain_nmse)
