"""cuda: fused kernels in CUDA C++ (CuPy RawModule); unfused chain in CuPy + cuBLAS.

Storage on the device: float32 and float16 as CuPy arrays of that dtype; bfloat16, which
CuPy has no dtype for, as uint16 arrays holding the bit patterns (every uint16 buffer of
this backend is a bfloat16 buffer). download() returns NumPy arrays of the storage dtype
(bfloat16 as an `ml_dtypes.bfloat16` view).

The chain computes every primitive in float32 and stores its result in the storage dtype:
rms_norm, add, mul, silu, softmax, rope, scale, causal_mask and length_mask are small
header-free CUDA kernels (harness/kernels/fb_chain.cu, one per op and dtype, with the
fused kernels' prelude spliced in; rope computes its angles and their sine and cosine in
float64 on the device, as harness.ops.rope_angles defines them; softmax gives zeros for a
row that is all -inf), split makes contiguous
copies of column ranges, reshape is a view, linear is cuBLAS `gemmEx` and matmul_nt /
matmul are cuBLAS `gemmStridedBatchedEx` (one call over all leading dims), all with
float32 compute (CUBLAS_COMPUTE_32F: no TF32, no half-precision accumulation) on
float32/float16/bfloat16 data, which is what a framework's linear layer and batched
matmul call.

CuPy is imported inside methods only. The code uses no API specific to one CuPy wheel, so
cupy-cuda12x and cupy-cuda13x both work.
"""

from __future__ import annotations

import contextlib

import numpy as np

from harness.backends import Backend, BackendUnavailable, BinaryKernelOps, Prepared, Replay
from harness.backends.gpu_timing import HOLD_SOURCE, Hold, graph_launches, method_name
from harness.cuda_compile import cuda_source
from harness.ops import Ops
from harness.splice import KERNELS_DIR

# storage dtype -> (kernel suffix, CuPy dtype name, cudaDataType for cuBLAS)
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF = 0, 2, 14
STORAGE = {
    "float32": ("f32", "float32", _CUDA_R_32F),
    "float16": ("f16", "float16", _CUDA_R_16F),
    "bfloat16": ("bf16", "uint16", _CUDA_R_16BF),
}
SUFFIX = {dtype: v[0] for dtype, v in STORAGE.items()}  # the dtype part of a kernel's name
VEC = {"float32": 4, "float16": 8, "bfloat16": 8}      # elements in one 16-byte load
BF16_NAN_BITS = 0x7FC0
_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1


DEFAULT_SM_COUNT = 132  # an H200: launch plans' default where no device is asked (tests, emulation)


def sm_count() -> int:
    """Multiprocessors of the current device, which launch plans size their grids by;
    DEFAULT_SM_COUNT where the device does not say."""
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    return int(props.get("multiProcessorCount", 0)) or DEFAULT_SM_COUNT


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0: blocks needed to cover a items, b per block."""
    return -(-a // b)


class KernelModule:
    """A .cu file (a fused kernel's, or the chain's harness/kernels/fb_chain.cu) with its
    shared fragments spliced in, compiled by CuPy into one RawModule per device on first
    use; calling it returns the current device's module."""

    def __init__(self, path):
        self.path = path
        self._by_device: dict[int, object] = {}

    def __call__(self):
        import cupy as cp

        dev = cp.cuda.runtime.getDevice()
        if dev not in self._by_device:
            self._by_device[dev] = cp.RawModule(code=cuda_source(self.path), options=("-std=c++17",))
        return self._by_device[dev]


