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
// ---- shared prelude (the same text in every impls/*/*.cu written with it: header-free) ----
typedef unsigned short fb_u16;

struct alignas(16) fb_vec16 {
    unsigned int a, b, c, d;
};

struct alignas(16) fb_f4 {   // 16-byte shared-memory loads
    float x, y, z, w;
};

// ---- conversions ------------------------------------------------------------------------
__device__ __forceinline__ float fb_f16_to_f32(fb_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ fb_u16 fb_f32_to_f16(float f) {
    fb_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float fb_bf16_to_f32(fb_u16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ fb_u16 fb_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)           // NaN: keep the sign, make it quiet
        return (fb_u16)(((u >> 16) & 0x8000u) | 0x7fc0u);
    u += 0x7fffu + ((u >> 16) & 1u);               // round to nearest, ties to even
    return (fb_u16)(u >> 16);
}

// ---- storage-type traits ----------------------------------------------------------------
// load(p, i) -> float, store(p, i, float), unpack(16 bytes) -> VEC floats and pack(VEC
// floats) -> 16 bytes (element 0 at the lowest address: the low half of the first word).
struct FbF32 {
    typedef float T;
    enum { VEC = 4 };
    static __device__ __forceinline__ float load(const T* p, long long i) { return p[i]; }
    static __device__ __forceinline__ void store(T* p, long long i, float v) { p[i] = v; }
    static __device__ __forceinline__ void unpack(const fb_vec16& v, float* o) {
        o[0] = __uint_as_float(v.a); o[1] = __uint_as_float(v.b);
        o[2] = __uint_as_float(v.c); o[3] = __uint_as_float(v.d);
    }
    static __device__ __forceinline__ fb_vec16 pack(const float* o) {
        fb_vec16 v;
        v.a = __float_as_uint(o[0]); v.b = __float_as_uint(o[1]);
        v.c = __float_as_uint(o[2]); v.d = __float_as_uint(o[3]);
        return v;
    }
};

struct FbF16 {
    typedef fb_u16 T;
    enum { VEC = 8 };
    static __device__ __forceinline__ float cvt(unsigned int bits) { return fb_f16_to_f32((fb_u16)bits); }
    static __device__ __forceinline__ unsigned int two(float lo, float hi) {
        return (unsigned int)fb_f32_to_f16(lo) | ((unsigned int)fb_f32_to_f16(hi) << 16);
    }
    static __device__ __forceinline__ float load(const T* p, long long i) { return fb_f16_to_f32(p[i]); }
    static __device__ __forceinline__ void store(T* p, long long i, float v) { p[i] = fb_f32_to_f16(v); }
    static __device__ __forceinline__ void unpack(const fb_vec16& v, float* o) {
        o[0] = cvt(v.a & 0xffffu); o[1] = cvt(v.a >> 16);
        o[2] = cvt(v.b & 0xffffu); o[3] = cvt(v.b >> 16);
        o[4] = cvt(v.c & 0xffffu); o[5] = cvt(v.c >> 16);
        o[6] = cvt(v.d & 0xffffu); o[7] = cvt(v.d >> 16);
    }
    static __device__ __forceinline__ fb_vec16 pack(const float* o) {
        fb_vec16 v;
        v.a = two(o[0], o[1]); v.b = two(o[2], o[3]); v.c = two(o[4], o[5]); v.d = two(o[6], o[7]);
        return v;
    }
};

struct FbBF16 {
    typedef fb_u16 T;
    enum { VEC = 8 };
    static __device__ __forceinline__ float lo(unsigned int w) { return __uint_as_float(w << 16); }
    static __device__ __forceinline__ float hi(unsigned int w) { return __uint_as_float(w & 0xffff0000u); }
    static __device__ __forceinline__ unsigned int two(float l, float h) {
        return (unsigned int)fb_f32_to_bf16(l) | ((unsigned int)fb_f32_to_bf16(h) << 16);
    }
    static __device__ __forceinline__ float load(const T* p, long long i) { return fb_bf16_to_f32(p[i]); }
    static __device__ __forceinline__ void store(T* p, long long i, float v) { p[i] = fb_f32_to_bf16(v); }
    static __device__ __forceinline__ void unpack(const fb_vec16& v, float* o) {
        o[0] = lo(v.a); o[1] = hi(v.a);
        o[2] = lo(v.b); o[3] = hi(v.b);
        o[4] = lo(v.c); o[5] = hi(v.c);
        o[6] = lo(v.d); o[7] = hi(v.d);
    }
    static __device__ __forceinline__ fb_vec16 pack(const float* o) {
        fb_vec16 v;
        v.a = two(o[0], o[1]); v.b = two(o[2], o[3]); v.c = two(o[4], o[5]); v.d = two(o[6], o[7]);
        return v;
    }
};

// ---- reductions -------------------------------------------------------------------------
__device__ __forceinline__ float fb_warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;  // every lane holds the full sum
}

