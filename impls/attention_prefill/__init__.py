"""attention_prefill: causal attention over a whole prompt, (S, S) never materialised.

    O = softmax(scale · q kᵀ + causal mask) v

    q: (B, n_heads, S, d)       queries
    k, v: (B, n_kv_heads, S, d) keys and values; q head h reads kv head h // g
    o: (B, n_heads, S, d)

scale: 0 (the default) means 1/sqrt(d). The unfused chain writes the logits and the
weights (two (S, S) matrices per head); a fused kernel keeps a running max and sum per
query row (online softmax) and touches each K/V tile once per block of queries.
"""

from __future__ import annotations

from harness.attention import attention_spec, qkv
from harness.spec import TorchPeer


Q = ("B", "n_heads", "S", "head_dim")
KV = ("B", "n_kv_heads", "S", "head_dim")


def decompose(ops, q, k, v, *, scale, B, S, n_heads, n_kv_heads, head_dim):
    g = n_heads // n_kv_heads
    logits = ops.matmul_nt(ops.reshape(q, (B, n_kv_heads, g * S, head_dim)), k)
    p = ops.softmax(ops.causal_mask(ops.scale(ops.reshape(logits, (B, n_heads, S, S)), scale)))
    o = ops.matmul(ops.reshape(p, (B, n_kv_heads, g * S, S)), v)
    return {"o": ops.reshape(o, (B, n_heads, S, head_dim))}


def sdpa(ops, q, k, v, *, scale, B, S, n_heads, n_kv_heads, head_dim):
    """torch's scaled_dot_product_attention, causal, grouped-query heads."""
    import torch.nn.functional as F

    return {"o": F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                enable_gqa=n_heads != n_kv_heads)}


def make_inputs(dims, rng, value_shape):
    B, S, d = dims["B"], dims["S"], dims["head_dim"]
    kv = (B, dims["n_kv_heads"], S, d)
    return qkv(rng, {"q": (B, dims["n_heads"], S, d), "k": kv, "v": kv}, value_shape)


SPEC = attention_spec(
    "S",
    name="attention_prefill",
    doc=__doc__,
    shapes={"q": Q, "k": KV, "v": KV, "o": Q},
    outputs=("o",),
    make_inputs_f64=make_inputs,
    value_shapes=("normal", "large"),
    decompose=decompose,
    flops="B * n_heads * (S * (S + 1) // 2) * (4 * head_dim + 4)",  # over the causal triangle
    torch_peers={"sdpa": TorchPeer(sdpa, path="sdpa, is_causal=True")},
)
