// swiglu_ffn: y = (silu(x @ W_gate.T) * (x @ W_up.T)) @ W_down.T, float32 accumulation.
//
//   x: (M, H), W_gate, W_up: (I, H), W_down: (H, I), y: (M, H); row-major, contiguous.
//
// Two kernels launched back to back on one stream, no host synchronisation between them.
// The (M, I) activation silu(g) * u goes through a float32 device scratch (not rounded to the
// storage dtype): at decode it is M * I * 4 bytes (57 KiB for I = 14336), written once and
// read back by the second kernel from L2; the weights (3 I H elements) are each read once.
// A single persistent kernel with a grid-wide barrier could keep it on chip; this does not.
// Header-free; one set of kernels per storage dtype:
//
//   swiglu_ffn_gemv_up_{f32,f16,bf16}     decode (M <= 8): gate/up GEMV + silu * up into the
//        float32 scratch; grid (ceil(I/8), min(M, 65535)), 256 threads, one (gate, up) row
//        pair per warp (as gemm_swiglu_gemv).
//   swiglu_ffn_gemv_down_{f32,f16,bf16}   decode: act @ W_down.T; grid (ceil(ceil(H/2)/8),
//        min(M, 65535)), 256 threads, one pair of consecutive W_down rows per warp, the
//        float32 activation row in shared memory (4096 floats at a time).
//   swiglu_ffn_tiled_up_{f32,f16,bf16}    prefill: gemm_swiglu's tiled kernel (64 rows x 32
//        (gate, up) pairs per block) into the float32 scratch.
//   swiglu_ffn_tiled_down_{f32,f16,bf16}  prefill: 64 rows x 64 columns of y per block from
//        the float32 scratch and W_down (tile columns = 32 pairs of consecutive W_down rows).
//
// `vec` (up kernels): H % VEC == 0 and x, W_gate, W_up 16-byte aligned. `vec` (down
// kernels): I % VEC == 0 and W_down 16-byte aligned (the scratch always is).
//@fusebench-splice fb_prelude.cuh

//@fusebench-splice fb_pair_gemm.cuh

//@fusebench-splice fb_swiglu_pairs.cuh

// Pairs of consecutive W rows of a plain projection: pair p = rows 2p and 2p + 1 (the second
// clamped to N - 1 when N is odd; its result is then not stored).
template <class D>
struct FbRowPairs {
    typedef typename D::T T;
    const T* w;
    T* y;
    int K, N;
    __device__ __forceinline__ const T* row(int p, int which) const {
        const int n = min(2 * p + which, N - 1);
        return w + (long long)n * K;
    }
    __device__ __forceinline__ void store(int m, int p, float a0, float a1) const {
        const int n = 2 * p;
        D::store(y, (long long)m * N + n, a0);
        if (n + 1 < N) D::store(y, (long long)m * N + n + 1, a1);
    }
};

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                               \
    extern "C" __global__ void __launch_bounds__(FB_GEMV_THREADS) swiglu_ffn_gemv_up_##SUFFIX(    \
        const D::T* __restrict__ x, const D::T* __restrict__ wg, const D::T* __restrict__ wu,     \
        float* __restrict__ act, int M, int H, int I, int vec) {                                  \
        const FbPlainRow<D> xs = {x, H};                                                          \
        const FbSwigluPairs<D, FbF32> pr = {wg, wu, act, H, I};                                   \
        fb_pair_gemv<D>(xs, pr, M, H, I, vec);                                                    \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(FB_GEMV_THREADS) swiglu_ffn_gemv_down_##SUFFIX(  \
        const float* __restrict__ act, const D::T* __restrict__ wd, D::T* __restrict__ y,         \
        int M, int I, int H, int vec) {                                                           \
        const FbPlainRow<FbF32> xs = {act, I};                                                    \
        const FbRowPairs<D> pr = {wd, y, I, H};                                                   \
        fb_pair_gemv<D>(xs, pr, M, I, (H + 1) / 2, vec);                                          \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(FB_TILED_THREADS) swiglu_ffn_tiled_up_##SUFFIX(  \
        const D::T* __restrict__ x, const D::T* __restrict__ wg, const D::T* __restrict__ wu,     \
        float* __restrict__ act, int M, int H, int I, int vec) {                                  \
        const FbPlainA<D, D::VEC> as = {x, H};                                                    \
        const FbSwigluPairs<D, FbF32> pr = {wg, wu, act, H, I};                                   \
        fb_pair_tiled<D>(as, pr, M, H, I, vec);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(FB_TILED_THREADS) swiglu_ffn_tiled_down_##SUFFIX( \
        const float* __restrict__ act, const D::T* __restrict__ wd, D::T* __restrict__ y,         \
        int M, int I, int H, int vec) {                                                           \
        const FbPlainA<FbF32, D::VEC> as = {act, I};                                              \
        const FbRowPairs<D> pr = {wd, y, I, H};                                                   \
        fb_pair_tiled<D>(as, pr, M, I, (H + 1) / 2, vec);                                         \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
