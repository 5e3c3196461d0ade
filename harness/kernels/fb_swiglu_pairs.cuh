// ---- fusebench SwiGLU pairs (gate row p, up row p) for the pair GEMM templates ----
// Pairs of the SwiGLU up-projection: pair p = (W_gate row p, W_up row p); the epilogue
// stores silu(gate) * up to y[m, p] in output type O (the storage type, or FbF32 scratch).
template <class D, class O>
struct FbSwigluPairs {
    const typename D::T* wg;
    const typename D::T* wu;
    typename O::T* y;
    int H, I;
    __device__ __forceinline__ const typename D::T* row(int p, int which) const {
        return (which ? wu : wg) + (long long)p * H;
    }
    __device__ __forceinline__ void store(int m, int p, float g, float u) const {
        O::store(y, (long long)m * I + p, g / (1.0f + expf(-g)) * u);   // silu as the chain computes it
    }
};