class FusedCuda(Prepared):
    """A fused CUDA kernel's Prepared: plan() asks its module's `launch_plan` for this device
    (aligned: whether every array in `aligned_of` starts on 16 bytes, the kernels' vector
    loads' condition), bind_launches() binds the plan to the arguments for run()."""

    limits = None

    def bind_io(self, inputs, names, dims) -> tuple[tuple, tuple]:
        """(the named inputs' device buffers, the named dimensions' values), every output
        allocated in self.out."""
        bufs = self.bind_inputs(inputs, names)
        self.alloc_outputs()
        return bufs, tuple(self.dims[d] for d in dims)

    def plan(self, launch_plan, *dims, aligned_of=None, **kw):
        from harness.cuda_launch import device_limits

        self.limits = device_limits()
        if aligned_of is not None:
            kw["aligned"] = all(a.data.ptr % 16 == 0 for a in aligned_of)
        return launch_plan(*dims, self.dtype, limits=self.limits, **kw)

    def bind_launches(self, module, plan, args) -> None:
        from harness.cuda_launch import bind

        self.launches = bind(module, plan, args, self.limits, f"{self.spec.name}/cuda")
        self.switches = dict(plan.switches)  # what the plan chose (vector loads, splits), for inspection


def storage_dtype(dtype: str):
    """The CuPy dtype that holds `dtype` on the device (bfloat16 -> uint16 bit patterns)."""
    import cupy as cp

    try:
        return cp.dtype(STORAGE[dtype][1])
    except KeyError:
        raise BackendUnavailable(f"cuda: no device storage for dtype {dtype!r}") from None


def _version(v: int) -> str:
    """CUDA's 1000*major + 10*minor encoding -> "major.minor"."""
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "unknown"


def _gemm_needed(what: str, a, b, out, K: int) -> bool:
    """Whether a cuBLAS call must run for out = a @ op(b): the arrays must be C-contiguous;
    an empty out needs nothing, and K = 0 only zeros."""
    for arr in (a, b, out):
        if not arr.flags.c_contiguous:
            raise ValueError(f"{what} needs C-contiguous arrays")
    if out.size == 0:
        return False
    if K == 0:
        out.fill(0)
        return False
    return True


@contextlib.contextmanager
def _cublas_host_scalars():
    """(handle, alpha, beta): the cuBLAS handle on the caller's stream (graph capture) and
    pointers to the host float32 scalars 1 and 0, the handle's pointer mode set to host for
    the call and restored after."""
    import cupy as cp
    from cupy.cuda import cublas

    alpha = np.array(1.0, dtype=np.float32)
    beta = np.array(0.0, dtype=np.float32)
    handle = cp.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, 0)  # CUBLAS_POINTER_MODE_HOST
    try:
        yield handle, alpha.ctypes.data, beta.ctypes.data
    finally:
        cublas.setPointerMode(handle, mode)


def gemm_ex(a, b, out, a_type: int) -> None:
    """out(M, N) = a(M, K) @ b(N, K).T with cuBLAS gemmEx, float32 compute.

    Row-major trick: cuBLAS is column-major, so compute out.T (N x M, ld N) =
    b (seen column-major as K x N, ld K) transposed @ a (seen as K x M, ld K)."""
    from cupy.cuda import cublas

    M, K = a.shape
    N = b.shape[0]
    if b.shape[1] != K or out.shape != (M, N):
        raise ValueError(f"gemm_ex: shapes {a.shape} @ {b.shape}.T -> {out.shape} do not match")
    if not _gemm_needed("gemm_ex", a, b, out, K):
        return
    with _cublas_host_scalars() as (handle, alpha, beta):
        cublas.gemmEx(handle, _CUBLAS_OP_T, _CUBLAS_OP_N, N, M, K,
                      alpha, b.data.ptr, a_type, K,
                      a.data.ptr, a_type, K,
                      beta, out.data.ptr, a_type, N,
                      _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)


