// Shared by attention_prefill.cu and attn_score_softmax.cu (spliced after fb_prelude.cuh):
// the 64x64 causal logit tile both kernels are built on, and its launch constants.

#define FB_ATT_THREADS 256
#define FB_ATT_BM 64        // query rows per block; also keys per tile (the tiles are square)
#define FB_ATT_TK 16        // head dims per shared-memory step of the logits (prefill: keys per V step)
#define FB_ATT_PAD 4        // keeps rows 16-byte aligned, spreads banks
#define FB_ATT_MAX_GRID_Y 65535

#define FB_ATT_INF __int_as_float(0x7f800000)

// e^(a - mx), 0 for a = -inf (a masked logit, or the empty running maximum).
__device__ __forceinline__ float fb_exp_from(float a, float mx) {
    return a == -FB_ATT_INF ? 0.f : expf(a - mx);
}

// The 64x64 tile of logits scale * q[q0 + r] . k[k0 + c], causal mask applied (-inf where
// key > query or key >= S). qh, kh: one head's (S, d) matrices. Thread (ty, tx) gets rows
// q0 + ty*4 + i, keys k0 + tx*4 + j in s[i][j]. Every thread calls it (it has barriers).
template <class D>
__device__ __forceinline__ void fb_logit_tile(const typename D::T* __restrict__ qh,
                                              const typename D::T* __restrict__ kh, int S, int d,
                                              int q0, int k0, float scale,
                                              float (*Qs)[FB_ATT_BM + FB_ATT_PAD],
                                              float (*Ks)[FB_ATT_BM + FB_ATT_PAD], float s[4][4]) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    for (int d0 = 0; d0 < d; d0 += FB_ATT_TK) {         // block-uniform
        __syncthreads();                                // the last step's tiles are consumed
        for (int e = tid; e < FB_ATT_BM * FB_ATT_TK; e += FB_ATT_THREADS) {
            const int r = e / FB_ATT_TK, kk = e % FB_ATT_TK, gd = d0 + kk;
            Qs[kk][r] = (q0 + r < S && gd < d) ? D::load(qh, (long long)(q0 + r) * d + gd) : 0.f;
            Ks[kk][r] = (k0 + r < S && gd < d) ? D::load(kh, (long long)(k0 + r) * d + gd) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FB_ATT_TK; ++kk) {
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
            s[i][j] = (gj > gi || gj >= S) ? -FB_ATT_INF : acc[i][j] * scale;
        }
}
