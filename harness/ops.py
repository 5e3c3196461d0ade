"""The primitive-op vocabulary that every fusion's decomposition is written in.

A decomposition is a plain function `decompose(ops, **inputs, **params) -> {name: array}`.
Run with `NumpyOps("float64")` it is the reference; run with a backend's own `Ops` it is
that backend's unfused chain, one kernel (or library call) per op, each result stored in
the storage dtype as a real chain of kernels would store it.

Shapes follow the LLM convention: activations `x: (M, H)`, weights row-major `(out, in)`.
"""

from __future__ import annotations

import numpy as np

from harness.dtypes import np_dtype


class Ops:
    """The vocabulary. A backend subclasses it; an op it lacks raises NotImplementedError."""

    name = "abstract"

    def rms_norm(self, x, gamma, eps: float):
        """x: (M, H), gamma: (H,) -> x * rsqrt(mean(x², -1) + eps) * gamma, (M, H)."""
        raise NotImplementedError(f"{self.name}: rms_norm")

    def layer_norm(self, x, gamma, beta, eps: float):
        """x: (M, H), gamma, beta: (H,) -> (x - mean) * rsqrt(var + eps) * gamma + beta."""
        raise NotImplementedError(f"{self.name}: layer_norm")

    def linear(self, x, w):
        """x: (M, K), w: (N, K) -> x @ w.T, (M, N)."""
        raise NotImplementedError(f"{self.name}: linear")

    def add(self, a, b):
        raise NotImplementedError(f"{self.name}: add")

    def mul(self, a, b):
        raise NotImplementedError(f"{self.name}: mul")

    def silu(self, x):
        """x * sigmoid(x)."""
        raise NotImplementedError(f"{self.name}: silu")

    def softmax(self, x):
        """Softmax over the last axis; a row that is all −inf (fully masked) gives zeros."""
        raise NotImplementedError(f"{self.name}: softmax")

    def split(self, x, sizes):
        """x: (M, sum(sizes)) -> [x[:, :s0], x[:, s0:s0+s1], ...], each contiguous."""
        raise NotImplementedError(f"{self.name}: split")

    def reshape(self, x, shape):
        """Same elements, new shape (row-major)."""
        raise NotImplementedError(f"{self.name}: reshape")

    def rope(self, x, pos, theta: float):
        """Rotary embedding, rotate-half (NeoX) layout. x: (M, heads, d), pos: (M,) int32.
        With c = cos(pos·θ^(-2i/d)), s = sin(...), i < d/2:
        out[..., i] = x[..., i]·c − x[..., i + d/2]·s;  out[..., i + d/2] = x[..., i + d/2]·c + x[..., i]·s."""
        raise NotImplementedError(f"{self.name}: rope")

    # attention ---------------------------------------------------------------------
    # Grouped-query heads need no primitive of their own: q heads h·g … h·g+g−1 share kv
    # head h, so q (B, Hq, S, d) reshaped to (B, Hkv, g·S, d) lines up with k (B, Hkv, T, d).

    def matmul_nt(self, a, b):
        """a: (..., S, d), b: (..., T, d) with equal leading dims -> a @ bᵀ, (..., S, T)."""
        raise NotImplementedError(f"{self.name}: matmul_nt")

    def matmul(self, a, b):
        """a: (..., S, T), b: (..., T, d) with equal leading dims -> a @ b, (..., S, d)."""
        raise NotImplementedError(f"{self.name}: matmul")

    def scale(self, x, s: float):
        """x * s for a Python scalar s."""
        raise NotImplementedError(f"{self.name}: scale")

    def causal_mask(self, x):
        """x: (..., S, T) -> x with entry (i, j) set to −inf where j > i + (T − S): query i
        sits at position T − S + i and sees keys 0 … T − S + i."""
        raise NotImplementedError(f"{self.name}: causal_mask")

    def length_mask(self, x, lens):
        """x: (B, H, S, T), lens: (B,) int32 -> x with entries j ≥ lens[b] set to −inf."""
        raise NotImplementedError(f"{self.name}: length_mask")


# Positions are below this (the specs draw them so): peers that look their rotary tables
# up by position, as engines do, build tables of this many rows once.
MAX_POSITION = 32768


def rope_angles(pos, d: int, theta: float) -> np.ndarray:
    """(M, d/2) float64 angles pos·θ^(-2i/d): the one definition every backend follows."""
    inv_freq = theta ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
    return np.asarray(pos, dtype=np.float64)[:, None] * inv_freq[None, :]


class NumpyOps(Ops):
    """NumPy primitives. `storage="float64"` is the reference (no rounding at all);
    any other storage dtype computes each op in float32 and rounds its result to the
    storage dtype, which is what a chain of separate kernels does."""

    def __init__(self, storage: str = "float64"):
        self.storage = storage
        self.name = f"numpy-{storage}"
        self._dt = np_dtype(storage)
        self._compute = np.float64 if storage == "float64" else np.float32

    def _in(self, a):
        return np.asarray(a).astype(self._compute, copy=False)

    def _out(self, a):
        return np.asarray(a).astype(self._dt, copy=False)

    def rms_norm(self, x, gamma, eps):
        x = self._in(x)
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return self._out(x * (1.0 / np.sqrt(ms + self._compute(eps))) * self._in(gamma))

    def layer_norm(self, x, gamma, beta, eps):
        x = self._in(x)
        mu = np.mean(x, axis=-1, keepdims=True)
        var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + self._compute(eps)) * self._in(gamma) + self._in(beta)
        return self._out(y)

    def linear(self, x, w):
        return self._out(self._in(x) @ self._in(w).T)

    def add(self, a, b):
        return self._out(self._in(a) + self._in(b))

    def mul(self, a, b):
        return self._out(self._in(a) * self._in(b))

    def silu(self, x):
        x = self._in(x)
        return self._out(x / (1.0 + np.exp(-x)))

    def softmax(self, x):
        x = self._in(x)
        top = np.max(x, axis=-1, keepdims=True)
        top = np.where(np.isneginf(top), 0.0, top).astype(self._compute)  # fully masked row
        e = np.exp(x - top)
        total = np.sum(e, axis=-1, keepdims=True)
        return self._out(e / np.where(total > 0, total, 1.0).astype(self._compute))

    def split(self, x, sizes):
        edges = np.cumsum([0, *sizes])
        return [np.ascontiguousarray(x[..., a:b]) for a, b in zip(edges[:-1], edges[1:])]

    def reshape(self, x, shape):
        return np.reshape(x, shape)

    def rope(self, x, pos, theta):
        x = self._in(x)
        d = x.shape[-1]
        ang = rope_angles(pos, d, theta)[:, None, :]  # (M, 1, d/2)
        c = np.cos(ang).astype(self._compute)
        s = np.sin(ang).astype(self._compute)
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return self._out(np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1))

    def matmul_nt(self, a, b):
        return self._out(np.matmul(self._in(a), np.swapaxes(self._in(b), -1, -2)))

    def matmul(self, a, b):
        return self._out(np.matmul(self._in(a), self._in(b)))

    def scale(self, x, s):
        return self._out(self._in(x) * self._compute(s))

    def causal_mask(self, x):
        S, T = x.shape[-2:]
        future = np.arange(T)[None, :] > np.arange(S)[:, None] + (T - S)
        return np.where(future, self._dt.type(-np.inf), x)

    def length_mask(self, x, lens):
        past_end = np.arange(x.shape[-1])[None, :] >= np.asarray(lens)[:, None]  # (B, T)
        return np.where(past_end[:, None, None, :], self._dt.type(-np.inf), x)