// Sum over a block of NWARPS full warps; every thread gets the same value. `red` holds
// NWARPS floats; the trailing barrier lets the caller reuse `red` right away.
template <int NWARPS>
__device__ __forceinline__ float fb_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = fb_warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < NWARPS; ++i) t += red[i];
    __syncthreads();
    return t;
}

__device__ __forceinline__ float fb_inv_rms(float sumsq, int H, float eps) {
    // IEEE sqrt and division (no rsqrtf approximation), as the float32 chain does.
    return 1.0f / sqrtf(sumsq / (float)H + eps);
}

// ---- pair GEMV (decode): each warp owns one pair of W rows for one row m of the input -----
// XS (the input vector): scale(m, red) -> a block-uniform row scale (may use barriers; all
// threads call it), fill(xs, m, c0, L, s) -> xs[0..L) = input[m, c0..c0+L) as floats (each
// thread writes i = tid, tid + THREADS, ...). PR (the pairs): row(p, which) -> the start of
// W row `which` (0 or 1) of pair p, K elements; store(m, p, a0, a1) -> the epilogue.
#define FB_GEMV_THREADS 256
#define FB_GEMV_WARPS (FB_GEMV_THREADS / 32)
#define FB_GEMV_PAIRS_PER_BLOCK 8                        // one pair per warp
#define FB_GEMV_CHUNK 4096                               // floats of the input row in shared memory

template <class D, class XS, class PR>
__device__ __forceinline__ void fb_pair_gemv(const XS& xsrc, const PR& pr, int M, int K, int npairs, int vec) {
    typedef typename D::T T;
    enum { VEC = D::VEC };
    __shared__ alignas(16) float xs[FB_GEMV_CHUNK];
    __shared__ float red[FB_GEMV_WARPS];
    const fb_f4* xs4 = reinterpret_cast<const fb_f4*>(xs);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int p = blockIdx.x * FB_GEMV_PAIRS_PER_BLOCK + warp;   // this warp's pair
    const bool active = p < npairs;                               // warp-uniform
    const T* w0 = active ? pr.row(p, 0) : 0;
    const T* w1 = active ? pr.row(p, 1) : 0;

    for (int m = blockIdx.y; m < M; m += gridDim.y) {            // block-uniform loop
        const float s = xsrc.scale(m, red);
        float acc0 = 0.f, acc1 = 0.f;
        for (int c0 = 0; c0 < K; c0 += FB_GEMV_CHUNK) {          // block-uniform loop
            const int L = min(FB_GEMV_CHUNK, K - c0);              // 1 <= L <= CHUNK
            __syncthreads();                                       // readers of the last chunk done
            xsrc.fill(xs, m, c0, L, s);
            __syncthreads();
            if (!active) continue;
            if (vec) {
                // K % VEC == 0 and CHUNK % VEC == 0, so L % VEC == 0 and every row + c0 +
                // j*VEC is 16-byte aligned.
                const int nv = L / VEC;
#pragma unroll 2
                for (int j = lane; j < nv; j += 32) {
                    float xv[VEC];
#pragma unroll
                    for (int q = 0; q < VEC / 4; ++q) {
                        const fb_f4 t = xs4[j * (VEC / 4) + q];
                        xv[4 * q] = t.x; xv[4 * q + 1] = t.y; xv[4 * q + 2] = t.z; xv[4 * q + 3] = t.w;
                    }
                    const fb_vec16 v0 = reinterpret_cast<const fb_vec16*>(w0 + c0)[j];
                    const fb_vec16 v1 = reinterpret_cast<const fb_vec16*>(w1 + c0)[j];
                    float f0[VEC], f1[VEC];
                    D::unpack(v0, f0);
                    D::unpack(v1, f1);
                    float a0 = 0.f, a1 = 0.f;
#pragma unroll
                    for (int e = 0; e < VEC; ++e) { a0 += f0[e] * xv[e]; a1 += f1[e] * xv[e]; }
                    acc0 += a0;
                    acc1 += a1;
                }
            } else {
                for (int j = lane; j < L; j += 32) {
                    const float xv = xs[j];
                    acc0 += D::load(w0, c0 + j) * xv;
                    acc1 += D::load(w1, c0 + j) * xv;
                }
            }
        }
        acc0 = fb_warp_sum(acc0);                                 // all 32 lanes take part
        acc1 = fb_warp_sum(acc1);
        if (active && lane == 0) pr.store(m, p, acc0, acc1);
    }
}

