"""rmsnorm_qkv_rope on the CPU: one numba kernel, parallel over heads.

x: (M, H), gamma: (H,), w: ((n_heads + 2·n_kv_heads)·d, H), pos: (M,) int32
-> q: (M, n_heads, d), k, v: (M, n_kv_heads, d).

The inverse RMS of each row is taken in one pass over x (M scalars, sum of squares in
float64), and the RoPE table cos/sin(pos·θ^(-2i/d)) for this run's positions, (M, d/2),
is computed in float64 at the start of every run (pos is an input; only the inverse
frequencies θ^(-2i/d), which depend on θ and d alone, are computed at prepare time, with
harness.ops.rope_angles' own expression). Then each thread owns whole heads: d rows of W.
A head is taken PAIRS rotation pairs at a time, rows i and i + d/2 together; for each
row of x (two at a time, prefill) the normalised row x[m]·s[m]·gamma is built in a
thread-local (H,) float32 buffer and its dot products with those rows accumulate in
float32. The pairs are rotated (in float64) before anything is stored, and q, k, v are
each stored once, rounded (to nearest even) straight into the storage dtype. No (M, H)
normalised activation and no unrotated q/k are ever written.

float16 and bfloat16 arrive as raw 16-bit patterns; W rows are widened to float32 in a
thread-local tile as they are used (bfloat16 by a shift, float16 by its bit fields), as
in rmsnorm_gemm/cpu.py. Decode (M = 1) normalises x once, reads each head's d rows as one
sequential stream and widens 16-bit W in registers (see gemm_swiglu/cpu.py).
"""

from __future__ import annotations

import numpy as np

from harness.backends import Prepared
from harness.backends.cpu import KIND, bits16
from harness.registry import Implementation, register

PAIRS = 8  # rotation pairs per pass: 2 * 8 rows of W (2 * 8 * H floats) stay in L2

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, dots_seq, dots_w16, head_out, normalise, pair_block, prologue, store_pairs, widen, widen_rows, dots
    global dots2, make_pow2, put
    if _kernel is not None:
        return _kernel
    import numba as nb

    from harness.kernels.fb_numba import (dots, dots2, dots_seq, dots_w16, make_pow2, normalise, put, widen,
                                          widen_rows)

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

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_f32(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, q, k, v):
        # q: (M, n_heads * d), k, v: (M, n_kv * d)
        pow2, g, inv_rms, cs, sn = prologue(x, gamma, eps, pos, inv_freq, 0)
        M, H = x.shape
        half = inv_freq.shape[0]
        d = 2 * half
        if M == 1:  # decode: x normalised once; each head's d rows streamed in order
            xn = np.empty(H, dtype=np.float32)
            normalise(x[0], g, inv_rms[0], 0, pow2, xn)
            for t in nb.prange(n_heads + 2 * n_kv):
                out, col = head_out(t, n_heads, n_kv, d, q, k, v)
                acc = np.empty((1, d), dtype=np.float32)
                dots_seq(xn, w[t * d:(t + 1) * d], acc[0])
                store_pairs(acc[:, :half], acc[:, half:], cs, sn, 0, half, t < n_heads + n_kv, out, col, half, 0)
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
        if M == 1:  # decode: x normalised once; W widened in registers as it streams
            xn = np.empty(H, dtype=np.float32)
            normalise(x[0], g, inv_rms[0], kind, pow2, xn)
            for t in nb.prange(n_heads + 2 * n_kv):
                out, col = head_out(t, n_heads, n_kv, d, q, k, v)
                acc = np.empty((1, d), dtype=np.float32)
                dots_w16(xn, w[t * d:(t + 1) * d], acc[0], kind)
                store_pairs(acc[:, :half], acc[:, half:], cs, sn, 0, half, t < n_heads + n_kv, out, col, half, kind)
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

    _kernel = kernel
    return kernel


class RmsNormQkvRopeCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.gamma, self.w = map(bits16, self.bind_inputs(inputs, ("x", "gamma", "w"), np.ascontiguousarray))
        self.pos = self.bind_inputs(inputs, ("pos",), np.ascontiguousarray)[0]
        self.nh, self.nkv, d = (self.dims[a] for a in ("n_heads", "n_kv_heads", "head_dim"))
        # θ^(-2i/d) exactly as harness.ops.rope_angles writes it (depends on θ and d only)
        self.inv_freq = float(attrs["theta"]) ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
        # (M, heads * d) views of the outputs' storage: the kernel stores the rounded bits there
        self.q, self.k, self.v = (bits16(b).reshape(self.dims["M"], -1) for b in self.alloc_outputs().values())

    def run(self):
        self.kernel(self.x, self.gamma, self.w, self.pos, self.inv_freq, float(self.attrs["eps"]),
                    self.nh, self.nkv, KIND[self.dtype], self.q, self.k, self.v)


register(Implementation("rmsnorm_qkv_rope", "cpu", "fused", "fused", RmsNormQkvRopeCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
