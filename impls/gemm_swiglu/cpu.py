"""gemm_swiglu on the CPU: one numba kernel, parallel over blocks of W_gate / W_up rows.

x: (M, H), w_gate, w_up: (I, H) -> y: (M, I). Each thread owns the same block of
BLOCK_ROWS rows of W_gate and of W_up; for every row of x (two at a time, prefill) it takes
both dot products from one load of x, applies silu(gate) * up to the two accumulators in
registers and stores y once. The pre-activations are never written anywhere.

float16 and bfloat16 arrive as raw 16-bit patterns; the W rows of a block and the rows of
x are widened to float32 in thread-local buffers as they are used (bfloat16 by a shift,
float16 by its bit fields). Decode (M = 1) uses each W element once, so there x is widened
once and W is widened in registers as it streams (bfloat16: a shift; float16: one
half -> float conversion, vcvtph2ps on x86); each pass streams two rows of W_gate and the
same two rows of W_up side by side (fb_numba.gate_up2), four sequential streams that
share every x load. Dot products accumulate in float32, silu * up is taken in
float64, and the result is rounded (to nearest even) straight into the storage dtype as
it is stored: no float32 (M, I) staging array and no second pass over y.
"""

from __future__ import annotations


from harness.backends.cpu import NumbaFused, bits16
from harness.registry import Implementation, register


class GemmSwigluCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.wg, self.wu = self.host_inputs(inputs, ("x", "w_gate", "w_up"))
        self.y = bits16(self.alloc_outputs()["y"])  # the kernel stores the rounded bits straight into y

    def run(self):
        self.kernel(self.x, self.wg, self.wu, self.kind, self.y)


register(Implementation("gemm_swiglu", "cpu", "fused", "fused", GemmSwigluCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
