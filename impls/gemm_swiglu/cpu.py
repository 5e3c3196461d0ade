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

import numpy as np

from harness.backends import Prepared
from harness.backends.cpu import KIND, bits16
from harness.registry import Implementation, register

BLOCK_ROWS = 8  # rows of W_gate and of W_up per parallel task: 2 * 8 * H floats stay in L2

_kernel = None
_narrow = None  # float32 -> 16-bit rounding of a row, kept for the exhaustive check
_widen_reg = None  # 16-bit -> float32 in registers (the decode path), likewise


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel, _narrow, _widen_reg
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, gate_up1, gate_up1_w16, gate_up2, gate_up2_w16, make_pow2, put, swiglu, swiglu_rows, swiglu_rows_w16, widen, bf16_f32, f16_f32
    if _kernel is not None:
        return _kernel
    import numba as nb

    from harness.kernels.fb_numba import (
        bf16_f32,
        f16_f32,
        gate_up1,
        gate_up1_w16,
        gate_up2,
        gate_up2_w16,
        make_pow2,
        put,
        swiglu,
        swiglu_rows,
        swiglu_rows_w16,
        widen,
    )

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_f32(x, wg, wu, y):
        pow2 = make_pow2()
        N = wg.shape[0]
        if x.shape[0] == 1:  # decode: gate and up rows streamed side by side, two of each
            x0 = x[0]
            for p in nb.prange(N // 2):
                g0, u0, g1, u1 = gate_up2(x0, wg, wu, 2 * p)
                y[0, 2 * p] = swiglu(g0, u0)
                y[0, 2 * p + 1] = swiglu(g1, u1)
            if N % 2:
                g0, u0 = gate_up1(x0, wg, wu, N - 1)
                y[0, N - 1] = swiglu(g0, u0)
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            swiglu_rows(x, wg[n0:n1], wu[n0:n1], n0, 0, pow2, y, 0)

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_16(x, wg, wu, kind, y):
        pow2 = make_pow2()
        N, H = wg.shape
        if x.shape[0] == 1:  # decode: x widened once, W widened in registers as it streams
            x0 = np.empty(H, dtype=np.float32)
            widen(x[0], x0, kind, pow2)
            for p in nb.prange(N // 2):
                g0, u0, g1, u1 = gate_up2_w16(x0, wg, wu, 2 * p, kind)
                put(y, 0, 2 * p, swiglu(g0, u0), kind)
                put(y, 0, 2 * p + 1, swiglu(g1, u1), kind)
            if N % 2:
                g0, u0 = gate_up1_w16(x0, wg, wu, N - 1, kind)
                put(y, 0, N - 1, swiglu(g0, u0), kind)
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            swiglu_rows_w16(x, wg, wu, n0, min(N, n0 + BLOCK_ROWS), kind, pow2, y, kind)

    def kernel(x, wg, wu, kind, y):
        if kind == 0:
            kernel_f32(x, wg, wu, y)
        else:
            kernel_16(x, wg, wu, kind, y)

    @nb.njit
    def narrow_row(src, kind):
        dst = np.empty((1, src.shape[0]), dtype=np.uint16)
        for i in range(src.shape[0]):
            put(dst, 0, i, src[i], kind)
        return dst[0]

    @nb.njit
    def widen_reg(src, kind):
        dst = np.empty(src.shape[0], dtype=np.float32)
        for i in range(src.shape[0]):
            dst[i] = bf16_f32(src[i]) if kind == 1 else f16_f32(src[i])
        return dst

    _kernel, _narrow, _widen_reg = kernel, narrow_row, widen_reg
    return kernel


class GemmSwigluCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.wg, self.wu = map(bits16, self.bind_inputs(inputs, ("x", "w_gate", "w_up"), np.ascontiguousarray))
        self.y = bits16(self.alloc_outputs()["y"])  # the kernel stores the rounded bits straight into y

    def run(self):
        self.kernel(self.x, self.wg, self.wu, KIND[self.dtype], self.y)


register(Implementation("gemm_swiglu", "cpu", "fused", "fused", GemmSwigluCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
