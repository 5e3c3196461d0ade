"""rmsnorm_gemm on the CPU: one numba kernel, parallel over blocks of W rows.

x: (M, H), gamma: (H,), w: (N, H) -> y: (M, N). The inverse RMS of each row is taken in
one pass over x (M scalars); then each thread owns a block of W rows, builds the
normalised row x[m] * s[m] * gamma in a thread-local (H,) float32 buffer and takes its
dot products with the block. No (M, H) intermediate is ever written.

float16 and bfloat16 arrive as raw 16-bit patterns; each W row is widened to float32 in
a thread-local buffer as it is used (bfloat16 by a shift, float16 by its bit fields).
Decode (M = 1) uses each W element once: there x is normalised once, and W streams two
rows per pass (fb_numba.dots_seq / dots_w16, 16-bit W widened in registers).
The kernel accumulates in float32 and writes float32; rounding y to the storage dtype is
one pass over the (M, N) output.
"""

from __future__ import annotations

import numpy as np

from harness.backends.cpu import NumbaFused
from harness.registry import Implementation, register


class RmsNormGemmCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.gamma, self.w = self.host_inputs(inputs, ("x", "gamma", "w"))
        y = self.alloc_outputs()["y"]
        self.acc = y if dtype == "float32" else np.empty(y.shape, dtype=np.float32)

    def run(self):
        self.kernel(self.x, self.gamma, self.w, self.attrs["eps"], self.kind, self.acc)
        if self.acc is not self.out["y"]:
            self.out["y"][...] = self.acc

    def poison(self):
        self.acc.fill(np.nan)
        super().poison()


register(Implementation("rmsnorm_gemm", "cpu", "fused", "fused", RmsNormGemmCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
