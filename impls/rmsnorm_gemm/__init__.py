"""rmsnorm_gemm: the pre-attention RMSNorm fused into the packed Q/K/V projection.

    y = (x * rsqrt(mean(x², axis=-1) + eps) * gamma) @ W.T

    x:     (M, H)   activations (M = 1 at decode, the prompt length at prefill)
    gamma: (H,)     RMSNorm weight
    W:     (N, H)   packed projection, N = q_dim + 2 * kv_dim, row-major (out, in)
    y:     (M, N)

The unfused chain is two kernels: rms_norm writes the normalised (M, H) activations in
the storage dtype, then linear reads them back. A fused kernel reads x once per row,
keeps the normalised row on chip and never writes the (M, H) intermediate.
"""

from __future__ import annotations

from harness.spec import FusionSpec, batched_sizes


def decompose(ops, x, gamma, w, *, eps):
    h = ops.rms_norm(x, gamma, eps)
    return {"y": ops.linear(h, w)}


SPEC = FusionSpec(
    name="rmsnorm_gemm",
    doc=__doc__,
    shapes={"x": ("M", "H"), "gamma": ("H",), "w": ("N", "H"), "y": ("M", "N")},
    values={"x": "activation", "gamma": "norm_weight", "w": "weight"},
    rotate=("x",),
    attrs={"eps": 1e-5},
    decompose=decompose,
    flops="2 * M * N * H + 4 * M * H",
    strategy=batched_sizes("H", "N"),
)
