"""attn_score_softmax in CUDA (attn_score_softmax.cu beside this file, CuPy RawModule).

q: (B, Hq, S, d), k: (B, Hkv, S, d) -> p: (B, Hq, S, S) = softmax(scale·q kᵀ + causal mask)
in the storage dtype (float32, float16, bfloat16 as uint16 bit patterns); q head h reads kv
head h // (Hq / Hkv). float32 logits and softmax state, each weight rounded once.

One kernel, `attn_score_softmax_<dt>`: grid (ceil(S/64), min(B·Hq, 65535)), 256 threads.
A block owns 64 query rows of one head and makes two passes over the 64-key tiles left of
and on the diagonal, each tile's 64x64 logits computed in registers (16x16 threads, 4x4
each, q and k staged through shared memory 16 dims at a time): pass 1 keeps a running
maximum and sum per row (merged across the row's 16 threads with shuffles), pass 2
recomputes the logits and writes exp(s − max) / sum, and the tiles right of the diagonal
as zeros with no arithmetic. The logits are never written to memory and no row buffer of
length S exists, so any S works; P is written once, the only S² traffic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends.cuda import SUFFIX, FusedCuda, KernelModule, cdiv
from harness.cuda_launch import H200, DeviceLimits, Launch, Plan
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("attn_score_softmax.cu")
KERNELS = tuple(f"attn_score_softmax_{s}" for s in SUFFIX.values())

# Launch geometry; must match the #defines in attn_score_softmax.cu.
THREADS = 256            # FB_ATT_THREADS: 16 x 16, each 4 rows x 4 keys
TILE = 64                # FB_ATT_BM: query rows per block and keys per tile
MAX_GRID_Y = 65535       # FB_ATT_MAX_GRID_Y: blocks loop over heads beyond it

load_module = KernelModule(SOURCE_PATH)


def launch_plan(B: int, Hq: int, S: int, dtype: str, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {}) for q: (B, Hq, S, d); no CuPy needed. No launch when p is empty.
    Static shared memory only (8.5 KiB)."""
    if B * Hq * S == 0:
        return Plan(())
    return Plan((Launch(f"attn_score_softmax_{SUFFIX[dtype]}", (cdiv(S, TILE), min(B * Hq, MAX_GRID_Y)),
                        (THREADS,)),))


class AttnScoreSoftmaxCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        (self.q, self.k), (B, S, Hq, Hkv, d) = self.bind_io(
            inputs, ("q", "k"), ("B", "S", "n_heads", "n_kv_heads", "head_dim"))
        args = (self.q, self.k, self.out["p"], np.int32(B), np.int32(Hq), np.int32(Hkv), np.int32(S), np.int32(d),
                np.float32(attrs["scale"]))
        self.bind_launches(load_module(), self.plan(launch_plan, B, Hq, S), [args])


register(Implementation("attn_score_softmax", "cuda", "fused", "fused", AttnScoreSoftmaxCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
