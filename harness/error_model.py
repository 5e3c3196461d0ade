"""How far an honest kernel may land from the float64 reference: a rounding-error model
run over the fusion's own decomposition.

`ErrorOps(dtype)` is a `harness.ops.Ops` whose values are `Tracked`: the exact float64
value of each intermediate and the variance of its error, carried through every op by
the op's derivative. Errors of different elements are independent, so they add like a
random walk: variances add, never magnitudes. Two kinds of error are counted:

- Storage: every op's result is rounded to the storage dtype once, as the unfused chain
  stores it, with an RMS error of ROUNDING_RMS·u_s·|v|. Carried through a dot product of
  K terms, the roundings of its inputs add up to about u_s·√(Σ terms²): for random-sign
  terms of size s that is u_s·√K·s, the size of the result itself. So a dot product is
  off by about one storage rounding of its result, which is what a bfloat16 chain shows
  (NMSE 5e-6 to 3e-5 on the H200 run of 2026-12-04, u_s² = 1.5e-5). The old gate took
  its bound against Σ|terms| instead, which grows like K·s: 30 to 8000 times |y| on the
  Llama-sized cases, enough to admit an output of zeros in bfloat16.
- Arithmetic: a sum of K terms in a float32 accumulator, added one after the other, has
  partial sums as large as the result (positive terms) or as √(Σ terms²) (random signs),
  and each addition rounds them: about u_f32·√K·√(y² + Σ terms²), the ceiling of what
  an honest order gives (blocked and tree sums do better). Elementwise float32 arithmetic
  (exp, products) adds a few u_f32·|v|. In float16 and bfloat16 this is thousandths of
  the storage term; in float32 it is what long dot products are held to.

σ = √variance per element is the allowance harness.accuracy turns into the verdict.
Inputs are exact (generated in the storage dtype; the reference sees the same rounded
values). Index inputs (positions, lengths) pass through as plain arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.dtypes import UNIT_ROUNDOFF, np_dtype
from harness.ops import Ops, rope_angles

ACCUMULATOR_ROUNDOFF = UNIT_ROUNDOFF["float32"]
# The root-mean-square error of one rounding to nearest, relative to u·|v|: uniform within
# half an ulp (1/√3), the ulp smaller than u·|v| by the mantissa (E[1/m²] over m in [1, 2),
# log-uniform: 0.54). Measured: bfloat16 and float16 outputs of random normal data rounded
# once have NMSE u²/5.6, i.e. 0.42 u.
ROUNDING_RMS = 0.425


@dataclass
class Tracked:
    """One intermediate: its exact value and the variance of its error (float64 arrays
    of one shape; an exact input's variance is a 0-d zero, which broadcasts)."""

    v: np.ndarray
    var: np.ndarray

    @classmethod
    def exact(cls, value) -> "Tracked":
        return cls(np.asarray(value, dtype=np.float64), np.zeros(()))

    @property
    def shape(self):
        return self.v.shape

    def map(self, f) -> "Tracked":
        """The same structural change (reshape, slice) applied to value and variance."""
        return Tracked(f(self.v), self.var if self.var.ndim == 0 else f(self.var))


class ErrorOps(Ops):
    """The primitive ops on Tracked values, for storage dtype `dtype` (module docstring)."""

    def __init__(self, dtype: str):
        self.name = f"error-model-{dtype}"
        self.store2 = (ROUNDING_RMS * UNIT_ROUNDOFF[dtype]) ** 2
        # below the normal range the spacing stops shrinking: a rounding there is off by
        # up to half the smallest subnormal spacing, whatever |v| is
        self.tiny2 = float(np.finfo(np_dtype(dtype)).smallest_subnormal) ** 2 / 12
        self.acc2 = min(UNIT_ROUNDOFF[dtype], ACCUMULATOR_ROUNDOFF) ** 2

    def _stored(self, v, var, arithmetic=0.0) -> Tracked:
        """A result the chain writes in the storage dtype: `var` carried in, `arithmetic`
        float32 roundings of |v| made computing it, and the storage rounding."""
        return Tracked(v, var + (self.store2 + self.acc2 * arithmetic**2) * v * v + self.tiny2)

    def _dot(self, x: Tracked, y: Tracked, contract) -> Tracked:
        """A product summed over the last axis of x, `contract(p, q)` being the plain
        float64 product (x @ w.T, ...): the operands' errors carried through, the float32
        accumulation over K terms, and the storage rounding."""
        k = x.shape[-1]
        v = contract(x.v, y.v)
        terms2 = contract(x.v * x.v, y.v * y.v)
        var = self.acc2 * k * (v * v + terms2)
        if x.var.ndim:
            var = var + contract(x.var, y.v * y.v)
        if y.var.ndim:
            var = var + contract(x.v * x.v, y.var)
        return self._stored(v, var)

    def linear(self, x, w):
        return self._dot(x, w, lambda p, q: p @ q.T)

    def matmul_nt(self, a, b):
        return self._dot(a, b, lambda p, q: np.matmul(p, np.swapaxes(q, -1, -2)))

    def matmul(self, a, b):
        # contract over a's last axis and b's second-to-last one
        swapped = b.map(lambda t: np.swapaxes(t, -1, -2))
        return self._dot(a, swapped, lambda p, q: np.matmul(p, np.swapaxes(q, -1, -2)))

    def add(self, a, b):
        return self._stored(a.v + b.v, a.var + b.var, 1.0)

    def mul(self, a, b):
        return self._stored(a.v * b.v, b.v**2 * a.var + a.v**2 * b.var, 1.0)

    def scale(self, x, s):
        return self._stored(x.v * s, s * s * x.var, 1.0)

    def silu(self, x):
        sig = 1.0 / (1.0 + np.exp(-x.v))
        slope = sig * (1.0 + x.v * (1.0 - sig))
        return self._stored(x.v * sig, slope**2 * x.var, 3.0)

    def rms_norm(self, x, gamma, eps):
        h = x.shape[-1]
        ms = np.mean(x.v * x.v, axis=-1, keepdims=True) + eps
        r = 1.0 / np.sqrt(ms)
        g = gamma.v
        # dy_j = g_j·r·(dx_j − x_j·Σ_k x_k dx_k / (H·ms)) + x_j·r·dg_j; the sum of squares
        # in float32 is off by u·√H of itself, r by half that
        through_r = (g * x.v * r / (h * ms)) ** 2 * np.sum(x.v**2 * x.var, axis=-1, keepdims=True)
        var = (g * r) ** 2 * x.var + through_r + (x.v * r) ** 2 * gamma.var
        return self._stored(x.v * r * g, var, 0.5 * math.sqrt(h) + 2.0)

    def layer_norm(self, x, gamma, beta, eps):
        h = x.shape[-1]
        centred = x.v - np.mean(x.v, axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(np.mean(centred**2, axis=-1, keepdims=True) + eps)
        xhat = centred * r
        # dy_j = g_j·r·(dx_j − mean(dx) − x̂_j·mean(x̂·dx)) + x̂_j·dg_j + dβ_j
        inner = x.var + (np.sum(x.var, axis=-1, keepdims=True)
                         + xhat**2 * np.sum(xhat**2 * x.var, axis=-1, keepdims=True)) / h**2
        var = (gamma.v * r) ** 2 * inner + xhat**2 * gamma.var + beta.var
        return self._stored(xhat * gamma.v + beta.v, var, math.sqrt(h) + 2.0)

    def softmax(self, x):
        n = x.shape[-1]
        top = np.max(x.v, axis=-1, keepdims=True)
        top = np.where(np.isneginf(top), 0.0, top)
        e = np.exp(x.v - top)
        total = np.sum(e, axis=-1, keepdims=True)
        p = e / np.where(total > 0, total, 1.0)
        # dp_i = p_i·(dl_i − Σ_j p_j dl_j), whose variance is var_i·(1 − 2p_i) + Σ_j p_j² var_j
        # (a weight near 1 moves with the whole row and barely changes); exp(l − max) in
        # float32 is off by u·|l − max|, the sum of n positive terms by u·√n
        below_top = np.where(p > 0, top - x.v, 0.0)
        var = p**2 * (x.var * (1.0 - 2.0 * p) + np.sum(p**2 * x.var, axis=-1, keepdims=True)
                      + self.acc2 * below_top**2)
        return self._stored(p, var, math.sqrt(n) + 2.0)

    def split(self, x, sizes):
        edges = np.cumsum([0, *sizes])
        return [x.map(lambda t, a=a, b=b: np.ascontiguousarray(t[..., a:b])) for a, b in zip(edges[:-1], edges[1:])]

    def reshape(self, x, shape):
        return x.map(lambda t: np.reshape(t, shape))

    def rope(self, x, pos, theta):
        d = x.shape[-1]
        ang = rope_angles(pos, d, theta)[:, None, :]
        c, s = np.cos(ang), np.sin(ang)
        half = d // 2
        x1, x2 = x.map(lambda t: t[..., :half]), x.map(lambda t: t[..., half:])
        v = np.concatenate([x1.v * c - x2.v * s, x2.v * c + x1.v * s], axis=-1)
        # the tables and the two products in float32: about 2 u_f32 of each term
        var = np.concatenate([c * c * x1.var + s * s * x2.var + 4 * self.acc2 * ((x1.v * c) ** 2 + (x2.v * s) ** 2),
                              c * c * x2.var + s * s * x1.var + 4 * self.acc2 * ((x2.v * c) ** 2 + (x1.v * s) ** 2)],
                             axis=-1)
        return self._stored(v, var)

    def causal_mask(self, x):
        S, T = x.shape[-2:]
        return _masked(x, np.arange(T)[None, :] > np.arange(S)[:, None] + (T - S))

    def length_mask(self, x, lens):
        past_end = np.arange(x.shape[-1])[None, :] >= np.asarray(lens)[:, None]  # (B, T)
        return _masked(x, past_end[:, None, None, :])


def _masked(x: Tracked, hidden: np.ndarray) -> Tracked:
    """Entries where `hidden` is True become −inf, exactly (no error left there)."""
    return Tracked(np.where(hidden, -np.inf, x.v), np.where(hidden, 0.0, x.var))


def reference_and_allowance(spec, inputs: dict, attrs: dict, dtype: str) -> tuple[dict, dict]:
    """({output: float64 reference}, {output: σ² per element}) for one input set: the
    spec's decomposition run once on Tracked values."""
    tracked = {k: (np.asarray(v) if k in spec.index_inputs else Tracked.exact(v)) for k, v in inputs.items()}
    out = spec.decompose(ErrorOps(dtype), **tracked, **attrs)
    return {k: t.v for k, t in out.items()}, {k: t.var for k, t in out.items()}
