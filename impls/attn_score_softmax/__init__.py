"""attn_score_softmax: causal attention weights in one kernel.

    P = softmax(scale · q kᵀ + causal mask)          over the key axis

    q: (B, n_heads, S, d)       queries
    k: (B, n_kv_heads, S, d)    keys; q head h reads kv head h // (n_heads / n_kv_heads)
    p: (B, n_heads, S, S)       the weights; row i is zero past column i

scale: 0 (the default) means 1/sqrt(d). The unfused chain writes the (S, S) logits, then
scales, masks and normalises them in separate kernels; a fused kernel never stores the
logits, only P, and must handle any S (no on-chip row buffer of fixed size).
"""

from __future__ import annotations

from harness.attention import attention_spec, qkv


Q = ("B", "n_heads", "S", "head_dim")
KV = ("B", "n_kv_heads", "S", "head_dim")


def decompose(ops, q, k, *, scale, B, S, n_heads, n_kv_heads, head_dim):
    g = n_heads // n_kv_heads
    logits = ops.matmul_nt(ops.reshape(q, (B, n_kv_heads, g * S, head_dim)), k)
    logits = ops.reshape(logits, (B, n_heads, S, S))
    return {"p": ops.softmax(ops.causal_mask(ops.scale(logits, scale)))}


def make_inputs(dims, rng, value_shape):
    B, S, d = dims["B"], dims["S"], dims["head_dim"]
    return qkv(rng, {"q": (B, dims["n_heads"], S, d), "k": (B, dims["n_kv_heads"], S, d)}, value_shape)


SPEC = attention_spec(
    "S",
    name="attn_score_softmax",
    doc=__doc__,
    shapes={"q": Q, "k": KV, "p": ("B", "n_heads", "S", "S")},
    outputs=("p",),
    make_inputs_f64=make_inputs,
    value_shapes=("normal", "large"),
    decompose=decompose,
    # S (S + 1) / 2 logits a row of heads: the causal triangle, the only ones that must be formed
    flops="B * n_heads * (S * (S + 1) // 2) * (2 * head_dim + 4)",
)
