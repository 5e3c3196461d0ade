"""decode_attention in WGSL: one query token per sequence against a KV cache, the key axis
split across workgroups when the cache is long and B·Hq small (flash-decoding); source in
decode_attention.wgsl beside this file.

q: (B, Hq, d), k, v: (B, Hkv, T, d), lens: (B,) int32 -> o: (B, Hq, d). attrs: scale
(resolved).

`attend`: a workgroup of WD invocations takes the GW q heads of one kv head that share
its cache (all G = Hq / Hkv of them when G <= MAX_GW, so the valid cache is read once) over
one split of the key axis. K and V go through workgroup memory in tiles of BK positions,
only positions below lens[b] are ever loaded (the rest of the cache may hold anything,
NaN included). Per tile: the GW·BK logits (each invocation one head, its q in registers),
each head's running max and sum moved and its weights formed, then every invocation
updates its (head, 4 columns) accumulators. With one split it stores o = acc / sum;
otherwise it stores its f32 partials (max, sum, unnormalised acc) and `combine`, one
workgroup per (b, q head), merges them: o = Σ acc_s e^(m_s − M) / Σ l_s e^(m_s − M).
lens[b] = 0 (or a split wholly past lens[b]) contributes sum 0 and gives zeros, not NaN.

Split rule (split_count): without splitting there are B·Hkv·hgroups workgroups; when that
is below the adapter's target (2 per CPU core on a CPU adapter such as lavapipe,
GPU_TARGET_GROUPS on a GPU) and T holds at least 2·MIN_SPLIT_KEYS positions, the key axis
is cut into enough chunks of at least MIN_SPLIT_KEYS positions to reach the target. The
chunks are fixed by T (known at prepare); lens is read on the device only.

BK: K and V tiles plus the per-head weights in 16 KiB of workgroup memory (WebGPU's
default limit), at most 64 positions; D4 = ceil(d / 4), d <= HEAD_DIM_LIMIT. The shader
is specialised per (storage mode, D4, BK, GW). Storage dtypes: float32; float16
(`array<f16>` with shader-f16, otherwise packed two per u32); bfloat16 packed two per u32.
Arithmetic and partials in f32, one rounding per stored output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.attention import HEAD_DIM_LIMIT
from harness.backends import Prepared
from harness.backends.wgsl import grid_1d, pack_params, wgsl_buffers
from harness.registry import Implementation, register
from harness.splice import spliced_source

WD = 64  # invocations per workgroup
MAX_GW = 8  # q heads per workgroup at most
WORKGROUP_FLOATS = 16384 // 4  # WebGPU's default workgroup storage, in f32
MAX_BK = 64
MIN_SPLIT_KEYS = 256  # cache positions per split at least
GPU_TARGET_GROUPS = 256  # workgroups that keep a large GPU busy
SOURCE = Path(__file__).with_name("decode_attention.wgsl")
ROLES = ["in", "in", "in", "in", "out", "out", "out"]

_text: str | None = None


def keys_per_tile(d4: int, gw: int) -> int:
    """Positions per tile: K and V tiles (BK x 4·d4 each), the weights (gw x BK) and three
    per-head values in the budget."""
    return max(1, min(MAX_BK, (WORKGROUP_FLOATS - 3 * gw - 1) // (8 * d4 + gw)))


def split_count(groups: int, T: int, target: int) -> int:
    """How many splits of the key axis: 1 when `groups` workgroups already reach `target`
    or T is short, else enough to reach it with at least MIN_SPLIT_KEYS positions each."""
    if groups >= target or T < 2 * MIN_SPLIT_KEYS:
        return 1
    return max(1, min(-(-target // groups), T // MIN_SPLIT_KEYS))


def target_groups(backend) -> int:
    """Workgroups that fill the adapter: two per core on a CPU adapter, else GPU_TARGET_GROUPS."""
    return 2 * (os.cpu_count() or 1) if backend.cpu_adapter else GPU_TARGET_GROUPS


def kernel_source(mode: str, d4: int, bk: int, gw: int, wd: int = WD) -> str:
    """The shader for one storage mode ("f32", "f16", "f16p", "bf16") and tile shape."""
    global _text
    if _text is None:
        _text = spliced_source(SOURCE)
    decl = wgsl_buffers([("q", mode, "in"), ("k", mode, "in"), ("v", mode, "in"), ("lens", "i32", "in"),
                         ("o", mode, "out"), ("pml", "f32", "out"), ("pacc", "f32", "out")], "Params")
    enable = ""
    if decl.startswith("enable f16;"):
        enable, decl = "enable f16;\n", decl[len("enable f16;"):]
    subs = {"// @@BUFFERS@@": decl, "@@WD@@": str(wd), "@@D4@@": str(d4), "@@BK@@": str(bk),
            "@@GW@@": str(gw), "@@VPT@@": str(-(-gw * d4 // wd)), "@@KV@@": str(bk * d4), "@@PS@@": str(gw * bk)}
    text = _text
    for k, v in subs.items():
        text = text.replace(k, v)
    return enable + text


class DecodeAttentionWgsl(Prepared):
    """`splits` forces the number of key-axis splits (tests); None applies split_count."""

    def __init__(self, backend, spec, inputs, attrs, dtype, splits: int | None = None):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.q, self.k, self.v = self.bind_inputs(inputs, ("q", "k", "v"))
        self.lens = self.bind_inputs(inputs, ("lens",))[0]
        B, Hq, d = self.q.shape
        Hkv, T = self.k.shape[1:3]
        if (self.k.shape != (B, Hkv, T, d) or self.v.shape != self.k.shape or self.lens.shape != (B,)
                or Hq % Hkv or not 1 <= d <= HEAD_DIM_LIMIT):
            raise ValueError(f"decode_attention: shapes q {self.q.shape}, k {self.k.shape}, v {self.v.shape}, "
                             f"lens {self.lens.shape} (head_dim at most {HEAD_DIM_LIMIT})")
        G = Hq // Hkv
        hgroups = -(-G // MAX_GW)
        gw = -(-G // hgroups)
        d4 = -(-d // 4)
        groups = B * Hkv * hgroups
        self.splits = splits or split_count(groups, T, target_groups(backend))
        chunk = -(-T // self.splits)
        self.splits = -(-T // chunk)  # no split starts past T
        self.out = {"o": backend.empty((B, Hq, d), dtype)}
        n = B * Hq * self.splits if self.splits > 1 else 0
        self.pml = backend.empty((max(2 * n, 1),), "float32")
        self.pacc = backend.empty((max(n * d, 1),), "float32")
        self.source = kernel_source(backend.mode(dtype), d4, keys_per_tile(d4, gw), gw)
        self.params = pack_params(("u", B), ("u", T), ("u", Hq), ("u", Hkv), ("u", d), ("f", attrs["scale"]),
                                  ("u", G), ("u", hgroups), ("u", chunk), ("u", self.splits))
        self.groups = (self.splits, groups, 1)
        self.combine_groups = grid_1d(B * Hq)
        backend.pipeline(self.source, ROLES, True, "attend")  # compile now
        if self.splits > 1:
            backend.pipeline(self.source, ROLES, True, "combine")

    def run(self):
        arrays = [self.q, self.k, self.v, self.lens, self.out["o"], self.pml, self.pacc]
        self.backend.dispatch(self.source, arrays, ROLES, self.groups, self.params, entry="attend")
        if self.splits > 1:
            self.backend.dispatch(self.source, arrays, ROLES, self.combine_groups, self.params, entry="combine")


register(Implementation("decode_attention", "wgsl", "fused", "fused", DecodeAttentionWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
