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

from harness.backends import Prepared
from harness.backends.cpu import KIND, bits16
from harness.registry import Implementation, register

BLOCK_ROWS = 8  # rows of W_gate and of W_up per phase-1 task: 2 * 8 * H floats stay in L2
DOWN_ROWS = 8  # rows of W_down per phase-2 task: 8 * I floats (I = 14336: 460 KB) stay in L2

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, block_down, dots_seq, dots_w16, gate_up1, gate_up1_w16, gate_up2, gate_up2_w16, make_pow2, put, swiglu, swiglu_rows, swiglu_rows_w16, widen, widen_rows, dots, dots2
    if _kernel is not None:
        return _kernel
    import numba as nb

    from harness.kernels.fb_numba import (dots, dots2, dots_seq, dots_w16, gate_up1, gate_up1_w16, gate_up2,
                                          gate_up2_w16, make_pow2, put, swiglu, swiglu_rows, swiglu_rows_w16, widen,
                                          widen_rows)

    @nb.njit(fastmath=True)
    def block_down(act, td, n0, kind, y):
        # phase 2: every activation row against one block of W_down rows
        M = act.shape[0]
        J = td.shape[0]
        a = np.empty(J, dtype=np.float32)
        b = np.empty(J, dtype=np.float32)
        m = 0
        while m + 2 <= M:
            dots2(act[m], act[m + 1], td, a, b)
            for j in range(J):
                put(y, m, n0 + j, a[j], kind)
                put(y, m + 1, n0 + j, b[j], kind)
            m += 2
        if m < M:
            dots(act[m], td, a)
            for j in range(J):
                put(y, m, n0 + j, a[j], kind)

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_f32(x, wg, wu, wd, act, y):
        pow2 = make_pow2()
        N = wg.shape[0]
        H = wd.shape[0]
        if x.shape[0] == 1:  # decode: each W streamed once; gate and up rows side by side
            x0 = x[0]
            for p in nb.prange(N // 2):
                g0, u0, g1, u1 = gate_up2(x0, wg, wu, 2 * p)
                act[0, 2 * p] = swiglu(g0, u0)
                act[0, 2 * p + 1] = swiglu(g1, u1)
            if N % 2:
                g0, u0 = gate_up1(x0, wg, wu, N - 1)
                act[0, N - 1] = swiglu(g0, u0)
            for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
                n0 = b * DOWN_ROWS
                n1 = min(H, n0 + DOWN_ROWS)
                dots_seq(act[0], wd[n0:n1], y[0, n0:n1])
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            swiglu_rows(x, wg[n0:n1], wu[n0:n1], n0, 0, pow2, act, 0)
        # prange's end is the barrier: the activation is complete here
        for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
            n0 = b * DOWN_ROWS
            block_down(act, wd[n0:min(H, n0 + DOWN_ROWS)], n0, 0, y)

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_16(x, wg, wu, wd, kind, act, y):
        pow2 = make_pow2()
        N, H = wg.shape
        if x.shape[0] == 1:  # decode: x widened once, W widened in registers as it streams
            x0 = np.empty(H, dtype=np.float32)
            widen(x[0], x0, kind, pow2)
            for p in nb.prange(N // 2):
                g0, u0, g1, u1 = gate_up2_w16(x0, wg, wu, 2 * p, kind)
                act[0, 2 * p] = swiglu(g0, u0)
                act[0, 2 * p + 1] = swiglu(g1, u1)
            if N % 2:
                g0, u0 = gate_up1_w16(x0, wg, wu, N - 1, kind)
                act[0, N - 1] = swiglu(g0, u0)
            for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
                n0 = b * DOWN_ROWS
                n1 = min(H, n0 + DOWN_ROWS)
                a = np.empty(n1 - n0, dtype=np.float32)
                dots_w16(act[0], wd[n0:n1], a, kind)
                for j in range(n1 - n0):
                    put(y, 0, n0 + j, a[j], kind)
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            swiglu_rows_w16(x, wg, wu, n0, min(N, n0 + BLOCK_ROWS), kind, pow2, act, 0)
        for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
            n0 = b * DOWN_ROWS
            n1 = min(H, n0 + DOWN_ROWS)
            td = np.empty((n1 - n0, N), dtype=np.float32)
            widen_rows(wd, n0, n1 - n0, kind, pow2, td)
            block_down(act, td, n0, kind, y)

    def kernel(x, wg, wu, wd, kind, act, y):
        if kind == 0:
            kernel_f32(x, wg, wu, wd, act, y)
        else:
            kernel_16(x, wg, wu, wd, kind, act, y)

    _kernel = kernel
    return kernel


class SwigluFfnCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.wg, self.wu, self.wd = map(bits16, self.bind_inputs(inputs, ("x", "w_gate", "w_up", "w_down"), np.ascontiguousarray))
        self.act = np.empty((self.dims["M"], self.dims["I"]), dtype=np.float32)  # phase-1 -> phase-2 scratch
        self.y = bits16(self.alloc_outputs()["y"])  # the kernel stores the rounded bits straight into y

    def run(self):
        self.kernel(self.x, self.wg, self.wu, self.wd, KIND[self.dtype], self.act, self.y)

    def poison(self):
        self.act.fill(np.nan)
        super().poison()


register(Implementation("swiglu_ffn", "cpu", "fused", "fused", SwigluFfnCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
