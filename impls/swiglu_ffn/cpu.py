"""swiglu_ffn on the CPU: one numba call, two parallel phases, no return to Python between.

x: (M, H), w_gate, w_up: (I, H), w_down: (H, I) -> y: (M, H).

Phase 1 is gemm_swiglu's kernel: each thread owns a block of BLOCK_ROWS rows of W_gate and
of W_up, takes both dot products from one load of each x row (two rows at a time,
prefill), applies silu(gate) * up in registers and stores the activation. Phase 2, the
down projection, is parallel over blocks of W_down rows, two activation rows against four
W_down rows per inner pass.

The (M, I) activation is kept in float32 (never rounded to the storage dtype, so it is
more accurate than the chain) in a scratch buffer allocated once at prepare time. It
cannot stay on-chip as it can on a GPU: every phase-2 block needs the whole activation
row, which phase-1 blocks on *both* cores produce, so it has to pass through memory shared
by the cores (at decode, M = 1, it is I floats: it lives in L2/L3, never DRAM). The only
synchronisation is the barrier between the two prange loops inside the one numba call.

float16 and bfloat16 arrive as raw 16-bit patterns; the W rows of a block and the rows of
x are widened to float32 in thread-local buffers as they are used (bfloat16 by a shift,
float16 by its bit fields). Decode (M = 1) uses each W element once, so there W is widened
in registers as it streams, one row at a time (see gemm_swiglu/cpu.py). Dot products accumulate in float32, silu * up is taken in
float64, and y is rounded (to nearest even) straight into the storage dtype as it is
stored.
"""

from __future__ import annotations

import numpy as np

from harness.backends import Prepared
from harness.dtypes import np_dtype
from harness.registry import Implementation, register

