"""swiglu_ffn in CUDA (swiglu_ffn.cu beside this file, CuPy RawModule).

x: (M, H), w_gate, w_up: (I, H), w_down: (H, I) ->
y = (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T, (M, H) in the storage dtype.

Two kernels launched back to back on the current stream, no host synchronisation between
them. The (M, I) activation goes through a float32 device scratch allocated in prepare()
(never rounded to the storage dtype, so y is rounded once): at decode that is M·I·4 bytes
(57 KiB for I = 14336), written by the first kernel and read back by the second from L2.
This is not the single persistent kernel with a grid-wide dependency that would keep the
activation on chip; the weights are still each read exactly once.

Decode (M <= GEMV_MAX_M): `swiglu_ffn_gemv_up_<dt>` (gemm_swiglu's GEMV: one (gate, up) row
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

from harness.backends import Prepared
from harness.cuda_compile import cuda_source
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("swiglu_ffn.cu")
SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
VEC = {"float32": 4, "float16": 8, "bfloat16": 8}
KERNELS = tuple(f"swiglu_ffn_{k}_{s}" for s in SUFFIX.values()
                for k in ("gemv_up", "gemv_down", "tiled_up", "tiled_down"))

GEMV_THREADS, GEMV_PAIRS_PER_BLOCK = 256, 8
TILED_THREADS, TILE_M, TILE_PAIRS = 256, 64, 32
GEMV_MAX_M = 8
MAX_GRID_Y = 65535

_modules: dict[int, object] = {}


def load_module():
    import cupy as cp

    dev = cp.cuda.runtime.getDevice()
    if dev not in _modules:
        _modules[dev] = cp.RawModule(code=cuda_source(SOURCE_PATH), options=("-std=c++17",))
    return _modules[dev]


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def launch_plan(M: int, H: int, I: int, dtype: str, aligned: bool = True) -> tuple[tuple[int, int], list]:
    """((vec_up, vec_down), [(kernel, grid, block), (kernel, grid, block)]); no CuPy needed.
    vec_up: H % VEC == 0 (x, W_gate, W_up rows); vec_down: I % VEC == 0 (scratch, W_down rows)."""
    sfx = SUFFIX[dtype]
    vec_up = int(aligned and H % VEC[dtype] == 0)
    vec_down = int(aligned and I % VEC[dtype] == 0)
    pairs_down = _cdiv(H, 2)
    if M <= GEMV_MAX_M:
        gy = min(M, MAX_GRID_Y)
        return (vec_up, vec_down), [
            (f"swiglu_ffn_gemv_up_{sfx}", (_cdiv(I, GEMV_PAIRS_PER_BLOCK), gy), (GEMV_THREADS,)),
            (f"swiglu_ffn_gemv_down_{sfx}", (_cdiv(pairs_down, GEMV_PAIRS_PER_BLOCK), gy), (GEMV_THREADS,)),
        ]
    gy = min(_cdiv(M, TILE_M), MAX_GRID_Y)
    return (vec_up, vec_down), [
        (f"swiglu_ffn_tiled_up_{sfx}", (_cdiv(I, TILE_PAIRS), gy), (TILED_THREADS,)),
        (f"swiglu_ffn_tiled_down_{sfx}", (_cdiv(pairs_down, TILE_PAIRS), gy), (TILED_THREADS,)),
    ]


class SwigluFfnCuda(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        import cupy as cp

        from harness.backends.cuda import storage_dtype

        if dtype not in SUFFIX:
            raise ValueError(f"swiglu_ffn/cuda: unsupported dtype {dtype!r}")
        mod = load_module()
        self.x, self.wg, self.wu, self.wd = self.bind_inputs(inputs, ("x", "w_gate", "w_up", "w_down"))
        M, H = self.x.shape
        I = self.wg.shape[0]
        if self.wg.shape != (I, H) or self.wu.shape != (I, H) or self.wd.shape != (H, I):
            raise ValueError(f"swiglu_ffn/cuda: shapes x{self.x.shape} w_gate{self.wg.shape} "
                             f"w_up{self.wu.shape} w_down{self.wd.shape} do not match")
        if max(M * H, I * H, M * I) >= 2**31:
            raise ValueError("swiglu_ffn/cuda: sizes must be below 2**31 elements")
        self.out = {"y": cp.empty((M, H), dtype=storage_dtype(dtype))}
        self.act = cp.empty((M, I), dtype=cp.float32)  # the activation scratch (device only)
        aligned = all(a.data.ptr % 16 == 0 for a in (self.x, self.wg, self.wu, self.wd, self.act))
        (vec_up, vec_down), plan = launch_plan(M, H, I, dtype, aligned)
        i32 = np.int32
        args = [(self.x, self.wg, self.wu, self.act, i32(M), i32(H), i32(I), i32(vec_up)),
                (self.act, self.wd, self.out["y"], i32(M), i32(I), i32(H), i32(vec_down))]
        self.launches = [(mod.get_function(name), grid, block, a) for (name, grid, block), a in zip(plan, args)]
        self.vec = (bool(vec_up), bool(vec_down))
        self.empty = M == 0 or H == 0 or I == 0

    def run(self):
        if self.empty:
            return
        for kernel, grid, block, args in self.launches:  # same stream, no sync between
            kernel(grid, block, args)


register(Implementation("swiglu_ffn", "cuda", "fused", "fused", SwigluFfnCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
