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
is cut into enough chunks of at least MIN_SPLIT_KEYS positions to reach the target. Never
a chunk longer than max_keys_per_split, on any adapter, whatever the occupancy: one
invocation of `attend` runs loops whose trips grow with its keys (tiles, keys of a tile),
and llvmpipe silently ends every loop of an invocation past 65535 iterations in all
(harness.backends.wgsl, "Loop budget"). Issue 19: at head_dim 256 (BK = 7) with q heads
in pairs, the unsplit walk of a 4096-token cache ran about 113 iterations per tile, 585
tiles: past the limit, so the invocations left every output unwritten. The loops are
counted from this source by loop_iterations (every loop, those Mesa unrolls included)
and a split kept within LOOP_BUDGET, half the limit: measured on lavapipe (Mesa 22.3),
the count is within 3 % of what it runs. The chunks are fixed by T (known at prepare);
lens is read on the device only. launch_plan makes the plan without an adapter.

BK: K and V tiles plus the per-head weights in 16 KiB of workgroup memory (WebGPU's
default limit), at most 64 positions; D4 = ceil(d / 4), d <= HEAD_DIM_LIMIT. The shader
is specialised per (storage mode, D4, BK, GW). Storage dtypes: float32; float16
(`array<f16>` with shader-f16, otherwise packed two per u32); bfloat16 packed two per u32.
Arithmetic and partials in f32, one rounding per stored output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


from harness.backends import Prepared
from harness.backends.wgsl import LOOP_BUDGET, WORKGROUP_FLOATS, ShaderFile, grid_1d, pack_params
from harness.registry import Implementation, register

WD = 64  # invocations per workgroup
MAX_GW = 8  # q heads per workgroup at most
MAX_BK = 64
MIN_SPLIT_KEYS = 256  # cache positions per split at least
GPU_TARGET_GROUPS = 256  # workgroups that keep a large GPU busy
SHADER = ShaderFile(Path(__file__).with_name("decode_attention.wgsl"),
                    (("q", "in"), ("k", "in"), ("v", "in"), ("lens", "in"), ("o", "out"), ("pml", "out"), ("pacc", "out")))


