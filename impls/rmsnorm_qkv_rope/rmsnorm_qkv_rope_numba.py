"""rmsnorm_qkv_rope's numba kernels on the CPU (impls/rmsnorm_qkv_rope/cpu.py describes them,
prepares the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import dots, dots2, make_pow2, normalise, put, stream_dots, widen, widen_rows

PAIRS = 8  # rotation pairs per pass: 2 * 8 rows of W (2 * 8 * H floats) stay in L2


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
def pair_block(x, g, inv_rms, ta, tb, kind, pow2, acc_a, acc_b):
    # acc_a[m, j] = xn[m] . ta[j], acc_b[m, j] = xn[m] . tb[j] for every row m of x
    M, H = x.shape
    x0 = np.empty(H, dtype=np.float32)
    x1 = np.empty(H, dtype=np.float32)
    m = 0
    while m + 2 <= M:
        normalise(x[m], g, inv_rms[m], kind, pow2, x0)
        normalise(x[m + 1], g, inv_rms[m + 1], kind, pow2, x1)
        dots2(x0, x1, ta, acc_a[m], acc_a[m + 1])
        dots2(x0, x1, tb, acc_b[m], acc_b[m + 1])
        m += 2
    if m < M:
        normalise(x[m], g, inv_rms[m], kind, pow2, x0)
        dots(x0, ta, acc_a[m])
        dots(x0, tb, acc_b[m])


@nb.njit(fastmath=True)
def store_pairs(acc_a, acc_b, cs, sn, i0, J, rotate, out, col, half, kind):
    # rows i0 + j and i0 + j + d/2 of one head: rotated (q, k) or as they are (v)
    for m in range(acc_a.shape[0]):
        for j in range(J):
            a = np.float64(acc_a[m, j])
            b = np.float64(acc_b[m, j])
            if rotate:
                c = cs[m, i0 + j]
                s = sn[m, i0 + j]
                put(out, m, col + i0 + j, a * c - b * s, kind)
                put(out, m, col + half + i0 + j, b * c + a * s, kind)
            else:
                put(out, m, col + i0 + j, a, kind)
                put(out, m, col + half + i0 + j, b, kind)


@nb.njit
def head_out(t, n_heads, n_kv, d, q, k, v):
    # (output array, first column) of head t in the packed q | k | v order
    if t < n_heads:
        return q, t * d
    if t < n_heads + n_kv:
        return k, (t - n_heads) * d
    return v, (t - n_heads - n_kv) * d


@nb.njit(fastmath=True, inline="always")
def decode(x, g, inv_rms, w, cs, sn, n_heads, n_kv, kind, pow2, q, k, v):
    # M = 1: x normalised once; each head's d rows of W streamed in order, as they are or
    # widened in registers (stream_dots). Inlined, so that its prange is the kernel's.
    half = cs.shape[1]
    d = 2 * half
    xn = np.empty(x.shape[1], dtype=np.float32)
    normalise(x[0], g, inv_rms[0], kind, pow2, xn)
    for t in nb.prange(n_heads + 2 * n_kv):
        out, col = head_out(t, n_heads, n_kv, d, q, k, v)
        acc = np.empty((1, d), dtype=np.float32)
        stream_dots(xn, w[t * d:(t + 1) * d], acc[0], kind)
        store_pairs(acc[:, :half], acc[:, half:], cs, sn, 0, half, t < n_heads + n_kv, out, col, half, kind)


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel_f32(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, q, k, v):
    # q: (M, n_heads * d), k, v: (M, n_kv * d)
    pow2, g, inv_rms, cs, sn = prologue(x, gamma, eps, pos, inv_freq, 0)
    M, H = x.shape
    half = inv_freq.shape[0]
    d = 2 * half
    if M == 1:
        decode(x, g, inv_rms, w, cs, sn, n_heads, n_kv, 0, pow2, q, k, v)
        return
    for t in nb.prange(n_heads + 2 * n_kv):
        out, col = head_out(t, n_heads, n_kv, d, q, k, v)
        r0 = t * d
        acc_a = np.empty((M, PAIRS), dtype=np.float32)
        acc_b = np.empty((M, PAIRS), dtype=np.float32)
        for i0 in range(0, half, PAIRS):
            J = min(PAIRS, half - i0)
            pair_block(x, g, inv_rms, w[r0 + i0:r0 + i0 + J], w[r0 + half + i0:r0 + half + i0 + J],
                       0, pow2, acc_a, acc_b)
            store_pairs(acc_a, acc_b, cs, sn, i0, J, t < n_heads + n_kv, out, col, half, 0)


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel_16(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, kind, q, k, v):
    # as kernel_f32, with 16-bit bit patterns in and out; W rows widened per pass
    pow2, g, inv_rms, cs, sn = prologue(x, gamma, eps, pos, inv_freq, kind)
    M, H = x.shape
    half = inv_freq.shape[0]
    d = 2 * half
    if M == 1:
        decode(x, g, inv_rms, w, cs, sn, n_heads, n_kv, kind, pow2, q, k, v)
        return
    for t in nb.prange(n_heads + 2 * n_kv):
        out, col = head_out(t, n_heads, n_kv, d, q, k, v)
        r0 = t * d
        acc_a = np.empty((M, PAIRS), dtype=np.float32)
        acc_b = np.empty((M, PAIRS), dtype=np.float32)
        ta = np.empty((PAIRS, H), dtype=np.float32)
        tb = np.empty((PAIRS, H), dtype=np.float32)
        for i0 in range(0, half, PAIRS):
            J = min(PAIRS, half - i0)
            widen_rows(w, r0 + i0, J, kind, pow2, ta)
            widen_rows(w, r0 + half + i0, J, kind, pow2, tb)
            pair_block(x, g, inv_rms, ta[:J], tb[:J], kind, pow2, acc_a, acc_b)
            store_pairs(acc_a, acc_b, cs, sn, i0, J, t < n_heads + n_kv, out, col, half, kind)


def kernel(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, kind, q, k, v):
    if kind == 0:
        kernel_f32(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, q, k, v)
    else:
        kernel_16(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, kind, q, k, v)
