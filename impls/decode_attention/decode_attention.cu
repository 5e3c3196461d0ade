// decode_attention: o[b] = softmax(scale * q[b] k[b, :lens[b]]^T) v[b, :lens[b]].
//
//   q: (B, Hq, d), k, v: (B, Hkv, T, d), lens: (B,) int32, o: (B, Hq, d); row-major and
//   contiguous. q head h reads kv head h / g, g = Hq / Hkv. float32 dot products, softmax
//   state and accumulators. Cache rows t >= lens[b] are never read.
//
// decode_attention_split_g{1,2,4,8}_{f32,f16,bf16}: grid (nsplit, min(B*Hkv*nchunks, 65535)),
// 128 threads (4 warps). A block owns one (batch, kv head, chunk of G q heads) -- the g q
// heads of a kv head share every K/V load; g > 8 takes ceil(g/8) chunks -- and one split of
// the valid keys: split s of nsplit reads rows [s*c, min((s+1)*c, len)), c = ceil(len / nsplit).
//   lanes:  a key is read by a group of LPK lanes (a power of two <= 32), lane `sub` of the
//           group holding elements (c*LPK + sub)*VEC .. +VEC for chunks c < NCH (VEC = the
//           16-byte width: 4 floats or 8 halves; NCH = 256 / (32*VEC): 2 for f32, 1 else). A
//           warp reads KPW = 32 / LPK consecutive keys at a time (one contiguous stretch),
//           U = 4 / NCH such groups in flight per lane, the 4 warps take the groups in turn.
//   math:   each lane group keeps, per q head, a running max m, sum l and the d-slice of the
//           unnormalised output acc (online softmax, U keys per update); at the end the
//           groups of a warp merge with shuffles, the warps through shared memory.
//   output: nsplit = 1: o = acc / l directly (0 when l = 0, e.g. lens[b] = 0). nsplit > 1:
//           (m, l, acc) of the split go to float32 scratch pm, pl: (B*Hq, nsplit) and
//           pacc: (B*Hq, nsplit, d) (an empty split writes m = -inf, l = 0, acc = 0), and
// decode_attention_combine_{f32,f16,bf16}: grid min(B*Hq, 65535), 128 threads, one block per
// q head merges its nsplit partials: M = max m_s, o = sum acc_s e^(m_s - M) / sum l_s e^(m_s - M).
//
// `vec`: 1 when d is a multiple of VEC and q, k, v are 16-byte aligned: 16-byte loads;
// 0: the same layout read element by element.
//@fusebench-splice fb_prelude.cuh

#define FB_DA_THREADS 128
#define FB_DA_WARPS (FB_DA_THREADS / 32)
#define FB_DA_DMAX 256              // harness.attention.HEAD_DIM_LIMIT
#define FB_DA_GMAX 8                // q heads per block, at most
#define FB_DA_COMBINE_THREADS 128
#define FB_DA_MAX_GRID 65535

#define FB_DA_INF __int_as_float(0x7f800000)

// e^(a - mx), 0 for a = -inf (a masked logit, an empty running maximum or split).
__device__ __forceinline__ float fb_exp_from(float a, float mx) {
    return a == -FB_DA_INF ? 0.f : expf(a - mx);
}

// Up to VEC elements p[i .. i+n) as the 16 bytes a vector load of p + i would give (zeros past n).
template <class D>
__device__ __forceinline__ fb_vec16 fb_gather(const typename D::T* p, long long i, int n) {
    unsigned int w[4] = {0u, 0u, 0u, 0u};
    if constexpr (sizeof(typename D::T) == 4) {
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (e < n) w[e] = __float_as_uint(p[i + e]);
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e)
            if (e < n) w[e >> 1] |= (unsigned int)p[i + e] << (16 * (e & 1));
    }
    fb_vec16 v;
    v.a = w[0]; v.b = w[1]; v.c = w[2]; v.d = w[3];
    return v;
}

