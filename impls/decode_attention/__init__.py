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

from harness.attention import attention_spec, decode_lens, qkv, ragged_lens
from harness.spec import TorchPeer


KV = ("B", "n_kv_heads", "T", "head_dim")


def decompose(ops, q, k, v, lens, *, scale, B, T, n_heads, n_kv_heads, head_dim):
    g = n_heads // n_kv_heads
    logits = ops.matmul_nt(ops.reshape(q, (B, n_kv_heads, g, head_dim)), k)  # (B, Hkv, g, T)
    p = ops.softmax(ops.length_mask(ops.scale(logits, scale), lens))
    return {"o": ops.reshape(ops.matmul(p, v), (B, n_heads, head_dim))}


def sdpa(ops, q, k, v, lens, *, scale, B, T, n_heads, n_kv_heads, head_dim, mask=None, flex=None, empty=None):
    """What a caller picks for decode attention in torch, decided once per batch (plan):
    SDPA with no mask where every key is valid, FlexAttention with its block mask (GPU) or
    SDPA with a boolean key mask (CPU) for ragged lengths; sequences with lens = 0 zeroed
    (NaN there in torch), as the spec defines."""
    import torch.nn.functional as F

    q4 = q[:, :, None, :]
    if flex is not None:
        o = flex(q4, k, v)
    else:
        o = F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, scale=scale, enable_gqa=n_heads != n_kv_heads)
    o = o[:, :, 0, :]
    return {"o": o if empty is None else o.masked_fill(empty, 0.0)}


def sdpa_plan(inputs, attrs, backend):
    """Built once from the host lengths (they stay fixed through a benchmark): the path,
    and the mask or FlexAttention closure it needs."""
    import numpy as np
    import torch

    lens, T, device = np.asarray(inputs["lens"]), attrs["T"], backend.device
    plan = {}
    if (lens == 0).any():
        plan["empty"] = torch.from_numpy(lens == 0).to(device)[:, None, None]
    if (lens == T).all():
        return {**plan, "path": "sdpa, no mask (every key valid)"}
    lens_dev = torch.from_numpy(lens.astype(np.int32)).to(device)
    if device == "cuda":
        try:
            return {**plan, "flex": _flex_decode(lens_dev, attrs),
                    "path": "flex_attention (compiled), block mask built once from lens"}
        except Exception as e:  # named in the record, then the masked SDPA path
            why = f"; flex_attention failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        why = ""
    visible = torch.arange(T, device=device)[None, :] < lens_dev[:, None]
    return {**plan, "mask": visible[:, None, None, :], "path": f"sdpa, boolean key mask built once{why}"}


def _flex_decode(lens, attrs):
    """flex_attention, compiled, with a block mask of the valid keys of each sequence."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, T = lens.shape[0], attrs["T"]

    def valid(b, h, q_idx, kv_idx):
        return kv_idx < lens[b]

    block_mask = create_block_mask(valid, B, None, 1, T, device=lens.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    gqa = attrs["n_heads"] != attrs["n_kv_heads"]
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask, scale=attrs["scale"], enable_gqa=gqa)


def make_inputs(dims, rng, value_shape):
    B, T, d = dims["B"], dims["T"], dims["head_dim"]
    kv = (B, dims["n_kv_heads"], T, d)
    out = qkv(rng, {"q": (B, dims["n_heads"], d), "k": kv, "v": kv}, "large" if value_shape == "large" else "normal")
    out["lens"] = ragged_lens(rng, B, T) if value_shape == "ragged" else decode_lens(B, T)
    return out


def flops(dims):
    valid = int(decode_lens(dims["B"], dims["T"]).sum())
    return valid * dims["n_heads"] * (4 * dims["head_dim"] + 4)


def moved_bytes(dims, itemsize):
    """Only the valid cache rows need reading (the lengths benchmarks use: decode_lens)."""
    B, T, d = dims["B"], dims["T"], dims["head_dim"]
    valid = int(decode_lens(B, T).sum())
    return (2 * B * dims["n_heads"] * d + 2 * valid * dims["n_kv_heads"] * d) * itemsize + 4 * B


SPEC = attention_spec(
    "T",
    upper=700,
    batches=(1, 2, 3, 5),
    name="decode_attention",
    doc=__doc__,
    shapes={"q": ("B", "n_heads", "head_dim"), "k": KV, "v": KV, "lens": ("B",),
            "o": ("B", "n_heads", "head_dim")},
    outputs=("o",),
    make_inputs_f64=make_inputs,
    value_shapes=("normal", "large", "ragged"),
    index_inputs=("lens",),
    rotate=("q",),  # lens stay: they set how much of the cache each sample reads
    decompose=decompose,
    flops=flops,
    moved_bytes=moved_bytes,
    torch_peers={"sdpa": TorchPeer(sdpa, plan=sdpa_plan)},
)
