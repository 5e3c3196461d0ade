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

from harness.spec import NORMALISED_VALUE_SHAPES, FusionSpec, batched_sizes


def decompose(ops, x, w_gate, w_up):
    gate = ops.linear(x, w_gate)
    up = ops.linear(x, w_up)
    return {"y": ops.mul(ops.silu(gate), up)}


SPEC = FusionSpec(
    name="gemm_swiglu",
    doc=__doc__,
    shapes={"x": ("M", "H"), "w_gate": ("I", "H"), "w_up": ("I", "H"), "y": ("M", "I")},
    values={"x": "activation", "w_gate": "weight", "w_up": "weight"},
    rotate=("x",),
    decompose=decompose,
    flops="4 * M * I * H + 5 * M * I",
    strategy=batched_sizes("H", "I"),
    value_shapes=NORMALISED_VALUE_SHAPES,  # x comes out of an RMSNorm
)
