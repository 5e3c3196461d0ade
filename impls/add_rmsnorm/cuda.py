"""add_rmsnorm in CUDA (add_rmsnorm.cu beside this file, loaded with CuPy's RawModule).

x, residual: (M, H), gamma: (H,) -> h = x + residual, y = RMSNorm(h) * gamma, both (M, H)
in the storage dtype (float32, float16, bfloat16 as uint16 bit patterns), float32 math.

One kernel, `add_rmsnorm_<dt>`: grid min(M, 65535) (blocks loop over rows beyond), 256
threads, one block per row. It reads x and residual once (16-byte loads when H is a
multiple of the vector width and every base pointer is 16-byte aligned), writes h once,
keeps the float32 h in dynamic shared memory (H * 4 bytes), reduces the sum of squares
across the block and writes y once: 4·M·H elements moved instead of the chain's 6·M·H.
y is normalised from the float32 h, not from h rounded to the storage dtype.

The row stays in shared memory while a block of it still leaves CACHE_MIN_RESIDENT blocks
resident per multiprocessor (H <= 28920 on an H200: every published hidden size, Llama-3.1-
405B's 16384 included); above 48 KiB (H > 12280) the kernel opts in to the larger dynamic
allocation (harness.cuda_launch.bind), never past the device's sharedMemPerBlockOptin. Wider
rows recompute h = x + residual from global memory in the second pass instead (6·M·H moved,
the re-read an L2 hit when the rows in flight fit in L2), which keeps more blocks resident:
at one block per multiprocessor the row's loads could no longer hide memory latency.
Why not recompute from 48 KiB on: at prefill the rows in flight (8 blocks of 256 threads on
each of 132 multiprocessors) hold 1056 rows of x and residual, 132 MiB at H = 16384 in
float32, twice the 60 MiB L2, so the second read would come from HBM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends.cuda import SUFFIX, VEC, FusedCuda, KernelModule
from harness.cuda_launch import H200, DeviceLimits, Launch, Plan, resident_blocks_by_shared
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("add_rmsnorm.cu")
KERNELS = tuple(f"add_rmsnorm_{s}" for s in SUFFIX.values())

# Launch geometry; must match the #defines in add_rmsnorm.cu.
THREADS = 256
STATIC_SMEM = 4 * (THREADS // 32)   # the block reduction's red[FB_ADD_WARPS] floats (ptxas says so)
MAX_GRID = 65535
CACHE_MIN_RESIDENT = 2              # keep h in shared memory while this many blocks fit per multiprocessor

load_module = KernelModule(SOURCE_PATH)


def caches_row(H: int, limits: DeviceLimits = H200) -> bool:
    """Whether the float32 row h (4·H bytes of dynamic shared memory) stays on chip: within
    the device's opt-in limit, with CACHE_MIN_RESIDENT blocks still resident."""
    block = STATIC_SMEM + 4 * H
    return (block <= limits.shared_per_block_optin
            and resident_blocks_by_shared(block, limits) >= CACHE_MIN_RESIDENT)


def launch_plan(M: int, H: int, dtype: str, aligned: bool = True, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {vec, cache}) for x: (M, H); no CuPy needed. `aligned`: all base
    pointers are 16-byte aligned. No launch when the outputs are empty."""
    vec = int(aligned and H % VEC[dtype] == 0)
    cache = int(caches_row(H, limits))
    launches = () if M == 0 or H == 0 else (
        Launch(f"add_rmsnorm_{SUFFIX[dtype]}", (min(M, MAX_GRID),), (THREADS,), 4 * H if cache else 0, STATIC_SMEM),)
    return Plan(launches, {"vec": vec, "cache": cache})


class AddRmsNormCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        (self.x, self.res, self.gamma), (M, H) = self.bind_io(inputs, ("x", "residual", "gamma"), ("M", "H"))
        plan = self.plan(launch_plan, M, H, aligned_of=(self.x, self.res, self.gamma, *self.out.values()))
        vec, cache = plan.switches["vec"], plan.switches["cache"]
        args = (self.x, self.res, self.gamma, self.out["h"], self.out["y"], np.int32(M), np.int32(H),
                np.float32(attrs["eps"]), np.int32(vec), np.int32(cache))
        self.bind_launches(load_module(), plan, [args])


register(Implementation("add_rmsnorm", "cuda", "fused", "fused", AddRmsNormCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
