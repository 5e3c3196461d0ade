"""rmsnorm_qkv_rope: RMSNorm, the packed QKV projection and rotary embedding in one go.

    h = x * rsqrt(mean(x², axis=-1) + eps) * gamma
    q | k | v = h @ W.T                      split at n_heads·d and n_kv_heads·d
    q, k = rope(q, pos), rope(k, pos)        rotate-half (NeoX) layout, base theta

    x:     (M, H)                             activations
    gamma: (H,)                               RMSNorm weight
    w:     ((n_heads + 2·n_kv_heads)·d, H)    packed projection, row-major (out, in)
    pos:   (M,) int32                         the position of each token
    q:     (M, n_heads, d)
    k, v:  (M, n_kv_heads, d)                 grouped-query: n_kv_heads divides n_heads

RoPE, for i < d/2, with angle a = pos·theta^(-2i/d) (harness.ops.rope_angles):
out[i] = x[i]·cos a − x[i + d/2]·sin a, out[i + d/2] = x[i + d/2]·cos a + x[i]·sin a.
The unfused chain is RMSNorm, GEMM, split and two RoPE kernels; a fused kernel applies
the rotation to the accumulators before they are ever stored.
"""

from __future__ import annotations

from hypothesis import strategies as st

from harness.spec import BATCH_SIZES, FusionSpec, awkward_size


N_OUT = "(n_heads + 2 * n_kv_heads) * head_dim"  # the packed q, k, v rows of w


def decompose(ops, x, gamma, w, pos, *, eps, theta, n_heads, n_kv_heads, head_dim):
    M = x.shape[0]
    h = ops.rms_norm(x, gamma, eps)
    q, k, v = ops.split(ops.linear(h, w), [n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim])
    return {
        "q": ops.rope(ops.reshape(q, (M, n_heads, head_dim)), pos, theta),
        "k": ops.rope(ops.reshape(k, (M, n_kv_heads, head_dim)), pos, theta),
        "v": ops.reshape(v, (M, n_kv_heads, head_dim)),
    }


def validate(dims):
    problems = []
    if dims["head_dim"] % 2:
        problems.append(f"head_dim must be even for rotary embedding, got {dims['head_dim']}")
    if dims["n_heads"] % dims["n_kv_heads"]:
        problems.append(f"n_kv_heads ({dims['n_kv_heads']}) must divide n_heads ({dims['n_heads']})")
    return problems


def strategy():
    return st.builds(
        lambda M, H, kv, group, d: {"M": M, "H": H, "n_heads": kv * group, "n_kv_heads": kv, "head_dim": d},
        st.sampled_from(BATCH_SIZES), awkward_size(), st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 4]),
        st.sampled_from([2, 6, 64, 80, 128]))


SPEC = FusionSpec(
    name="rmsnorm_qkv_rope",
    doc=__doc__,
    shapes={"x": ("M", "H"), "gamma": ("H",), "w": (N_OUT, "H"), "pos": ("M",),
            "q": ("M", "n_heads", "head_dim"), "k": ("M", "n_kv_heads", "head_dim"),
            "v": ("M", "n_kv_heads", "head_dim")},
    values={"x": "activation", "gamma": "norm_weight", "w": "weight", "pos": "position"},
    index_inputs=("pos",),
    rotate=("x", "pos"),
    attrs={"eps": 1e-5, "theta": 10000.0},
    decompose=decompose,
    decompose_dims=("n_heads", "n_kv_heads", "head_dim"),
    validate_dims=validate,
    flops=f"2 * M * {N_OUT} * H + 4 * M * H + 6 * M * (n_heads + n_kv_heads) * head_dim",
    strategy=strategy,
)
