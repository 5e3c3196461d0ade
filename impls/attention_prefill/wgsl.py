"""attention_prefill in WGSL: causal attention with an online softmax, one dispatch; source
in attention_prefill.wgsl beside this file.

q: (B, Hq, S, d), k, v: (B, Hkv, S, d) -> o: (B, Hq, S, d). attrs: scale (resolved).

A workgroup of WQ invocations takes WQ query rows of one q head, one row per invocation
with its q and its output accumulator (d values each) in registers. The keys the block
can see (0 .. last row) go through workgroup memory in tiles of BK keys and BK values,
each tile loaded once for all WQ rows. Per tile a row forms its visible logits, moves its
running max, rescales its sum and accumulator once, and adds exp(logit - max)·v. The (S, S)
logits and weights are never materialised; o = acc / sum is the only store.

BK is as many keys as fit, K and V tiles together, in 16 KiB of workgroup memory (WebGPU's
default limit), at most 64; D4 = ceil(d / 4), d <= HEAD_DIM_LIMIT. The shader is
specialised per (storage mode, D4, BK). Grid: (ceil(S / WQ), B * Hq); the last blocks of
a head see the most keys.

Loops: an invocation's loops run once per key, so the loops over the d4 columns are
written out 32 columns at a time (`//@unroll`): llvmpipe silently ends every loop of an
invocation past 65535 iterations in all (harness.backends.wgsl, "Loop budget"), and at
head_dim 256 the rows past about 450 came out unwritten or wrong (issue 19). What is
left (loop_iterations, about 10 per key at head_dim 256, 3 at 128) must stay within
LOOP_BUDGET: a longer S is refused on llvmpipe rather than run wrong.

Storage dtypes: float32; float16 (`array<f16>` with shader-f16, otherwise packed two per
u32); bfloat16 packed two per u32. Arithmetic in f32, one rounding per stored output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.backends import Prepared
from harness.backends.wgsl import WORKGROUP_FLOATS, ShaderFile, pack_params, unrolled_loop_iterations
from harness.registry import Implementation, register

WQ = 64  # query rows per workgroup, one per invocation
MAX_BK = 64
SHADER = ShaderFile(Path(__file__).with_name("attention_prefill.wgsl"), (("q", "in"), ("k", "in"), ("v", "in"),
                                                                         ("o", "out")))


def keys_per_tile(d4: int) -> int:
    """Keys per tile: a K and a V tile of BK x 4·d4 each in the budget."""
    return max(1, min(MAX_BK, WORKGROUP_FLOATS // (8 * d4)))


def loop_iterations(S: int, d4: int, bk: int, wq: int = WQ) -> int:
    """Loop iterations of the invocation owning the last row, which sees all S keys, each
    loop counted with the pass that leaves it: q loaded and o stored (d4 trips each); per
    tile of bk keys the tile loop, K and V loaded, the logits and the weights (bk trips
    each), and the written-out loops over the columns (once per key for the logits and
    the weights, once for the rescale)."""
    cols = unrolled_loop_iterations(d4)
    per_tile = 1 + (-(-bk * d4 // wq) + 1) + 2 * (bk + 1) + (2 * bk + 1) * cols
    return 2 * (d4 + 1) + -(-S // bk) * per_tile


def kernel_source(mode: str, d4: int, bk: int, wq: int = WQ) -> str:
    """The shader for one storage mode ("f32", "f16", "f16p", "bf16") and tile shape."""
    return SHADER.render(mode, {"@@WQ@@": wq, "@@D4@@": d4, "@@BK@@": bk, "@@KV@@": bk * d4}, unroll={"D4": d4})


class QueryBlockWgsl(Prepared):
    """A causal kernel over the query blocks of harness/kernels/fb_causal_block.wgsl
    (attention_prefill, attn_score_softmax): entry point `main` of SHADER, a workgroup per
    WQ query rows of one q head, Params (S, Hq, Hkv, d, scale); refused at prepare where
    the adapter's loop limit would cut it short. The module of the subclass holds the
    kernel: its SHADER, keys_per_tile(d4), loop_iterations(S, d4, bk) and
    kernel_source(mode, d4, bk)."""

    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        kernel = sys.modules[type(self).__module__]
        self.bind_inputs(inputs, [name for name, role in kernel.SHADER.buffers if role == "in"])
        B, S, Hq, Hkv, d = (self.dims[k] for k in ("B", "S", "n_heads", "n_kv_heads", "head_dim"))
        d4 = -(-d // 4)
        bk = kernel.keys_per_tile(d4)
        what = f"{spec.name}/wgsl"
        backend.require_loop_budget(f"{what} at S = {S}, head_dim {d}", kernel.loop_iterations(S, d4, bk))
        self.alloc_outputs()
        params = pack_params(("u", S), ("u", Hq), ("u", Hkv), ("u", d), ("f", attrs["scale"]))
        source = kernel.kernel_source(backend.mode(dtype), d4, bk)
        self.launches = backend.bind([kernel.SHADER.dispatch(source, "main", (-(-S // WQ), B * Hq, 1), params)],
                                     self.buffers(), what)


class AttentionPrefillWgsl(QueryBlockWgsl):
    """attention_prefill.wgsl over the query blocks."""


register(Implementation("attention_prefill", "wgsl", "fused", "fused", AttentionPrefillWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
