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

from hypothesis import strategies as st

from harness.spec import BATCH_SIZES, FusionSpec, awkward_size


def decompose(ops, x, w_gate, w_up, w_down):
    act = ops.mul(ops.silu(ops.linear(x, w_gate)), ops.linear(x, w_up))
    return {"y": ops.linear(act, w_down)}


def flops(dims):
    M, H, I = dims["M"], dims["H"], dims["I"]
    return 6 * M * I * H + 5 * M * I


def strategy():
    return st.fixed_dictionaries({"M": st.sampled_from(BATCH_SIZES), "H": awkward_size(), "I": awkward_size()})


SPEC = FusionSpec(
    name="swiglu_ffn",
    doc=__doc__,
    dims=("M", "H", "I"),
    attrs={},
    inputs=("x", "w_gate", "w_up", "w_down"),
    rotate=("x",),
    outputs=("y",),
    decompose=decompose,
    values={"x": "activation", "w_gate": "weight", "w_up": "weight", "w_down": "weight"},
    shapes={"x": ("M", "H"), "w_gate": ("I", "H"), "w_up": ("I", "H"), "w_down": ("H", "I"), "y": ("M", "H")},
    flops=flops,
    strategy=strategy,
    # x comes out of an RMSNorm: no "large" rows (x300 would overflow float16 products)
    value_shapes=("normal", "outliers", "near_constant"),
)
