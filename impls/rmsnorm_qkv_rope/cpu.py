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
from harness.dtypes import np_dtype
from harness.registry import Implementation, register

PAIRS = 8  # rotation pairs per pass: 2 * 8 rows of W (2 * 8 * H floats) stay in L2
KIND = {"float32": 0, "bfloat16": 1, "float16": 2}

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, prologue, head_out, pair_block, store_pairs, widen, normalise, dots_seq, dots_w16
    if _kernel is not None:
        return _kernel
    import numba as nb
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def f32_bits(typingctx, v):
        # the IEEE bit pattern of a float32 scalar, as uint32
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))
        return types.uint32(types.float32), codegen

    @intrinsic
    def bf16_f32(typingctx, u):
        # bfloat16 bits -> float32 in a register: the bits are the float32's top half
        def codegen(context, builder, signature, args):
            w = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
            return builder.bitcast(w, ir.FloatType())
        return types.float32(types.uint16), codegen

    @intrinsic
    def f16_f32(typingctx, u):
        # float16 bits -> float32 in a register (exact; one vcvtph2ps on x86 with F16C)
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(types.uint16), codegen

    @nb.njit(inline="always")
    def narrow16(v, kind):
        # float32 -> bfloat16 (kind 1) or float16 (kind 2) bit pattern, round to nearest even
        u = f32_bits(np.float32(v))
        a = u & np.uint32(0x7FFFFFFF)
        if kind == 1:
            if a > np.uint32(0x7F800000):
                return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
            return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
        sign = (u >> np.uint32(16)) & np.uint32(0x8000)
        if a > np.uint32(0x7F800000):
            r = np.uint32(0x7E00)
        elif a >= np.uint32(0x477FF000):  # >= 65520 rounds to Inf
            r = np.uint32(0x7C00)
        elif a >= np.uint32(0x38800000):  # normal: rebias the exponent by 112, drop 13 bits
            r = (a - np.uint32(0x38000000) + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        elif a > np.uint32(0x33000000):  # subnormal: units of 2**-24
            mant = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
            sh = np.uint32(126) - (a >> np.uint32(23))
            r = mant >> sh
            rem = mant & ((np.uint32(1) << sh) - np.uint32(1))
            half = np.uint32(1) << (sh - np.uint32(1))
            if rem > half or (rem == half and (r & np.uint32(1))):
                r += np.uint32(1)
        else:
            r = np.uint32(0)
        return np.uint16(sign | r)

    @nb.njit(inline="always")
    def put(out, m, n, v, kind):
        # out[m, n] = v in the storage dtype (out: float32, or uint16 bit patterns)
        if kind == 0:
            out[m, n] = v
        else:
            out[m, n] = narrow16(v, kind)

    @nb.njit(inline="always", fastmath=True)
    def widen(src, dst, kind, pow2):
        # src: (H,) float32 or uint16 bit patterns; dst: (H,) float32 (as rmsnorm_gemm/cpu.py)
        if kind == 0:
            for h in range(src.shape[0]):
                dst[h] = src[h]
        elif kind == 1:
            bits = dst.view(np.uint32)
            for h in range(src.shape[0]):
                bits[h] = np.uint32(src[h]) << np.uint32(16)
        else:
            bits = dst.view(np.uint32)
            sub = False
            for h in range(src.shape[0]):
                u = np.uint32(src[h])
                e = (u >> np.uint32(10)) & np.uint32(31)
                body = ((e + np.uint32(112)) << np.uint32(23)) | ((u & np.uint32(1023)) << np.uint32(13))
                body = np.uint32(0x7F800000) | ((u & np.uint32(1023)) << np.uint32(13)) if e == 31 else body
                bits[h] = ((u & np.uint32(0x8000)) << np.uint32(16)) | body
                sub |= e == 0
            if sub:
                for h in range(src.shape[0]):
                    u = np.uint32(src[h])
                    if (u >> np.uint32(10)) & np.uint32(31) == 0:
                        v = np.float32(u & np.uint32(1023)) * pow2[0]
                        dst[h] = -v if (u & np.uint32(0x8000)) else v

    @nb.njit(inline="always")
    def make_pow2():
        pow2 = np.empty(32, dtype=np.float32)  # float16 exponent e -> 2**(e - 25)
        pow2[0] = np.float32(2.0**-24)
        for e in range(1, 32):
            pow2[e] = np.float32(2.0 ** (e - 25))
        return pow2

    @nb.njit(inline="always", fastmath=True)
    def dots(x0, rows, a):
        # a[j] = x0 . rows[j]; four rows per pass share each x load
        J, H = rows.shape
        j = 0
        while j + 4 <= J:
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for h in range(H):
                v = x0[h]
                a0 += v * rows[j, h]
                a1 += v * rows[j + 1, h]
                a2 += v * rows[j + 2, h]
                a3 += v * rows[j + 3, h]
            a[j], a[j + 1], a[j + 2], a[j + 3] = a0, a1, a2, a3
            j += 4
        while j < J:
            acc = np.float32(0.0)
            for h in range(H):
                acc += x0[h] * rows[j, h]
            a[j] = acc
            j += 1

    @nb.njit(inline="always", fastmath=True)
    def dots2(x0, x1, rows, a, b):
        # two x rows against the block: each W load feeds two sums (prefill)
        J, H = rows.shape
        j = 0
        while j + 4 <= J:
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
            for h in range(H):
                u = x0[h]
                v = x1[h]
                w0 = rows[j, h]
                w1 = rows[j + 1, h]
                w2 = rows[j + 2, h]
                w3 = rows[j + 3, h]
                a0 += u * w0
                a1 += u * w1
                a2 += u * w2
                a3 += u * w3
                b0 += v * w0
                b1 += v * w1
                b2 += v * w2
                b3 += v * w3
            a[j], a[j + 1], a[j + 2], a[j + 3] = a0, a1, a2, a3
            b[j], b[j + 1], b[j + 2], b[j + 3] = b0, b1, b2, b3
            j += 4
        while j < J:
            s = t = np.float32(0.0)
            for h in range(H):
                s += x0[h] * rows[j, h]
                t += x1[h] * rows[j, h]
            a[j] = s
            b[j] = t
            j += 1

    @nb.njit(inline="always", fastmath=True)
    def dots_seq(x0, rows, a):
        # a[j] = x0 . rows[j], one row at a time: the decode path (see dots_w16)
        J, H = rows.shape
        for j in range(J):
            acc = np.float32(0.0)
            for h in range(H):
                acc += x0[h] * rows[j, h]
            a[j] = acc

    @nb.njit(inline="always", fastmath=True)
    def dots_w16(x0, rows, a, kind):
        # a[j] = x0 . rows[j] with rows as 16-bit patterns widened in registers (decode: each
        # W element is used once, so a float32 copy of the block would only cost bandwidth).
        # One row at a time: the block is read as one sequential stream, which the hardware
        # prefetcher follows best; x0 stays in L1.
        J, H = rows.shape
        for j in range(J):
            acc = np.float32(0.0)
            if kind == 1:
                for h in range(H):
                    acc += x0[h] * bf16_f32(rows[j, h])
            else:
                for h in range(H):
                    acc += x0[h] * f16_f32(rows[j, h])
            a[j] = acc

    @nb.njit(inline="always", fastmath=True)
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

    @nb.njit(inline="always", fastmath=True)
    def normalise(x_row, g, s, kind, pow2, out):
        widen(x_row, out, kind, pow2)
        for h in range(out.shape[0]):
            out[h] = out[h] * s * g[h]

    @nb.njit(inline="always", fastmath=True)
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

    @nb.njit(inline="always", fastmath=True)
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

    @nb.njit(inline="always")
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
                for j in range(J):
                    widen(w[r0 + i0 + j], ta[j], kind, pow2)
                    widen(w[r0 + half + i0 + j], tb[j], kind, pow2)
                pair_block(x, g, inv_rms, ta[:J], tb[:J], kind, pow2, acc_a, acc_b)
                store_pairs(acc_a, acc_b, cs, sn, i0, J, t < n_heads + n_kv, out, col, half, kind)

    def kernel(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, kind, q, k, v):
        if kind == 0:
            kernel_f32(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, q, k, v)
        else:
            kernel_16(x, gamma, w, pos, inv_freq, eps, n_heads, n_kv, kind, q, k, v)

    _kernel = kernel
    return kernel


def _bits(a: np.ndarray) -> np.ndarray:
    """float32 stays; 16-bit dtypes are passed as their uint16 bit patterns."""
    return a if a.dtype == np.float32 else a.view(np.uint16)


class RmsNormQkvRopeCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.gamma, self.w = (_bits(np.ascontiguousarray(inputs[k])) for k in ("x", "gamma", "w"))
        self.pos = np.ascontiguousarray(inputs["pos"], dtype=np.int32)
        nh, nkv, d = (int(attrs[a]) for a in ("n_heads", "n_kv_heads", "head_dim"))
        self.nh, self.nkv = nh, nkv
        # θ^(-2i/d) exactly as harness.ops.rope_angles writes it (depends on θ and d only)
        self.inv_freq = float(attrs["theta"]) ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
        M = inputs["x"].shape[0]
        dt = np_dtype(dtype)
        self.out = {"q": np.empty((M, nh, d), dtype=dt), "k": np.empty((M, nkv, d), dtype=dt),
                    "v": np.empty((M, nkv, d), dtype=dt)}
        # (M, heads * d) views of the outputs' storage: the kernel stores the rounded bits there
        self.q, self.k, self.v = (_bits(self.out[n]).reshape(M, -1) for n in ("q", "k", "v"))

    def run(self):
        self.kernel(self.x, self.gamma, self.w, self.pos, self.inv_freq, float(self.attrs["eps"]),
                    self.nh, self.nkv, KIND[self.dtype], self.q, self.k, self.v)


register(Implementation("rmsnorm_qkv_rope", "cpu", "fused", "fused", RmsNormQkvRopeCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
