"""Broken rmsnorm_gemm kernels on the cpu backend, each wrong in one way the gate must catch
(or, for a hang and a segfault, that the worker processes must survive).

Loaded only through FUSEBENCH_PLUGINS=tests.plugins.broken_kernels (never shipped).
"""

from __future__ import annotations

import ctypes
import time

import numpy as np

from harness.backends import Prepared
from harness.dtypes import np_dtype, step_ulps
from harness.ops import NumpyOps
from harness.registry import Implementation, register


class _Base(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.bind_inputs(inputs, list(inputs), np.ascontiguousarray)  # exact() reads them as they are now
        M, N = inputs["x"].shape[0], inputs["w"].shape[0]
        self.out = {"y": np.empty((M, N), dtype=np_dtype(dtype))}

    def exact(self):
        """The float64 reference rounded to the storage dtype."""
        return self.spec.decompose(NumpyOps("float64"), **self.inputs, **self.attrs)["y"]


class Zeros(_Base):
    def run(self):
        self.out["y"][...] = 0


class OneNaN(_Base):
    def run(self):
        self.out["y"][...] = self.exact()
        self.out["y"].flat[self.out["y"].size // 2] = np.nan


class Unwritten(_Base):
    """Writes every element but the last one (which keeps the poison)."""

    def run(self):
        y = self.out["y"].reshape(-1)
        y[:-1] = self.exact().reshape(-1)[:-1]


class Faithful(_Base):
    """Faithfully rounded: each element one of the two values of the dtype around the
    exact result, at random (so within one ULP, unbiased). Must pass."""

    def run(self):
        exact = np.asarray(self.exact(), dtype=np.float64)
        nearest = exact.astype(self.out["y"].dtype)
        up = nearest.astype(np.float64) < exact
        other = np.where(up, step_ulps(nearest, self.dtype, 1), -step_ulps(-nearest, self.dtype, 1))
        pick = np.random.default_rng(0).random(exact.shape) < 0.5
        self.out["y"][...] = np.where(pick, other, nearest)


class WrongShape(_Base):
    def run(self):
        self.out["y"] = self.exact().astype(self.out["y"].dtype)[:, :-1]


class Raises(_Base):
    def run(self):
        raise RuntimeError("this kernel always fails")


class Hangs(_Base):
    def run(self):
        time.sleep(3600)


class Segfaults(_Base):
    """Reads address 0 from native code: the process dies with SIGSEGV."""

    def run(self):
        ctypes.string_at(0)


for cls, variant in [(Zeros, "broken_zeros"), (OneNaN, "broken_nan"), (Unwritten, "broken_unwritten"),
                     (Faithful, "faithful"), (WrongShape, "broken_shape"), (Raises, "broken_raises"),
                     (Hangs, "broken_hang"), (Segfaults, "broken_segfault")]:
    register(Implementation("rmsnorm_gemm", "cpu", variant, "fused", cls, ("float32", "float16", "bfloat16"),
                            origin=__name__, doc=cls.__doc__ or ""))
