"""What the three attention specs (impls/attn_score_softmax, attention_prefill,
decode_attention) share: inputs, valid lengths, the default scale and shape checks, and
the FusionSpec fields that follow from them (attention_spec).

Layout: q: (B, Hq, S, d), k, v: (B, Hkv, T, d), heads grouped: q head h reads kv head
h // g with g = Hq / Hkv. Written as a reshape, q (B, Hq, S, d) -> (B, Hkv, g·S, d), so
no spec repeats K or V per q head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.spec import FusionSpec

# q and k are scaled by this in the "large" value shape: scale·q·k then has a standard
# deviation of about 30, so the largest logits of a row sit near ±80-100, where exp()
# without the max subtracted overflows float32 (e^88.7) and float16 long before.
LARGE_LOGIT_FACTOR = math.sqrt(30.0)

HEAD_DIM_LIMIT = 256  # fused kernels keep a head_dim vector per thread (see validate)

# What the property strategy draws (tests/test_properties.py checks these against the
# kernels' own constants): head sizes, awkward ones up to HEAD_DIM_LIMIT; q heads per kv
# head, up to one past the 8 that a workgroup (wgsl MAX_GW) or block (cuda GMAX) holds, so
# that the heads of one kv head are cut in two; and for decode, cache lengths past every
# split threshold of the decode kernels: 513 past 2 x wgsl's MIN_SPLIT_KEYS (the first
# occupancy split), 16385 past cuda's MAX_SPLITS x SPLIT_MIN_KEYS (beyond it the splits
# grow), wgsl's longest split under the loop budget (max_keys_per_split, 10368 at most)
# and the cpu kernel's SUM_BLOCK (256). Sizes at the limits come with one sequence and
# one kv head, so that the float64 reference stays cheap.
HEAD_DIMS = (4, 17, 64, 80, 128, HEAD_DIM_LIMIT)
GROUPS = (1, 2, 3)
GROUP_LIMIT = 9
DECODE_LONG_T = (513, 16385)
LONG_SEQUENCES = {"T": DECODE_LONG_T}  # by sequence axis: only decode has split thresholds


def default_scale(dims: dict[str, int], attrs: dict[str, Any]) -> dict[str, Any]:
    """scale = 0 (the default) means 1/sqrt(head_dim)."""
    if not attrs.get("scale"):
        attrs = dict(attrs, scale=1.0 / math.sqrt(dims["head_dim"]))
    return attrs


def qkv(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], value_shape: str) -> dict[str, np.ndarray]:
    """Fresh N(0, 1) q, k, v of the given shapes; "large" scales q and k so that the
    logits reach ±80 (LARGE_LOGIT_FACTOR)."""
    out = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    if value_shape == "large":
        out["q"] *= LARGE_LOGIT_FACTOR
        out["k"] *= LARGE_LOGIT_FACTOR
    return out


def decode_lens(B: int, T: int) -> np.ndarray:
    """The valid lengths benchmarks use: mixed within a batch, from T down towards T/2
    (B = 1: T). Fixed by (B, T), so the cost model knows the bytes that must be read."""
    return np.array([T - (b * T) // (2 * B) for b in range(B)], dtype=np.int64)


def ragged_lens(rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    """Random lengths in [0, T] for property tests, with an empty sequence (lens = 0,
    a fully masked row) and a full one in every batch of two or more."""
    lens = rng.integers(0, T + 1, size=B)
    if B >= 2:
        i, j = rng.choice(B, size=2, replace=False)
        lens[i], lens[j] = 0, T
    else:
        lens[0] = rng.choice([0, int(lens[0])])
    return lens


def check_heads(dims: dict[str, int]) -> list[str]:
    problems = []
    if dims["n_heads"] % dims["n_kv_heads"]:
        problems.append(f"n_kv_heads ({dims['n_kv_heads']}) must divide n_heads ({dims['n_heads']})")
    if dims["head_dim"] > HEAD_DIM_LIMIT:
        problems.append(f"head_dim {dims['head_dim']} is above {HEAD_DIM_LIMIT}, the largest the fused kernels hold")
    return problems


def strategy(seq: str, upper: int, batches=(1, 2, 3)):
    """Hypothesis dims for an attention spec, from two branches. Awkward shapes (three in
    four draws): a batch, an awkward sequence length `seq` (S or T) up to `upper`, 1-2 kv
    heads with GROUPS q heads each, HEAD_DIMS. At the limits: one sequence and one kv head
    with 1, 2 or GROUP_LIMIT q heads, head_dim 17 or HEAD_DIM_LIMIT, the sequence an
    awkward size or one of LONG_SEQUENCES[seq]."""
    from hypothesis import strategies as st

    from harness.spec import AWKWARD_SIZES, awkward_size

    def dims(B, n, kv, group, d):
        return {"B": B, seq: n, "n_heads": kv * group, "n_kv_heads": kv, "head_dim": d}

    awkward = st.builds(dims, st.sampled_from(batches), awkward_size(upper), st.sampled_from([1, 2]),
                        st.sampled_from(GROUPS), st.sampled_from(HEAD_DIMS))
    at_limits = st.builds(dims, st.just(1), st.sampled_from(AWKWARD_SIZES + LONG_SEQUENCES.get(seq, ())), st.just(1),
                          st.sampled_from([1, 2, GROUP_LIMIT]), st.sampled_from([17, HEAD_DIM_LIMIT]))
    return st.integers(0, 3).flatmap(lambda i: at_limits if i == 3 else awkward)


def attention_spec(seq: str, upper: int = 300, batches=(1, 2, 3), **fields) -> FusionSpec:
    """The FusionSpec of an attention fusion over (B, `seq`, n_heads, n_kv_heads, head_dim),
    `seq` the sequence axis (S or T): a `scale` attribute (0, the default, is 1/sqrt(d)),
    every dimension passed to the decomposition, the heads checked (check_heads) and the
    property strategy along `seq` up to `upper`; `fields` give the rest."""
    dims = ("B", seq, "n_heads", "n_kv_heads", "head_dim")
    return FusionSpec(dims=dims, attrs={"scale": 0.0}, decompose_dims=dims, derive_attrs=default_scale,
                      validate_dims=check_heads, strategy=lambda: strategy(seq, upper, batches), **fields)