def gemm_strided_batched(a, b, out, a_type: int, transpose_b: bool) -> None:
    """out[i] = a[i] @ b[i].T (transpose_b) or a[i] @ b[i] for every leading index i, with one
    cuBLAS gemmStridedBatchedEx call, float32 compute.

    a: (n, S, K), b: (n, N, K) (transpose_b) or (n, K, N), out: (n, S, N), C-contiguous.
    Row-major trick as in gemm_ex: out[i].T (N x S, ld N) = op(b[i]) @ a[i].T, where b[i]
    seen column-major is K x N (ld K; transposed) or N x K (ld N; not transposed)."""
    from cupy.cuda import cublas

    n, S, K = a.shape
    N = b.shape[1] if transpose_b else b.shape[2]
    want_b = (n, N, K) if transpose_b else (n, K, N)
    if b.shape != want_b or out.shape != (n, S, N):
        raise ValueError(f"gemm_strided_batched: shapes {a.shape} @ {b.shape}{'.T' if transpose_b else ''} "
                         f"-> {out.shape} do not match")
    if not _gemm_needed("gemm_strided_batched", a, b, out, K):
        return
    op_b, ldb = (_CUBLAS_OP_T, K) if transpose_b else (_CUBLAS_OP_N, N)
    with _cublas_host_scalars() as (handle, alpha, beta):
        cublas.gemmStridedBatchedEx(handle, op_b, _CUBLAS_OP_N, N, S, K,
                                    alpha, b.data.ptr, a_type, ldb, N * K,
                                    a.data.ptr, a_type, K, S * K,
                                    beta, out.data.ptr, a_type, N, S * N,
                                    n, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)


class _Minimal(Prepared):
    """The timer's overhead probe: one fill of four words."""

    def __init__(self, backend):
        import cupy as cp

        super().__init__(backend, None, {}, {}, "float32")
        self.buf = cp.zeros(4, dtype=cp.float32)

    def run(self):
        self.buf.fill(1.0)


