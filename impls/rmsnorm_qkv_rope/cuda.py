"""rmsnorm_qkv_rope in CUDA (rmsnorm_qkv_rope.cu beside this file, CuPy RawModule).

x: (M, H), gamma: (H,), w: ((nh + 2·nkv)·d, H), pos: (M,) int32 -> q: (M, nh, d),
k, v: (M, nkv, d) in the storage dtype; float32 accumulation, each output rounded once.

The projection is split into pairs p = (head, i): W rows head·d + i and head·d + i + d/2,
the two outputs one rotate-half rotation mixes. Whoever holds a pair's two float32
accumulators rotates them (q and k heads; v heads pass through) and stores both. Angles
pos·theta^(-2i/d) and their sine and cosine are computed on the device in float64.

Decode (M <= GEMV_MAX_M): `rmsnorm_qkv_rope_gemv_<dt>`, grid (ceil(P/8), M), 256 threads,
P = (nh + 2·nkv)·d/2. Each block recomputes its row's inverse RMS, keeps x·s·gamma in
shared memory (4096 floats at a time) and each warp owns one pair: two W rows read with
16-byte loads, a shuffle reduction, the rotation, two stores. Bound by reading W once.

Prefill (M > GEMV_MAX_M): `rmsnorm_qkv_rope_rms_<dt>` writes the M inverse RMS values,
then `rmsnorm_qkv_rope_tiled_<dt>` computes 64 rows x 32 pairs per block (tile column c is
W row (c & 1) of pair c/2, so every thread's 4x4 register tile holds two whole pairs) and
rotates in the epilogue: no separate RoPE pass, no (M, N) intermediate. Plain SIMT float32
tiles, like rmsnorm_gemm's prefill kernel (no tensor cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backends.cuda import SUFFIX, VEC, FusedCuda, KernelModule
from harness.cuda_launch import GEMV_MAX_M, H200, DeviceLimits, Plan, pair_gemm_plan
from harness.registry import Implementation, register

SOURCE_PATH = Path(__file__).with_name("rmsnorm_qkv_rope.cu")
KERNELS = tuple(f"rmsnorm_qkv_rope_{k}_{s}" for s in SUFFIX.values() for k in ("gemv", "rms", "tiled"))

load_module = KernelModule(SOURCE_PATH)


def launch_plan(M: int, H: int, n_heads: int, n_kv_heads: int, head_dim: int, dtype: str,
                aligned: bool = True, limits: DeviceLimits = H200) -> Plan:
    """Plan(launches, {vec}) for x: (M, H) and (n_heads + 2·n_kv_heads)·head_dim/2 rotation
    pairs; no CuPy needed. No launch when M = 0. Static shared memory only (16 KiB)."""
    P = (n_heads + 2 * n_kv_heads) * (head_dim // 2)
    return pair_gemm_plan("rmsnorm_qkv_rope", SUFFIX[dtype], M, P, int(aligned and H % VEC[dtype] == 0), rms=True)


class RmsNormQkvRopeCuda(FusedCuda):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        import cupy as cp

        (self.x, self.gamma, self.w, self.pos), (M, H, nh, nkv, d) = self.bind_io(
            inputs, ("x", "gamma", "w", "pos"), ("M", "H", "n_heads", "n_kv_heads", "head_dim"))
        plan = self.plan(launch_plan, M, H, nh, nkv, d, aligned_of=(self.x, self.gamma, self.w))
        vec = plan.switches["vec"]
        i32, eps, theta = np.int32, np.float32(attrs["eps"]), np.float64(attrs["theta"])
        q, k, v = self.out["q"], self.out["k"], self.out["v"]
        if M <= GEMV_MAX_M:
            args = [(self.x, self.gamma, self.w, self.pos, q, k, v, i32(M), i32(H), i32(nh), i32(nkv), i32(d),
                     eps, theta, i32(vec))]
        else:
            self.inv_rms = cp.empty(M, dtype=cp.float32)
            args = [(self.x, self.inv_rms, i32(M), i32(H), eps),
                    (self.x, self.gamma, self.w, self.inv_rms, self.pos, q, k, v, i32(M), i32(H), i32(nh),
                     i32(nkv), i32(d), theta, i32(vec))]
        self.bind_launches(load_module(), plan, args)


register(Implementation("rmsnorm_qkv_rope", "cuda", "fused", "fused", RmsNormQkvRopeCuda,
                        dtypes=("float32", "float16", "bfloat16"), origin=__name__, doc=__doc__))