// The VEC elements of a row starting at element e0 (zeros past d); nothing is read past d.
template <class D>
__device__ __forceinline__ fb_vec16 fb_row_chunk(const typename D::T* row, int e0, int d, int vec) {
    if (e0 >= d) return fb_gather<D>(row, 0, 0);
    if (vec) return *reinterpret_cast<const fb_vec16*>(row + e0);   // d % VEC == 0: e0 + VEC <= d
    return fb_gather<D>(row, e0, min((int)D::VEC, d - e0));
}

// Lanes per key: the smallest power of two LPK with LPK * NCH * VEC >= d.
template <class D>
__device__ __forceinline__ int fb_lanes_per_key(int d) {
    enum { VEC = D::VEC, NCH = FB_DA_DMAX / (32 * D::VEC) };
    const int per = ((d + VEC - 1) / VEC + NCH - 1) / NCH;
    int lpk = 1;
    while (lpk < per) lpk <<= 1;
    return lpk;
}

template <class D, int G>
__device__ __forceinline__ void fb_decode_split(const typename D::T* __restrict__ q,
                                                const typename D::T* __restrict__ k,
                                                const typename D::T* __restrict__ v,
                                                const int* __restrict__ lens, typename D::T* __restrict__ o,
                                                float* __restrict__ pm, float* __restrict__ pl,
                                                float* __restrict__ pacc, int B, int Hq, int Hkv, int T,
                                                int d, float scale, int nsplit, int vec) {
    enum { VEC = D::VEC, NCH = FB_DA_DMAX / (32 * D::VEC), U = 4 / NCH };
    __shared__ float sm_m[FB_DA_WARPS][G], sm_l[FB_DA_WARPS][G];
    __shared__ float blk_m[G], blk_l[G];
    __shared__ alignas(16) float sacc[G][FB_DA_DMAX];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int lpk = fb_lanes_per_key<D>(d), kpw = 32 / lpk;
    const int slot = lane / lpk, sub = lane % lpk;
    const int g = Hq / Hkv, nchunks = (g + G - 1) / G;
    const int split = blockIdx.x;

    for (int row = blockIdx.y; row < B * Hkv * nchunks; row += gridDim.y) {   // block-uniform
        __syncthreads();                                 // the last row's shared reads are done
        const int hc = row % nchunks, bk = row / nchunks, b = bk / Hkv, kh = bk - b * Hkv;
        const int h0 = kh * g + hc * G;                  // first q head of this block
        const int gh = min(G, g - hc * G);               // q heads in this block
        const int len = min(max(lens[b], 0), T);
        const int per_split = (len + nsplit - 1) / nsplit;
        const int ts = min(len, split * per_split), te = min(len, ts + per_split);
        const typename D::T* kb = k + ((long long)b * Hkv + kh) * T * d;
        const typename D::T* vb = v + ((long long)b * Hkv + kh) * T * d;

        float qf[G][NCH][VEC], acc[G][NCH][VEC], m[G], l[G];
#pragma unroll
        for (int h = 0; h < G; ++h) {
            m[h] = -FB_DA_INF;
            l[h] = 0.f;
#pragma unroll
            for (int c = 0; c < NCH; ++c) {
                const fb_vec16 raw = h < gh ? fb_row_chunk<D>(q + ((long long)b * Hq + h0 + h) * d,
                                                              (c * lpk + sub) * VEC, d, vec)
                                            : fb_gather<D>(q, 0, 0);
                D::unpack(raw, qf[h][c]);
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[h][c][e] = 0.f;
            }
        }

        const int ngroups = (te - ts + kpw - 1) / kpw;   // groups of KPW consecutive keys
        for (int gi0 = warp; gi0 < ngroups; gi0 += FB_DA_WARPS * U) {   // warp-uniform
            fb_vec16 kr[U][NCH], vr[U][NCH];
            bool valid[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {                // all loads first: U*NCH*2 in flight
                const int t = ts + (gi0 + u * FB_DA_WARPS) * kpw + slot;
                valid[u] = t < te;
#pragma unroll
                for (int c = 0; c < NCH; ++c) {
                    const int e0 = (c * lpk + sub) * VEC;
                    kr[u][c] = valid[u] ? fb_row_chunk<D>(kb + (long long)t * d, e0, d, vec) : fb_gather<D>(kb, 0, 0);
                    vr[u][c] = valid[u] ? fb_row_chunk<D>(vb + (long long)t * d, e0, d, vec) : fb_gather<D>(vb, 0, 0);
                }
            }
            float s[U][G];                               // logits, then weights
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float kf[NCH][VEC];
#pragma unroll
                for (int c = 0; c < NCH; ++c) D::unpack(kr[u][c], kf[c]);
#pragma unroll
                for (int h = 0; h < G; ++h) {
                    float dot = 0.f;
#pragma unroll
                    for (int c = 0; c < NCH; ++c)
#pragma unroll
                        for (int e = 0; e < VEC; ++e) dot += qf[h][c][e] * kf[c][e];
                    for (int off = lpk >> 1; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
                    s[u][h] = valid[u] ? dot * scale : -FB_DA_INF;
                }
            }
#pragma unroll
            for (int h = 0; h < G; ++h) {                // online softmax, U keys per update
                float mx = s[0][h];
#pragma unroll
                for (int u = 1; u < U; ++u) mx = fmaxf(mx, s[u][h]);
                const float mn = fmaxf(m[h], mx);
                const float base = mn == -FB_DA_INF ? 0.f : mn;
                const float corr = fb_exp_from(m[h], base);
                float t = l[h] * corr;
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    s[u][h] = fb_exp_from(s[u][h], base);
                    t += s[u][h];
                }
                l[h] = t;
                m[h] = mn;
#pragma unroll
                for (int c = 0; c < NCH; ++c)
#pragma unroll
                    for (int e = 0; e < VEC; ++e) acc[h][c][e] *= corr;
            }
#pragma unroll
            for (int u = 0; u < U; ++u)
#pragma unroll
                for (int c = 0; c < NCH; ++c) {
                    float vf[VEC];
                    D::unpack(vr[u][c], vf);
#pragma unroll
                    for (int h = 0; h < G; ++h)
#pragma unroll
                        for (int e = 0; e < VEC; ++e) acc[h][c][e] += s[u][h] * vf[e];
                }
        }

        // merge the KPW lane groups of the warp (lanes with the same `sub` hold the same elements)
        for (int off = lpk; off < 32; off <<= 1) {       // warp-uniform
#pragma unroll
            for (int h = 0; h < G; ++h) {
                const float mo = __shfl_xor_sync(0xffffffffu, m[h], off);
                const float lo = __shfl_xor_sync(0xffffffffu, l[h], off);
                const float mn = fmaxf(m[h], mo);
                const float fa = fb_exp_from(m[h], mn), fb = fb_exp_from(mo, mn);
                l[h] = l[h] * fa + lo * fb;
                m[h] = mn;
#pragma unroll
                for (int c = 0; c < NCH; ++c)
#pragma unroll
                    for (int e = 0; e < VEC; ++e)
                        acc[h][c][e] = acc[h][c][e] * fa + __shfl_xor_sync(0xffffffffu, acc[h][c][e], off) * fb;
            }
        }

        // merge the warps: block maximum and sum per head, then acc rescaled and added in warp order
        if (lane == 0) {
#pragma unroll
            for (int h = 0; h < G; ++h) { sm_m[warp][h] = m[h]; sm_l[warp][h] = l[h]; }
        }
        __syncthreads();
        if (tid < G) {
            float M = -FB_DA_INF, L = 0.f;
            for (int w = 0; w < FB_DA_WARPS; ++w) M = fmaxf(M, sm_m[w][tid]);
            for (int w = 0; w < FB_DA_WARPS; ++w) L += sm_l[w][tid] * fb_exp_from(sm_m[w][tid], M);
            blk_m[tid] = M;
            blk_l[tid] = L;
        }
        __syncthreads();
        for (int w = 0; w < FB_DA_WARPS; ++w) {          // block-uniform
            if (warp == w && slot == 0) {
#pragma unroll
                for (int h = 0; h < G; ++h) {
                    const float f = fb_exp_from(m[h], blk_m[h]);
#pragma unroll
                    for (int c = 0; c < NCH; ++c)
#pragma unroll
                        for (int e = 0; e < VEC; ++e) {
                            const int col = (c * lpk + sub) * VEC + e;
                            if (h < gh && col < d)
                                sacc[h][col] = (w == 0 ? 0.f : sacc[h][col]) + acc[h][c][e] * f;
                        }
                }
            }
            __syncthreads();
        }

        for (int i = tid; i < gh * d; i += FB_DA_THREADS) {
            const int h = i / d, col = i - h * d;
            const long long bh = (long long)b * Hq + h0 + h;
            if (nsplit == 1) {
                const float L = blk_l[h];
                D::store(o, bh * d + col, L == 0.f ? 0.f : sacc[h][col] / L);
            } else {
                pacc[(bh * nsplit + split) * d + col] = sacc[h][col];
            }
        }
        if (nsplit > 1 && tid < gh) {
            const long long bh = (long long)b * Hq + h0 + tid;
            pm[bh * nsplit + split] = blk_m[tid];
            pl[bh * nsplit + split] = blk_l[tid];
        }
    }
}