// ---- pair tiled GEMM (prefill): 64 rows x 32 pairs (64 W rows) per block ---------------------
// Tile column c holds W row (c & 1) of pair p0 + c/2, so each thread's 4 columns are two
// whole pairs and the epilogue can combine a pair's two accumulators (rotate, silu * up).
// AS (the A operand, M x K): load(gm, gk) -> float; load_vec(gm, gk, f) -> VEC floats of row
// gm from gk (gk % VEC == 0; only called when vec). PR as in the GEMV.
#define FB_TM 64          // output rows per block
#define FB_TP 32          // pairs per block: 64 tile columns
#define FB_TK 16          // K step
#define FB_TPAD 4         // keeps rows 16-byte aligned, spreads banks
#define FB_TILED_THREADS 256   // 16 x 16 threads, each 4 rows x 4 columns (2 pairs)

template <class D, class AS, class PR>
__device__ __forceinline__ void fb_pair_tiled(const AS& as, const PR& pr, int M, int K, int npairs, int vec) {
    enum { VEC = D::VEC, KV = FB_TK / D::VEC };               // vectors per tile row: 4 or 2
    __shared__ alignas(16) float As[FB_TK][FB_TM + FB_TPAD];  // As[k][m], transposed
    __shared__ alignas(16) float Ws[FB_TK][2 * FB_TP + FB_TPAD];  // Ws[k][c], transposed
    const int tid = threadIdx.x;
    const int tx = tid & 15;                             // pairs p0 + 2*tx, p0 + 2*tx + 1
    const int ty = tid >> 4;                             // rows  m0 + ty*4 + i
    const int p0 = blockIdx.x * FB_TP;

    for (int mt = blockIdx.y; (long long)mt * FB_TM < M; mt += gridDim.y) {  // block-uniform
        const int m0 = mt * FB_TM;
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

        for (int k0 = 0; k0 < K; k0 += FB_TK) {          // block-uniform
            __syncthreads();                             // last tile consumed
            if (vec) {
                // 64 * KV vectors per operand; r = v / KV is both the A row and the W column.
                for (int v = tid; v < FB_TM * KV; v += FB_TILED_THREADS) {
                    const int r = v / KV, kk = (v % KV) * VEC;
                    const int gk = k0 + kk;              // gk % VEC == 0, so gk < K => gk + VEC <= K
                    float f[VEC];
                    const int gm = m0 + r;
                    if (gm < M && gk < K) {
                        as.load_vec(gm, gk, f);
                    } else {
#pragma unroll
                        for (int e = 0; e < VEC; ++e) f[e] = 0.f;
                    }
#pragma unroll
                    for (int e = 0; e < VEC; ++e) As[kk + e][r] = f[e];

                    const int gp = p0 + (r >> 1);
                    if (gp < npairs && gk < K) {
                        D::unpack(*reinterpret_cast<const fb_vec16*>(pr.row(gp, r & 1) + gk), f);
                    } else {
#pragma unroll
                        for (int e = 0; e < VEC; ++e) f[e] = 0.f;
                    }
#pragma unroll
                    for (int e = 0; e < VEC; ++e) Ws[kk + e][r] = f[e];
                }
            } else {
                for (int e = tid; e < FB_TM * FB_TK; e += FB_TILED_THREADS) {
                    const int r = e / FB_TK, kk = e % FB_TK;
                    const int gk = k0 + kk, gm = m0 + r, gp = p0 + (r >> 1);
                    As[kk][r] = (gm < M && gk < K) ? as.load(gm, gk) : 0.f;
                    Ws[kk][r] = (gp < npairs && gk < K) ? D::load(pr.row(gp, r & 1), gk) : 0.f;
                }
            }
            __syncthreads();

            // Blocked summation: each K step summed separately, then added.
            float part[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) part[i][j] = 0.f;
#pragma unroll
            for (int k = 0; k < FB_TK; ++k) {
                // rows are 68 floats and ty*4, tx*4 are multiples of 4: aligned 16-byte loads
                const fb_f4 ta = *reinterpret_cast<const fb_f4*>(&As[k][ty * 4]);
                const fb_f4 tb = *reinterpret_cast<const fb_f4*>(&Ws[k][tx * 4]);
                const float a[4] = {ta.x, ta.y, ta.z, ta.w};
                const float b[4] = {tb.x, tb.y, tb.z, tb.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) part[i][j] += a[i] * b[j];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j];
        }

#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int gm = m0 + ty * 4 + i;
            if (gm < M) {
#pragma unroll
                for (int jp = 0; jp < 2; ++jp) {
                    const int gp = p0 + tx * 2 + jp;
                    if (gp < npairs) pr.store(gm, gp, acc[i][2 * jp], acc[i][2 * jp + 1]);
                }
            }
        }
    }
}

