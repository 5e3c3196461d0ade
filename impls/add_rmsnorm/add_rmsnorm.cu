// add_rmsnorm: h = x + residual; y = h * rsqrt(mean(h^2) + eps) * gamma, float32 math.
//
//   x, residual, h, y: (M, H), gamma: (H,), all row-major and contiguous.
//
// Header-free (compiles the same under nvcc, NVRTC and CuPy's RawModule); 16-bit storage
// travels as `unsigned short` bit patterns, float16 converted with PTX `cvt`, bfloat16 with
// bit operations (round to nearest even). One kernel per storage dtype:
//
//   add_rmsnorm_{f32,f16,bf16}   grid min(M, 65535) (blocks loop over rows), 256 threads,
//                                dynamic shared memory H floats when `cache` (H <= 12288),
//                                else none. Pass 1 reads x and residual once (16-byte loads
//                                when `vec`), forms h in float32, writes h, keeps the float32
//                                h in shared memory and sums h^2; a block reduction gives the
//                                inverse RMS; pass 2 reads h back from shared memory (each
//                                thread only the slots it wrote itself, so no barrier is
//                                needed between rows) and writes y. Without `cache` (very wide
//                                rows) pass 2 recomputes h = x + residual from global memory
//                                (an L2 hit: the row was just read), which gives the same value.
//
// y is computed from the float32 h, not from h rounded to the storage dtype: one rounding
// per output.
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

#define FB_ADD_THREADS 256
#define FB_ADD_WARPS (FB_ADD_THREADS / 32)
#define FB_ADD_CACHE_MAX 12288                  // floats of h kept in shared memory (48 KiB)

template <class D>
__device__ __forceinline__ void fb_add_rmsnorm(const typename D::T* __restrict__ x,
                                               const typename D::T* __restrict__ res,
                                               const typename D::T* __restrict__ gamma,
                                               typename D::T* __restrict__ h,
                                               typename D::T* __restrict__ y,
                                               int M, int H, float eps, int vec, int cache) {
    typedef typename D::T T;
    enum { VEC = D::VEC };
    extern __shared__ float hs[];               // H floats when cache, else unused
    __shared__ float red[FB_ADD_WARPS];
    const int tid = threadIdx.x;

    for (int m = blockIdx.x; m < M; m += gridDim.x) {   // block-uniform loop
        const long long base = (long long)m * H;
        float ss = 0.f;
        if (vec) {
            // H % VEC == 0 and aligned bases: every row start is 16-byte aligned. Slot of
            // element e of vector j: hs[e * nv + j] (consecutive threads, consecutive banks).
            const int nv = H / VEC;
            const fb_vec16* xv = reinterpret_cast<const fb_vec16*>(x + base);
            const fb_vec16* rv = reinterpret_cast<const fb_vec16*>(res + base);
            fb_vec16* hv = reinterpret_cast<fb_vec16*>(h + base);
            for (int j = tid; j < nv; j += FB_ADD_THREADS) {
                float a[VEC], b[VEC];
                D::unpack(xv[j], a);
                D::unpack(rv[j], b);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    a[e] = a[e] + b[e];
                    ss += a[e] * a[e];
                }
                hv[j] = D::pack(a);
                if (cache) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) hs[e * nv + j] = a[e];
                }
            }
            const float s = fb_inv_rms(fb_block_sum<FB_ADD_WARPS>(ss, red), H, eps);
            const fb_vec16* gv = reinterpret_cast<const fb_vec16*>(gamma);
            fb_vec16* yv = reinterpret_cast<fb_vec16*>(y + base);
            for (int j = tid; j < nv; j += FB_ADD_THREADS) {
                float a[VEC], g[VEC];
                if (cache) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) a[e] = hs[e * nv + j];
                } else {
                    float b[VEC];
                    D::unpack(xv[j], a);
                    D::unpack(rv[j], b);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) a[e] = a[e] + b[e];
                }
                D::unpack(gv[j], g);
#pragma unroll
                for (int e = 0; e < VEC; ++e) a[e] = a[e] * s * g[e];
                yv[j] = D::pack(a);
            }
        } else {
            for (int k = tid; k < H; k += FB_ADD_THREADS) {
                const float a = D::load(x, base + k) + D::load(res, base + k);
                ss += a * a;
                D::store(h, base + k, a);
                if (cache) hs[k] = a;
            }
            const float s = fb_inv_rms(fb_block_sum<FB_ADD_WARPS>(ss, red), H, eps);
            for (int k = tid; k < H; k += FB_ADD_THREADS) {
                const float a = cache ? hs[k] : D::load(x, base + k) + D::load(res, base + k);
                D::store(y, base + k, a * s * D::load(gamma, k));
            }
        }
    }
}

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                             \
    extern "C" __global__ void __launch_bounds__(FB_ADD_THREADS) add_rmsnorm_##SUFFIX(          \
        const D::T* __restrict__ x, const D::T* __restrict__ res, const D::T* __restrict__ gamma, \
        D::T* __restrict__ h, D::T* __restrict__ y, int M, int H, float eps, int vec, int cache) { \
        fb_add_rmsnorm<D>(x, res, gamma, h, y, M, H, eps, vec, cache);                          \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
