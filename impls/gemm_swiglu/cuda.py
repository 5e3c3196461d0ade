"""gemm_swiglu in CUDA (gemm_swiglu.cu beside this file, CuPy RawModule).

x: (M, H), w_gate, w_up: (I, H) -> y = silu(x @ w_gate.T) * (x @ w_up.T), (M, I) in the
storage dtype; float32 accumulation, silu(g)·u formed in registers, y rounded once.

Work is split into pairs p = (w_gate row p, w_up row p): whoever owns a pair accumulates
both products from the same loads of x and stores y[m, p] once.

Decode (M <= GEMV_MAX_M): `gemm_swiglu_gemv_<dt>`, grid (ceil(I/8), M), 256 threads; the
x row in shared memory (4096 floats at a time), one pair per warp (16-byte loads of both W
rows, shuffle reduction). Bound by reading the two weight matrices once.

Prefill (M > GEMV_MAX_M): `gemm_swiglu_tiled_<dt>`, 64 rows x 32 pairs per block (tile
columns interleave gate and up rows, so each thread's 4x4 register tile is 4 rows x 2 whole
pairs), K step 16, 256 threads; each x element in shared memory feeds both products. Plain
SIMT float32 tiles (no tensor cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends import Prepared
from harness.backends.cuda import SUFFIX, VEC, KernelModule, cdiv
from harness.cuda_launch import H200, DeviceLimits, Launch, Plan, bind, device_limits
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("gemm_swiglu.cu")
KERNELS = tuple(f"gemm_swiglu_{k}_{s}" for s in SUFFIX.values() for k in ("gemv", "tiled"))

GEMV_THREADS, GEMV_PAIRS_PER_BLOCK = 256, 8
TILED_THREADS, TILE_M, TILE_PAIRS = 256, 64, 32
GEMV_MAX_M = 8
MAX_GRID_Y = 65535

load_module = KernelModule(SOURCE_PATH)


def launch_plan(M: int, H: int, I: int, dtype: str, aligned: bool = True, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {vec}) for x: (M, H), w_gate, w_up: (I, H); no CuPy needed. No launch
    when y is empty. Static shared memory only (16 KiB)."""
    sfx = SUFFIX[dtype]
    vec = int(aligned and H % VEC[dtype] == 0)
    if M == 0 or I == 0:
        launches = ()
    elif M <= GEMV_MAX_M:
        launches = (Launch(f"gemm_swiglu_gemv_{sfx}", (cdiv(I, GEMV_PAIRS_PER_BLOCK), min(M, MAX_GRID_Y)),
                           (GEMV_THREADS,)),)
    else:
        launches = (Launch(f"gemm_swiglu_tiled_{sfx}", (cdiv(I, TILE_PAIRS), min(cdiv(M, TILE_M), MAX_GRID_Y)),
                           (TILED_THREADS,)),)
    return Plan(launches, {"vec": vec})


class GemmSwigluCuda(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        mod = load_module()
        self.x, self.wg, self.wu = self.bind_inputs(inputs, ("x", "w_gate", "w_up"))
        M, H, I = self.dims["M"], self.dims["H"], self.dims["I"]
        self.alloc_outputs()
        aligned = all(a.data.ptr % 16 == 0 for a in (self.x, self.wg, self.wu))
        limits = device_limits()
        plan = launch_plan(M, H, I, dtype, aligned, limits)
        vec = plan.switches["vec"]
        args = (self.x, self.wg, self.wu, self.out["y"], np.int32(M), np.int32(H), np.int32(I), np.int32(vec))
        self.launches = bind(mod, plan, [args], limits, "gemm_swiglu/cuda")
        self.vec = bool(vec)


register(Implementation("gemm_swiglu", "cuda", "fused", "fused", GemmSwigluCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
