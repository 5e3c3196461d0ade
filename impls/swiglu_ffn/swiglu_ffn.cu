// swiglu_ffn: y = (silu(x @ W_gate.T) * (x @ W_up.T)) @ W_down.T, float32 accumulation.
//
//   x: (M, H), W_gate, W_up: (I, H), W_down: (H, I), y: (M, H); row-major, contiguous.
//
// Decode with M = 1 (and the vec conditions below, H <= FB_ONCHIP_MAX_H) is one kernel whose
// activation never leaves shared memory (swiglu_ffn_onchip_*). Otherwise two kernels launched
// back to back on one stream, no host synchronisation between them: the (M, I) activation
// silu(g) * u goes through a float32 device scratch (not rounded to the storage dtype),
// written once and read back by the second kernel from L2. Either way the weights (3 I H
// elements) are each read once. Header-free; one set of kernels per storage dtype:
//
//   swiglu_ffn_onchip_{f32,f16,bf16}      decode, M = 1: grid (G), FB_ONCHIP_THREADS threads.
//        The activation is cut into units of FB_ONCHIP_UNIT entries; block b owns units
//        [b U / G, (b + 1) U / G) of the U = ceil(I / UNIT) (at most FB_ONCHIP_MAX_UNITS),
//        i.e. entries [i0, i1). Phase 1: x into shared memory; warp w takes the (gate, up)
//        row pairs i0 + w, i0 + w + WARPS, ... -> act_s[i - i0] = silu(g) * u, in shared
//        memory only. Phase 2: the block's share of y, W_down[:, i0:i1] @ act_s, one 16-byte
//        load per lane (LPR lanes per W_down row: 16 for 16-bit types, 32 for float32), each
//        row's sum added with atomicAdd to a float32 accumulator acc (H floats). Phase 3: the
//        last block to take a ticket rounds acc into y once, and leaves acc and the ticket at
//        zero for the next call (both zeroed once when allocated). The float32 sums of
//        different blocks meet in the order they arrive: y may differ between runs by float32
//        rounding, never by more.
//   swiglu_ffn_gemv_up_{f32,f16,bf16}     decode (M <= 8): gate/up GEMV + silu * up into the
//        float32 scratch; grid (ceil(I/8), min(M, 65535)), 256 threads, one (gate, up) row
//        pair per warp (as gemm_swiglu_gemv).
//   swiglu_ffn_gemv_down_{f32,f16,bf16}   decode: act @ W_down.T; grid (ceil(ceil(H/2)/8),
//        min(M, 65535)), 256 threads, one pair of consecutive W_down rows per warp, the
//        float32 activation row in shared memory (4096 floats at a time).
//   swiglu_ffn_tiled_up_{f32,f16,bf16}    prefill: gemm_swiglu's tiled kernel (64 rows x 32
//        (gate, up) pairs per block) into the float32 scratch.
//   swiglu_ffn_tiled_down_{f32,f16,bf16}  prefill: 64 rows x 64 columns of y per block from
//        the float32 scratch and W_down (tile columns = 32 pairs of consecutive W_down rows).
//
// `vec` (up kernels): H % VEC == 0 and x, W_gate, W_up 16-byte aligned. `vec` (down
// kernels): I % VEC == 0 and W_down 16-byte aligned (the scratch always is). The onchip
// kernel has no scalar path: it is launched only where both hold.
//@fusebench-splice fb_prelude.cuh

//@fusebench-splice fb_pair_gemm.cuh

//@fusebench-splice fb_swiglu_pairs.cuh

#define FB_ONCHIP_THREADS 512
#define FB_ONCHIP_WARPS (FB_ONCHIP_THREADS / 32)
#define FB_ONCHIP_UNIT 16          // activation entries: 32 bytes of a 16-bit W_down row
#define FB_ONCHIP_MAX_UNITS 8      // per block: act_s holds 128 floats
#define FB_ONCHIP_MAX_H 8192       // x in shared memory: 32 KiB
#define FB_ONCHIP_ROWS 4           // W_down loads in flight per lane

