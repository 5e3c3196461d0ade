"""add_rmsnorm: the residual add fused with the next RMSNorm.

    h = x + residual
    y = h * rsqrt(mean(h², axis=-1) + eps) * gamma

    x, residual: (M, H)   the block's output and the residual stream
    gamma:       (H,)     RMSNorm weight
    h:           (M, H)   the new residual stream (an output)
    y:           (M, H)   the normalised activations for the next projection

The unfused chain writes h, then reads it back to normalise. A fused kernel reads x and
residual once and writes h and y once: 4·M·H elements moved instead of 6·M·H.
"""

from __future__ import annotations

from harness.spec import FusionSpec, batched_sizes


def decompose(ops, x, residual, gamma, *, eps):
    h = ops.add(x, residual)
    return {"h": h, "y": ops.rms_norm(h, gamma, eps)}


SPEC = FusionSpec(
    name="add_rmsnorm",
    doc=__doc__,
    shapes={"x": ("M", "H"), "residual": ("M", "H"), "gamma": ("H",), "h": ("M", "H"), "y": ("M", "H")},
    values={"x": "activation", "residual": "activation", "gamma": "norm_weight"},
    attrs={"eps": 1e-5},
    decompose=decompose,
    flops="5 * M * H",
    strategy=batched_sizes("H", upper=5000),
)
