// Shared by attention_prefill.cu and attn_score_softmax.cu (spliced after fb_prelude.cuh):
// the 64x64 causal logit tile both kernels are built on, its launch constants, and where a
// block of either kernel stands (its query tile, the kv head of each (batch, head) it owns).

#define FB_ATT_THREADS 256
#define FB_ATT_BM 64        // query rows per block; also keys per tile (the tiles are square)
#define FB_ATT_TK 16        // head dims per shared-memory step of the logits (prefill: keys per V step)
#define FB_ATT_PAD 4        // keeps rows 16-byte aligned, spreads banks
#define FB_ATT_MAX_GRID_Y 65535

#define FB_ATT_INF __int_as_float(0x7f800000)

// The query tile of this block and this thread's place in it. Thread (ty, tx) = (tid / 16,
// tid % 16) of the 16x16 grid; the x index is reversed, qt = ntiles - 1 - blockIdx.x, so that
// the longest causal rows (the bottom of the triangle) start first; q0 is the tile's first row.
struct FbAttBlock {
    int tid, tx, ty, ntiles, qt, q0;
};

__device__ __forceinline__ FbAttBlock fb_att_block(int S) {
    const int tid = threadIdx.x, ntiles = (S + FB_ATT_BM - 1) / FB_ATT_BM;
    const int qt = ntiles - 1 - blockIdx.x;
    return {tid, tid & 15, tid >> 4, ntiles, qt, qt * FB_ATT_BM};
}

// Offset of the (S, d) kv head read by (batch, q head) bh = b * Hq + h: kv head h / (Hq / Hkv)
// of batch b. (The q head's own offset is bh * S * d.)
__device__ __forceinline__ long long fb_kv_head_offset(int bh, int Hq, int Hkv, int S, int d) {
    const int b = bh / Hq, h = bh - b * Hq;
    return ((long long)b * Hkv + h / (Hq / Hkv)) * S * d;
}

// fb_logit_tile's shared memory: q and k, FB_ATT_TK head dims x 64 rows each ([dim][row]).
struct FbAttQK {
    alignas(16) float q[FB_ATT_TK][FB_ATT_BM + FB_ATT_PAD];
    alignas(16) float k[FB_ATT_TK][FB_ATT_BM + FB_ATT_PAD];
};

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
                                              int q0, int k0, float scale, FbAttQK& sm,
                                              float s[4][4]) {
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
            sm.q[kk][r] = (q0 + r < S && gd < d) ? D::load(qh, (long long)(q0 + r) * d + gd) : 0.f;
            sm.k[kk][r] = (k0 + r < S && gd < d) ? D::load(kh, (long long)(k0 + r) * d + gd) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FB_ATT_TK; ++kk) {
            const fb_f4 ta = *reinterpret_cast<const fb_f4*>(&sm.q[kk][ty * 4]);
            const fb_f4 tb = *reinterpret_cast<const fb_f4*>(&sm.k[kk][tx * 4]);
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