template <class D>
__device__ __forceinline__ void fb_swiglu_ffn_onchip(const typename D::T* __restrict__ x,
                                                     const typename D::T* __restrict__ wg,
                                                     const typename D::T* __restrict__ wu,
                                                     const typename D::T* __restrict__ wd,
                                                     typename D::T* __restrict__ y, float* __restrict__ acc,
                                                     unsigned int* __restrict__ ticket, int H, int I) {
    enum { VEC = D::VEC, LPR = (D::VEC == 8 ? 16 : 32), RPW = 32 / LPR };
    __shared__ alignas(16) float xs[FB_ONCHIP_MAX_H];
    __shared__ alignas(16) float act_s[FB_ONCHIP_UNIT * FB_ONCHIP_MAX_UNITS];
    __shared__ int last;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int U = (I + FB_ONCHIP_UNIT - 1) / FB_ONCHIP_UNIT;
    const int u0 = (int)((long long)blockIdx.x * U / gridDim.x);
    const int u1 = (int)((long long)(blockIdx.x + 1) * U / gridDim.x);
    const int i0 = u0 * FB_ONCHIP_UNIT;
    const int n = min(u1 * FB_ONCHIP_UNIT, I) - i0;      // 1 <= n <= 128, n % VEC == 0

    // phase 1: this block's activations, in shared memory only
    for (int h = tid; h < H; h += FB_ONCHIP_THREADS) xs[h] = D::load(x, h);
    __syncthreads();
    for (int j = warp; j < n; j += FB_ONCHIP_WARPS) {    // warp-uniform
        float g = 0.f, u = 0.f;
        fb_pair_dot_vec<D>(xs, wg + (long long)(i0 + j) * H, wu + (long long)(i0 + j) * H, H, lane, g, u);
        g = fb_warp_sum(g);
        u = fb_warp_sum(u);
        if (lane == 0) act_s[j] = g / (1.0f + expf(-g)) * u;   // silu as the chain computes it
    }
    __syncthreads();

    // phase 2: y[h] += W_down[h, i0:i0+n] . act_s, LPR lanes per row, RPW rows per warp step
    const int sub = lane % LPR, grp = lane / LPR;
    const bool on = sub < n / VEC;
    float a[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) a[e] = on ? act_s[sub * VEC + e] : 0.f;
    const long long col = (long long)i0 + sub * VEC;
    for (int hb = warp * RPW * FB_ONCHIP_ROWS; hb < H; hb += FB_ONCHIP_WARPS * RPW * FB_ONCHIP_ROWS) {  // warp-uniform
        fb_vec16 v[FB_ONCHIP_ROWS];
#pragma unroll
        for (int r = 0; r < FB_ONCHIP_ROWS; ++r) {       // the loads first, then the sums
            const int h = hb + r * RPW + grp;
            if (on && h < H) v[r] = *reinterpret_cast<const fb_vec16*>(wd + (long long)h * I + col);
            else v[r].a = v[r].b = v[r].c = v[r].d = 0u;   // zero bits: 0.0 in every storage type
        }
#pragma unroll
        for (int r = 0; r < FB_ONCHIP_ROWS; ++r) {
            float f[VEC];
            D::unpack(v[r], f);
            float p = 0.f;
#pragma unroll
            for (int e = 0; e < VEC; ++e) p += f[e] * a[e];
#pragma unroll
            for (int off = LPR / 2; off > 0; off >>= 1) p += __shfl_xor_sync(0xffffffffu, p, off);
            const int h = hb + r * RPW + grp;
            if (sub == 0 && h < H) atomicAdd(acc + h, p);
        }
    }

    // phase 3: the last block rounds y once and leaves acc and the ticket zeroed
    __threadfence();                                     // this thread's atomics before the ticket
    __syncthreads();
    if (tid == 0) last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int h = tid; h < H; h += FB_ONCHIP_THREADS) {
        D::store(y, h, __ldcg(acc + h));
        acc[h] = 0.f;
    }
    if (tid == 0) *ticket = 0u;
}

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                               \
    FB_PLAIN_PAIR_KERNELS(swiglu_ffn_gemv_up_##SUFFIX, swiglu_ffn_tiled_up_##SUFFIX,               \
        (const D::T* __restrict__ x, const D::T* __restrict__ wg, const D::T* __restrict__ wu,    \
         float* __restrict__ act, int M, int H, int I, int vec),                                  \
        D, D, x, H, I, (FbSwigluPairs<D, FbF32>{wg, wu, act, H, I}))                              \
    FB_PLAIN_PAIR_KERNELS(swiglu_ffn_gemv_down_##SUFFIX, swiglu_ffn_tiled_down_##SUFFIX,           \
        (const float* __restrict__ act, const D::T* __restrict__ wd, D::T* __restrict__ y,        \
         int M, int I, int H, int vec),                                                           \
        D, FbF32, act, I, (H + 1) / 2, (FbRowPairs<D>{wd, y, I, H}))                              \
    extern "C" __global__ void __launch_bounds__(FB_ONCHIP_THREADS) swiglu_ffn_onchip_##SUFFIX(   \
        const D::T* __restrict__ x, const D::T* __restrict__ wg, const D::T* __restrict__ wu,     \
        const D::T* __restrict__ wd, D::T* __restrict__ y, float* __restrict__ acc,               \
        unsigned int* __restrict__ ticket, int H, int I) {                                        \
        fb_swiglu_ffn_onchip<D>(x, wg, wu, wd, y, acc, ticket, H, I);                             \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
