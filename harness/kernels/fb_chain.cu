// fb_chain: the cuda backend's unfused chain, one small kernel per primitive op and storage
// dtype (harness/backends/cuda.py: CudaOps; linear and the matmuls are cuBLAS, split is a
// copy, reshape a view). Every primitive computes in float32 and rounds its result once to
// the storage dtype, as a framework's separate kernels do.
//
// Header-free like the fused sources (impls/*/*.cu): the storage types, conversions and
// reductions are the shared prelude's (harness/kernels/fb_prelude.cuh), spliced in below, so
// the chain and the fused kernels round float16 and bfloat16 with the same routines.
// Compiled once per device by CuPy (harness.backends.cuda.KernelModule).
//
//   chain_rms_norm_{f32,f16,bf16}   one 256-thread block per row (grid-stride over rows)
//   chain_softmax_*                 one 256-thread block per row; a row that is all -inf
//                                   gives zeros
//   chain_rope_*                    rotate-half RoPE over (M, heads, d), one thread per
//                                   pair; angles, sine and cosine in float64, as
//                                   harness.ops.rope_angles defines them
//   chain_{add,mul,silu,scale}_*    elementwise, grid-stride over n elements
//   chain_{causal,length}_mask_*    elementwise, each element's row and column from its
//                                   flat index

//@fusebench-splice fb_prelude.cuh

#define FB_THREADS 256
#define FB_WARPS (FB_THREADS / 32)
#define FB_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float fb_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float fb_block_max(float v, float* red) {
    v = fb_warp_max(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = red[0];
    for (int i = 1; i < FB_WARPS; ++i) t = fmaxf(t, red[i]);
    __syncthreads();
    return t;
}

template <class D>
__device__ void fb_rms_norm(const typename D::T* x, const typename D::T* g, typename D::T* y,
                            int rows, int H, float eps) {
    __shared__ float red[FB_WARPS];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long base = (long long)r * H;
        float ss = 0.f;
        for (int h = threadIdx.x; h < H; h += FB_THREADS) { float v = D::load(x, base + h); ss += v * v; }
        const float s = fb_inv_rms(fb_block_sum<FB_WARPS>(ss, red), H, eps);
        for (int h = threadIdx.x; h < H; h += FB_THREADS)
            D::store(y, base + h, D::load(x, base + h) * s * D::load(g, h));
    }
}

template <class D>
__device__ void fb_softmax(const typename D::T* x, typename D::T* y, int rows, int H) {
    __shared__ float red[FB_WARPS];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long base = (long long)r * H;
        float mx = -FB_INF;
        for (int h = threadIdx.x; h < H; h += FB_THREADS) mx = fmaxf(mx, D::load(x, base + h));
        mx = fb_block_max(mx, red);
        if (mx == -FB_INF) mx = 0.f;  // a fully masked row: every exp is 0, the row gives zeros
        float sum = 0.f;
        for (int h = threadIdx.x; h < H; h += FB_THREADS) sum += expf(D::load(x, base + h) - mx);
        sum = fb_block_sum<FB_WARPS>(sum, red);
        for (int h = threadIdx.x; h < H; h += FB_THREADS)
            D::store(y, base + h, sum == 0.f ? 0.f : expf(D::load(x, base + h) - mx) / sum);
    }
}

// Rotate-half RoPE over (M, heads, d): one thread per pair (i, i + d/2), grid-stride.
template <class D>
__device__ void fb_rope(const typename D::T* x, const int* pos, typename D::T* y, int M, int heads,
                        int d, double theta) {
    const int half = d / 2;
    const long long n = (long long)M * heads * half;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < n;
         t += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(t % half);
        const long long row = t / half;                  // m * heads + head
        const int m = (int)(row / heads);
        const double ang = (double)pos[m] * pow(theta, -((double)i * 2.0) / (double)d);
        double sd, cd;
        sincos(ang, &sd, &cd);
        const float c = (float)cd, s = (float)sd;
        const long long o = row * d + i;
        const float x1 = D::load(x, o), x2 = D::load(x, o + half);
        D::store(y, o, x1 * c - x2 * s);
        D::store(y, o + half, x2 * c + x1 * s);
    }
}

#define FB_CHAIN(S, D)                                                                          \
extern "C" __global__ void chain_rope_##S(const D::T* x, const int* pos, D::T* y, int M,         \
    int heads, int d, double theta) { fb_rope<D>(x, pos, y, M, heads, d, theta); }               \
extern "C" __global__ void __launch_bounds__(FB_THREADS) chain_rms_norm_##S(                    \
    const D::T* x, const D::T* g, D::T* y, int rows, int H, float eps) {                        \
    fb_rms_norm<D>(x, g, y, rows, H, eps); }                                                    \
extern "C" __global__ void __launch_bounds__(FB_THREADS) chain_softmax_##S(                     \
    const D::T* x, D::T* y, int rows, int H) { fb_softmax<D>(x, y, rows, H); }                  \
extern "C" __global__ void chain_add_##S(const D::T* a, const D::T* b, D::T* y, long long n) {  \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                 \
         i += (long long)gridDim.x * blockDim.x) D::store(y, i, D::load(a, i) + D::load(b, i)); } \
extern "C" __global__ void chain_mul_##S(const D::T* a, const D::T* b, D::T* y, long long n) {  \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                 \
         i += (long long)gridDim.x * blockDim.x) D::store(y, i, D::load(a, i) * D::load(b, i)); } \
extern "C" __global__ void chain_silu_##S(const D::T* x, D::T* y, long long n) {                \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                 \
         i += (long long)gridDim.x * blockDim.x) {                                              \
        const float v = D::load(x, i); D::store(y, i, v / (1.0f + expf(-v))); } }              \
extern "C" __global__ void chain_scale_##S(const D::T* x, D::T* y, long long n, float s) {      \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                 \
         i += (long long)gridDim.x * blockDim.x) D::store(y, i, D::load(x, i) * s); }           \
extern "C" __global__ void chain_causal_mask_##S(const D::T* x, D::T* y, long long n, int S,   \
    int T) {                                                                                    \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                 \
         i += (long long)gridDim.x * blockDim.x) {                                              \
        const long long row = i / T; const int j = (int)(i - row * T), qi = (int)(row % S);      \
        if (j > qi + (T - S)) D::store(y, i, -FB_INF); else y[i] = x[i]; } }                    \
extern "C" __global__ void chain_length_mask_##S(const D::T* x, const int* lens, D::T* y,      \
    long long n, long long rows_per_b, int T) {                                                 \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                 \
         i += (long long)gridDim.x * blockDim.x) {                                              \
        const long long row = i / T; const int j = (int)(i - row * T);                          \
        if (j >= lens[row / rows_per_b]) D::store(y, i, -FB_INF); else y[i] = x[i]; } }

FB_CHAIN(f32, FbF32)
FB_CHAIN(f16, FbF16)
FB_CHAIN(bf16, FbBF16)
