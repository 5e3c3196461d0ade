"""decode_attention: one new query token per sequence against a KV cache.

    o[b] = softmax(scale · q[b] k[b, :lens[b]]ᵀ) v[b, :lens[b]]

    q: (B, n_heads, d)               the new token's queries
    k, v: (B, n_kv_heads, T, d)      the cache, T = its capacity (T_max)
    lens: (B,) int32                 valid length of each sequence, 0 ≤ lens[b] ≤ T
    o: (B, n_heads, d)

Cache positions ≥ lens[b] hold whatever is there: they must never reach the result (a
test fills them with NaN). lens[b] = 0 gives o[b] = 0, never NaN. scale: 0 (the default)
means 1/sqrt(d). The valid lengths benchmarks use are mixed, T down towards T/2
(harness.attention.decode_lens); property tests also draw ragged ones with empty rows.
The work is one read of the valid cache: memory bound, and when B·n_heads is small a
GPU kernel must split the key axis across blocks (split-K, flash-decoding) to fill the
device.
"""

from __future__ import annotations

from harness.attention import check_heads, decode_lens, default_scale, qkv, ragged_lens, strategy
from harness.spec import Cost, FusionSpec


def decompose(ops, q, k, v, lens, *, scale, B, T, n_heads, n_kv_heads, head_dim):
    g = n_heads // n_kv_heads
    logits = ops.matmul_nt(ops.reshape(q, (B, n_kv_heads, g, head_dim)), k)  # (B, Hkv, g, T)
    p = ops.softmax(ops.length_mask(ops.scale(logits, scale), lens))
    return {"o": ops.reshape(ops.matmul(p, v), (B, n_heads, head_dim))}


def sdpa(ops, q, k, v, lens, *, scale, B, T, n_heads, n_kv_heads, head_dim):
    """torch's scaled_dot_product_attention with a boolean key mask from lens; a sequence
    with lens = 0 comes out NaN there and is zeroed, as the spec defines."""
    import torch
    import torch.nn.functional as F

    visible = torch.arange(T, device=k.device)[None, :] < lens[:, None]  # (B, T)
    o = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=visible[:, None, None, :],
                                       scale=scale, enable_gqa=n_heads != n_kv_heads)
    return {"o": o[:, :, 0, :].masked_fill((lens == 0)[:, None, None], 0.0)}


def make_inputs(dims, rng, value_shape):
    B, T, d = dims["B"], dims["T"], dims["head_dim"]
    kv = (B, dims["n_kv_heads"], T, d)
    out = qkv(rng, {"q": (B, dims["n_heads"], d), "k": kv, "v": kv}, "large" if value_shape == "large" else "normal")
    out["lens"] = ragged_lens(rng, B, T) if value_shape == "ragged" else decode_lens(B, T)
    return out


def cost(dims, itemsize):
    B, T, d, Hq, Hkv = dims["B"], dims["T"], dims["head_dim"], dims["n_heads"], dims["n_kv_heads"]
    valid = int(decode_lens(B, T).sum())  # the cache rows that must be read
    return Cost(bytes=(2 * B * Hq * d + 2 * valid * Hkv * d) * itemsize + 4 * B,
                flops=valid * Hq * (4 * d + 4))


def output_shapes(dims):
    return {"o": (dims["B"], dims["n_heads"], dims["head_dim"])}


SPEC = FusionSpec(
    name="decode_attention",
    doc=__doc__,
    dims=("B", "T", "n_heads", "n_kv_heads", "head_dim"),
    attrs={"scale": 0.0},
    inputs=("q", "k", "v", "lens"),
    rotate=("q",),  # lens stay: they set how much of the cache each sample reads
    outputs=("o",),
    decompose=decompose,
    make_inputs_f64=make_inputs,
    cost_model=cost,
    output_shapes=output_shapes,
    strategy=lambda: strategy("T", 700, batches=(1, 2, 3, 5)),
    validate_dims=check_heads,
    value_shapes=("normal", "large", "ragged"),
    decompose_dims=("B", "T", "n_heads", "n_kv_heads", "head_dim"),
    index_inputs=("lens",),
    derive_attrs=default_scale,
    torch_peers={"sdpa": sdpa},
)
