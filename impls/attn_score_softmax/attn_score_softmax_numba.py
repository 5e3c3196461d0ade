"""attn_score_softmax's numba kernels on the CPU (impls/attn_score_softmax/cpu.py describes
them, prepares the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import causal_logits, causal_task, make_pow2, put, widen_rows

ROWS = 4  # query positions per task (times g heads)
KEYS = 64  # K rows widened per block


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel(q, k, scale, kind, p):
    # p: (B·Hq·S, S), float32 or uint16 bit patterns
    B, Hq, S, d = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    nblk = (S + ROWS - 1) // ROWS
    pow2 = make_pow2()
    for task in nb.prange(B * Hkv * nblk):
        b, kh, i0, R, qs = causal_task(q, Hkv, task, nblk, ROWS, scale, kind, pow2)
        last = i0 + R  # keys 0 … last − 1 are visible to some row of the task
        kb = np.empty((KEYS, d), dtype=np.float32)
        sct = np.empty((last, g * R), dtype=np.float32)  # the task's logits, keys first
        for j0 in range(0, last, KEYS):
            n = min(last, j0 + KEYS) - j0
            widen_rows(k[b, kh], j0, n, kind, pow2, kb)
            causal_logits(qs, R, i0, kb, j0, n, sct[j0:j0 + n])
        for j in range(g):
            for r in range(R):
                row = j * R + r
                seen = i0 + r + 1  # keys 0 … i0 + r
                top = sct[0, row]
                for c in range(1, seen):
                    top = max(top, sct[c, row])
                total = np.float32(0.0)
                for c in range(seen):
                    e = np.exp(sct[c, row] - top)
                    sct[c, row] = e
                    total += e
                inv = np.float32(1.0) / total
                out = (b * Hq + kh * g + j) * S + i0 + r
                for c in range(seen):
                    put(p, out, c, sct[c, row] * inv, kind)
                for c in range(seen, S):
                    put(p, out, c, np.float32(0.0), kind)
