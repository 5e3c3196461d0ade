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
        """Softmax over the last axis."""
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
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return self._out(e / np.sum(e, axis=-1, keepdims=True))

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
