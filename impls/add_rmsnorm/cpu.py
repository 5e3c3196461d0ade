"""add_rmsnorm on the CPU: one numba kernel, one pass, parallel over rows.

x, residual: (M, H), gamma: (H,) -> h = x + residual, y = rmsnorm(h) * gamma, both (M, H).

Each row is read once: x[m] and residual[m] are widened into thread-local float32 buffers
and added there, the sum of squares is taken (in float64) over the float32 sum, then h
and y are each written once, rounded (to nearest even) straight into the storage dtype.
y is computed from the float32 sum, not from h rounded to 16 bits, so it is at least as
accurate as the chain (which re-reads the rounded h).

float16 and bfloat16 arrive as raw 16-bit patterns and are widened as in
rmsnorm_gemm/cpu.py (bfloat16 by a shift, float16 by its bit fields). Small problems
(decode: M·H below SERIAL_BELOW) run in a serial kernel: there the cost of waking the
thread pool is larger than the work.
"""

from __future__ import annotations


from harness.backends.cpu import NumbaFused, bits16
from harness.registry import Implementation, register


class AddRmsNormCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.r, self.gamma = self.host_inputs(inputs, ("x", "residual", "gamma"))
        self.alloc_outputs()
        self.h, self.y = bits16(self.out["h"]), bits16(self.out["y"])  # rounded bits are stored straight here

    def run(self):
        self.kernel(self.x, self.r, self.gamma, float(self.attrs["eps"]), self.kind, self.h, self.y)


register(Implementation("add_rmsnorm", "cpu", "fused", "fused", AddRmsNormCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
