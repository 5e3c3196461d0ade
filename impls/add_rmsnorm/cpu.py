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
from harness.backends.cpu import KIND, bits16
from harness.registry import Implementation, register

SERIAL_BELOW = 1 << 16  # M * H elements under which one thread does the whole job
ROWS_PER_TASK = 8  # rows per parallel task (thread-local buffers are allocated per task)

_kernel = None


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, gamma_f32, make_pow2, row, narrow16, widen
    if _kernel is not None:
        return _kernel
    import numba as nb

    from harness.kernels.fb_numba import make_pow2, narrow16, widen

    @nb.njit(fastmath=True)
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

    @nb.njit
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


class AddRmsNormCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.r, self.gamma = map(bits16, self.bind_inputs(inputs, ("x", "residual", "gamma"), np.ascontiguousarray))
        self.alloc_outputs()
        self.h, self.y = bits16(self.out["h"]), bits16(self.out["y"])  # rounded bits are stored straight here

    def run(self):
        self.kernel(self.x, self.r, self.gamma, float(self.attrs["eps"]), KIND[self.dtype], self.h, self.y)


register(Implementation("add_rmsnorm", "cpu", "fused", "fused", AddRmsNormCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
