"""swiglu_ffn in WGSL: the whole SwiGLU FFN as two dispatches recorded back to back in
one compute pass, with no host round trip between them.

x: (M, H), w_gate, w_up: (I, H), w_down: (H, I) -> y = (silu(x Wgᵀ) * (x Wuᵀ)) Wdᵀ: (M, H).

1. the gemm_swiglu kernel (impls/gemm_swiglu/gemm_swiglu.wgsl, entry `gemv` for M <= 4,
   `tiled` otherwise): gate and up accumulated together, only the activation stored, into
   an (M, I) **f32** device scratch buffer allocated once in prepare() (never the storage
   dtype: the activation is not rounded to f16/bf16 between the two GEMMs, as the unfused
   chain must round it).
2. the down projection (swiglu_ffn.wgsl, `down_gemv` / `down_tiled`), reading that scratch.

Why two dispatches: WebGPU has no grid-wide barrier or float atomics, so the down
projection cannot start on an activation other workgroups are still producing inside one
dispatch; the dependency is a barrier between two dispatches of the same pass (wgpu
inserts it). The activation stays in device memory, not on chip, at decode too. At
decode (M = 1) the scratch is I f32 values (19 KB for Qwen2.5-0.5B).

Any M, H, I >= 1. Storage dtypes: float32; float16 (`array<f16>` with shader-f16,
otherwise packed two per u32); bfloat16 packed two per u32; arithmetic and the
activation in f32. Packed outputs are stored with per-half-word atomics, race-free.
"""

from __future__ import annotations

from pathlib import Path

from harness.backends import Prepared
from harness.backends.wgsl import Dispatch, ShaderFile, pack_params
from harness.registry import Implementation, register
from impls.gemm_swiglu import wgsl as gs

GV_R, TM, TN = 16, 64, 64  # GV_R as in swiglu_ffn.wgsl, TM and TN as in harness/kernels/fb_tile.wgsl
SHADER = ShaderFile(Path(__file__).with_name("swiglu_ffn.wgsl"))
UP_ROLES = (("x", "in"), ("w_gate", "in"), ("w_up", "in"), ("act", "out"))
DOWN_ROLES = (("act", "in"), ("w_down", "in"), ("y", "out"))


def down_source(mode: str) -> str:
    """The down-projection shader: f32 activation, weights and output in `mode`."""
    return SHADER.render([("act", "f32", "in"), ("wd", mode, "in"), ("y", mode, "out")])


class SwigluFfnWgsl(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.wg, self.wu, self.wd = self.bind_inputs(inputs, ("x", "w_gate", "w_up", "w_down"))
        self.M, self.H, self.I = self.dims["M"], self.dims["H"], self.dims["I"]
        mode = backend.mode(dtype)
        self.act = backend.empty((self.M, self.I), "float32")  # device scratch, not an output
        self.alloc_outputs()
        self.src1 = backend.gemv_source(gs.kernel_source(mode, "f32"), gs.GV_R)
        self.entry1, self.groups1, self.params1 = gs.launch(self.M, self.H, self.I)
        self.src2 = backend.gemv_source(down_source(mode), GV_R)
        self.params2 = pack_params(("u", self.M), ("u", self.I), ("u", self.H))
        if self.M <= gs.GEMV_MAX_M:
            self.entry2, self.groups2 = "down_gemv", (-(-self.H // GV_R), self.M, 1)
        else:
            self.entry2, self.groups2 = "down_tiled", (-(-self.H // TN), -(-self.M // TM), 1)
        self.launches = backend.bind([Dispatch(self.src1, self.entry1, self.groups1, UP_ROLES, self.params1),
                                      Dispatch(self.src2, self.entry2, self.groups2, DOWN_ROLES, self.params2)],
                                     self.buffers(act=self.act), "swiglu_ffn/wgsl")


register(Implementation("swiglu_ffn", "wgsl", "fused", "fused", SwigluFfnWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
