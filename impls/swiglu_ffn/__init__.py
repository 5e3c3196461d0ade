"""swiglu_ffn: the whole SwiGLU feed-forward block in one go.

    y = (silu(x @ W_gate.T) * (x @ W_up.T)) @ W_down.T

    x:      (M, H)   normalised activations
    w_gate: (I, H)   gate projection, row-major (out, in)
    w_up:   (I, H)   up projection
    w_down: (H, I)   down projection
    y:      (M, H)

Chained without a host synchronisation. On a GPU the (M, I) activation stays on the
device; at decode (M = 1) the best kernel never lets it leave on-chip memory.
"""

from __future__ import annotations

from harness.spec import NORMALISED_VALUE_SHAPES, FusionSpec, batched_sizes


def decompose(ops, x, w_gate, w_up, w_down):
    act = ops.mul(ops.silu(ops.linear(x, w_gate)), ops.linear(x, w_up))
    return {"y": ops.linear(act, w_down)}


SPEC = FusionSpec(
    name="swiglu_ffn",
    doc=__doc__,
    shapes={"x": ("M", "H"), "w_gate": ("I", "H"), "w_up": ("I", "H"), "w_down": ("H", "I"), "y": ("M", "H")},
    values={"x": "activation", "w_gate": "weight", "w_up": "weight", "w_down": "weight"},
    rotate=("x",),
    decompose=decompose,
    flops="6 * M * I * H + 5 * M * I",
    strategy=batched_sizes("H", "I"),
    value_shapes=NORMALISED_VALUE_SHAPES,  # x comes out of an RMSNorm
)
