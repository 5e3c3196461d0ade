"""rmsnorm_qkv_rope's numba kernels on the CPU (impls/rmsnorm_qkv_rope/cpu.py describes them,
prepares the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import make_pow2, normalise, normed_block, put, stream_dots, weight_rows, widen

BLOCK_ROWS = 16  # W rows per pass over x (prefill): 16 * H floats stay in L2


@nb.njit(fastmath=True)
def prologue(x, gamma, eps, pos, inv_freq, kind):
    # (pow2 table, gamma as float32, inverse RMS of every row, cos and sin tables)
    M, H = x.shape
    half = inv_freq.shape[0]
    pow2 = make_pow2()
    g = np.empty(H, dtype=np.float32)
    widen(gamma, g, kind, pow2)
    inv_rms = np.empty(M, dtype=np.float32)
    cs = np.empty((M, half), dtype=np.float64)
    sn = np.empty((M, half), dtype=np.float64)
    for m in nb.prange(M):
        row = np.empty(H, dtype=np.float32)
        widen(x[m], row, kind, pow2)
        ss = 0.0
        for h in range(H):
            ss += np.float64(row[h]) * np.float64(row[h])
        inv_rms[m] = np.float32(1.0 / np.sqrt(ss / H + eps))
        p = np.float64(pos[m])
        for i in range(half):
            a = p * inv_freq[i]  # harness.ops.rope_angles: pos * theta**(-2i/d)
            cs[m, i] = np.cos(a)
            sn[m, i] = np.sin(a)
    return pow2, g, inv_rms, cs, sn


@nb.njit(fastmath=True)
def store_pairs(acc, cs, sn, rotate, out, col, kind):
    # one head's projections acc: (M, d) float32 -> out[m, col:col + d], column pairs
    # (i, i + d/2) rotated (q, k) or stored as they are (v)
    half = acc.shape[1] // 2
    for m in range(acc.shape[0]):
        for i in range(half):
            a = np.float64(acc[m, i])
            b = np.float64(acc[m, half + i])
            if rotate:
                c = cs[m, i]
                s = sn[m, i]
                a, b = a * c - b * s, b * c + a * s
            put(out, m, col + i, a, kind)
            put(out, m, col + half + i, b, kind)


@nb.njit
def head_out(t, n_heads, n_kv, d, q, k, v):
    # (output array, first column) of head t in the packed q | k | v order
    if t < n_heads:
        return q, t * d
    if t < n_heads + n_kv:
        return k, (t - n_heads) * d
    return v, (t - n_heads - n_kv) * d


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, kind, q, k, v):
    # q: (M, n_heads * d), k, v: (M, n_kv * d); one task per head: its d rows of W against
    # every row of x into an (M, d) float32 block, then rotated (q, k) and stored. Compiled
    # once for float32 W and once for 16-bit W (fb_numba's dtype-chosen helpers).
    pow2, g, inv_rms, cs, sn = prologue(x, gamma, eps, pos, inv_freq, kind)
    M, H = x.shape
    half = inv_freq.shape[0]
    d = 2 * half
    xn = np.empty(H, dtype=np.float32)
    if M == 1:  # decode: x normalised once; each head's rows streamed in order
        normalise(x[0], g, inv_rms[0], kind, pow2, xn)
    for t in nb.prange(n_heads + 2 * n_kv):
        out, col = head_out(t, n_heads, n_kv, d, q, k, v)
        r0 = t * d
        acc = np.empty((M, d), dtype=np.float32)
        if M == 1:  # W widened in registers as it streams (stream_dots)
            stream_dots(xn, w[r0:r0 + d], acc[0], kind)
        else:
            for j0 in range(0, d, BLOCK_ROWS):
                j1 = min(d, j0 + BLOCK_ROWS)
                normed_block(x, g, inv_rms, weight_rows(w, r0 + j0, r0 + j1, kind, pow2), j0, kind, pow2, acc)
        store_pairs(acc, cs, sn, t < n_heads + n_kv, out, col, kind)
