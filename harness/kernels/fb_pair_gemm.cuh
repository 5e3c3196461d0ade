// ---- fusebench pair GEMV / pair tiled GEMM templates (needs fb_prelude.cuh first) ----
// ---- pair GEMV (decode): each warp owns one pair of W rows for one row m of the input -----
// XS (the input vector): scale(m, red) -> a block-uniform row scale (may use barriers; all
// threads call it), fill(xs, m, c0, L, s) -> xs[0..L) = input[m, c0..c0+L) as floats (each
// thread writes i = tid, tid + THREADS, ...). PR (the pairs): row(p, which) -> the start of
// W row `which` (0 or 1) of pair p, K elements; store(m, p, a0, a1) -> the epilogue.
#define FB_GEMV_THREADS 256
#define FB_GEMV_WARPS (FB_GEMV_THREADS / 32)
#define FB_GEMV_PAIRS_PER_BLOCK 8                        // one pair per warp
#define FB_GEMV_CHUNK 4096                               // floats of the input row in shared memory

// One warp's share of two dot products over L shared-memory floats xs[0..L) against W rows
// w0 and w1 (L % VEC == 0, both rows 16-byte aligned): lane takes vectors lane, lane + 32, ...
// and adds its partial sums to acc0 and acc1 (the caller sums over the warp).
template <class D>
__device__ __forceinline__ void fb_pair_dot_vec(const float* xs, const typename D::T* w0, const typename D::T* w1,
                                                int L, int lane, float& acc0, float& acc1) {
    enum { VEC = D::VEC };
    const fb_f4* xs4 = reinterpret_cast<const fb_f4*>(xs);
    const int nv = L / VEC;
#pragma unroll 2
    for (int j = lane; j < nv; j += 32) {
        float xv[VEC];
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) {
            const fb_f4 t = xs4[j * (VEC / 4) + q];
            xv[4 * q] = t.x; xv[4 * q + 1] = t.y; xv[4 * q + 2] = t.z; xv[4 * q + 3] = t.w;
        }
        const fb_vec16 v0 = reinterpret_cast<const fb_vec16*>(w0)[j];
        const fb_vec16 v1 = reinterpret_cast<const fb_vec16*>(w1)[j];
        float f0[VEC], f1[VEC];
        D::unpack(v0, f0);
        D::unpack(v1, f1);
        float a0 = 0.f, a1 = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) { a0 += f0[e] * xv[e]; a1 += f1[e] * xv[e]; }
        acc0 += a0;
        acc1 += a1;
    }
}

template <class D, class XS, class PR>
__device__ __forceinline__ void fb_pair_gemv(const XS& xsrc, const PR& pr, int M, int K, int npairs, int vec) {
    typedef typename D::T T;
    enum { VEC = D::VEC };
    __shared__ alignas(16) float xs[FB_GEMV_CHUNK];
    __shared__ float red[FB_GEMV_WARPS];
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
                fb_pair_dot_vec<D>(xs, w0 + c0, w1 + c0, L, lane, acc0, acc1);
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

            fb_tile_step<FB_TK>(As, Ws, ty, tx, acc);
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

// ---- pairs ------------------------------------------------------------------------------
// The W rows of a plain GEMM y = a @ W.T (W: (N, K), y: (M, N) in storage type D) taken two
// at a time: pair p is rows 2p and 2p + 1, (N + 1) / 2 pairs; for an odd N the last pair
// reads row N - 1 twice and stores one output.
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

// ---- kernels ----------------------------------------------------------------------------
// Both kernels of a stage whose input is a plain (M, K) matrix X of dtype DX: GEMV_NAME
// (decode: fb_pair_gemv over FbPlainRow) and TILED_NAME (prefill: fb_pair_tiled over
// FbPlainA), with the same parameter list PARAMS (parenthesised; it names M and vec) and
// the NPAIRS pairs PAIRS (an expression, parenthesised) of the weights' dtype D.
#define FB_PLAIN_PAIR_KERNELS(GEMV_NAME, TILED_NAME, PARAMS, D, DX, X, K, NPAIRS, PAIRS)           \
    extern "C" __global__ void __launch_bounds__(FB_GEMV_THREADS) GEMV_NAME PARAMS {               \
        const FbPlainRow<DX> xs = {X, K};                                                         \
        const auto pr = PAIRS;                                                                    \
        fb_pair_gemv<D>(xs, pr, M, K, NPAIRS, vec);                                               \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(FB_TILED_THREADS) TILED_NAME PARAMS {             \
        const FbPlainA<DX, D::VEC> as = {X, K};                                                   \
        const auto pr = PAIRS;                                                                    \
        fb_pair_tiled<D>(as, pr, M, K, NPAIRS, vec);                                              \
    }
