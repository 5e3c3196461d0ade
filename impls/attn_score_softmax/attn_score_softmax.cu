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

//@fusebench-splice fb_attention_tile.cuh

template <class D>
__device__ __forceinline__ void fb_attn_score_softmax(const typename D::T* __restrict__ q,
                                                      const typename D::T* __restrict__ k,
                                                      typename D::T* __restrict__ p, int B, int Hq,
                                                      int Hkv, int S, int d, float scale) {
    __shared__ FbAttQK sm;
    const auto [tid, tx, ty, ntiles, qt, q0] = fb_att_block(S);

    for (int bh = blockIdx.y; bh < B * Hq; bh += gridDim.y) {   // block-uniform
        const typename D::T* qh = q + (long long)bh * S * d;
        const typename D::T* kh = k + fb_kv_head_offset(bh, Hq, Hkv, S, d);
        typename D::T* ph = p + (long long)bh * S * S;

        // pass 1: running maximum and sum per row, over this thread's keys
        float m[4], l[4], s[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) { m[i] = -FB_ATT_INF; l[i] = 0.f; }
        for (int kt = 0; kt <= qt; ++kt) {
            fb_logit_tile<D>(qh, kh, S, d, q0, kt * FB_ATT_BM, scale, sm, s);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float mn = fmaxf(m[i], fmaxf(fmaxf(s[i][0], s[i][1]), fmaxf(s[i][2], s[i][3])));
                if (mn == -FB_ATT_INF) continue;          // nothing visible yet
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
            if (visible) fb_logit_tile<D>(qh, kh, S, d, q0, kt * FB_ATT_BM, scale, sm, s);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int gi = q0 + ty * 4 + i;
                if (gi >= S) continue;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int gj = kt * FB_ATT_BM + tx * 4 + j;
                    if (gj >= S) continue;
                    const float w = (visible && l[i] != 0.f) ? fb_exp_from(s[i][j], m[i]) / l[i] : 0.f;
                    D::store(ph, (long long)gi * S + gj, w);
                }
            }
        }
    }
}

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                                 \
    extern "C" __global__ void __launch_bounds__(FB_ATT_THREADS) attn_score_softmax_##SUFFIX(       \
        const D::T* __restrict__ q, const D::T* __restrict__ k, D::T* __restrict__ p, int B,        \
        int Hq, int Hkv, int S, int d, float scale) {                                               \
        fb_attn_score_softmax<D>(q, k, p, B, Hq, Hkv, S, d, scale);                                 \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