def keys_per_tile(d4: int, gw: int) -> int:
    """Positions per tile: K and V tiles (BK x 4·d4 each), the weights (gw x BK) and three
    per-head values in the budget."""
    return max(1, min(MAX_BK, (WORKGROUP_FLOATS - 3 * gw - 1) // (8 * d4 + gw)))


def split_count(groups: int, T: int, target: int, max_keys: int | None = None) -> int:
    """How many splits of the key axis: 1 when `groups` workgroups already reach `target`
    or T is short, else enough to reach it with at least MIN_SPLIT_KEYS positions each; and
    at least enough that none holds more than `max_keys` positions (None: no such bound)."""
    if groups >= target or T < 2 * MIN_SPLIT_KEYS:
        occupancy = 1
    else:
        occupancy = max(1, min(-(-target // groups), T // MIN_SPLIT_KEYS))
    return max(occupancy, -(-T // max_keys) if max_keys else 1)


def fixed_loop_iterations(d4: int, gw: int, wd: int = WD) -> int:
    """Loop iterations of one `attend` invocation outside the tile loop: q loaded (d4
    trips), the accumulators zeroed and stored (VPT trips each); each loop counts its trips
    plus the pass that leaves it, as llvmpipe counts them."""
    vpt = -(-gw * d4 // wd)
    return (d4 + 1) + 2 * (vpt + 1)


def tile_loop_iterations(d4: int, bk: int, gw: int, wd: int = WD) -> int:
    """Loop iterations of one `attend` invocation per tile of bk keys, at most (the
    invocations that form a head's weights run the most): the tile loop itself, K and V
    into workgroup memory, the logits (d4 trips each), max and weights (bk trips each),
    the VPT accumulators (bk trips each)."""
    vpt = -(-gw * d4 // wd)
    load = -(-bk * d4 // wd) + 1
    per_invocation = -(-bk // (wd // gw))
    logits = per_invocation * (d4 + 1) + 1
    weights = 2 * (bk + 1)
    accumulate = (vpt + 1) + vpt * (bk + 1)
    return 1 + load + logits + weights + accumulate


def loop_iterations(keys: int, d4: int, bk: int, gw: int) -> int:
    """Loop iterations of one `attend` invocation over `keys` cache positions (its split)."""
    return fixed_loop_iterations(d4, gw) + -(-keys // bk) * tile_loop_iterations(d4, bk, gw)


def max_keys_per_split(d4: int, bk: int, gw: int) -> int:
    """The most positions one split may hold with `attend` within LOOP_BUDGET."""
    return bk * ((LOOP_BUDGET - fixed_loop_iterations(d4, gw)) // tile_loop_iterations(d4, bk, gw))


def combine_loop_iterations(splits: int, d: int, wd: int = WD) -> int:
    """Loop iterations of one `combine` invocation: two passes over the splits' (max, sum),
    then for each of its ceil(d / wd) columns one more."""
    cols = -(-d // wd)
    return 2 * (splits + 1) + (cols + 1) + cols * (splits + 1)


def target_groups(backend) -> int:
    """Workgroups that fill the adapter: two per core on a CPU adapter, else GPU_TARGET_GROUPS."""
    return 2 * (os.cpu_count() or 1) if backend.cpu_adapter else GPU_TARGET_GROUPS


def kernel_source(mode: str, d4: int, bk: int, gw: int, wd: int = WD) -> str:
    """The shader for one storage mode ("f32", "f16", "f16p", "bf16") and tile shape."""
    return SHADER.render(mode, {"@@WD@@": wd, "@@D4@@": d4, "@@BK@@": bk, "@@GW@@": gw, "@@VPT@@": -(-gw * d4 // wd),
                                "@@KV@@": bk * d4, "@@PS@@": gw * bk},
                         modes={"lens": "i32", "pml": "f32", "pacc": "f32"})


class DecodePlan(NamedTuple):
    """How `attend` covers one decode step: hgroups workgroups of gw q heads per kv head,
    the key axis in `splits` chunks of `chunk` positions, tiles of bk keys."""

    gw: int
    hgroups: int
    bk: int
    splits: int
    chunk: int


def launch_plan(B: int, T: int, Hq: int, Hkv: int, d: int, target: int, splits: int | None = None) -> DecodePlan:
    """The plan for q: (B, Hq, d) against k, v: (B, Hkv, T, d) on an adapter that wants
    `target` workgroups; `splits` forces the split count (tests: the loop budget is then
    theirs to keep), None applies split_count with max_keys_per_split."""
    G = Hq // Hkv
    hgroups = -(-G // MAX_GW)
    gw = -(-G // hgroups)
    d4 = -(-d // 4)
    bk = keys_per_tile(d4, gw)
    splits = splits or split_count(B * Hkv * hgroups, T, target, max_keys_per_split(d4, bk, gw))
    chunk = -(-T // splits)
    return DecodePlan(gw, hgroups, bk, -(-T // chunk), chunk)  # no split starts past T


class DecodeAttentionWgsl(Prepared):
    """`splits` forces the number of key-axis splits (tests); None applies split_count."""

    def __init__(self, backend, spec, inputs, attrs, dtype, splits: int | None = None):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.q, self.k, self.v = self.bind_inputs(inputs, ("q", "k", "v"))
        self.lens = self.bind_inputs(inputs, ("lens",))[0]
        B, T, Hq, Hkv, d = (self.dims[k] for k in ("B", "T", "n_heads", "n_kv_heads", "head_dim"))
        plan = launch_plan(B, T, Hq, Hkv, d, target_groups(backend), splits)
        self.splits = plan.splits
        self.alloc_outputs()
        n = B * Hq * self.splits if self.splits > 1 else 0
        self.pml = backend.empty((max(2 * n, 1),), "float32")
        self.pacc = backend.empty((max(n * d, 1),), "float32")
        self.source = kernel_source(backend.mode(dtype), -(-d // 4), plan.bk, plan.gw)
        self.params = pack_params(("u", B), ("u", T), ("u", Hq), ("u", Hkv), ("u", d), ("f", attrs["scale"]),
                                  ("u", Hq // Hkv), ("u", plan.hgroups), ("u", plan.chunk), ("u", self.splits))
        self.groups = (self.splits, B * Hkv * plan.hgroups, 1)
        self.combine_groups = grid_1d(B * Hq)
        plan = [SHADER.dispatch(self.source, "attend", self.groups, self.params)]
        if self.splits > 1:  # the partial results of the splits combined
            plan.append(SHADER.dispatch(self.source, "combine", self.combine_groups, self.params))
        self.launches = backend.bind(plan, self.buffers(pml=self.pml, pacc=self.pacc), "decode_attention/wgsl")


register(Implementation("decode_attention", "wgsl", "fused", "fused", DecodeAttentionWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
