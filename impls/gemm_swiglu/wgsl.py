"""gemm_swiglu in WGSL: one dispatch, source in gemm_swiglu.wgsl beside this file.

x: (M, H), w_gate, w_up: (I, H) -> y = silu(x @ w_gate.T) * (x @ w_up.T): (M, I), f32
arithmetic. Gate and up are accumulated together by the invocation that owns the output,
which stores only the activation: the (M, I) pre-activations are never written, and x is
read once for both products.

- M <= GEMV_MAX_M = 4 (decode, harness.backends.wgsl): entry point `gemv`, one workgroup per (8 output columns,
  row m) of 16 invocations on a CPU adapter (lavapipe) and 256 on a GPU
  (backend.gemv_workgroup()); each invocation uses its strided x[m, h] against 8 rows of
  each weight (16 accumulators), partial sums reduced in workgroup memory.
- otherwise (prefill): entry point `tiled`, 64 x 64 output tiles, 4 x 4 gate and 4 x 4 up
  accumulators per invocation in vec4 registers, H in steps of 16 through workgroup
  memory, sums in three levels. The weights are read ceil(M / 64) times.

Any M, H, I >= 1 (out-of-range rows are clamped or loaded as zero and never stored).
Storage dtypes: float32; float16 (`array<f16>` with shader-f16, otherwise packed two per
u32); bfloat16 packed two per u32. Packed outputs are stored with per-half-word atomics
(harness.backends.wgsl.wgsl_buffers), race-free. impls/swiglu_ffn/wgsl.py runs the same
kernels with an f32 output (`out_mode`).
"""

from __future__ import annotations

from pathlib import Path

from harness.backends import Prepared
from harness.backends.wgsl import Dispatch, ShaderFile, matmul_launch, pack_params
from harness.registry import Implementation, register

GV_R = 8  # output columns per `gemv` workgroup, as in gemm_swiglu.wgsl
SHADER = ShaderFile(Path(__file__).with_name("gemm_swiglu.wgsl"), (("x", "in"), ("w_gate", "in"), ("w_up", "in"),
                                                                   ("y", "out")))


def dispatch(backend, dims: dict[str, int], mode: str, out_mode: str | None = None, **bind: str) -> Dispatch:
    """The kernel for dims M, H, I as one Dispatch: `gemv` up to GEMV_MAX_M rows (the
    weights streamed once per row), else `tiled`; inputs in storage mode `mode`, the output
    in `out_mode` (default: the same), the buffers bound by name or as `bind` says."""
    M, H, I = dims["M"], dims["H"], dims["I"]
    source = backend.gemv_source(SHADER.render(mode, modes={"y": out_mode or mode}), GV_R)
    return SHADER.dispatch(source, *matmul_launch(M, I, GV_R), pack_params(("u", M), ("u", H), ("u", I)), **bind)


class GemmSwigluWgsl(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.bind_inputs(inputs, ("x", "w_gate", "w_up"))
        self.alloc_outputs()
        self.launches = backend.bind([dispatch(backend, self.dims, backend.mode(dtype))], self.buffers(),
                                     "gemm_swiglu/wgsl")


register(Implementation("gemm_swiglu", "wgsl", "fused", "fused", GemmSwigluWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
