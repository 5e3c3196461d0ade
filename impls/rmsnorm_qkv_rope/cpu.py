"""rmsnorm_qkv_rope on the CPU: one numba kernel, parallel over heads.

x: (M, H), gamma: (H,), w: ((n_heads + 2·n_kv_heads)·d, H), pos: (M,) int32
-> q: (M, n_heads, d), k, v: (M, n_kv_heads, d).

The inverse RMS of each row is taken in one pass over x (M scalars, sum of squares in
float64), and the RoPE table cos/sin(pos·θ^(-2i/d)) for this run's positions, (M, d/2),
is computed in float64 at the start of every run (pos is an input; only the inverse
frequencies θ^(-2i/d), which depend on θ and d alone, are computed at prepare time, with
harness.ops.rope_angles' own expression). Then each thread owns whole heads: d rows of W.
A head's rows are taken 16 at a time (fb_numba.normed_block, as in rmsnorm_gemm); for
each row of x (two at a time, prefill) the normalised row x[m]·s[m]·gamma is built in a
thread-local (H,) float32 buffer and its dot products with those rows accumulate in
float32 into the head's thread-local (M, d) block. The pairs (i, i + d/2) are rotated
(in float64) before anything is stored, and q, k, v are each stored once, rounded (to
nearest even) straight into the storage dtype. No (M, H) normalised activation and no
unrotated q/k are ever stored.

float16 and bfloat16 arrive as raw 16-bit patterns; W rows are widened to float32 in a
thread-local tile as they are used (bfloat16 by a shift, float16 by its bit fields), as
in rmsnorm_gemm/cpu.py. Decode (M = 1) normalises x once, reads each head's d rows as one
sequential stream and widens 16-bit W in registers (see gemm_swiglu/cpu.py).
"""

from __future__ import annotations

import numpy as np

from harness.backends.cpu import NumbaFused, bits16
from harness.registry import Implementation, register


class RmsNormQkvRopeCpu(NumbaFused):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.gamma, self.w = self.host_inputs(inputs, ("x", "gamma", "w"))
        self.pos = self.bind_inputs(inputs, ("pos",), np.ascontiguousarray)[0]
        self.nh, self.nkv, d = (self.dims[a] for a in ("n_heads", "n_kv_heads", "head_dim"))
        # θ^(-2i/d) exactly as harness.ops.rope_angles writes it (depends on θ and d only)
        self.inv_freq = float(attrs["theta"]) ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
        # (M, heads * d) views of the outputs' storage: the kernel stores the rounded bits there
        self.q, self.k, self.v = (bits16(b).reshape(self.dims["M"], -1) for b in self.alloc_outputs().values())

    def run(self):
        self.kernel(self.x, self.gamma, self.w, self.pos, self.inv_freq, float(self.attrs["eps"]),
                    self.nh, self.nkv, self.kind, self.q, self.k, self.v)


register(Implementation("rmsnorm_qkv_rope", "cpu", "fused", "fused", RmsNormQkvRopeCpu,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