// ---- operands ---------------------------------------------------------------------------
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

// GEMV input row m of a plain (M, K) matrix in storage type DA (FbF32 for float scratch).
template <class DA>
struct FbPlainRow {
    const typename DA::T* x;
    int K;
    __device__ __forceinline__ float scale(int, float*) const { return 1.f; }
    __device__ __forceinline__ void fill(float* xs, int m, int c0, int L, float) const {
        const typename DA::T* xr = x + (long long)m * K + c0;
        for (int i = threadIdx.x; i < L; i += FB_GEMV_THREADS) xs[i] = DA::load(xr, i);
    }
};

// Tiled A operand: a plain (M, K) matrix in storage type DA; load_vec gives N elements
// (the weights' VEC) with N / DA::VEC 16-byte loads.
template <class DA, int N>
struct FbPlainA {
    const typename DA::T* x;
    int K;
    __device__ __forceinline__ float load(int gm, int gk) const { return DA::load(x, (long long)gm * K + gk); }
    __device__ __forceinline__ void load_vec(int gm, int gk, float* f) const {
        const fb_vec16* p = reinterpret_cast<const fb_vec16*>(x + (long long)gm * K + gk);
#pragma unroll
        for (int q = 0; q < N / DA::VEC; ++q) DA::unpack(p[q], f + q * DA::VEC);
    }
};

// Pairs of the SwiGLU up-projection: pair p = (W_gate row p, W_up row p); the epilogue
// stores silu(gate) * up to y[m, p] in output type O (the storage type, or FbF32 scratch).
template <class D, class O>
struct FbSwigluPairs {
    const typename D::T* wg;
    const typename D::T* wu;
    typename O::T* y;
    int H, I;
    __device__ __forceinline__ const typename D::T* row(int p, int which) const {
        return (which ? wu : wg) + (long long)p * H;
    }
    __device__ __forceinline__ void store(int m, int p, float g, float u) const {
        O::store(y, (long long)m * I + p, g / (1.0f + expf(-g)) * u);   // silu as the chain computes it
    }
};

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
