"""swiglu_ffn's numba kernels on the CPU (impls/swiglu_ffn/cpu.py describes them, prepares
the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import (dots, dots2, dots_seq, dots_w16, make_pow2, put, swiglu_decode, swiglu_rows,
                                      swiglu_rows_w16, widen, widen_rows)

BLOCK_ROWS = 8  # rows of W_gate and of W_up per phase-1 task: 2 * 8 * H floats stay in L2
DOWN_ROWS = 8  # rows of W_down per phase-2 task: 8 * I floats (I = 14336: 460 KB) stay in L2


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
        swiglu_decode(x[0], wg, wu, 0, act, 0)
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
        swiglu_decode(x0, wg, wu, kind, act, 0)
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
