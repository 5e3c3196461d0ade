// ---- fusebench RMSNorm input of the pair GEMM: RMSNorm(x) = x * inv_rms(row) * gamma ----
// Spliced after fb_pair_gemm.cuh by the fusions that normalise x: (M, H) on its way into a
// GEMM (rmsnorm_gemm, rmsnorm_qkv_rope). Decode: FbNormRow, each GEMV block computing its
// row's inverse RMS. Prefill: pass 1, fb_rms (the kernel FB_DEFINE_RMS_KERNEL defines),
// writes every row's inverse RMS into an (M,) float32 scratch; pass 2 reads x through FbNormA.
// GEMV input row m: RMSNorm(x)[m] = x[m] * inv_rms * gamma, inv_rms computed by the block.
template <class D>
struct FbNormRow {
    const typename D::T* x;
    const typename D::T* gamma;
    int H;
    float eps;
    __device__ __forceinline__ float scale(int m, float* red) const {
        const typename D::T* xr = x + (long long)m * H;
        float ss = 0.f;
        for (int h = threadIdx.x; h < H; h += FB_GEMV_THREADS) {
            const float v = D::load(xr, h);
            ss += v * v;
        }
        return fb_inv_rms(fb_block_sum<FB_GEMV_WARPS>(ss, red), H, eps);
    }
    __device__ __forceinline__ void fill(float* xs, int m, int c0, int L, float s) const {
        const typename D::T* xr = x + (long long)m * H + c0;
        for (int i = threadIdx.x; i < L; i += FB_GEMV_THREADS)
            xs[i] = D::load(xr, i) * s * D::load(gamma, c0 + i);
    }
};

// ---- prefill pass 1: inverse RMS of every row, one warp per row ----------------------------
#define FB_RMS_THREADS 256
#define FB_RMS_ROWS_PER_BLOCK (FB_RMS_THREADS / 32)

template <class D>
__device__ __forceinline__ void fb_rms(const typename D::T* __restrict__ x,
                                       float* __restrict__ inv_rms, int M, int H, float eps) {
    const int lane = threadIdx.x & 31;
    const long long m = (long long)blockIdx.x * FB_RMS_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (m >= M) return;                                  // no barriers below: safe
    const typename D::T* xr = x + m * H;
    float ss = 0.f;
    for (int h = lane; h < H; h += 32) {
        const float v = D::load(xr, h);
        ss += v * v;
    }
    ss = fb_warp_sum(ss);
    if (lane == 0) inv_rms[m] = fb_inv_rms(ss, H, eps);
}

// The exported pass-1 kernel NAME for storage type D.
#define FB_DEFINE_RMS_KERNEL(NAME, D)                                                              \
    extern "C" __global__ void __launch_bounds__(FB_RMS_THREADS) NAME(                            \
        const D::T* __restrict__ x, float* __restrict__ inv_rms, int M, int H, float eps) {       \
        fb_rms<D>(x, inv_rms, M, H, eps);                                                         \
    }

// ---- prefill pass 2: the tiled A operand, RMSNorm(x) with every row's inverse RMS precomputed
template <class D>
struct FbNormA {
    const typename D::T* x;
    const typename D::T* gamma;
    const float* inv_rms;
    int H;
    __device__ __forceinline__ float load(int gm, int gk) const {
        return D::load(x, (long long)gm * H + gk) * inv_rms[gm] * D::load(gamma, gk);
    }
    __device__ __forceinline__ void load_vec(int gm, int gk, float* f) const {
        D::unpack(*reinterpret_cast<const fb_vec16*>(x + (long long)gm * H + gk), f);
        const float s = inv_rms[gm];
#pragma unroll
        for (int e = 0; e < D::VEC; ++e) f[e] = f[e] * s * D::load(gamma, gk + e);
    }
};
