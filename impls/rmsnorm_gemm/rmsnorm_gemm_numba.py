"""rmsnorm_gemm's numba kernels on the CPU (impls/rmsnorm_gemm/cpu.py describes them,
prepares the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import make_pow2, normalise, normed_block, stream_dots, weight_rows, widen

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


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel(x, gamma, w, eps, kind, y):
    # x: (M, H), gamma: (H,), w: (N, H) float32 or 16-bit patterns -> y: (M, N) float32;
    # compiled once for float32 W and once for 16-bit W (fb_numba's dtype-chosen helpers)
    pow2, g, inv_rms = prologue(x, gamma, eps, kind)
    N, H = w.shape
    blocks = (N + BLOCK_ROWS - 1) // BLOCK_ROWS
    if x.shape[0] == 1:  # decode: x normalised once, W streamed two rows per pass
        xn = np.empty(H, dtype=np.float32)
        normalise(x[0], g, inv_rms[0], kind, pow2, xn)
        for b in nb.prange(blocks):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            stream_dots(xn, w[n0:n1], y[0, n0:n1], kind)
        return
    for b in nb.prange(blocks):  # every row of x against one block of W rows
        n0 = b * BLOCK_ROWS
        n1 = min(N, n0 + BLOCK_ROWS)
        normed_block(x, g, inv_rms, weight_rows(w, n0, n1, kind, pow2), n0, kind, pow2, y)


# the 16-bit -> float32 row conversion on its own, for the exhaustive test (tests/test_cpu_kernels.py)
@nb.njit
def widen_row(src, kind):
    dst = np.empty(src.shape[0], dtype=np.float32)
    widen(src, dst, kind, make_pow2())
    return dst
