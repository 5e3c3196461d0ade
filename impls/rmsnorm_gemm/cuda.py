"""rmsnorm_gemm in CUDA (rmsnorm_gemm.cu beside this file, loaded with CuPy's RawModule).

x: (M, H), gamma: (H,), w: (N, H) -> y: (M, N), float32 accumulation, y stored in the
storage dtype (float32, float16, bfloat16 as uint16 bit patterns).

Decode (M <= GEMV_MAX_M): one kernel, `rmsnorm_gemm_gemv_<dt>`, grid (ceil(N/16), M),
256 threads. Each block computes the inverse RMS of its row of x (x is tiny and stays in
L2), keeps x * s * gamma in shared memory (4096 floats at a time, so any H works) and
each of its 8 warps produces 2 outputs, reading W rows with coalesced 16-byte loads and
finishing with a shuffle reduction. The kernel is bound by reading W once.

Prefill (M > GEMV_MAX_M): `rmsnorm_gemm_rms_<dt>` writes the M inverse RMS values
(one warp per row), then `rmsnorm_gemm_tiled_<dt>` computes 64x64 output tiles in K
steps of 16, normalising x as its tile is loaded into shared memory; each W element
loaded is reused by 64 rows of x. No (M, H) intermediate is written, only M floats.
This is a plain SIMT float32 tiled kernel (shared memory, 4x4 register tile per
thread); a Hopper tensor-core version (wgmma fed by TMA, bf16/f16 operands with f32
accumulation, a warp-specialised pipeline) would be an order of magnitude faster at
prefill, and is what cuBLAS reaches for the chain's GEMM.

16-byte vector loads are used only when H is a multiple of the vector width (4 floats,
8 halves) and every base pointer is 16-byte aligned; otherwise scalar loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends.cuda import SUFFIX, VEC, FusedCuda, KernelModule, cdiv
from harness.cuda_launch import (GEMV_MAX_M, GEMV_PAIRS_PER_BLOCK, H200, TILE_PAIRS, DeviceLimits, Plan,
                                pair_gemm_plan)
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("rmsnorm_gemm.cu")
KERNELS = tuple(f"rmsnorm_gemm_{k}_{s}" for s in SUFFIX.values() for k in ("gemv", "rms", "tiled"))

# Launch geometry: the pair core's (harness.cuda_launch), over the pairs of consecutive W rows;
# rmsnorm_gemm.cu's own GEMV takes the same 2 rows a warp.
GEMV_ROWS_PER_BLOCK, TILE_N = 2 * GEMV_PAIRS_PER_BLOCK, 2 * TILE_PAIRS

load_module = KernelModule(SOURCE_PATH)


def launch_plan(M: int, H: int, N: int, dtype: str, aligned: bool = True, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {vec}) for x: (M, H), w: (N, H); no CuPy needed, so the tests can
    check the geometry (and emulate the kernels) without a GPU. `aligned`: all base pointers
    are 16-byte aligned. No launch when y is empty. Static shared memory only (16 KiB)."""
    return pair_gemm_plan("rmsnorm_gemm", SUFFIX[dtype], M, cdiv(N, 2), int(aligned and H % VEC[dtype] == 0), rms=True)


class RmsNormGemmCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        import cupy as cp

        (self.x, self.gamma, self.w), (M, H, N) = self.bind_io(inputs, ("x", "gamma", "w"), ("M", "H", "N"))
        plan = self.plan(launch_plan, M, H, N, aligned_of=(self.x, self.gamma, self.w))
        vec = plan.switches["vec"]
        eps, i32 = np.float32(attrs["eps"]), np.int32
        y = self.out["y"]
        if M <= GEMV_MAX_M:          # decode: one GEMV kernel
            args = [(self.x, self.gamma, self.w, y, i32(M), i32(H), i32(N), eps, i32(vec))]
        else:                        # prefill: inverse RMS, then the tiled kernel
            self.inv_rms = cp.empty(M, dtype=cp.float32)
            args = [(self.x, self.inv_rms, i32(M), i32(H), eps),
                    (self.x, self.gamma, self.w, self.inv_rms, y, i32(M), i32(H), i32(N), i32(vec))]
        self.bind_launches(load_module(), plan, args)


register(Implementation("rmsnorm_gemm", "cuda", "fused", "fused", RmsNormGemmCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
