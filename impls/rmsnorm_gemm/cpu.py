"""rmsnorm_gemm on the CPU: one numba kernel, parallel over blocks of W rows.

x: (M, H), gamma: (H,), w: (N, H) -> y: (M, N). The inverse RMS of each row is taken in
one pass over x (M scalars); then each thread owns a block of W rows, builds the
normalised row x[m] * s[m] * gamma in a thread-local (H,) float32 buffer and takes its
dot products with the block. No (M, H) intermediate is ever written.

float16 and bfloat16 arrive as raw 16-bit patterns; each W row is widened to float32 in
a thread-local buffer as it is used (bfloat16 by a shift, float16 by its bit fields).
Decode (M = 1) uses each W element once: there x is normalised once, and W streams two
rows per pass (fb_numba.dots_seq / dots_w16, 16-bit W widened in registers).
The kernel accumulates in float32 and writes float32; rounding y to the storage dtype is
one pass over the (M, N) output.
"""

from __future__ import annotations

import numpy as np

from harness.backends import Prepared
from harness.backends.cpu import KIND, bits16
from harness.registry import Implementation, register

BLOCK_ROWS = 16  # W rows per parallel task: 16 * H floats stay in the core's L2

_kernel = None
_widen = None  # the 16-bit -> float32 row conversion, kept for the exhaustive test


def _compile():
    """Build the numba kernel on first use (numba is imported only here)."""
    global _kernel, _widen
    # what the cached kernels call is bound at module level, not in closure cells: numba keys
    # its on-disk cache on the pickled closure, which differs in every process
    global nb, make_pow2, normalise, widen, widen_rows, dots, dots2, dots_seq, dots_w16, prologue, block, kernel_f32, kernel_16
    if _kernel is not None:
        return _kernel
    import numba as nb

    from harness.kernels.fb_numba import dots, dots2, dots_seq, dots_w16, make_pow2, normalise, widen, widen_rows

    @nb.njit(fastmath=True)
    def prologue(x, gamma, eps, kind):
        # (pow2 table for float16, gamma as float32, inverse RMS of every row): one pass over x
        M, H = x.shape
        pow2 = make_pow2()
        g = np.empty(H, dtype=np.float32)
        widen(gamma, g, kind, pow2)
        inv_rms = np.empty(M, dtype=np.float32)
        for m in nb.prange(M):
            row = np.empty(H, dtype=np.float32)
            widen(x[m], row, kind, pow2)
            ss = np.float32(0.0)
            for h in range(H):
                ss += row[h] * row[h]
            inv_rms[m] = np.float32(1.0) / np.sqrt(ss / np.float32(H) + np.float32(eps))
        return pow2, g, inv_rms

    @nb.njit(fastmath=True)
    def block(x, g, inv_rms, tile, n0, kind, pow2, y):
        # every row of x, normalised in thread-local buffers, against one block of W rows
        M, H = x.shape
        J = tile.shape[0]
        x0 = np.empty(H, dtype=np.float32)
        x1 = np.empty(H, dtype=np.float32)
        m = 0
        while m + 2 <= M:
            normalise(x[m], g, inv_rms[m], kind, pow2, x0)
            normalise(x[m + 1], g, inv_rms[m + 1], kind, pow2, x1)
            dots2(x0, x1, tile, y[m, n0:n0 + J], y[m + 1, n0:n0 + J])
            m += 2
        if m < M:
            normalise(x[m], g, inv_rms[m], kind, pow2, x0)
            dots(x0, tile, y[m, n0:n0 + J])

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_f32(x, gamma, w, eps, y):
        pow2, g, inv_rms = prologue(x, gamma, eps, 0)
        N, H = w.shape
        if x.shape[0] == 1:  # decode: x normalised once, W streamed two rows per pass
            xn = np.empty(H, dtype=np.float32)
            normalise(x[0], g, inv_rms[0], 0, pow2, xn)
            for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
                n0 = b * BLOCK_ROWS
                n1 = min(N, n0 + BLOCK_ROWS)
                dots_seq(xn, w[n0:n1], y[0, n0:n1])
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            block(x, g, inv_rms, w[n0:min(N, n0 + BLOCK_ROWS)], n0, 0, pow2, y)

    @nb.njit(parallel=True, fastmath=True, cache=True)
    def kernel_16(x, gamma, w, eps, kind, y):
        pow2, g, inv_rms = prologue(x, gamma, eps, kind)
        N, H = w.shape
        if x.shape[0] == 1:  # decode: x normalised once, W widened in registers as it streams
            xn = np.empty(H, dtype=np.float32)
            normalise(x[0], g, inv_rms[0], kind, pow2, xn)
            for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
                n0 = b * BLOCK_ROWS
                n1 = min(N, n0 + BLOCK_ROWS)
                dots_w16(xn, w[n0:n1], y[0, n0:n1], kind)
            return
        for b in nb.prange((N + BLOCK_ROWS - 1) // BLOCK_ROWS):
            n0 = b * BLOCK_ROWS
            n1 = min(N, n0 + BLOCK_ROWS)
            tile = np.empty((n1 - n0, H), dtype=np.float32)
            widen_rows(w, n0, n1 - n0, kind, pow2, tile)
            block(x, g, inv_rms, tile, n0, kind, pow2, y)

    def kernel(x, gamma, w, eps, kind, y):
        if kind == 0:
            kernel_f32(x, gamma, w, eps, y)
        else:
            kernel_16(x, gamma, w, eps, kind, y)

    @nb.njit
    def widen_row(src, kind):
        dst = np.empty(src.shape[0], dtype=np.float32)
        widen(src, dst, kind, make_pow2())
        return dst

    _kernel, _widen = kernel, widen_row
    return kernel


class RmsNormGemmCpu(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = _compile()
        self.x, self.gamma, self.w = map(bits16, self.bind_inputs(inputs, ("x", "gamma", "w"), np.ascontiguousarray))
        y = self.alloc_outputs()["y"]
        self.acc = y if dtype == "float32" else np.empty(y.shape, dtype=np.float32)

    def run(self):
        self.kernel(self.x, self.gamma, self.w, self.attrs["eps"], KIND[self.dtype], self.acc)
        if self.acc is not self.out["y"]:
            self.out["y"][...] = self.acc

    def poison(self):
        self.acc.fill(np.nan)
        super().poison()


register(Implementation("rmsnorm_gemm", "cpu", "fused", "fused", RmsNormGemmCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
