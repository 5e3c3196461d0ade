"""attention_prefill's numba kernels on the CPU (impls/attention_prefill/cpu.py describes
them, prepares the arrays and calls `kernel`).
How a kernel file loads numba and its cache: harness/kernels/fb_numba.py.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from harness.kernels.fb_numba import causal_logits, causal_task, head_axpy, make_pow2, put, widen_rows

ROWS = 4  # query positions per task (times g heads), at least
GROUP_ROWS = 16  # ... and at least this many query rows per task in all: with g = 1 (no
# grouped-query sharing, e.g. Phi-3) four rows a task re-read every K/V block for only four
# query rows: Phi-3 prefill512 f32 took 144 ms, level with the NumPy chain; 69 ms with 16
KEYS = 64  # keys per block: the block's K and V rows stay in L1/L2


@nb.njit(parallel=True, fastmath=True, cache=True)
def kernel(q, k, v, scale, kind, o):
    # o: (B·Hq·S, d), float32 or uint16 bit patterns
    B, Hq, S, d = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    rows = max(ROWS, GROUP_ROWS // g)
    nblk = (S + rows - 1) // rows
    pow2 = make_pow2()
    for task in nb.prange(B * Hkv * nblk):
        b, kh, i0, R, qs = causal_task(q, Hkv, task, nblk, rows, scale, kind, pow2)
        kb = np.empty((KEYS, d), dtype=np.float32)
        vb = np.empty((KEYS, d), dtype=np.float32)
        sct = np.empty((KEYS, g * R), dtype=np.float32)  # one key block's logits, keys first
        top = np.full(g * R, -np.inf, dtype=np.float32)
        total = np.zeros(g * R, dtype=np.float32)
        acc = np.zeros((g * R, d), dtype=np.float32)
        for j0 in range(0, i0 + R, KEYS):
            n = min(i0 + R, j0 + KEYS) - j0
            widen_rows(k[b, kh], j0, n, kind, pow2, kb)
            causal_logits(qs, R, i0, kb, j0, n, sct)
            for row in range(g * R):  # online softmax: new max, rescale, weights
                m = top[row]
                for jj in range(n):
                    m = max(m, sct[jj, row])
                if m > top[row]:
                    c = np.exp(top[row] - m)
                    total[row] *= c
                    for h in range(d):
                        acc[row, h] *= c
                    top[row] = m
                for jj in range(n):  # a future key has −inf: weight 0 (m is finite: key 0 is seen)
                    w = np.exp(sct[jj, row] - m)
                    sct[jj, row] = w
                    total[row] += w
            widen_rows(v[b, kh], j0, n, kind, pow2, vb)
            for jj in range(n):
                head_axpy(sct[jj], vb[jj], acc)
        for j in range(g):
            for r in range(R):
                row = j * R + r
                out = ((b * Hq + kh * g + j) * S + i0 + r)
                inv = np.float32(1.0) / total[row]
                for h in range(d):
                    put(o, out, h, acc[row, h] * inv, kind)
