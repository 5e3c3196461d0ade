"""gemm_swiglu in WGSL: one dispatch, source in gemm_swiglu.wgsl beside this file.

x: (M, H), w_gate, w_up: (I, H) -> y = silu(x @ w_gate.T) * (x @ w_up.T): (M, I), f32
arithmetic. Gate and up are accumulated together by the invocation that owns the output,
which stores only the activation: the (M, I) pre-activations are never written, and x is
read once for both products.

- M <= GEMV_MAX_M (decode): entry point `gemv`, one workgroup per (8 output columns,
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
from harness.backends.wgsl import Dispatch, ShaderFile, pack_params
from harness.registry import Implementation, register

GEMV_MAX_M = 4  # up to this many rows, the weights are streamed once per row by `gemv`
GV_R, TM, TN = 8, 64, 64  # GV_R as in gemm_swiglu.wgsl, TM and TN as in harness/kernels/fb_tile.wgsl
SHADER = ShaderFile(Path(__file__).with_name("gemm_swiglu.wgsl"))
ROLES = (("x", "in"), ("w_gate", "in"), ("w_up", "in"), ("y", "out"))


def kernel_source(mode: str, out_mode: str | None = None) -> str:
    """The shader for inputs in storage mode `mode` and the output in `out_mode`
    (default: the same); @@GV_WG@@ is left for backend.gemv_source()."""
    return SHADER.render([("x", mode, "in"), ("wg", mode, "in"), ("wu", mode, "in"), ("y", out_mode or mode, "out")])


def launch(M: int, H: int, I: int) -> tuple[str, tuple[int, int, int], bytes]:
    """(entry point, workgroup grid, params) for an (M, H) x (I, H) problem."""
    params = pack_params(("u", M), ("u", H), ("u", I))
    if M <= GEMV_MAX_M:
        return "gemv", (-(-I // GV_R), M, 1), params
    return "tiled", (-(-I // TN), -(-M // TM), 1), params


class GemmSwigluWgsl(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.wg, self.wu = self.bind_inputs(inputs, ("x", "w_gate", "w_up"))
        self.M, self.H, self.I = self.dims["M"], self.dims["H"], self.dims["I"]
        self.alloc_outputs()
        self.source = backend.gemv_source(kernel_source(backend.mode(dtype)), GV_R)
        self.entry, self.groups, self.params = launch(self.M, self.H, self.I)
        self.launches = backend.bind([Dispatch(self.source, self.entry, self.groups, ROLES, self.params)],
                                     self.buffers(), "gemm_swiglu/wgsl")


register(Implementation("gemm_swiglu", "wgsl", "fused", "fused", GemmSwigluWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
