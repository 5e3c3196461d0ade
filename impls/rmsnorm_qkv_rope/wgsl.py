"""rmsnorm_qkv_rope in WGSL: RMSNorm, the packed QKV projection and rotary embedding in
one dispatch; source in rmsnorm_qkv_rope.wgsl beside this file.

x: (M, H), gamma: (H,), w: ((nh + 2 nkv) d, H), pos: (M,) int32 -> q: (M, nh, d),
k, v: (M, nkv, d). attrs: eps, theta, n_heads, n_kv_heads, head_dim.

The projected columns are visited in pair-major order (virtual column 2p + s is column
i + s·d/2 of head p // (d/2), i = p mod d/2), so whoever owns an even virtual column also
owns its rotary partner: RoPE is applied to the two f32 accumulators in registers, after
the deferred RMS scaling, and only the rotated values are stored (q and k), or the plain
ones (v). Neither the normalised activations nor the unrotated projection is written.

- M <= GEMV_MAX_M = 4 (decode, harness.backends.wgsl): entry point `gemv`, a workgroup per (16 virtual columns = 8
  pairs, row m), 16 invocations on a CPU adapter and 256 on a GPU; the sum of squares and
  16 dot products per invocation in one pass over x, reduced in workgroup memory, then 8
  invocations each finish a pair.
- otherwise (prefill): entry point `tiled`, 64 x 64 tiles of (row, virtual column), 4 x 4
  per invocation (two pairs per row), x * gamma and the W rows (gathered in pair order)
  through workgroup memory, sums in three levels; W is read ceil(M / 64) times.

The RMSNorm-into-matmul loops are harness/kernels/fb_rms_matmul.wgsl, shared with
rmsnorm_gemm; this file adds the pair order and the rotation.

Angles: cos and sin of pos·theta^(-2i/d) from an exact fixed-point angle in turns and
Cephes polynomials (harness.backends.wgsl.ROPE_WGSL), accurate to ~1e-7 for any int32
position; the frequency table (2·(d/2) u32 words) depends only on (d, theta) and is built
and uploaded once per backend (WgslBackend.rope_table), not per call.

Any M, H >= 1, any even head_dim (2, 6, 10, 80, ...), any head counts. Storage dtypes:
float32; float16 (`array<f16>` with shader-f16, otherwise packed two per u32); bfloat16
packed two per u32; packed outputs stored with per-half-word atomics, race-free.
Eight storage buffers: exactly WebGPU's default per-stage limit.
"""

from __future__ import annotations

from pathlib import Path

from harness.backends import Prepared
from harness.backends.wgsl import ROPE_WGSL, ShaderFile, matmul_launch, pack_params
from harness.registry import Implementation, register

GV_R = 16  # virtual columns per `gemv` workgroup, as in harness/kernels/fb_rms_matmul.wgsl
SHADER = ShaderFile(Path(__file__).with_name("rmsnorm_qkv_rope.wgsl"),
                    (("x", "in"), ("gamma", "in"), ("w", "in"), ("pos", "in"), ("freq", "in"), ("q", "out"),
                     ("k", "out"), ("v", "out")))


def kernel_source(mode: str) -> str:
    """The shader for one storage mode ("f32", "f16", "f16p", "bf16")."""
    return SHADER.render(mode, after_buffers=ROPE_WGSL, modes={"pos": "i32", "freq": "u32"})


class RmsNormQkvRopeWgsl(Prepared):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.bind_inputs(inputs, ("x", "gamma", "w", "pos"))
        M, H, nh, nkv, d = (self.dims[k] for k in ("M", "H", "n_heads", "n_kv_heads", "head_dim"))
        N = (nh + 2 * nkv) * d
        self.freq = backend.rope_table(d, float(attrs["theta"]))
        self.alloc_outputs()
        source = backend.gemv_source(kernel_source(backend.mode(dtype)), GV_R)
        params = pack_params(("u", M), ("u", H), ("u", N), ("f", attrs["eps"]), ("f", 1.0),
                             ("u", nh), ("u", nkv), ("u", d // 2))
        self.launches = backend.bind([SHADER.dispatch(source, *matmul_launch(M, N, GV_R), params)],
                                     self.buffers(freq=self.freq), "rmsnorm_qkv_rope/wgsl")


register(Implementation("rmsnorm_qkv_rope", "wgsl", "fused", "fused", RmsNormQkvRopeWgsl,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
