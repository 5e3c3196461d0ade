"""rmsnorm_gemm's numba kernels on the CPU (impls/rmsnorm_gemm/cpu.py describes them,
prepares the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import dots, dots2, dots_seq, dots_w16, make_pow2, normalise, widen, widen_rows

BLOCK_ROWS = 16  # W rows per parallel task: 16 * H floats stay in the core's L2


@nb.njit(fastmath=True)
def prologue(x, gamma, eps, kind):
    # (pow2 table for float16, gamma as float32, inverse RMS of every row): one pass over x
    M, H = x.shape
    pow2 = make_pow2()
    g = np.empty(H, dtype=np.float32)
    widen(gamma, g, kind, pow2)
    inv_rms = np.empty(M, dtype=np.float32)
    for m in nb.prange(M):
        row = np.empty(H, dtype=np.float32)
        widen(x[m], row, kind, pow2)
        ss = np.float32(0.0)
        for h in range(H):
            ss += row[h] * row[h]
        inv_rms[m] = np.float32(1.0) / np.sqrt(ss / np.float32(H) + np.float32(eps))
    return pow2, g, inv_rms


@nb.njit(fastmath=True)
def block(x, g, inv_rms, tile, n0, kind, pow2, y):
    # every row of x, normalised in thread-local buffers, against one block of W rows
    M, H = x.shape
    J = tile.shape[0]
    x0 = np.empty(H, dtype=np.float32)
    x1 = np.empty(H, dtype=np.float32)
    m = 0
    while m + 2 <= M:
        normalise(x[m], g, inv_rms[m], kind, pow2, x0)
        normalise(x[m + 1], g, inv_rms[m + 1], kind, pow2, x1)
        dots2(x0, x1, tile, y[m, n0:n0 + J], y[m + 1, n0:n0 + J])
        m += 2
    if m < M:
        normalise(x[m], g, inv_rms[m], kind, pow2, x0)
        dots(x0, tile, y[m, n0:n0 + J])


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel_f32(x, gamma, w, eps, y):
    pow2, g, inv_rms = prologue(x, gamma, eps, 0)
    N, H = w.shape
    if x.shape[0] == 1:  # decode: x normalised once, W streamed two rows per pass
        xn = np.empty(H, dtype=np.float32)
        normalise(x[0], g, inv_rms[0], 0, pow2, xn)
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            dots_seq(xn, w[n0:n1], y[0, n0:n1])
        return
    for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
        n0 = b * BLOCK_ROWS
        block(x, g, inv_rms, w[n0:min(N, n0 + BLOCK_ROWS)], n0, 0, pow2, y)


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel_16(x, gamma, w, eps, kind, y):
    pow2, g, inv_rms = prologue(x, gamma, eps, kind)
    N, H = w.shape
    if x.shape[0] == 1:  # decode: x normalised once, W widened in registers as it streams
        xn = np.empty(H, dtype=np.float32)
        normalise(x[0], g, inv_rms[0], kind, pow2, xn)
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            dots_w16(xn, w[n0:n1], y[0, n0:n1], kind)
        return
    for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
        n0 = b * BLOCK_ROWS
        n1 = min(N, n0 + BLOCK_ROWS)
        tile = np.empty((n1 - n0, H), dtype=np.float32)
        widen_rows(w, n0, n1 - n0, kind, pow2, tile)
        block(x, g, inv_rms, tile, n0, kind, pow2, y)


def kernel(x, gamma, w, eps, kind, y):
    if kind == 0:
        kernel_f32(x, gamma, w, eps, y)
    else:
        kernel_16(x, gamma, w, eps, kind, y)


# the 16-bit -> float32 row conversion on its own, for the exhaustive test (tests/test_cpu_kernels.py)
@nb.njit
def widen_row(src, kind):
    dst = np.empty(src.shape[0], dtype=np.float32)
    widen(src, dst, kind, make_pow2())
    return dst
