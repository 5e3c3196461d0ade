// attention_prefill: O = softmax(scale * q k^T + causal mask) v, flash-attention style.
//
//   q: (B, Hq, S, d), k, v: (B, Hkv, S, d), o: (B, Hq, S, d); row-major and contiguous.
//   q head h reads kv head h / (Hq / Hkv). float32 logits, softmax state and accumulators.
//
// attention_prefill_d{64,128,256}_{f32,f16,bf16}: the smallest DMAX >= d; grid
// (ceil(S/64), min(B*Hq, 65535)), 256 threads. A block owns 64 query rows of one (batch,
// head) (blocks loop over heads beyond grid.y; the x index is reversed so that the longest
// rows start first) and walks the key tiles kt = 0 .. qt in 64-key steps; tiles above the
// diagonal are skipped, the (S, S) matrix never exists. Per tile:
//   1. logits: a 64x64 tile in registers, thread (ty, tx) = (tid / 16, tid % 16) holding
//      rows ty*4 + i and keys tx*4 + j; q and k staged through shared memory 16 dims at a time.
//   2. online softmax: the tile's row maximum (a shuffle over the row's 16 threads), the
//      running maximum m, rescale factor e^(m_old - m), weights e^(s - m); each thread keeps
//      its share of the running sum l (all shares rescale by the same factor, so they are
//      added up once, at the end).
//   3. the 64x64 weights go to shared memory, V is staged 16 keys x DMAX at a time, and
//      each thread accumulates rows ty*4 + i, columns tx + 16c (c < DMAX/16) of O.
// At the end O / l is stored once per element (0 for a row with nothing visible).
//@fusebench-splice fb_prelude.cuh

//@fusebench-splice fb_attention_tile.cuh

// Maximum over the 16 threads of a row (lanes tx = 0..15 of one half-warp).
__device__ __forceinline__ float fb_row_max(float v) {
#pragma unroll
    for (int off = 1; off < 16; off <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ float fb_row_sum(float v) {
#pragma unroll
    for (int off = 1; off < 16; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <class D, int DMAX>
__device__ __forceinline__ void fb_attention_prefill(const typename D::T* __restrict__ q,
                                                     const typename D::T* __restrict__ k,
                                                     const typename D::T* __restrict__ v,
                                                     typename D::T* __restrict__ o, int B, int Hq,
                                                     int Hkv, int S, int d, float scale) {
    enum { NC = DMAX / 16 };                            // O columns per thread: tx + 16c
    __shared__ FbAttQK sm;                                              // q, k staging
    __shared__ alignas(16) float Ps[FB_ATT_BM][FB_ATT_BM + FB_ATT_PAD];   // weights, [row][key]
    __shared__ alignas(16) float Vs[FB_ATT_TK][DMAX];                   // V rows, [key][dim]
    const auto [tid, tx, ty, ntiles, qt, q0] = fb_att_block(S);

    for (int bh = blockIdx.y; bh < B * Hq; bh += gridDim.y) {   // block-uniform
        const long long kv_off = fb_kv_head_offset(bh, Hq, Hkv, S, d);
        const typename D::T* qh = q + (long long)bh * S * d;
        const typename D::T* kh = k + kv_off;
        const typename D::T* vh = v + kv_off;

        float m[4], l[4], acc[4][NC], s[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            m[i] = -FB_ATT_INF;
            l[i] = 0.f;
#pragma unroll
            for (int c = 0; c < NC; ++c) acc[i][c] = 0.f;
        }

        for (int kt = 0; kt <= qt; ++kt) {              // causal: tiles above the diagonal skipped
            const int k0 = kt * FB_ATT_BM;
            fb_logit_tile<D>(qh, kh, S, d, q0, k0, scale, sm, s);   // its barriers also end
                                                                    // the last tile's reads of Ps, Vs
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float mx = fb_row_max(fmaxf(fmaxf(s[i][0], s[i][1]), fmaxf(s[i][2], s[i][3])));
                const float mn = fmaxf(m[i], mx);
                const float base = mn == -FB_ATT_INF ? 0.f : mn;           // nothing visible yet
                const float corr = fb_exp_from(m[i], base);
                float t = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float w = fb_exp_from(s[i][j], base);
                    Ps[ty * 4 + i][tx * 4 + j] = w;
                    t += w;
                }
                l[i] = l[i] * corr + t;
                m[i] = mn;
#pragma unroll
                for (int c = 0; c < NC; ++c) acc[i][c] *= corr;
            }

            for (int kc = 0; kc < FB_ATT_BM && k0 + kc < S; kc += FB_ATT_TK) {   // block-uniform
                __syncthreads();                        // Ps written; the last V step consumed
                for (int e = tid; e < FB_ATT_TK * DMAX; e += FB_ATT_THREADS) {
                    const int kk = e / DMAX, col = e % DMAX, key = k0 + kc + kk;
                    Vs[kk][col] = (key < S && col < d) ? D::load(vh, (long long)key * d + col) : 0.f;
                }
                __syncthreads();
#pragma unroll 4
                for (int kk = 0; kk < FB_ATT_TK; ++kk) {
                    float w[4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) w[i] = Ps[ty * 4 + i][kc + kk];
#pragma unroll
                    for (int c = 0; c < NC; ++c) {
                        const float vv = Vs[kk][tx + 16 * c];
#pragma unroll
                        for (int i = 0; i < 4; ++i) acc[i][c] += w[i] * vv;
                    }
                }
            }
        }

#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float total = fb_row_sum(l[i]);
            const int gi = q0 + ty * 4 + i;
            if (gi >= S) continue;
            typename D::T* orow = o + ((long long)bh * S + gi) * d;
#pragma unroll
            for (int c = 0; c < NC; ++c) {
                const int col = tx + 16 * c;
                if (col < d) D::store(orow, col, total == 0.f ? 0.f : acc[i][c] / total);
            }
        }
    }
}

#define FB_DEFINE_KERNEL(SUFFIX, D, DMAX)                                                            \
    extern "C" __global__ void __launch_bounds__(FB_ATT_THREADS) attention_prefill_d##DMAX##_##SUFFIX( \
        const D::T* __restrict__ q, const D::T* __restrict__ k, const D::T* __restrict__ v,          \
        D::T* __restrict__ o, int B, int Hq, int Hkv, int S, int d, float scale) {                   \
        fb_attention_prefill<D, DMAX>(q, k, v, o, B, Hq, Hkv, S, d, scale);                          \
    }
#define FB_DEFINE_KERNELS(SUFFIX, D)                                                                 \
    FB_DEFINE_KERNEL(SUFFIX, D, 64)                                                                  \
    FB_DEFINE_KERNEL(SUFFIX, D, 128)                                                                 \
    FB_DEFINE_KERNEL(SUFFIX, D, 256)

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