BLOCK_ROWS = 8  # rows of W_gate and of W_up per phase-1 task: 2 * 8 * H floats stay in L2
DOWN_ROWS = 8  # rows of W_down per phase-2 task: 8 * I floats (I = 14336: 460 KB) stay in L2
KIND = {"float32": 0, "bfloat16": 1, "float16": 2}

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, make_pow2, widen, block_up, block_down, dots_seq, dots_w16, put, swiglu
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
    def swiglu(g, u):
        # silu(g) * u in float64; exp's argument is clamped so it never overflows
        gd = np.float64(g)
        return gd / (1.0 + np.exp(min(-gd, 700.0))) * np.float64(u)

    @nb.njit(inline="always", fastmath=True)
    def block_up(x, tg, tu, n0, kind, pow2, act):
        # phase 1: every row of x (widened in thread-local buffers) against one block of
        # gate/up rows; silu(gate) * up goes to the float32 activation
        M, H = x.shape
        J = tg.shape[0]
        x0 = np.empty(H, dtype=np.float32)
        x1 = np.empty(H, dtype=np.float32)
        g0 = np.empty(J, dtype=np.float32)
        g1 = np.empty(J, dtype=np.float32)
        u0 = np.empty(J, dtype=np.float32)
        u1 = np.empty(J, dtype=np.float32)
        m = 0
        while m + 2 <= M:
            widen(x[m], x0, kind, pow2)
            widen(x[m + 1], x1, kind, pow2)
            dots2(x0, x1, tg, g0, g1)
            dots2(x0, x1, tu, u0, u1)
            for j in range(J):
                act[m, n0 + j] = swiglu(g0[j], u0[j])
                act[m + 1, n0 + j] = swiglu(g1[j], u1[j])
            m += 2
        if m < M:
            widen(x[m], x0, kind, pow2)
            dots(x0, tg, g0)
            dots(x0, tu, u0)
            for j in range(J):
                act[m, n0 + j] = swiglu(g0[j], u0[j])

    @nb.njit(inline="always", fastmath=True)
    def block_down(act, td, n0, kind, y):
        # phase 2: every activation row against one block of W_down rows
        M = act.shape[0]
        J = td.shape[0]
        a = np.empty(J, dtype=np.float32)
        b = np.empty(J, dtype=np.float32)
        m = 0
        while m + 2 <= M:
            dots2(act[m], act[m + 1], td, a, b)
            for j in range(J):
                put(y, m, n0 + j, a[j], kind)
                put(y, m + 1, n0 + j, b[j], kind)
            m += 2
        if m < M:
            dots(act[m], td, a)
            for j in range(J):
                put(y, m, n0 + j, a[j], kind)

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_f32(x, wg, wu, wd, act, y):
        pow2 = make_pow2()
        N = wg.shape[0]
        H = wd.shape[0]
        if x.shape[0] == 1:  # decode: each W streamed once, one row at a time
            for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
                n0 = b * BLOCK_ROWS
                n1 = min(N, n0 + BLOCK_ROWS)
                g0 = np.empty(n1 - n0, dtype=np.float32)
                u0 = np.empty(n1 - n0, dtype=np.float32)
                dots_seq(x[0], wg[n0:n1], g0)
                dots_seq(x[0], wu[n0:n1], u0)
                for j in range(n1 - n0):
                    act[0, n0 + j] = swiglu(g0[j], u0[j])
            for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
                n0 = b * DOWN_ROWS
                n1 = min(H, n0 + DOWN_ROWS)
                dots_seq(act[0], wd[n0:n1], y[0, n0:n1])
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            block_up(x, wg[n0:n1], wu[n0:n1], n0, 0, pow2, act)
        # prange's end is the barrier: the activation is complete here
        for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
            n0 = b * DOWN_ROWS
            block_down(act, wd[n0:min(H, n0 + DOWN_ROWS)], n0, 0, y)

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_16(x, wg, wu, wd, kind, act, y):
        pow2 = make_pow2()
        N, H = wg.shape
        if x.shape[0] == 1:  # decode: x widened once, W widened in registers as it streams
            x0 = np.empty(H, dtype=np.float32)
            widen(x[0], x0, kind, pow2)
            for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
                n0 = b * BLOCK_ROWS
                n1 = min(N, n0 + BLOCK_ROWS)
                g0 = np.empty(n1 - n0, dtype=np.float32)
                u0 = np.empty(n1 - n0, dtype=np.float32)
                dots_w16(x0, wg[n0:n1], g0, kind)
                dots_w16(x0, wu[n0:n1], u0, kind)
                for j in range(n1 - n0):
                    act[0, n0 + j] = swiglu(g0[j], u0[j])
            for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
                n0 = b * DOWN_ROWS
                n1 = min(H, n0 + DOWN_ROWS)
                a = np.empty(n1 - n0, dtype=np.float32)
                dots_w16(act[0], wd[n0:n1], a, kind)
                for j in range(n1 - n0):
                    put(y, 0, n0 + j, a[j], kind)
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            tg = np.empty((n1 - n0, H), dtype=np.float32)
            tu = np.empty((n1 - n0, H), dtype=np.float32)
            for j in range(n1 - n0):
                widen(wg[n0 + j], tg[j], kind, pow2)
                widen(wu[n0 + j], tu[j], kind, pow2)
            block_up(x, tg, tu, n0, kind, pow2, act)
        for b in nb.prange((H + DOWN_ROWS - 1) // DOWN_ROWS):
            n0 = b * DOWN_ROWS
            n1 = min(H, n0 + DOWN_ROWS)
            td = np.empty((n1 - n0, N), dtype=np.float32)
            for j in range(n1 - n0):
                widen(wd[n0 + j], td[j], kind, pow2)
            block_down(act, td, n0, kind, y)

    def kernel(x, wg, wu, wd, kind, act, y):
        if kind == 0:
            kernel_f32(x, wg, wu, wd, act, y)
        else:
            kernel_16(x, wg, wu, wd, kind, act, y)

    _kernel = kernel
    return kernel


def _bits(a: np.ndarray) -> np.ndarray:
    """float32 stays; 16-bit dtypes are passed as their uint16 bit patterns."""
    return a if a.dtype == np.float32 else a.view(np.uint16)


class SwigluFfnCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.wg, self.wu, self.wd = (_bits(np.ascontiguousarray(inputs[k]))
                                             for k in ("x", "w_gate", "w_up", "w_down"))
        M, H = inputs["x"].shape
        I = inputs["w_gate"].shape[0]
        self.act = np.empty((M, I), dtype=np.float32)  # phase-1 -> phase-2 scratch (see the docstring)
        self.out = {"y": np.empty((M, H), dtype=np_dtype(dtype))}
        self.y = _bits(self.out["y"])  # the kernel stores the rounded bits straight into y

    def run(self):
        self.kernel(self.x, self.wg, self.wu, self.wd, KIND[self.dtype], self.act, self.y)

    def poison(self):
        self.act.fill(np.nan)
        super().poison()


register(Implementation("swiglu_ffn", "cpu", "fused", "fused", SwigluFfnCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
