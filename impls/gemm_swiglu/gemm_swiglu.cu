// gemm_swiglu: y = silu(x @ W_gate.T) * (x @ W_up.T), float32 accumulation.
//
//   x: (M, H), W_gate, W_up: (I, H), y: (M, I); all row-major and contiguous.
//
// Organised in *pairs*: pair p = (W_gate row p, W_up row p). Whoever owns a pair
// accumulates gate and up from the same loads of x, applies silu(g) * u to the two float32
// accumulators in registers and stores y[m, p] once, rounded once. Header-free; one set of
// kernels per storage dtype:
//
//   gemm_swiglu_gemv_{f32,f16,bf16}    decode (M <= 8): grid (ceil(I/8), min(M, 65535)),
//        256 threads; x row in shared memory (4096 floats at a time), one pair per warp,
//        16-byte loads of its W_gate and W_up rows, shuffle reduction, silu * up, store.
//   gemm_swiglu_tiled_{f32,f16,bf16}   prefill: 64 rows x 32 pairs (32 gate + 32 up rows,
//        interleaved as tile columns) per block, K step 16, 256 threads each owning 4 rows
//        x 2 whole pairs: each x element loaded into shared memory feeds both products.
//
// `vec`: 1 when H is a multiple of the 16-byte vector width and x, W_gate, W_up are
// 16-byte aligned; 0 selects scalar loads.
//@fusebench-splice fb_prelude.cuh

//@fusebench-splice fb_pair_gemm.cuh

//@fusebench-splice fb_swiglu_pairs.cuh

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                               \
    FB_PLAIN_PAIR_KERNELS(gemm_swiglu_gemv_##SUFFIX, gemm_swiglu_tiled_##SUFFIX,                   \
        (const D::T* __restrict__ x, const D::T* __restrict__ wg, const D::T* __restrict__ wu,    \
         D::T* __restrict__ y, int M, int H, int I, int vec),                                     \
        D, D, x, H, I, (FbSwigluPairs<D, D>{wg, wu, y, H, I}))

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
