"""attention_prefill in CUDA (attention_prefill.cu beside this file, CuPy RawModule).

q: (B, Hq, S, d), k, v: (B, Hkv, S, d) -> o: (B, Hq, S, d) = softmax(scale·q kᵀ + causal
mask) v in the storage dtype (float32, float16, bfloat16 as uint16 bit patterns); q head h
reads kv head h // (Hq / Hkv). float32 logits, softmax state and accumulators; o rounded once.

Flash-attention style, SIMT float32 (no tensor cores): `attention_prefill_d<DMAX>_<dt>`,
DMAX the smallest of 64, 128, 256 that holds d, grid (ceil(S/64), min(B·Hq, 65535)), 256
threads. A block owns 64 query rows of one head and walks the key tiles up to and including
the diagonal (tiles above it are skipped): a 64x64 logit tile in registers (16x16 threads,
4x4 each; q and k staged through shared memory 16 dims at a time), an online-softmax update
(row maximum by shuffles over the row's 16 threads, rescale factor, weights), the weights to
shared memory and V staged 16 keys at a time, each thread accumulating 4 rows x DMAX/16
columns of O in registers. The (S, S) logits and weights never leave the chip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends.cuda import SUFFIX, FusedCuda, KernelModule, cdiv
from harness.cuda_launch import H200, DeviceLimits, Launch, Plan
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("attention_prefill.cu")
HEAD_DIMS = (64, 128, 256)   # the kernels' DMAX variants; the last is HEAD_DIM_LIMIT
KERNELS = tuple(f"attention_prefill_d{m}_{s}" for s in SUFFIX.values() for m in HEAD_DIMS)

# Launch geometry; must match the #defines in attention_prefill.cu.
THREADS = 256            # FB_ATT_THREADS: 16 x 16, each 4 rows
TILE = 64                # FB_ATT_BM: query rows per block and keys per tile
MAX_GRID_Y = 65535       # FB_ATT_MAX_GRID_Y: blocks loop over heads beyond it

load_module = KernelModule(SOURCE_PATH)


def launch_plan(B: int, Hq: int, S: int, d: int, dtype: str, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {}) for q: (B, Hq, S, d); no CuPy needed. No launch when o is empty.
    Static shared memory only (up to 41.5 KiB, at DMAX = 256)."""
    if B * Hq * S == 0:
        return Plan(())
    dmax = next(m for m in HEAD_DIMS if d <= m)
    return Plan((Launch(f"attention_prefill_d{dmax}_{SUFFIX[dtype]}", (cdiv(S, TILE), min(B * Hq, MAX_GRID_Y)),
                        (THREADS,)),))


class AttentionPrefillCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        (self.q, self.k, self.v), (B, S, Hq, Hkv, d) = self.bind_io(
            inputs, ("q", "k", "v"), ("B", "S", "n_heads", "n_kv_heads", "head_dim"))
        args = (self.q, self.k, self.v, self.out["o"], np.int32(B), np.int32(Hq), np.int32(Hkv), np.int32(S),
                np.int32(d), np.float32(attrs["scale"]))
        self.bind_launches(load_module(), self.plan(launch_plan, B, Hq, S, d), [args])


register(Implementation("attention_prefill", "cuda", "fused", "fused", AttentionPrefillCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
