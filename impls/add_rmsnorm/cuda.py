"""add_rmsnorm in CUDA (add_rmsnorm.cu beside this file, loaded with CuPy's RawModule).

x, residual: (M, H), gamma: (H,) -> h = x + residual, y = RMSNorm(h) * gamma, both (M, H)
in the storage dtype (float32, float16, bfloat16 as uint16 bit patterns), float32 math.

One kernel, `add_rmsnorm_<dt>`: grid min(M, 65535) (blocks loop over rows beyond), 256
threads, one block per row. It reads x and residual once (16-byte loads when H is a
multiple of the vector width and every base pointer is 16-byte aligned), writes h once,
keeps the float32 h in dynamic shared memory (H * 4 bytes, when H <= 12288), reduces the
sum of squares across the block and writes y once: 4·M·H elements moved instead of the
chain's 6·M·H. For H > 12288 the second pass recomputes h = x + residual from global
memory instead (an L2 hit), which moves 6·M·H again but stays correct. y is normalised from
the float32 h, not from h rounded to the storage dtype.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends import Prepared
from harness.backends.cuda import SUFFIX, VEC, KernelModule, storage_dtype
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("add_rmsnorm.cu")
KERNELS = tuple(f"add_rmsnorm_{s}" for s in SUFFIX.values())

# Launch geometry; must match the #defines in add_rmsnorm.cu.
THREADS = 256
CACHE_MAX = 12288        # FB_ADD_CACHE_MAX: floats of h in dynamic shared memory (48 KiB)
MAX_GRID = 65535

load_module = KernelModule(SOURCE_PATH)


def launch_plan(M: int, H: int, dtype: str, aligned: bool = True):
    """(vec, cache, shared_bytes, [(kernel, grid, block)]): no CuPy needed."""
    vec = int(aligned and H % VEC[dtype] == 0)
    cache = int(H <= CACHE_MAX)
    return vec, cache, 4 * H if cache else 0, [(f"add_rmsnorm_{SUFFIX[dtype]}", (min(M, MAX_GRID),), (THREADS,))]


class AddRmsNormCuda(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        import cupy as cp

        if dtype not in SUFFIX:
            raise ValueError(f"add_rmsnorm/cuda: unsupported dtype {dtype!r}")
        mod = load_module()
        self.x, self.res, self.gamma = self.bind_inputs(inputs, ("x", "residual", "gamma"))
        M, H = self.x.shape
        if self.res.shape != (M, H) or self.gamma.shape != (H,):
            raise ValueError(f"add_rmsnorm/cuda: shapes x{self.x.shape} residual{self.res.shape} "
                             f"gamma{self.gamma.shape} do not match")
        if M * H >= 2**31:
            raise ValueError("add_rmsnorm/cuda: M * H must be below 2**31")
        st = storage_dtype(dtype)
        self.out = {"h": cp.empty((M, H), dtype=st), "y": cp.empty((M, H), dtype=st)}
        aligned = all(a.data.ptr % 16 == 0 for a in (self.x, self.res, self.gamma, *self.out.values()))
        vec, cache, smem, plan = launch_plan(M, H, dtype, aligned)
        (name, grid, block), = plan
        self.kernel, self.grid, self.block, self.smem = mod.get_function(name), grid, block, smem
        self.args = (self.x, self.res, self.gamma, self.out["h"], self.out["y"], np.int32(M), np.int32(H),
                     np.float32(attrs["eps"]), np.int32(vec), np.int32(cache))
        self.vec, self.cache = bool(vec), bool(cache)
        self.empty = M == 0 or H == 0

    def run(self):
        if not self.empty:
            self.kernel(self.grid, self.block, self.args, shared_mem=self.smem)


register(Implementation("add_rmsnorm", "cuda", "fused", "fused", AddRmsNormCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
