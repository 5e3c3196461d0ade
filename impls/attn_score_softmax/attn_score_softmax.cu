// attn_score_softmax: P = softmax(scale * q k^T + causal mask) over the key axis, one kernel.
//
//   q: (B, Hq, S, d), k: (B, Hkv, S, d), p: (B, Hq, S, S); row-major and contiguous.
//   q head h reads kv head h / (Hq / Hkv). float32 logits, maxima and sums; P rounded once.
//
// attn_score_softmax_{f32,f16,bf16}: grid (ceil(S/64), min(B*Hq, 65535)), 256 threads. A
// block owns 64 query rows of one (batch, head) (blocks loop over heads beyond grid.y; the
// x index is reversed so that the longest rows, the bottom of the triangle, start first)
// and walks the key axis in 64-key tiles twice:
//   pass 1: the tiles left of and on the diagonal, kt <= qt. Each is a 64x64 logit tile
//           computed in registers (16x16 threads, 4 rows x 4 keys each; q and k staged
//           through shared memory 16 head dims at a time). Each thread keeps a running
//           maximum and sum for its 4 rows over its own keys; at the end the 16 threads of a
//           row merge theirs with shuffles (m, l) -> (max, l * e^(m - max) summed).
//   pass 2: the same tiles recomputed and exp(s - max) / sum written; the tiles right of
//           the diagonal are written as zeros without any arithmetic.
// The logits are never stored and nothing of length S is held on chip, so any S works.
// An element of P is written by exactly one thread of one block.
//@fusebench-splice fb_prelude.cuh

#define FB_AT_THREADS 256
#define FB_AT_BM 64        // query rows per block; also keys per tile (the tiles are square)
#define FB_AT_TK 16        // head dims per shared-memory step
#define FB_AT_PAD 4        // keeps rows 16-byte aligned, spreads banks
#define FB_AT_MAX_GRID_Y 65535

#define FB_AT_INF __int_as_float(0x7f800000)

// e^(a - mx), 0 for a = -inf (a masked logit, or the empty running maximum).
__device__ __forceinline__ float fb_exp_from(float a, float mx) {
    return a == -FB_AT_INF ? 0.f : expf(a - mx);
}

