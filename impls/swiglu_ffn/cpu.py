"""swiglu_ffn on the CPU: one numba call, two parallel phases, no return to Python between.

x: (M, H), w_gate, w_up: (I, H), w_down: (H, I) -> y: (M, H).

Phase 1 is gemm_swiglu's kernel (the same fb_numba helpers): each thread owns a block
of BLOCK_ROWS rows of W_gate and of W_up, takes both dot products from one load of each x
row (two rows at a time, prefill), applies silu(gate) * up in registers and stores the
activation. Phase 2, the
down projection, is parallel over blocks of W_down rows, two activation rows against four
W_down rows per inner pass.

The (M, I) activation is kept in float32 (never rounded to the storage dtype, so it is
more accurate than the chain) in a scratch buffer allocated once at prepare time. It
cannot stay on-chip as it can on a GPU: every phase-2 block needs the whole activation
row, which phase-1 blocks on *both* cores produce, so it has to pass through memory shared
by the cores (at decode, M = 1, it is I floats: it lives in L2/L3, never DRAM). The only
synchronisation is the barrier between the two prange loops inside the one numba call.

float16 and bfloat16 arrive as raw 16-bit patterns; the W rows of a block and the rows of
x are widened to float32 in thread-local buffers as they are used (bfloat16 by a shift,
float16 by its bit fields). Decode (M = 1) uses each W element once, so there W is widened
in registers as it streams, two rows of W_gate beside the same two of W_up in phase 1
(see gemm_swiglu/cpu.py), one W_down row at a time in phase 2. Dot products accumulate in float32, silu * up is taken in
float64, and y is rounded (to nearest even) straight into the storage dtype as it is
stored.
"""

from __future__ import annotations

import numpy as np

from harness.backends.cpu import NumbaFused, bits16
from harness.registry import Implementation, register


class SwigluFfnCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.wg, self.wu, self.wd = self.host_inputs(inputs, ("x", "w_gate", "w_up", "w_down"))
        self.act = np.empty((self.dims["M"], self.dims["I"]), dtype=np.float32)  # phase-1 -> phase-2 scratch
        self.y = bits16(self.alloc_outputs()["y"])  # the kernel stores the rounded bits straight into y

    def run(self):
        self.kernel(self.x, self.wg, self.wu, self.wd, self.kind, self.act, self.y)

    def poison(self):
        self.act.fill(np.nan)
        super().poison()


register(Implementation("swiglu_ffn", "cpu", "fused", "fused", SwigluFfnCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
