// ---- fusebench CUDA prelude: 16-bit storage types, conversions, traits, reductions ----
// Spliced into impls/*/*.cu and the CUDA chain (harness/kernels/fb_chain.cu) where `//@fusebench-splice fb_prelude.cuh`
// stands (harness.cuda_compile.cuda_source), so the compiled text stays header-free for nvcc, NVRTC and CuPy alike.
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

// ---- tiled GEMM: one K step of a thread's 4 x 4 register tile --------------------------------
// As[k][ty*4 + i] and Bs[k][tx*4 + j] (k < TK) are the shared-memory tiles, transposed, with
// rows of LDA and LDB floats (multiples of 4, so both reads are aligned 16-byte loads).
// acc[i][j] += sum over k of As[k][ty*4+i] * Bs[k][tx*4+j], the step summed on its own
// first: blocked summation keeps float32 error growth at about K/TK + TK additions, not K.
template <int TK, int LDA, int LDB>
__device__ __forceinline__ void fb_tile_step(const float (&As)[TK][LDA], const float (&Bs)[TK][LDB],
                                             int ty, int tx, float (&acc)[4][4]) {
    float part[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) part[i][j] = 0.f;
#pragma unroll
    for (int k = 0; k < TK; ++k) {
        const fb_f4 ta = *reinterpret_cast<const fb_f4*>(&As[k][ty * 4]);
        const fb_f4 tb = *reinterpret_cast<const fb_f4*>(&Bs[k][tx * 4]);
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
