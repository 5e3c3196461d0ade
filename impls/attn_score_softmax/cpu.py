"""attn_score_softmax on the CPU: one numba kernel, logits never stored.

q: (B, Hq, S, d), k: (B, Hkv, S, d) -> p: (B, Hq, S, S). A task owns ROWS query positions
of the g = Hq / Hkv heads that share one kv head (fb_numba.group_queries): every K row
loaded serves g·ROWS dot products. Keys go by in blocks of KEYS, only up to the task's
last position (causal); the logits of the task's rows land in a thread-local float32
buffer (g·ROWS × S: this is the on-chip part, sized by S at run time, so any S works),
then each row takes its max, exponentials and sum and is written once, normalised,
straight into P in the storage dtype, zeros past the diagonal.

float16 and bfloat16 arrive as raw 16-bit patterns; q rows and each K block are widened
to float32 once per task.
"""

from __future__ import annotations

import numpy as np

from harness.backends import Prepared
from harness.backends.cpu import KIND, bits16
from harness.registry import Implementation, register

ROWS = 4  # query positions per task (times g heads)
KEYS = 64  # K rows widened per block

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    global nb, balanced_block, causal_logits, group_queries, make_pow2, put, widen_rows
    if _kernel is not None:
        return _kernel
    import numba as nb

    from harness.kernels.fb_numba import balanced_block, causal_logits, group_queries, make_pow2, put, widen_rows

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel(q, k, scale, kind, p):
        # p: (B·Hq·S, S), float32 or uint16 bit patterns
        B, Hq, S, d = q.shape
        Hkv = k.shape[1]
        g = Hq // Hkv
        nblk = (S + ROWS - 1) // ROWS
        pow2 = make_pow2()
        for task in nb.prange(B * Hkv * nblk):
            bk = task // nblk
            b, kh = bk // Hkv, bk % Hkv
            i0 = balanced_block(task % nblk, nblk) * ROWS
            R = min(S, i0 + ROWS) - i0
            last = i0 + R  # keys 0 … last − 1 are visible to some row of the task
            qs = np.empty((g * R, d), dtype=np.float32)
            group_queries(q, b, kh, g, i0, R, scale, kind, pow2, qs)
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

    _kernel = kernel
    return kernel


class AttnScoreSoftmaxCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.q, self.k = map(bits16, self.bind_inputs(inputs, ("q", "k"), np.ascontiguousarray))
        self.p = bits16(self.alloc_outputs()["p"]).reshape(-1, self.dims["S"])  # the kernel stores rounded bits here
        self.scale = np.float32(attrs["scale"])

    def run(self):
        self.kernel(self.q, self.k, self.scale, KIND[self.dtype], self.p)


register(Implementation("attn_score_softmax", "cpu", "fused", "fused", AttnScoreSoftmaxCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
