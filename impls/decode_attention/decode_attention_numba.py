"""decode_attention's numba kernels on the CPU (impls/decode_attention/cpu.py describes them,
prepares the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import head_axpy, head_dots, make_pow2, put, widen

# Sums over the key axis are taken in blocks of this many rows, then the block sums added:
# the float32 rounding error then grows with SUM_BLOCK + T / SUM_BLOCK instead of with T
# (at T = 32768 the NMSE was 60x the NumPy chain's with one running sum).
SUM_BLOCK = 256


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel(q, k, v, lens, scale, kind, o):
    # o: (B·Hq, d), float32 or uint16 bit patterns
    B, Hq, d = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    g = Hq // Hkv
    pow2 = make_pow2()
    for task in nb.prange(B * Hkv):
        b = task // Hkv
        kh = task % Hkv
        n = min(max(lens[b], 0), T)
        qs = np.empty((g, d), dtype=np.float32)
        for j in range(g):
            widen(q[b, kh * g + j], qs[j], kind, pow2)
            for h in range(d):
                qs[j, h] *= scale
        kk, vv = k[b, kh], v[b, kh]  # (T, d)
        row = np.empty(d, dtype=np.float32)
        logits = np.empty((max(n, 1), g), dtype=np.float32)
        for t in range(n):  # pass 1: K, once; each row serves the g heads
            if kind == 0:
                head_dots(qs, kk[t], logits[t])  # float32 rows are read in place
            else:
                widen(kk[t], row, kind, pow2)
                head_dots(qs, row, logits[t])
        inv = np.zeros(g, dtype=np.float32)
        if n > 0:
            for j in range(g):
                top = logits[0, j]
                for t in range(1, n):
                    top = max(top, logits[t, j])
                total = np.float32(0.0)
                part = np.float32(0.0)
                for t in range(n):
                    e = np.exp(logits[t, j] - top)
                    logits[t, j] = e
                    part += e
                    if (t + 1) % SUM_BLOCK == 0:
                        total += part
                        part = np.float32(0.0)
                inv[j] = np.float32(1.0) / (total + part)
        acc = np.zeros((g, d), dtype=np.float32)
        part_acc = np.zeros((g, d), dtype=np.float32)
        for t in range(n):  # pass 2: V, once
            if kind == 0:
                head_axpy(logits[t], vv[t], part_acc)
            else:
                widen(vv[t], row, kind, pow2)
                head_axpy(logits[t], row, part_acc)
            if (t + 1) % SUM_BLOCK == 0 or t == n - 1:
                for j in range(g):
                    for h in range(d):
                        acc[j, h] += part_acc[j, h]
                        part_acc[j, h] = 0.0
        for j in range(g):
            for h in range(d):
                put(o, b * Hq + kh * g + j, h, acc[j, h] * inv[j], kind)