// The 64x64 tile of logits scale * q[q0 + r] . k[k0 + c], causal mask applied (-inf where
// key > query or key >= S). qh, kh: one head's (S, d) matrices. Thread (ty, tx) gets rows
// q0 + ty*4 + i, keys k0 + tx*4 + j in s[i][j]. Every thread calls it (it has barriers).
template <class D>
__device__ __forceinline__ void fb_logit_tile(const typename D::T* __restrict__ qh,
                                              const typename D::T* __restrict__ kh, int S, int d,
                                              int q0, int k0, float scale,
                                              float (*Qs)[FB_AT_BM + FB_AT_PAD],
                                              float (*Ks)[FB_AT_BM + FB_AT_PAD], float s[4][4]) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    for (int d0 = 0; d0 < d; d0 += FB_AT_TK) {         // block-uniform
        __syncthreads();                                // the last step's tiles are consumed
        for (int e = tid; e < FB_AT_BM * FB_AT_TK; e += FB_AT_THREADS) {
            const int r = e / FB_AT_TK, kk = e % FB_AT_TK, gd = d0 + kk;
            Qs[kk][r] = (q0 + r < S && gd < d) ? D::load(qh, (long long)(q0 + r) * d + gd) : 0.f;
            Ks[kk][r] = (k0 + r < S && gd < d) ? D::load(kh, (long long)(k0 + r) * d + gd) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FB_AT_TK; ++kk) {
            const fb_f4 ta = *reinterpret_cast<const fb_f4*>(&Qs[kk][ty * 4]);
            const fb_f4 tb = *reinterpret_cast<const fb_f4*>(&Ks[kk][tx * 4]);
            const float a[4] = {ta.x, ta.y, ta.z, ta.w};
            const float b[4] = {tb.x, tb.y, tb.z, tb.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int gi = q0 + ty * 4 + i, gj = k0 + tx * 4 + j;
            s[i][j] = (gj > gi || gj >= S) ? -FB_AT_INF : acc[i][j] * scale;
        }
}

template <class D>
__device__ __forceinline__ void fb_attn_score_softmax(const typename D::T* __restrict__ q,
                                                      const typename D::T* __restrict__ k,
                                                      typename D::T* __restrict__ p, int B, int Hq,
                                                      int Hkv, int S, int d, float scale) {
    __shared__ alignas(16) float Qs[FB_AT_TK][FB_AT_BM + FB_AT_PAD];
    __shared__ alignas(16) float Ks[FB_AT_TK][FB_AT_BM + FB_AT_PAD];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int ntiles = (S + FB_AT_BM - 1) / FB_AT_BM;
    const int qt = ntiles - 1 - blockIdx.x;             // longest rows first
    const int q0 = qt * FB_AT_BM;
    const int g = Hq / Hkv;

    for (int bh = blockIdx.y; bh < B * Hq; bh += gridDim.y) {   // block-uniform
        const int b = bh / Hq, h = bh - b * Hq;
        const typename D::T* qh = q + (long long)bh * S * d;
        const typename D::T* kh = k + ((long long)b * Hkv + h / g) * S * d;
        typename D::T* ph = p + (long long)bh * S * S;

        // pass 1: running maximum and sum per row, over this thread's keys
        float m[4], l[4], s[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) { m[i] = -FB_AT_INF; l[i] = 0.f; }
        for (int kt = 0; kt <= qt; ++kt) {
            fb_logit_tile<D>(qh, kh, S, d, q0, kt * FB_AT_BM, scale, Qs, Ks, s);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float mn = fmaxf(m[i], fmaxf(fmaxf(s[i][0], s[i][1]), fmaxf(s[i][2], s[i][3])));
                if (mn == -FB_AT_INF) continue;          // nothing visible yet
                float t = l[i] * fb_exp_from(m[i], mn);
#pragma unroll
                for (int j = 0; j < 4; ++j) t += fb_exp_from(s[i][j], mn);
                l[i] = t;
                m[i] = mn;
            }
        }
        // merge the 16 threads of each row (lanes tx = 0..15 of one half-warp)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int off = 1; off < 16; off <<= 1) {
                const float mo = __shfl_xor_sync(0xffffffffu, m[i], off);
                const float lo = __shfl_xor_sync(0xffffffffu, l[i], off);
                const float mn = fmaxf(m[i], mo);
                l[i] = l[i] * fb_exp_from(m[i], mn) + lo * fb_exp_from(mo, mn);
                m[i] = mn;
            }
        }

        // pass 2: normalised weights left of and on the diagonal, zeros right of it
        for (int kt = 0; kt < ntiles; ++kt) {            // block-uniform
            const bool visible = kt <= qt;
            if (visible) fb_logit_tile<D>(qh, kh, S, d, q0, kt * FB_AT_BM, scale, Qs, Ks, s);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int gi = q0 + ty * 4 + i;
                if (gi >= S) continue;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int gj = kt * FB_AT_BM + tx * 4 + j;
                    if (gj >= S) continue;
                    const float w = (visible && l[i] != 0.f) ? fb_exp_from(s[i][j], m[i]) / l[i] : 0.f;
                    D::store(ph, (long long)gi * S + gj, w);
                }
            }
        }
    }
}

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                                 \
    extern "C" __global__ void __launch_bounds__(FB_AT_THREADS) attn_score_softmax_##SUFFIX(       \
        const D::T* __restrict__ q, const D::T* __restrict__ k, D::T* __restrict__ p, int B,        \
        int Hq, int Hkv, int S, int d, float scale) {                                               \
        fb_attn_score_softmax<D>(q, k, p, B, Hq, Hkv, S, d, scale);                                 \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
