"""add_rmsnorm's numba kernels on the CPU (impls/add_rmsnorm/cpu.py describes them, prepares
the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import make_pow2, narrow16, widen

SERIAL_BELOW = 1 << 16  # M * H elements under which one thread does the whole job
ROWS_PER_TASK = 8  # rows per parallel task (thread-local buffers are allocated per task)


@nb.njit(fastmath=True)
def row(x, r, g, m, eps, kind, pow2, h, y, xb, rb):
    # one row: read x[m] and residual[m] once, write h[m] and y[m] once
    H = xb.shape[0]
    widen(x[m], xb, kind, pow2)
    widen(r[m], rb, kind, pow2)
    ss = 0.0
    for i in range(H):
        s = xb[i] + rb[i]
        xb[i] = s
        ss += np.float64(s) * np.float64(s)
    inv = 1.0 / np.sqrt(ss / H + eps)
    if kind == 0:  # float32: plain stores, a loop the compiler vectorises
        for i in range(H):
            h[m, i] = xb[i]
            y[m, i] = np.float64(xb[i]) * inv * np.float64(g[i])
    elif kind == 1:  # bfloat16: the rounding is a few integer ops, the loop vectorises
        for i in range(H):
            h[m, i] = narrow16(xb[i], 1)
            y[m, i] = narrow16(np.float64(xb[i]) * inv * np.float64(g[i]), 1)
    else:
        for i in range(H):
            h[m, i] = narrow16(xb[i], 2)
            y[m, i] = narrow16(np.float64(xb[i]) * inv * np.float64(g[i]), 2)


@nb.njit
def gamma_f32(gamma, kind, pow2):
    g = np.empty(gamma.shape[0], dtype=np.float32)
    widen(gamma, g, kind, pow2)
    return g


@nb.njit(fastmath=True, cache=True)
def kernel_serial(x, r, gamma, eps, kind, h, y):
    pow2 = make_pow2()
    g = gamma_f32(gamma, kind, pow2)
    H = x.shape[1]
    xb = np.empty(H, dtype=np.float32)
    rb = np.empty(H, dtype=np.float32)
    for m in range(x.shape[0]):
        row(x, r, g, m, eps, kind, pow2, h, y, xb, rb)


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel_parallel(x, r, gamma, eps, kind, h, y):
    pow2 = make_pow2()
    g = gamma_f32(gamma, kind, pow2)
    H = x.shape[1]
    M = x.shape[0]
    for b in nb.prange((M + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        xb = np.empty(H, dtype=np.float32)
        rb = np.empty(H, dtype=np.float32)
        for m in range(b * ROWS_PER_TASK, min(M, (b + 1) * ROWS_PER_TASK)):
            row(x, r, g, m, eps, kind, pow2, h, y, xb, rb)


def kernel(x, r, gamma, eps, kind, h, y):
    if x.size < SERIAL_BELOW:
        kernel_serial(x, r, gamma, eps, kind, h, y)
    else:
        kernel_parallel(x, r, gamma, eps, kind, h, y)
