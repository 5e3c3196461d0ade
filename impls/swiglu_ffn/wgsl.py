"""swiglu_ffn in WGSL: the whole SwiGLU FFN as two dispatches recorded back to back in
one compute pass, with no host round trip between them.

x: (M, H), w_gate, w_up: (I, H), w_down: (H, I) -> y = (silu(x Wgᵀ) * (x Wuᵀ)) Wdᵀ: (M, H).

1. the gemm_swiglu kernel (impls/gemm_swiglu/gemm_swiglu.wgsl, entry `gemv` for M <= 4,
   `tiled` otherwise): gate and up accumulated together, only the activation stored, into
   an (M, I) **f32** device scratch buffer allocated once in prepare() (never the storage
   dtype: the activation is not rounded to f16/bf16 between the two GEMMs, as the unfused
   chain must round it).
2. the down projection act @ w_downᵀ, reading that scratch: the unfused chain's own matmul
   kernel (harness/kernels/fb_chain_matmul.wgsl, WgslBackend.matmul_dispatch: the matvec
   for M <= 4, the 64 x 64 tiles otherwise) with an f32 `a`.

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

from harness.backends import Prepared
from harness.registry import Implementation, register
from impls.gemm_swiglu import wgsl as gs

DOWN = (("act", "in"), ("w_down", "in"), ("y", "out"))  # the down projection's a, b and y


class SwigluFfnWgsl(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.bind_inputs(inputs, ("x", "w_gate", "w_up", "w_down"))
        M, H, I = self.dims["M"], self.dims["H"], self.dims["I"]
        mode = backend.mode(dtype)
        self.act = backend.empty((M, I), "float32")  # device scratch, not an output
        self.alloc_outputs()
        up = gs.dispatch(backend, self.dims, mode, "f32", y="act")
        down = backend.matmul_dispatch("nt", ("f32", mode, mode), M, I, H, DOWN)
        self.launches = backend.bind([up, down], self.buffers(act=self.act), "swiglu_ffn/wgsl")


register(Implementation("swiglu_ffn", "wgsl", "fused", "fused", SwigluFfnWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
