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

from hypothesis import strategies as st

from harness.spec import BATCH_SIZES, FusionSpec, awkward_size


def decompose(ops, x, residual, gamma, *, eps):
    h = ops.add(x, residual)
    return {"h": h, "y": ops.rms_norm(h, gamma, eps)}


def flops(dims):
    return 5 * dims["M"] * dims["H"]


def strategy():
    return st.fixed_dictionaries({"M": st.sampled_from(BATCH_SIZES), "H": awkward_size(5000)})


SPEC = FusionSpec(
    name="add_rmsnorm",
    doc=__doc__,
    dims=("M", "H"),
    attrs={"eps": 1e-5},
    inputs=("x", "residual", "gamma"),
    outputs=("h", "y"),
    decompose=decompose,
    values={"x": "activation", "residual": "activation", "gamma": "norm_weight"},
    shapes={"x": ("M", "H"), "residual": ("M", "H"), "gamma": ("H",), "h": ("M", "H"), "y": ("M", "H")},
    flops=flops,
    strategy=strategy,
)
