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

from harness.backends.cuda import SUFFIX, VEC, FusedCuda, KernelModule
from harness.cuda_launch import H200, DeviceLimits, Plan, pair_gemm_plan
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("gemm_swiglu.cu")
KERNELS = tuple(f"gemm_swiglu_{k}_{s}" for s in SUFFIX.values() for k in ("gemv", "tiled"))

load_module = KernelModule(SOURCE_PATH)


def launch_plan(M: int, H: int, I: int, dtype: str, aligned: bool = True, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {vec}) for x: (M, H), w_gate, w_up: (I, H); no CuPy needed. No launch
    when y is empty. Static shared memory only (16 KiB)."""
    return pair_gemm_plan("gemm_swiglu", SUFFIX[dtype], M, I, int(aligned and H % VEC[dtype] == 0))


class GemmSwigluCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        (self.x, self.wg, self.wu), (M, H, I) = self.bind_io(inputs, ("x", "w_gate", "w_up"), ("M", "H", "I"))
        plan = self.plan(launch_plan, M, H, I, aligned_of=(self.x, self.wg, self.wu))
        args = (self.x, self.wg, self.wu, self.out["y"], *map(np.int32, (M, H, I, plan.switches["vec"])))
        self.bind_launches(load_module(), plan, [args])


register(Implementation("gemm_swiglu", "cuda", "fused", "fused", GemmSwigluCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
