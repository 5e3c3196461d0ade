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
//@fusebench-splice fb_prelude.cuh

//@fusebench-splice fb_pair_gemm.cuh

//@fusebench-splice fb_rms_input.cuh

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
    FB_DEFINE_RMS_KERNEL(rmsnorm_qkv_rope_rms_##SUFFIX, D)                                        \
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
