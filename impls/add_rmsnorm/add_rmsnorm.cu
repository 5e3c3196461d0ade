// add_rmsnorm: h = x + residual; y = h * rsqrt(mean(h^2) + eps) * gamma, float32 math.
//
//   x, residual, h, y: (M, H), gamma: (H,), all row-major and contiguous.
//
// Header-free (compiles the same under nvcc, NVRTC and CuPy's RawModule); 16-bit storage
// travels as `unsigned short` bit patterns, float16 converted with PTX `cvt`, bfloat16 with
// bit operations (round to nearest even). One kernel per storage dtype:
//
//   add_rmsnorm_{f32,f16,bf16}   grid min(M, 65535) (blocks loop over rows), 256 threads,
//                                dynamic shared memory H floats when `cache`, else none (the
//                                launch plan in cuda.py decides: while the row leaves two
//                                blocks resident per multiprocessor, opting in above 48 KiB).
//                                Pass 1 reads x and residual once (16-byte loads when `vec`),
//                                forms h in float32, writes h, keeps the float32 h in shared
//                                memory and sums h^2; a block reduction gives the inverse RMS;
//                                pass 2 reads h back from shared memory (each thread only the
//                                slots it wrote itself, so no barrier is needed between rows)
//                                and writes y. Without `cache` (very wide rows) pass 2
//                                recomputes h = x + residual from global memory (an L2 hit
//                                when the rows in flight fit in L2), which gives the same value.
//                                Static shared memory: red[FB_ADD_WARPS] floats (32 bytes).
//
// y is computed from the float32 h, not from h rounded to the storage dtype: one rounding
// per output.
//@fusebench-splice fb_prelude.cuh

#define FB_ADD_THREADS 256
#define FB_ADD_WARPS (FB_ADD_THREADS / 32)

template <class D>
__device__ __forceinline__ void fb_add_rmsnorm(const typename D::T* __restrict__ x,
                                               const typename D::T* __restrict__ res,
                                               const typename D::T* __restrict__ gamma,
                                               typename D::T* __restrict__ h,
                                               typename D::T* __restrict__ y,
                                               int M, int H, float eps, int vec, int cache) {
    typedef typename D::T T;
    enum { VEC = D::VEC };
    extern __shared__ float hs[];               // H floats when cache, else none
    __shared__ float red[FB_ADD_WARPS];
    const int tid = threadIdx.x;

    for (int m = blockIdx.x; m < M; m += gridDim.x) {   // block-uniform loop
        const long long base = (long long)m * H;
        float ss = 0.f;
        if (vec) {
            // H % VEC == 0 and aligned bases: every row start is 16-byte aligned. Slot of
            // element e of vector j: hs[e * nv + j] (consecutive threads, consecutive banks).
            const int nv = H / VEC;
            const fb_vec16* xv = reinterpret_cast<const fb_vec16*>(x + base);
            const fb_vec16* rv = reinterpret_cast<const fb_vec16*>(res + base);
            fb_vec16* hv = reinterpret_cast<fb_vec16*>(h + base);
            for (int j = tid; j < nv; j += FB_ADD_THREADS) {
                float a[VEC], b[VEC];
                D::unpack(xv[j], a);
                D::unpack(rv[j], b);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    a[e] = a[e] + b[e];
                    ss += a[e] * a[e];
                }
                hv[j] = D::pack(a);
                if (cache) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) hs[e * nv + j] = a[e];
                }
            }
            const float s = fb_inv_rms(fb_block_sum<FB_ADD_WARPS>(ss, red), H, eps);
            const fb_vec16* gv = reinterpret_cast<const fb_vec16*>(gamma);
            fb_vec16* yv = reinterpret_cast<fb_vec16*>(y + base);
            for (int j = tid; j < nv; j += FB_ADD_THREADS) {
                float a[VEC], g[VEC];
                if (cache) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) a[e] = hs[e * nv + j];
                } else {
                    float b[VEC];
                    D::unpack(xv[j], a);
                    D::unpack(rv[j], b);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) a[e] = a[e] + b[e];
                }
                D::unpack(gv[j], g);
#pragma unroll
                for (int e = 0; e < VEC; ++e) a[e] = a[e] * s * g[e];
                yv[j] = D::pack(a);
            }
        } else {
            for (int k = tid; k < H; k += FB_ADD_THREADS) {
                const float a = D::load(x, base + k) + D::load(res, base + k);
                ss += a * a;
                D::store(h, base + k, a);
                if (cache) hs[k] = a;
            }
            const float s = fb_inv_rms(fb_block_sum<FB_ADD_WARPS>(ss, red), H, eps);
            for (int k = tid; k < H; k += FB_ADD_THREADS) {
                const float a = cache ? hs[k] : D::load(x, base + k) + D::load(res, base + k);
                D::store(y, base + k, a * s * D::load(gamma, k));
            }
        }
    }
}

#define FB_DEFINE_KERNELS(SUFFIX, D)                                                             \
    extern "C" __global__ void __launch_bounds__(FB_ADD_THREADS) add_rmsnorm_##SUFFIX(          \
        const D::T* __restrict__ x, const D::T* __restrict__ res, const D::T* __restrict__ gamma, \
        D::T* __restrict__ h, D::T* __restrict__ y, int M, int H, float eps, int vec, int cache) { \
        fb_add_rmsnorm<D>(x, res, gamma, h, y, M, H, eps, vec, cache);                          \
    }

FB_DEFINE_KERNELS(f32, FbF32)
FB_DEFINE_KERNELS(f16, FbF16)
FB_DEFINE_KERNELS(bf16, FbBF16)
