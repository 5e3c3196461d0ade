"""add_rmsnorm on the CPU: one numba kernel, one pass, parallel over rows.

x, residual: (M, H), gamma: (H,) -> h = x + residual, y = rmsnorm(h) * gamma, both (M, H).

Each row is read once: x[m] and residual[m] are widened into thread-local float32 buffers
and added there, the sum of squares is taken (in float64) over the float32 sum, then h
and y are each written once, rounded (to nearest even) straight into the storage dtype.
y is computed from the float32 sum, not from h rounded to 16 bits, so it is at least as
accurate as the chain (which re-reads the rounded h).

float16 and bfloat16 arrive as raw 16-bit patterns and are widened as in
rmsnorm_gemm/cpu.py (bfloat16 by a shift, float16 by its bit fields). Small problems
(decode: M·H below SERIAL_BELOW) run in a serial kernel: there the cost of waking the
thread pool is larger than the work.
"""

from __future__ import annotations

import numpy as np

from harness.backends import Prepared
from harness.dtypes import np_dtype
from harness.registry import Implementation, register

KIND = {"float32": 0, "bfloat16": 1, "float16": 2}
SERIAL_BELOW = 1 << 16  # M * H elements under which one thread does the whole job
ROWS_PER_TASK = 8  # rows per parallel task (thread-local buffers are allocated per task)

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, make_pow2, gamma_f32, row
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
    def row(x, r, g, m, eps, kind, pow2, h, y, xb, rb):
        # one row: read x[m] and residual[m] once, write h[m] and y[m] once
        H = xb.shape[0]
        widen(x[m], xb, kind, pow2)
        widen(r[m], rb, kind, pow2)
        ss = 0.0
        for i in range(H):
            s = xb[i] + rb[i]
            xb[i] = s
            ss += np.float64(s) * np.float64(s)
        inv = 1.0 / np.sqrt(ss / H + eps)
        if kind == 0:  # float32: plain stores, a loop the compiler vectorises
            for i in range(H):
                h[m, i] = xb[i]
                y[m, i] = np.float64(xb[i]) * inv * np.float64(g[i])
        elif kind == 1:  # bfloat16: the rounding is a few integer ops, the loop vectorises
            for i in range(H):
                h[m, i] = narrow16(xb[i], 1)
                y[m, i] = narrow16(np.float64(xb[i]) * inv * np.float64(g[i]), 1)
        else:
            for i in range(H):
                h[m, i] = narrow16(xb[i], 2)
                y[m, i] = narrow16(np.float64(xb[i]) * inv * np.float64(g[i]), 2)

    @nb.njit(inline="always")
    def gamma_f32(gamma, kind, pow2):
        g = np.empty(gamma.shape[0], dtype=np.float32)
        widen(gamma, g, kind, pow2)
        return g

    @nb.njit(fastmath=True, cache=True)
    def kernel_serial(x, r, gamma, eps, kind, h, y):
        pow2 = make_pow2()
        g = gamma_f32(gamma, kind, pow2)
        H = x.shape[1]
        xb = np.empty(H, dtype=np.float32)
        rb = np.empty(H, dtype=np.float32)
        for m in range(x.shape[0]):
            row(x, r, g, m, eps, kind, pow2, h, y, xb, rb)

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_parallel(x, r, gamma, eps, kind, h, y):
        pow2 = make_pow2()
        g = gamma_f32(gamma, kind, pow2)
        H = x.shape[1]
        M = x.shape[0]
        for b in nb.prange((M + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
            xb = np.empty(H, dtype=np.float32)
            rb = np.empty(H, dtype=np.float32)
            for m in range(b * ROWS_PER_TASK, min(M, (b + 1) * ROWS_PER_TASK)):
                row(x, r, g, m, eps, kind, pow2, h, y, xb, rb)

    def kernel(x, r, gamma, eps, kind, h, y):
        if x.size < SERIAL_BELOW:
            kernel_serial(x, r, gamma, eps, kind, h, y)
        else:
            kernel_parallel(x, r, gamma, eps, kind, h, y)

    _kernel = kernel
    return kernel


def _bits(a: np.ndarray) -> np.ndarray:
    """float32 stays; 16-bit dtypes are passed as their uint16 bit patterns."""
    return a if a.dtype == np.float32 else a.view(np.uint16)


class AddRmsNormCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.r, self.gamma = (_bits(np.ascontiguousarray(inputs[k])) for k in ("x", "residual", "gamma"))
        shape = inputs["x"].shape
        self.out = {"h": np.empty(shape, dtype=np_dtype(dtype)), "y": np.empty(shape, dtype=np_dtype(dtype))}
        self.h, self.y = _bits(self.out["h"]), _bits(self.out["y"])  # rounded bits are stored straight here

    def run(self):
        self.kernel(self.x, self.r, self.gamma, float(self.attrs["eps"]), KIND[self.dtype], self.h, self.y)


register(Implementation("add_rmsnorm", "cpu", "fused", "fused", AddRmsNormCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