class CudaBackend(Backend):
    name = "cuda"
    device_kind = "gpu"
    dtypes = ("float32", "float16", "bfloat16")

    _flush_buf = None  # flush_cache()'s buffer, made on its first call

    def __init__(self):
        super().__init__()
        self._flush_val = 0
        self._timing_stream = None
        self._hold_kernel = None
        self.hold = Hold()

    # 1. probe and fingerprint ----------------------------------------------------------
    def _probe_impl(self):
        try:
            import cupy as cp
        except Exception as e:  # ImportError, or a broken wheel
            return False, f"cupy is not installed ({type(e).__name__}: {e}); pip install 'fusebench[cuda]'"
        try:
            n = cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError: no driver, no device
            return False, f"no CUDA device: {_short(e)}"
        if n < 1:
            return False, "no CUDA device: cudaGetDeviceCount() returned 0"
        try:
            a = cp.zeros(16, dtype=cp.float32)  # allocation + memset, no compilation
            if float(cp.asnumpy(a).sum()) != 0.0:
                return False, "CUDA device found, but a trivial allocation read back wrong values"
            cp.cuda.runtime.deviceSynchronize()
        except Exception as e:
            return False, f"CUDA device found, but it is unusable: {_short(e)}"
        return True, ""

    def memory_available(self):
        import cupy as cp

        pool = cp.get_default_memory_pool()  # blocks CuPy holds but does not use count as free
        return int(cp.cuda.runtime.memGetInfo()[0]) + int(pool.free_bytes())

    def fingerprint(self):
        import cupy as cp

        rt = cp.cuda.runtime
        dev = cp.cuda.runtime.getDevice()
        props = rt.getDeviceProperties(dev)
        name = props.get("name", b"")
        name = name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
        return {
            "gpu": name,
            "compute_capability": f"{props.get('major', '?')}.{props.get('minor', '?')}",
            "sm_count": int(props.get("multiProcessorCount", 0)),
            "gpu_memory_gib": round(int(props.get("totalGlobalMem", 0)) / 1024**3, 1),
            "l2_bytes": self.l2_bytes(),
            "driver_version": _version(rt.driverGetVersion()),
            "runtime_version": _version(rt.runtimeGetVersion()),
            "cupy": cp.__version__,
            "device_index": dev,
        }

    def l2_bytes(self) -> int:
        import cupy as cp

        rt = cp.cuda.runtime
        return int(rt.deviceGetAttribute(rt.cudaDevAttrL2CacheSize, rt.getDevice()))

    # 2. upload and download ------------------------------------------------------------
    max_elements = 2**31 - 1  # the fused kernels index elements with 32-bit ints

    def empty(self, shape, dtype: str):
        import cupy as cp

        return cp.empty(shape, dtype=storage_dtype(dtype))

    def upload(self, a):
        import cupy as cp
        import ml_dtypes

        a = np.ascontiguousarray(a)
        if a.dtype == np.dtype(ml_dtypes.bfloat16):
            a = a.view(np.uint16)
        return cp.asarray(a)

    def write(self, buf, a):
        import ml_dtypes

        a = np.ascontiguousarray(a)
        if a.dtype == np.dtype(ml_dtypes.bfloat16):
            a = a.view(np.uint16)
        if a.shape != buf.shape or a.dtype != buf.dtype:
            raise ValueError(f"cuda: cannot write {a.dtype}{a.shape} into a buffer of {buf.dtype}{buf.shape}")
        buf.set(a)

    def download(self, buf):
        import cupy as cp
        import ml_dtypes

        host = cp.asnumpy(buf)
        if host.dtype == np.uint16:
            return host.view(ml_dtypes.bfloat16)
        return host

    def poison(self, buf):
        if buf.dtype == np.uint16:
            buf.fill(BF16_NAN_BITS)
        else:
            buf.fill(np.nan)

    # 3. synchronise --------------------------------------------------------------------
    def synchronize(self):
        import cupy as cp

        cp.cuda.runtime.deviceSynchronize()

    # 4. timer --------------------------------------------------------------------------
    timing_method = method_name(True)

    def _stream(self):
        """The stream every timed sample, flush and capture runs on (blocking: it waits
        for work on the legacy default stream, such as input writes)."""
        import cupy as cp

        if self._timing_stream is None:
            self._timing_stream = cp.cuda.Stream()
        return self._timing_stream

    def timing_target(self, prepared):
        """prepared.run() captured into a CUDA graph (gpu_timing), or the run itself, with
        the reason, where capture fails (a host synchronisation inside run(), say)."""
        import cupy as cp

        try:
            return self._capture(prepared), method_name(True)
        except Exception as e:
            cp.cuda.runtime.deviceSynchronize()
            return prepared, method_name(False, f"{type(e).__name__}: {_short(e)}")

    def _capture(self, prepared):
        """One warm run, then one captured run, both allocating from a memory pool of their
        own: blocks the captured run frees are reused only by its own replays, never handed
        to another buffer the graph would then overwrite."""
        import cupy as cp

        stream, pool = self._stream(), cp.cuda.MemoryPool()
        with cp.cuda.using_allocator(pool.malloc), stream:
            prepared.run()
            stream.synchronize()
            stream.begin_capture()
            try:
                prepared.run()
            except BaseException:
                try:
                    stream.end_capture()
                except Exception:
                    pass
                raise
            graph = stream.end_capture()
        graph.upload(stream)
        stream.synchronize()
        return Replay(prepared, lambda: graph.launch(stream), prepared.out, graph_launches(graph.graph),
                      keep=(graph, pool))

    def time_run(self, prepared) -> float:
        """Device seconds of one prepared.run(), the stream held while it is queued
        (gpu_timing.Hold). A second end event on the legacy default stream waits for work
        run() may have put on other blocking streams; the later end is taken."""
        import cupy as cp

        stream = self._stream()
        start, end, end_all = cp.cuda.Event(), cp.cuda.Event(), cp.cuda.Event()
        if self._hold_kernel is None:
            self._hold_kernel = cp.RawKernel(HOLD_SOURCE, "fb_hold")

        def hold(cycles):
            self._hold_kernel((1,), (1,), (np.int64(cycles),), stream=stream)

        def enqueue():
            with stream:
                start.record(stream)
                prepared.run()
                end.record(stream)
            end_all.record(cp.cuda.Stream.null)

        def elapsed():
            cp.cuda.runtime.deviceSynchronize()
            return max(cp.cuda.get_elapsed_time(start, end), cp.cuda.get_elapsed_time(start, end_all)) / 1e3

        return self.hold.sample(hold, enqueue, lambda: start.done, elapsed)

    device_timed = True

    def minimal_prepared(self):
        return _Minimal(self)

    def flush_cache(self):
        """Overwrite a device buffer of twice the L2 size (queried from the device), on
        the timing stream, so that a following run starts with none of its inputs in L2."""
        import cupy as cp

        if self._flush_buf is None:
            nbytes = 2 * max(self.l2_bytes(), 1 << 20)
            self._flush_buf = cp.empty(nbytes // 4, dtype=cp.uint32)
        self._flush_val ^= 0x5A5A5A5A  # a different value each time: no write can be skipped
        with self._stream():
            self._flush_buf.fill(self._flush_val)

    # 5. primitive ops ------------------------------------------------------------------
    def ops(self, dtype):
        if dtype not in STORAGE:
            return None
        return CudaOps(self, dtype)

    def chain_module(self):
        """The RawModule holding the chain's kernels (CHAIN_MODULE: compiled once per device)."""
        return CHAIN_MODULE()

    # 6. peak probe ---------------------------------------------------------------------
    def measure_peak(self):
        import cupy as cp

        def best_ms(fn, reps=10):
            fn()
            cp.cuda.runtime.deviceSynchronize()
            best = float("inf")
            for _ in range(reps):
                s, e = cp.cuda.Event(), cp.cuda.Event()
                s.record()
                fn()
                e.record()
                e.synchronize()
                best = min(best, cp.cuda.get_elapsed_time(s, e))
            return best

        out = {}
        nbytes = 1 << 30  # 1 GiB, far beyond any L2
        a = cp.random.random(nbytes // 4, dtype=cp.float32)  # random, never a constant
        b = cp.empty_like(a)
        ms = best_ms(lambda: b.data.copy_from_device_async(a.data, nbytes))
        out["copy_gbps"] = 2 * nbytes / (ms / 1e3) / 1e9
        del a, b

        n = 8192
        x = cp.random.rand(n, n, dtype=cp.float32) - 0.5
        y = cp.empty_like(x)
        ms = best_ms(lambda: cp.matmul(x, x, out=y), reps=5)
        out["matmul_gflops"] = 2 * n**3 / (ms / 1e3) / 1e9
        try:  # 16-bit tensor-core rates through cuBLAS, float32 accumulation
            xb = (x.view(cp.uint32) >> 16).astype(cp.uint16)
            yb = cp.empty_like(xb)
            ms = best_ms(lambda: gemm_ex(xb, xb, yb, _CUDA_R_16BF), reps=5)
            out["matmul_gflops_bfloat16"] = 2 * n**3 / (ms / 1e3) / 1e9
            xh = x.astype(cp.float16)
            yh = cp.empty_like(xh)
            ms = best_ms(lambda: gemm_ex(xh, xh, yh, _CUDA_R_16F), reps=5)
            out["matmul_gflops_float16"] = 2 * n**3 / (ms / 1e3) / 1e9
        except Exception:  # optional figures
            pass
        return out


def _short(e: Exception) -> str:
    s = str(e).strip() or type(e).__name__
    return s.splitlines()[0]


class CudaOps(BinaryKernelOps, Ops):
    """The chain's primitives on CuPy arrays in one storage dtype (float32 compute)."""

    THREADS = 256

    def __init__(self, backend: CudaBackend, storage: str):
        import cupy as cp

        self.cp = cp
        self.backend = backend
        self.storage = storage
        self.name = f"cuda-{storage}"
        self.suffix, _, self.cuda_type = STORAGE[storage]
        self.dt = storage_dtype(storage)
        mod = backend.chain_module()
        self.k = {op: mod.get_function(f"chain_{op}_{self.suffix}")
                  for op in CHAIN_OPS}

    def _arr(self, a):
        cp = self.cp
        a = cp.asarray(a)
        if a.dtype != self.dt:
            raise TypeError(f"{self.name}: expected a {self.dt} array, got {a.dtype}")
        return cp.ascontiguousarray(a)

    def _grid(self, n: int) -> int:
        return int(min(max(1, (n + self.THREADS - 1) // self.THREADS), 1 << 20))  # grid-stride beyond

    def rms_norm(self, x, gamma, eps):
        x, gamma = self._arr(x), self._arr(gamma)
        H = x.shape[-1]
        rows = x.size // H if H else 0
        y = self.cp.empty_like(x)
        if rows:
            self.k["rms_norm"]((min(rows, 65535),), (self.THREADS,),
                               (x, gamma, y, np.int32(rows), np.int32(H), np.float32(eps)))
        return y

    def linear(self, x, w):
        x, w = self._arr(x), self._arr(w)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        y = self.cp.empty((x2.shape[0], w.shape[0]), dtype=self.dt)
        gemm_ex(x2, w, y, self.cuda_type)
        return y.reshape(*lead, w.shape[0])

    def _binary(self, op, a, b):
        cp = self.cp
        a, b = cp.broadcast_arrays(self._arr(a), self._arr(b))
        a, b = cp.ascontiguousarray(a), cp.ascontiguousarray(b)
        y = cp.empty(a.shape, dtype=self.dt)
        if y.size:
            self.k[op]((self._grid(y.size),), (self.THREADS,), (a, b, y, np.int64(y.size)))
        return y

    def silu(self, x):
        x = self._arr(x)
        y = self.cp.empty_like(x)
        if y.size:
            self.k["silu"]((self._grid(y.size),), (self.THREADS,), (x, y, np.int64(y.size)))
        return y

    def softmax(self, x):
        x = self._arr(x)
        H = x.shape[-1]
        rows = x.size // H if H else 0
        y = self.cp.empty_like(x)
        if rows:
            self.k["softmax"]((min(rows, 65535),), (self.THREADS,), (x, y, np.int32(rows), np.int32(H)))
        return y

    def split(self, x, sizes):
        """Last-axis split into contiguous copies (one copy kernel each, as a chain does)."""
        x = self._arr(x)
        edges = np.cumsum([0, *[int(s) for s in sizes]])
        if edges[-1] != x.shape[-1]:
            raise ValueError(f"{self.name}: split sizes {list(sizes)} do not add up to {x.shape[-1]}")
        return [self.cp.ascontiguousarray(x[..., a:b]) for a, b in zip(edges[:-1], edges[1:])]

    def reshape(self, x, shape):
        """A view with the new shape (row-major; x is made contiguous first)."""
        return self._arr(x).reshape(tuple(int(s) for s in shape))

    def _matmul(self, a, b, transpose_b: bool):
        a, b = self._arr(a), self._arr(b)
        lead = a.shape[:-2]
        if a.ndim < 2 or b.ndim != a.ndim or b.shape[:-2] != lead:
            raise ValueError(f"{self.name}: batched matmul needs equal leading dims, got {a.shape} and {b.shape}")
        S, K = a.shape[-2:]
        N = b.shape[-2] if transpose_b else b.shape[-1]
        if (b.shape[-1] if transpose_b else b.shape[-2]) != K:
            raise ValueError(f"{self.name}: inner dims of {a.shape} and {b.shape} do not match")
        n = int(np.prod(lead, dtype=np.int64))
        y = self.cp.empty((*lead, S, N), dtype=self.dt)
        gemm_strided_batched(a.reshape(n, S, K), b.reshape(n, *b.shape[-2:]), y.reshape(n, S, N),
                             self.cuda_type, transpose_b)
        return y

    def matmul_nt(self, a, b):
        """a: (..., S, d), b: (..., T, d) -> a @ bᵀ: (..., S, T), one batched cuBLAS call."""
        return self._matmul(a, b, True)

    def matmul(self, a, b):
        """a: (..., S, T), b: (..., T, d) -> a @ b: (..., S, d), one batched cuBLAS call."""
        return self._matmul(a, b, False)

    def scale(self, x, s):
        x = self._arr(x)
        y = self.cp.empty_like(x)
        if y.size:
            self.k["scale"]((self._grid(y.size),), (self.THREADS,), (x, y, np.int64(y.size), np.float32(s)))
        return y

    def causal_mask(self, x):
        """x: (..., S, T) -> -inf where key j > i + (T - S)."""
        x = self._arr(x)
        if x.ndim < 2:
            raise ValueError(f"{self.name}: causal_mask needs (..., S, T), got {x.shape}")
        S, T = x.shape[-2:]
        y = self.cp.empty_like(x)
        if y.size:
            self.k["causal_mask"]((self._grid(y.size),), (self.THREADS,),
                                  (x, y, np.int64(y.size), np.int32(S), np.int32(T)))
        return y

    def length_mask(self, x, lens):
        """x: (B, H, S, T), lens: (B,) int32 -> -inf where key j >= lens[b]."""
        cp = self.cp
        x = self._arr(x)
        if x.ndim != 4:
            raise ValueError(f"{self.name}: length_mask needs x of shape (B, H, S, T), got {x.shape}")
        B, H, S, T = x.shape
        lens = cp.ascontiguousarray(cp.asarray(lens, dtype=cp.int32))
        if lens.shape != (B,):
            raise ValueError(f"{self.name}: length_mask lens of shape {lens.shape}, expected ({B},)")
        y = cp.empty_like(x)
        if y.size:
            self.k["length_mask"]((self._grid(y.size),), (self.THREADS,),
                                  (x, lens, y, np.int64(y.size), np.int64(H * S), np.int32(T)))
        return y

    def rope(self, x, pos, theta):
        """x: (M, heads, d) storage dtype, pos: (M,) int32 -> rotate-half RoPE, float32 math
        with float64 angles, one rounding to the storage dtype."""
        cp = self.cp
        x = self._arr(x)
        if x.ndim != 3 or x.shape[-1] % 2:
            raise ValueError(f"{self.name}: rope needs x of shape (M, heads, even d), got {x.shape}")
        M, heads, d = x.shape
        pos = cp.ascontiguousarray(cp.asarray(pos, dtype=cp.int32))
        if pos.shape != (M,):
            raise ValueError(f"{self.name}: rope positions of shape {pos.shape}, expected ({M},)")
        y = cp.empty_like(x)
        n = M * heads * (d // 2)
        if n:
            self.k["rope"]((self._grid(n),), (self.THREADS,),
                           (x, pos, y, np.int32(M), np.int32(heads), np.int32(d), np.float64(theta)))
        return y


# The chain's kernels (harness/kernels/fb_chain.cu, the prelude spliced in): compiled on first
# use, once per device, and shared by every CudaBackend of the process.
CHAIN_CU = KERNELS_DIR / "fb_chain.cu"
CHAIN_MODULE = KernelModule(CHAIN_CU)
CHAIN_OPS = ("rms_norm", "add", "mul", "silu", "softmax", "rope", "scale", "causal_mask", "length_mask")
CHAIN_KERNELS = tuple(f"chain_{op}_{s}" for s in ("f32", "f16", "bf16") for op in CHAIN_OPS)

BACKENDS = {"cuda": CudaBackend()}