// One block per q head (blocks loop beyond the grid): merge its nsplit partials.
template <class D>
__device__ __forceinline__ void fb_decode_combine(const float* __restrict__ pm, const float* __restrict__ pl,
                                                  const float* __restrict__ pacc, typename D::T* __restrict__ o,
                                                  int rows, int nsplit, int d) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* rm = pm + (long long)r * nsplit;
        const float* rl = pl + (long long)r * nsplit;
        float M = -FB_DA_INF;
        for (int s = 0; s < nsplit; ++s) M = fmaxf(M, rm[s]);
        float L = 0.f;
        for (int s = 0; s < nsplit; ++s) L += rl[s] * fb_exp_from(rm[s], M);
        for (int col = threadIdx.x; col < d; col += FB_DA_COMBINE_THREADS) {
            float a = 0.f;
            for (int s = 0; s < nsplit; ++s) a += pacc[((long long)r * nsplit + s) * d + col] * fb_exp_from(rm[s], M);
            D::store(o, (long long)r * d + col, L == 0.f ? 0.f : a / L);
        }
    }
}

#define FB_DEFINE_SPLIT(SUFFIX, D, G)                                                                \
    extern "C" __global__ void __launch_bounds__(FB_DA_THREADS) decode_attention_split_g##G##_##SUFFIX( \
        const D::T* __restrict__ q, const D::T* __restrict__ k, const D::T* __restrict__ v,          \
        const int* __restrict__ lens, D::T* __restrict__ o, float* __restrict__ pm,                  \
        float* __restrict__ pl, float* __restrict__ pacc, int B, int Hq, int Hkv, int T, int d,      \
        float scale, int nsplit, int vec) {                                                         \
        fb_decode_split<D, G>(q, k, v, lens, o, pm, pl, pacc, B, Hq, Hkv, T, d, scale, nsplit, vec); \
    }
#define FB_DEFINE_KERNELS(SUFFIX, D)                                                                 \
    FB_DEFINE_SPLIT(SUFFIX, D, 1)                                                                    \
    FB_DEFINE_SPLIT(SUFFIX, D, 2)                                                                    \
    FB_DEFINE_SPLIT(SUFFIX, D, 4)                                                                    \
    FB_DEFINE_SPLIT(SUFFIX, D, 8)                                                                    \
    extern "C" __global__ void __launch_bounds__(FB_DA_COMBINE_THREADS) decode_attention_combine_##SUFFIX( \
        const float* __restrict__ pm, const float* __restrict__ pl, const float* __restrict__ pacc,  \
        D::T* __restrict__ o, int rows, int nsplit, int d) {                                         \
        fb_decode_combine<D>(pm, pl, pacc, o, rows, nsplit, d);                                      \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
