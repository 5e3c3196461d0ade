"""rmsnorm_gemm in WGSL: one dispatch, source in rmsnorm_gemm.wgsl beside this file.

x: (M, H), gamma: (H,), w: (N, H) -> y: (M, N), all arithmetic in f32.

- M <= GEMV_MAX_M = 4 (decode, harness.backends.wgsl): entry point `gemv`, one workgroup per (16 output columns,
  row m), of 16 invocations on a CPU adapter (lavapipe) and 256 on a GPU
  (backend.gemv_workgroup()). The normalisation is deferred: each invocation loads its
  strided share of x[m] once into a register, adds its square to a partial sum of
  squares and uses x * gamma against all 16 rows of W; the partial dot products and
  sums of squares are reduced across the workgroup in workgroup memory, and each dot
  product is scaled by the row's inverse RMS as it is stored.
- otherwise (prefill): entry point `tiled`, 64 x 64 output tiles, 4 x 4 per invocation.
  The workgroup walks H in steps of 16, loading x * gamma into workgroup memory beside
  the W tile and gathering the sums of squares of its 64 rows alongside; 4 x 4 outputs
  per invocation in vec4 registers, sums in three levels, each row scaled by its inverse
  RMS as it is stored. W is read ceil(M / 64) times, never M times.

Both halves are the shared harness/kernels/fb_rms_matmul.wgsl (with rmsnorm_qkv_rope).
Neither writes an (M, H) intermediate. Any M, H, N >= 1 work (out-of-range rows are
clamped or loaded as zero and never stored).

Storage dtypes: float32; float16 (`array<f16>` with `enable f16;` where the adapter has
shader-f16, otherwise packed two per u32 through unpack2x16float/pack2x16float);
bfloat16 packed two per u32 (widened by a shift, rounded to nearest even on store). The
16-bit outputs that are packed are stored with per-half-word atomics, so no invocation
clobbers its neighbour's element. The declarations come from
harness.backends.wgsl.wgsl_buffers, substituted for the `@@BUFFERS@@` line.
"""

from __future__ import annotations

from pathlib import Path

from harness.backends import Prepared
from harness.backends.wgsl import ShaderFile, matmul_launch, pack_params
from harness.registry import Implementation, register

GV_R = 16  # output columns per `gemv` workgroup, as in harness/kernels/fb_rms_matmul.wgsl
SHADER = ShaderFile(Path(__file__).with_name("rmsnorm_gemm.wgsl"), (("x", "in"), ("gamma", "in"), ("w", "in"),
                                                                    ("y", "out")))


class RmsNormGemmWgsl(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.bind_inputs(inputs, ("x", "gamma", "w"))
        M, H, N = self.dims["M"], self.dims["H"], self.dims["N"]
        self.alloc_outputs()
        source = backend.gemv_source(SHADER.render(backend.mode(dtype)), GV_R)
        params = pack_params(("u", M), ("u", H), ("u", N), ("f", attrs["eps"]), ("f", 1.0))
        self.launches = backend.bind([SHADER.dispatch(source, *matmul_launch(M, N, GV_R), params)],
                                     self.buffers(), "rmsnorm_gemm/wgsl")


register(Implementation("rmsnorm_gemm", "wgsl", "fused", "fused", RmsNormGemmWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
