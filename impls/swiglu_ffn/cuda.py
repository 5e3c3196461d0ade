"""swiglu_ffn in CUDA (swiglu_ffn.cu beside this file, CuPy RawModule).

x: (M, H), w_gate, w_up: (I, H), w_down: (H, I) ->
y = (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T, (M, H) in the storage dtype.

Decode with M = 1 (H and I multiples of the 16-byte vector, aligned rows, H <= ONCHIP_MAX_H):
one kernel, `swiglu_ffn_onchip_<dt>`, in which the activation never leaves shared memory.
Its G blocks (at least one per multiprocessor, at most 128 activations each) each compute a
slice of silu(gate) * up into shared memory, multiply it into their columns of W_down, and
add the H partial sums with atomicAdd to a float32 accumulator; the last block to finish
rounds y once and zeroes the accumulator and its ticket for the next call (both allocated
zeroed in prepare()). The order in which the blocks' float32 partials meet varies, so y
may differ between runs by float32 rounding.

Otherwise two kernels launched back to back on the current stream, no host synchronisation
between them. The (M, I) activation goes through a float32 device scratch allocated in
prepare() (never rounded to the storage dtype, so y is rounded once), written by the first
kernel and read back by the second from L2. The weights are each read exactly once.

Decode (M <= GEMV_MAX_M, not on chip): `swiglu_ffn_gemv_up_<dt>` (gemm_swiglu's GEMV: one (gate, up) row
pair per warp, grid (ceil(I/8), M), 256 threads) into the scratch, then
`swiglu_ffn_gemv_down_<dt>` (one pair of consecutive W_down rows per warp, grid
(ceil(ceil(H/2)/8), M), 256 threads, the float32 activation row in shared memory).

Prefill (M > GEMV_MAX_M): `swiglu_ffn_tiled_up_<dt>` (gemm_swiglu's 64 x 32-pair tiled
kernel) into the scratch, then `swiglu_ffn_tiled_down_<dt>`, 64 x 64 output tiles of
act @ W_down.T. Plain SIMT float32 tiles (no tensor cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends.cuda import SUFFIX, VEC, FusedCuda, KernelModule, cdiv
from harness.cuda_launch import (GEMV_MAX_M, H200, DeviceLimits, Launch, Plan, pair_gemv_launch,
                                pair_tiled_launch)
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("swiglu_ffn.cu")
KERNELS = tuple(f"swiglu_ffn_{k}_{s}" for s in SUFFIX.values()
                for k in ("gemv_up", "gemv_down", "tiled_up", "tiled_down", "onchip"))

ONCHIP_THREADS, ONCHIP_UNIT, ONCHIP_MAX_UNITS, ONCHIP_MAX_H = 512, 16, 8, 8192

load_module = KernelModule(SOURCE_PATH)


def onchip_grid(I: int, sms: int) -> int:
    """Blocks of the onchip kernel: one per multiprocessor at least, so that the weight
    streams fill the chip, and enough that none holds over ONCHIP_MAX_UNITS units."""
    units = cdiv(I, ONCHIP_UNIT)
    return min(units, max(sms, cdiv(units, ONCHIP_MAX_UNITS)))


def launch_plan(M: int, H: int, I: int, dtype: str, aligned: bool = True, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {vec_up, vec_down}) for x: (M, H), w_gate, w_up: (I, H), w_down: (H, I);
    no CuPy needed. One launch (the onchip kernel) at M = 1 where both halves vectorise and
    H <= ONCHIP_MAX_H, else two; none when y is empty. vec_up: H % VEC == 0 (x, W_gate,
    W_up rows); vec_down: I % VEC == 0 (scratch, W_down rows). Static shared memory only
    (the onchip kernel's 33 KiB: ONCHIP_MAX_H floats of x and its activation slice)."""
    sfx = SUFFIX[dtype]
    vec_up = int(aligned and H % VEC[dtype] == 0)
    vec_down = int(aligned and I % VEC[dtype] == 0)
    switches = {"vec_up": vec_up, "vec_down": vec_down}
    pairs_down = cdiv(H, 2)
    if M == 0 or H == 0 or I == 0:
        return Plan((), switches)
    if M == 1 and vec_up and vec_down and H <= ONCHIP_MAX_H:
        return Plan((Launch(f"swiglu_ffn_onchip_{sfx}", (onchip_grid(I, limits.sm_count),), (ONCHIP_THREADS,)),),
                    switches)
    kind, launch = ("gemv", pair_gemv_launch) if M <= GEMV_MAX_M else ("tiled", pair_tiled_launch)
    return Plan((launch(f"swiglu_ffn_{kind}_up_{sfx}", M, I), launch(f"swiglu_ffn_{kind}_down_{sfx}", M, pairs_down)),
                switches)


class SwigluFfnCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        import cupy as cp

        (self.x, self.wg, self.wu, self.wd), (M, H, I) = self.bind_io(
            inputs, ("x", "w_gate", "w_up", "w_down"), ("M", "H", "I"))
        plan = self.plan(launch_plan, M, H, I, aligned_of=(self.x, self.wg, self.wu, self.wd))
        vec_up, vec_down = plan.switches["vec_up"], plan.switches["vec_down"]
        i32 = np.int32
        if plan.kernels == [f"swiglu_ffn_onchip_{SUFFIX[dtype]}"]:
            # the accumulator and the ticket start zeroed, and each run leaves them so
            self.acc = cp.zeros(H, dtype=cp.float32)
            self.ticket = cp.zeros(1, dtype=cp.uint32)
            args = [(self.x, self.wg, self.wu, self.wd, self.out["y"], self.acc, self.ticket, i32(H), i32(I))]
        else:
            self.act = cp.empty((M, I), dtype=cp.float32)  # the activation scratch (device only, 16-byte aligned)
            args = [(self.x, self.wg, self.wu, self.act, i32(M), i32(H), i32(I), i32(vec_up)),
                    (self.act, self.wd, self.out["y"], i32(M), i32(I), i32(H), i32(vec_down))]
        self.bind_launches(load_module(), plan, args)


register(Implementation("swiglu_ffn", "cuda", "fused", "fused", SwigluFfnCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
