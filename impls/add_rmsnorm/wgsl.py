"""add_rmsnorm in WGSL: one dispatch, source in add_rmsnorm.wgsl beside this file.

x, residual: (M, H), gamma: (H,) -> h = x + residual, y = rmsnorm(h) * gamma, both (M, H).

One workgroup of 256 invocations per row. Each invocation reads its strided share of x
and residual once, forms h in f32, stores h and keeps it in VPT = ceil(H / 256) private
registers while the row's sum of squares is reduced in workgroup memory; then it scales
the kept values and stores y. x and residual are read once and h, y written once:
4·M·H elements moved, against 6·M·H for the unfused add then rms_norm. y is normalised from
the f32 sum, not from h rounded to the storage dtype. VPT is substituted into the source
(one pipeline per distinct ceil(H / 256)). Rows wider than 256 * 64 = 16384 would not fit
in registers; they take entry point `wide`, which forms x + residual again in the second
pass (x and residual read twice, from cache). Any M, H >= 1.

Storage dtypes: float32; float16 (`array<f16>` with shader-f16, otherwise packed two per
u32); bfloat16 packed two per u32 (rounded to nearest even on store). Packed outputs are
stored with per-half-word atomics (harness.backends.wgsl.wgsl_buffers), race-free.
"""

from __future__ import annotations

from pathlib import Path

from harness.backends import Prepared
from harness.backends.wgsl import ShaderFile, grid_1d, pack_params
from harness.registry import Implementation, register

WG = 256  # must match add_rmsnorm.wgsl
MAX_VPT = 64
SHADER = ShaderFile(Path(__file__).with_name("add_rmsnorm.wgsl"), (("x", "in"), ("residual", "in"), ("gamma", "in"),
                                                                   ("h", "out"), ("y", "out")))


class AddRmsNormWgsl(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.bind_inputs(inputs, ("x", "residual", "gamma"))
        M, H = self.dims["M"], self.dims["H"]
        vpt = -(-H // WG)
        self.entry = "main" if vpt <= MAX_VPT else "wide"
        vpt = vpt if vpt <= MAX_VPT else 1
        self.alloc_outputs()
        source = SHADER.render(backend.mode(dtype), {"@@VPT@@": vpt})
        params = pack_params(("u", M), ("u", H), ("f", attrs["eps"]), ("f", 1.0))
        self.launches = backend.bind([SHADER.dispatch(source, self.entry, grid_1d(M), params)],
                                     self.buffers(), "add_rmsnorm/wgsl")


register(Implementation("add_rmsnorm", "wgsl", "fused", "fused", AddRmsNormWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
