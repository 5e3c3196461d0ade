"""decode_attention in CUDA (decode_attention.cu beside this file, CuPy RawModule).

q: (B, Hq, d), k, v: (B, Hkv, T, d), lens: (B,) int32 -> o: (B, Hq, d) =
softmax(scale·q kᵀ over keys t < lens[b]) v in the storage dtype (float32, float16, bfloat16
as uint16 bit patterns); q head h reads kv head h // g, g = Hq / Hkv. float32 math; cache
rows t >= lens[b] are never read; lens[b] = 0 gives zeros.

Flash-decoding. `decode_attention_split_g<G>_<dt>`, G the smallest of 1, 2, 4, 8 that holds
g (g > 8: ceil(g/8) head chunks of 8), grid (nsplit, min(B·Hkv·chunks, 65535)), 128 threads:
a block owns one kv head's G q heads, so they share every K/V load, and one split of the valid
keys (split s: rows [s·c, (s+1)·c) of [0, lens[b]), c = ceil(lens[b] / nsplit)). A key is read
by a group of lanes with 16-byte loads (lanes × 4 floats or 8 halves cover d), a warp reads
32/lanes consecutive keys at a time and keeps 4 (16-bit) or 2 (float32, two chunks per lane)
such groups in flight; online softmax per lane group, merged by shuffles and then across the
4 warps in shared memory. nsplit = 1 writes o directly. Otherwise each split writes its
(max, sum, unnormalised output) to float32 scratch, pm, pl: (B·Hq, nsplit), pacc:
(B·Hq, nsplit, d), and `decode_attention_combine_<dt>` (one 128-thread block per q head)
rescales and merges them.

Splits (choose_splits): enough blocks for WAVES full waves of resident blocks (the SM count
times the blocks an SM holds at the split kernel's register count) when B·Hkv·chunks is
small, no split under SPLIT_MIN_KEYS rows of T, at most MAX_SPLITS. On an H200 (132 SMs, 3
resident g4 blocks): B = 1, Hkv = 8, T = 4096 gets 32 splits of 128 keys (256 blocks);
B = 8, T = 8192 gets 25 splits (1600 blocks, about 4 waves); B·Hkv >= 1584 no split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends.cuda import SUFFIX, VEC, FusedCuda, KernelModule, cdiv
from harness.cuda_launch import H200, DeviceLimits, Launch, Plan, kernel_facts, registers_per_block
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("decode_attention.cu")
GROUPS = (1, 2, 4, 8)                               # q heads per block: the kernel variants
KERNELS = tuple([f"decode_attention_split_g{G}_{s}" for s in SUFFIX.values() for G in GROUPS]
                + [f"decode_attention_combine_{s}" for s in SUFFIX.values()])

# Launch geometry; must match the #defines in decode_attention.cu.
THREADS = 128            # FB_DA_THREADS: 4 warps
DMAX = 256               # FB_DA_DMAX: the largest head_dim (harness.attention.HEAD_DIM_LIMIT)
GMAX = 8                 # FB_DA_GMAX: q heads per block, at most
COMBINE_THREADS = 128    # FB_DA_COMBINE_THREADS
MAX_GRID = 65535         # FB_DA_MAX_GRID: blocks loop over rows beyond it

# The split rule.
WAVES = 4                # blocks wanted: this many waves of resident blocks (a short tail)
SPLIT_MIN_KEYS = 128     # no split shorter than this many rows of T
MAX_SPLITS = 128
DEFAULT_BLOCKS_PER_SM = 3   # resident blocks of the g4 kernel (about 166 registers a thread)
REGISTERS_PER_SM, WARPS_PER_SM = 65536, 64

load_module = KernelModule(SOURCE_PATH)


def head_group(g: int) -> int:
    """G: q heads per block for a group of g q heads per kv head."""
    return next((G for G in GROUPS if G >= g), GMAX)


def resident_blocks(num_regs: int) -> int:
    """Blocks of THREADS threads an SM holds at num_regs registers a thread (registers are
    handed out 256 at a time per warp); DEFAULT_BLOCKS_PER_SM when num_regs is unknown (0)."""
    if num_regs <= 0:
        return DEFAULT_BLOCKS_PER_SM
    return max(1, min(REGISTERS_PER_SM // registers_per_block(num_regs, THREADS), WARPS_PER_SM // (THREADS // 32)))


def choose_splits(rows: int, T: int, sm_count: int, blocks_per_sm: int = DEFAULT_BLOCKS_PER_SM) -> int:
    """How many blocks share one row's keys: enough for WAVES waves of resident blocks, no
    split under SPLIT_MIN_KEYS keys, at most MAX_SPLITS, at least 1."""
    want = cdiv(WAVES * blocks_per_sm * sm_count, max(rows, 1))
    return max(1, min(want, cdiv(T, SPLIT_MIN_KEYS), MAX_SPLITS))


def launch_plan(B: int, T: int, Hq: int, Hkv: int, d: int, dtype: str, aligned: bool = True,
                limits: DeviceLimits = H200, blocks_per_sm: int = DEFAULT_BLOCKS_PER_SM,
                nsplit: int | None = None) -> Plan:
    """Plan(launches, {vec, nsplit, G}) for q: (B, Hq, d), k, v: (B, Hkv, T, d); no CuPy
    needed. nsplit: None for choose_splits' answer (sized by limits.sm_count and the split
    kernel's resident blocks_per_sm). No launch when o is empty. Static shared memory only
    (up to 8.3 KiB, at G = 8)."""
    sfx = SUFFIX[dtype]
    vec = int(aligned and d % VEC[dtype] == 0)
    g = Hq // Hkv
    G = head_group(g)
    rows = B * Hkv * cdiv(g, G)
    if nsplit is None:
        nsplit = choose_splits(rows, T, limits.sm_count, blocks_per_sm)
    switches = {"vec": vec, "nsplit": nsplit, "G": G}
    if B * Hq == 0:
        return Plan((), switches)
    launches = [Launch(f"decode_attention_split_g{G}_{sfx}", (nsplit, min(rows, MAX_GRID)), (THREADS,))]
    if nsplit > 1:
        launches.append(Launch(f"decode_attention_combine_{sfx}", (min(B * Hq, MAX_GRID),), (COMBINE_THREADS,)))
    return Plan(tuple(launches), switches)


class DecodeAttentionCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        import cupy as cp

        mod = load_module()
        (self.q, self.k, self.v, self.lens), (B, T, Hq, Hkv, d) = self.bind_io(
            inputs, ("q", "k", "v", "lens"), ("B", "T", "n_heads", "n_kv_heads", "head_dim"))
        split_kernel = mod.get_function(f"decode_attention_split_g{head_group(Hq // Hkv)}_{SUFFIX[dtype]}")
        plan = self.plan(launch_plan, B, T, Hq, Hkv, d, aligned_of=(self.q, self.k, self.v),
                         blocks_per_sm=resident_blocks(kernel_facts(split_kernel).registers))
        vec, nsplit = plan.switches["vec"], plan.switches["nsplit"]
        parts = B * Hq * nsplit if nsplit > 1 else 1     # split partials (a dummy when nsplit = 1)
        self.pm = cp.empty(parts, dtype=cp.float32)
        self.pl = cp.empty(parts, dtype=cp.float32)
        self.pacc = cp.empty(parts * d, dtype=cp.float32)
        i32 = np.int32
        args = [(self.q, self.k, self.v, self.lens, self.out["o"], self.pm, self.pl, self.pacc, i32(B), i32(Hq),
                 i32(Hkv), i32(T), i32(d), np.float32(attrs["scale"]), i32(nsplit), i32(vec)),
                (self.pm, self.pl, self.pacc, self.out["o"], i32(B * Hq), i32(nsplit), i32(d))]
        self.bind_launches(mod, plan, args)


register(Implementation("decode_attention", "cuda", "fused", "fused", DecodeAttentionCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
