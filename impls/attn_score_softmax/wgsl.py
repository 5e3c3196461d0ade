"""attn_score_softmax in WGSL: scale, q kᵀ, causal mask and softmax in one dispatch;
source in attn_score_softmax.wgsl beside this file.

q: (B, Hq, S, d), k: (B, Hkv, S, d) -> p: (B, Hq, S, S). attrs: scale (resolved).

A workgroup of WQ invocations takes WQ query rows of one q head, one row per invocation
with its q (d values) in registers. The keys the block can see (0 .. last row) go through
workgroup memory in tiles of BK keys, twice: pass 1 keeps each row's running max and sum
of exp (one rescale per tile), pass 2 forms the logits again and writes exp(logit - max) /
sum, staging the tile in workgroup memory so that neighbouring invocations store
neighbouring columns. Columns past the block's last row are written as zeros without
any arithmetic. No (S, S) logits are ever stored and nothing on chip grows with S: any S.
Logits are recomputed (2 x the dot products of the visible triangle), in exchange for
never writing or reading a score matrix.

BK is as many keys as fit, with the staged weights, in 16 KiB of workgroup memory (WebGPU's
default limit), at most 64; D4 = ceil(d / 4), d <= HEAD_DIM_LIMIT. The shader is
specialised per (storage mode, D4, BK). Grid: (ceil(S / WQ), B * Hq).

Loops: each logit's dot product is written out 32 columns at a time (`//@unroll`), since
llvmpipe silently ends every loop of an invocation past 65535 iterations in all
(harness.backends.wgsl, "Loop budget"; issue 19: at head_dim 256 the rows past about 450
came out wrong). What is left (loop_iterations, about 14 per key at head_dim 256, 5 at
128) must stay within LOOP_BUDGET: a longer S is refused on llvmpipe rather than run wrong.

Storage dtypes: float32; float16 (`array<f16>` with shader-f16, otherwise packed two per
u32); bfloat16 packed two per u32. Arithmetic in f32, one rounding per stored weight.
"""

from __future__ import annotations

from pathlib import Path

from harness.backends.wgsl import WORKGROUP_FLOATS, ShaderFile, unrolled_loop_iterations
from harness.registry import Implementation, register
from impls.attention_prefill.wgsl import MAX_BK, WQ, QueryBlockWgsl

SHADER = ShaderFile(Path(__file__).with_name("attn_score_softmax.wgsl"), (("q", "in"), ("k", "in"), ("p", "out")))


def keys_per_tile(d4: int, wq: int = WQ) -> int:
    """Keys per tile: the key tile (BK x 4·d4) and the staged weights (wq x BK) in the budget."""
    return max(1, min(MAX_BK, WORKGROUP_FLOATS // (4 * d4 + wq)))


def loop_iterations(S: int, d4: int, bk: int, wq: int = WQ) -> int:
    """Loop iterations of one invocation, at most, each loop counted with the pass that
    leaves it: q loaded (d4 trips); per tile of bk keys and pass the tile loop, the keys
    loaded, the logits (each with its written-out loop over the columns), then the sum of
    exp (pass 1) or the staged weights stored (pass 2, bk trips at most); the zeros past
    the block's last row (S trips at most)."""
    cols = unrolled_loop_iterations(d4)
    tile = 1 + (-(-bk * d4 // wq) + 1) + (bk + 1) + bk * cols + (bk + 1)
    return (d4 + 1) + 2 * -(-S // bk) * tile + (S + 1)


def kernel_source(mode: str, d4: int, bk: int, wq: int = WQ) -> str:
    """The shader for one storage mode ("f32", "f16", "f16p", "bf16") and tile shape."""
    return SHADER.render(mode, {"@@WQ@@": wq, "@@D4@@": d4, "@@BK@@": bk, "@@KV@@": bk * d4, "@@PS@@": wq * bk},
                         unroll={"D4": d4})


class AttnScoreSoftmaxWgsl(QueryBlockWgsl):
    """attn_score_softmax.wgsl over the query blocks."""


register(Implementation("attn_score_softmax", "wgsl", "fused", "fused", AttnScoreSoftmaxWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
