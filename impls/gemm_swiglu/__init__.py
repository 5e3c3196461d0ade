"""gemm_swiglu: the FFN's gate and up projections fused with the SwiGLU activation.

    y = silu(x @ W_gate.T) * (x @ W_up.T)

    x:      (M, H)   normalised activations
    w_gate: (I, H)   gate projection, row-major (out, in)
    w_up:   (I, H)   up projection
    y:      (M, I)   the activation that feeds the down projection

The unfused chain is four kernels (two GEMMs, silu, mul) and writes three (M, I)
intermediates. A fused kernel reads x once for both products and never writes the
pre-activations.
"""

from __future__ import annotations

from hypothesis import strategies as st

from harness.spec import BATCH_SIZES, FusionSpec, awkward_size


def decompose(ops, x, w_gate, w_up):
    gate = ops.linear(x, w_gate)
    up = ops.linear(x, w_up)
    return {"y": ops.mul(ops.silu(gate), up)}


def flops(dims):
    M, H, I = dims["M"], dims["H"], dims["I"]
    return 4 * M * I * H + 5 * M * I


def strategy():
    return st.fixed_dictionaries({"M": st.sampled_from(BATCH_SIZES), "H": awkward_size(), "I": awkward_size()})


SPEC = FusionSpec(
    name="gemm_swiglu",
    doc=__doc__,
    dims=("M", "H", "I"),
    attrs={},
    inputs=("x", "w_gate", "w_up"),
    rotate=("x",),
    outputs=("y",),
    decompose=decompose,
    values={"x": "activation", "w_gate": "weight", "w_up": "weight"},
    shapes={"x": ("M", "H"), "w_gate": ("I", "H"), "w_up": ("I", "H"), "y": ("M", "I")},
    flops=flops,
    strategy=strategy,
    # x comes out of an RMSNorm: no "large" rows (x300 would overflow float16 products)
    value_shapes=("normal", "outliers", "near_constant"),
)
