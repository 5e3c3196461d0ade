"""attention_prefill on the CPU: one numba kernel, flash-attention style (online softmax).

q: (B, Hq, S, d), k, v: (B, Hkv, S, d) -> o: (B, Hq, S, d). A task owns R = max(ROWS,
GROUP_ROWS / g) query positions of the g = Hq / Hkv heads that share one kv head
(fb_numba.group_queries), so every K and V row loaded serves g·R query rows. Keys go by
in blocks of KEYS, only up to the task's last position (causal): the block's logits
(g·R, KEYS) go to a small thread-local buffer, each row's running max and sum are updated
and its float32 accumulator rescaled (online softmax), and the block's V rows are added
in. The (S, S) matrix never exists; the largest buffer is g·R × KEYS floats.

float16 and bfloat16 arrive as raw 16-bit patterns; q rows and each K / V block are
widened to float32 once per task; o is rounded once, straight into the storage dtype.
"""

from __future__ import annotations

import numpy as np

from harness.backends import Prepared
from harness.backends.cpu import KIND, bits16
from harness.registry import Implementation, register

ROWS = 4  # query positions per task (times g heads), at least
GROUP_ROWS = 16  # ... and at least this many query rows per task in all: with g = 1 (no
# grouped-query sharing, e.g. Phi-3) four rows a task re-read every K/V block for only four
# query rows: Phi-3 prefill512 f32 took 144 ms, level with the NumPy chain; 69 ms with 16
KEYS = 64  # keys per block: the block's K and V rows stay in L1/L2

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    global nb, balanced_block, causal_logits, group_queries, head_axpy, make_pow2, put, widen_rows
    if _kernel is not None:
        return _kernel
    import numba as nb

    from harness.kernels.fb_numba import (balanced_block, causal_logits, group_queries, head_axpy, make_pow2, put,
                                          widen_rows)

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
            bk = task // nblk
            b, kh = bk // Hkv, bk % Hkv
            i0 = balanced_block(task % nblk, nblk) * rows
            R = min(S, i0 + rows) - i0
            qs = np.empty((g * R, d), dtype=np.float32)
            group_queries(q, b, kh, g, i0, R, scale, kind, pow2, qs)
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

    _kernel = kernel
    return kernel


class AttentionPrefillCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.q, self.k, self.v = map(bits16, self.bind_inputs(inputs, ("q", "k", "v"), np.ascontiguousarray))
        self.o = bits16(self.alloc_outputs()["o"]).reshape(-1, self.dims["head_dim"])  # the kernel stores rounded bits here
        self.scale = np.float32(attrs["scale"])

    def run(self):
        self.kernel(self.q, self.k, self.v, self.scale, KIND[self.dtype], self.o)


register(Implementation("attention_prefill", "cpu", "fused", "fused", AttentionPrefillCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
