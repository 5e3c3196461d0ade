// rmsnorm_qkv_rope: h = RMSNorm(x) * gamma; q | k | v = h @ W.T; rotary embedding on q, k.
//
//   x: (M, H), gamma: (H,), W: ((nh + 2 nkv) d, H), pos: (M,) int32,
//   q: (M, nh, d), k, v: (M, nkv, d); all row-major and contiguous. float32 accumulation.
//
// The projection is organised in *pairs*: pair p = (head, i), head = p / (d/2), i = p % (d/2),
// is W rows head*d + i and head*d + i + d/2 -- exactly the two outputs one rotate-half RoPE
// rotation mixes. Whoever owns a pair holds both float32 accumulators, rotates them (q and k
// heads; v heads are stored as they are) and stores each element once, rounded once.
// Angles: pos * theta^(-2i/d) and its sine and cosine in float64 (sincos), as
// harness.ops.rope_angles defines them; a float32 angle would be off by up to ~2e-3 rad at
// pos ~ 32768. Header-free; one set of kernels per storage dtype:
//
//   rmsnorm_qkv_rope_gemv_{f32,f16,bf16}   decode (M <= 8): grid (ceil(P/8), min(M, 65535)),
//        256 threads, P = (nh + 2 nkv) d / 2 pairs. Each block recomputes the inverse RMS of
//        its row m, keeps x*s*gamma in shared memory (4096 floats at a time), each warp owns
//        one pair: 16-byte loads of its two W rows, shuffle reduction, rotation, store.
//   rmsnorm_qkv_rope_rms_{f32,f16,bf16}    prefill pass 1: inverse RMS per row into an (M,)
//        float32 scratch; grid ceil(M/8), 256 threads, one warp per row.
//   rmsnorm_qkv_rope_tiled_{f32,f16,bf16}  prefill pass 2: 64 rows x 32 pairs (64 W rows)
//        per block, K step 16, 256 threads each owning 4 rows x 2 whole pairs, so the
//        rotation happens in the epilogue on the accumulators: no separate RoPE pass and no
//        (M, N) intermediate. A is normalised (x * s * gamma) as it is loaded into shared memory.
//
// `vec`: 1 when H is a multiple of the 16-byte vector width (4 floats / 8 halves) and the
// base pointers of x, gamma and W are 16-byte aligned; 0 selects scalar loads.
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

// Tiled A operand: RMSNorm(x) with the inverse RMS of every row precomputed.
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

// ---- prefill pass 1: inverse RMS of every row (one warp per row) ---------------------------
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

// ---- rotary embedding ---------------------------------------------------------------------
__device__ __forceinline__ void fb_rope_cs(int pos, int i, int d, double theta, float& c, float& s) {
    const double inv_freq = pow(theta, -((double)i * 2.0) / (double)d);   // theta^(-2i/d)
    double sd, cd;
    sincos((double)pos * inv_freq, &sd, &cd);
    c = (float)cd;
    s = (float)sd;
}

template <class D>
struct FbQkvPairs {
    typedef typename D::T T;
    const T* w;
    const int* pos;
    T* q;
    T* k;
    T* v;
    int H, nh, nkv, d;
    double theta;
    __device__ __forceinline__ const T* row(int p, int which) const {
        const int half = d >> 1, head = p / half, i = p - head * half;
        return w + ((long long)head * d + i + which * half) * H;
    }
    __device__ __forceinline__ void store(int m, int p, float a0, float a1) const {
        const int half = d >> 1, head = p / half, i = p - head * half;
        T* out;
        int hh, heads;
        if (head < nh) {
            out = q; hh = head; heads = nh;
        } else if (head < nh + nkv) {
            out = k; hh = head - nh; heads = nkv;
        } else {
            out = v; hh = head - nh - nkv; heads = nkv;
        }
        if (head < nh + nkv) {
            float c, s;
            fb_rope_cs(pos[m], i, d, theta, c, s);
            const float r0 = a0 * c - a1 * s;
            const float r1 = a1 * c + a0 * s;
            a0 = r0;
            a1 = r1;
        }
        const long long o = ((long long)m * heads + hh) * d + i;
        D::store(out, o, a0);
        D::store(out, o + half, a1);
    }
};

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                               \
    extern "C" __global__ void __launch_bounds__(FB_GEMV_THREADS) rmsnorm_qkv_rope_gemv_##SUFFIX( \
        const D::T* __restrict__ x, const D::T* __restrict__ gamma, const D::T* __restrict__ w,   \
        const int* __restrict__ pos, D::T* __restrict__ q, D::T* __restrict__ k,                  \
        D::T* __restrict__ v, int M, int H, int nh, int nkv, int d, float eps, double theta,      \
        int vec) {                                                                                \
        const FbNormRow<D> xs = {x, gamma, H, eps};                                               \
        const FbQkvPairs<D> pr = {w, pos, q, k, v, H, nh, nkv, d, theta};                         \
        fb_pair_gemv<D>(xs, pr, M, H, (nh + 2 * nkv) * (d >> 1), vec);                            \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(FB_RMS_THREADS) rmsnorm_qkv_rope_rms_##SUFFIX(   \
        const D::T* __restrict__ x, float* __restrict__ inv_rms, int M, int H, float eps) {       \
        fb_rms<D>(x, inv_rms, M, H, eps);                                                         \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(FB_TILED_THREADS) rmsnorm_qkv_rope_tiled_##SUFFIX( \
        const D::T* __restrict__ x, const D::T* __restrict__ gamma, const D::T* __restrict__ w,   \
        const float* __restrict__ inv_rms, const int* __restrict__ pos, D::T* __restrict__ q,     \
        D::T* __restrict__ k, D::T* __restrict__ v, int M, int H, int nh, int nkv, int d,         \
        double theta, int vec) {                                                                  \
        const FbNormA<D> as = {x, gamma, inv_rms, H};                                             \
        const FbQkvPairs<D> pr = {w, pos, q, k, v, H, nh, nkv, d, theta};                         \
        fb_pair_tiled<D>(as, pr, M, H, (nh + 2 * nkv) * (d >> 1), vec);                           \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
