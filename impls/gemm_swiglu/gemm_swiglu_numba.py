"""gemm_swiglu's numba kernels on the CPU (impls/gemm_swiglu/cpu.py describes them, prepares
the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import bf16_f32, f16_f32, make_pow2, put, swiglu_decode, swiglu_rows, swiglu_rows_w16, widen

BLOCK_ROWS = 8  # rows of W_gate and of W_up per parallel task: 2 * 8 * H floats stay in L2


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel_f32(x, wg, wu, y):
    pow2 = make_pow2()
    N = wg.shape[0]
    if x.shape[0] == 1:  # decode: gate and up rows streamed side by side, two of each
        swiglu_decode(x[0], wg, wu, 0, y, 0)
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
        swiglu_decode(x0, wg, wu, kind, y, kind)
        return
    for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
        n0 = b * BLOCK_ROWS
        swiglu_rows_w16(x, wg, wu, n0, min(N, n0 + BLOCK_ROWS), kind, pow2, y, kind)


def kernel(x, wg, wu, kind, y):
    if kind == 0:
        kernel_f32(x, wg, wu, y)
    else:
        kernel_16(x, wg, wu, kind, y)


# float32 -> 16-bit rounding of a row (put), for the exhaustive check (tests/test_cpu_kernels.py)
@nb.njit
def narrow_row(src, kind):
    dst = np.empty((1, src.shape[0]), dtype=np.uint16)
    for i in range(src.shape[0]):
        put(dst, 0, i, src[i], kind)
    return dst[0]


# 16-bit -> float32 in registers (the decode path), likewise
@nb.njit
def widen_reg(src, kind):
    dst = np.empty(src.shape[0], dtype=np.float32)
    for i in range(src.shape[0]):
        dst[i] = bf16_f32(src[i]) if kind == 1 else f16_f32(src[i])
    return dst
