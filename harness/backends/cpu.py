"""cpu: fused kernels in numba on this machine's cores; unfused chain in NumPy.

The chain computes each primitive in float32 and stores its result in the storage dtype
(float16 through NumPy, bfloat16 through ml_dtypes), as separate kernels would.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from harness.backends import Backend, Prepared
from harness.ops import NumpyOps


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (sysfs), 32 MiB when it cannot be read."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            try:
                with open(f"{base}/{idx}/size") as f:
                    s = f.read().strip()
            except OSError:
                continue
            mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(s[-1], 1)
            best = max(best, int(s.rstrip("KMG")) * mult)
    except OSError:
        pass
    return best or 32 * 1024**2


def cpu_fingerprint() -> dict:
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 1024**3, 1),
        "llc_bytes": last_level_cache_bytes(),
        "os": platform.platform(),
    }


# How the fused numba kernels (impls/<fusion>/<fusion>_numba.py, run by cpu.py) are told the storage dtype.
KIND = {"float32": 0, "bfloat16": 1, "float16": 2}


def bits16(a: np.ndarray) -> np.ndarray:
    """float32 stays; 16-bit dtypes go to the numba kernels as their uint16 bit patterns."""
    return a if a.dtype == np.float32 else a.view(np.uint16)


class NumbaFused(Prepared):
    """A fused CPU implementation whose kernel is `kernel` in `<fusion>_numba.py` beside its
    module (numba loads when the first one is prepared): `self.kernel`, the storage dtype's
    `self.kind` for it, and host_inputs() to bind the inputs it reads."""

    package = None  # the package of the fusion's impls: that of the class deriving from this one

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if NumbaFused in cls.__bases__:
            cls.package = cls.__module__.rpartition(".")[0]

    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.kernel = importlib.import_module(f"{self.package}.{spec.name}_numba").kernel
        self.kind = KIND[dtype]

    def host_inputs(self, inputs, names) -> tuple:
        """The named inputs, C-contiguous host arrays read in place (16-bit ones as bits16)."""
        return tuple(bits16(a) for a in self.bind_inputs(inputs, names, np.ascontiguousarray))


class CpuBackend(Backend):
    name = "cpu"
    device_kind = "cpu"
    check_lanes = 2  # numba's float32 and 16-bit compiles side by side (Backend.check_lanes)
    compiles_per_size = False
    dtypes = ("float32", "float16", "bfloat16")

    _flush_buf: np.ndarray | None = None  # flush_cache()'s buffer, made on its first call

    # 1. probe and fingerprint
    def _probe_impl(self):
        try:
            import numba  # noqa: F401
        except ImportError as e:
            return False, f"numba is not installed ({e}); pip install 'fusebench[cpu]'"
        return True, ""

    def fingerprint(self):
        import numba

        return {"numba": numba.__version__, "numpy": np.__version__, "threads": numba.config.NUMBA_NUM_THREADS,
                **cpu_fingerprint()}

    # 2. upload and download: host arrays (Backend defaults copy them)

    # 3. synchronise: numba kernels return when done (Backend default)

    # 4. timer: host clock (Backend default); cold cache = write over 2x the LLC, then the
    # thread pool of the kernel timed next woken, so that it pays for cold data and nothing else
    def flush_cache(self):
        # read-modify-write, so every line passes through the caches (a plain fill of a
        # large buffer may use streaming stores that bypass them)
        if self._flush_buf is None:
            self._flush_buf = np.zeros(2 * last_level_cache_bytes() // 8, dtype=np.float64)
        np.add(self._flush_buf, 1.0, out=self._flush_buf)

    def wake(self, prepared):
        """numba's pool for a numba kernel; never for the NumPy chain, whose BLAS threads
        would then contend with numba's workers still spinning after the wake (on 2
        cores that made rmsnorm_gemm's chain at qwen2_5_0_5b.decode 4.1 ms cold against
        0.57 ms, and "9.6x chain" of a 1.4x kernel)."""
        from harness.backends import ChainPrepared

        if not isinstance(prepared, ChainPrepared):
            wake_threads()

    # 5. primitive ops
    def ops(self, dtype):
        return NumpyOps(dtype)

    # 6. peak probe
    def measure_peak(self):
        return host_peak()

    def measure_peak_again(self):
        return host_peak_again()


_wake = None


def wake_threads() -> None:
    """One tiny parallel numba loop over as many chunks as numba has threads. The flush
    keeps one core busy for milliseconds (2x the last-level cache: 16 MiB here, up to a
    gigabyte where a host reports a large shared cache), long enough for numba's OpenMP
    workers to stop spinning and sleep; the kernel timed next would otherwise pay for
    waking them, not only for cold data. Touches a few bytes: the caches stay cold."""
    global _wake
    if _wake is None:
        try:
            import numba
        except ImportError:
            _wake = lambda: None  # noqa: E731  (no numba: no pool to wake)
        else:
            @numba.njit(parallel=True, cache=True)
            def pool_loop(n):
                out = np.zeros(n)
                for i in numba.prange(n):
                    out[i] = i
                return out[n - 1]

            threads = numba.config.NUMBA_NUM_THREADS
            _wake = lambda: pool_loop(threads)  # noqa: E731
    _wake()


def _best_of(fn, seconds: float, at_least: int = 5) -> float:
    """Best time of fn() over `seconds` (at least `at_least` runs, unless one run alone
    takes longer than the whole budget: a slow path is then timed once, not five times)."""
    t0 = time.perf_counter()
    fn()  # first touch of the pages, JIT, thread start-up: never timed
    first = time.perf_counter() - t0
    if first > seconds:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    best, n, t_end = float("inf"), 0, time.perf_counter() + seconds
    while n < at_least or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


_numba_streams = None


def _streams():
    """(copy(dst, src), read(src) -> sum): parallel numba loops when numba is here, else NumPy."""
    global _numba_streams
    if _numba_streams is None:
        try:
            import numba

            @numba.njit(parallel=True, cache=True)
            def copy(dst, src):
                for i in numba.prange(src.shape[0]):
                    dst[i] = src[i]

            @numba.njit(parallel=True, fastmath=True, cache=True)
            def read(src):
                s = 0.0
                for i in numba.prange(src.shape[0]):
                    s += src[i]
                return s

            _numba_streams = (copy, read)
        except ImportError:
            _numba_streams = (np.copyto, np.sum)
    return _numba_streams


# A run's worker processes share the host's peak through this file (harness.cli sets it
# for the run): the first to need it measures it, the others read it.
HOST_PEAK_FILE_ENV = "FUSEBENCH_HOST_PEAK_FILE"


def _shared_peak_path() -> Path | None:
    p = os.environ.get(HOST_PEAK_FILE_ENV)
    return Path(p) if p else None


def _share_peak(peak: dict) -> dict:
    """Write `peak` to the run's shared file (each figure the best of it and what is there)."""
    path = _shared_peak_path()
    if path is not None:
        try:
            old = json.loads(path.read_text()) if path.exists() else {}
            peak = {k: max(v, old.get(k, 0.0)) for k, v in peak.items()}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(peak))
            os.replace(tmp, path)
        except (OSError, ValueError):
            pass
    return peak


def host_peak_again() -> dict:
    """host_peak measured afresh (Backend.repeak keeps the best of each figure)."""
    return _share_peak(_measure_host_peak())


@functools.cache
def host_peak() -> dict:
    """The host's ceilings (_measure_host_peak), measured once per run: read from the run's
    shared file when another worker of the run has measured them already."""
    path = _shared_peak_path()
    try:
        if path is not None and path.exists():
            return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    return _share_peak(_measure_host_peak())


def _measure_host_peak(copy_bytes: int = 256 * 1024**2, n: int = 2048, seconds: float = 0.4) -> dict:
    """The CPU's ceilings, measured once per process and shared by every backend that runs
    on the CPU: memory bandwidth (the best of a copy, counting read + write bytes, a
    read-only sum, and BLAS's matrix-vector product, which reads the matrix once: on the
    2-core VM that streams faster than the numba sum, so without it the unfused chain's GEMVs
    showed 101 % of the peak) and the best float32 matmul rate of NumPy's BLAS and torch's."""
    a = np.random.default_rng(0).random(copy_bytes // 8)
    b = np.empty_like(a)
    copy, read = _streams()
    copy_gbps = 2 * a.nbytes / _best_of(lambda: copy(b, a), seconds) / 1e9
    read_gbps = a.nbytes / _best_of(lambda: read(a), seconds) / 1e9
    del b
    w = a.astype(np.float32).reshape(-1, 4096)  # a's random values, half its bytes: still 4 x the LLC
    v = np.random.default_rng(2).standard_normal(4096).astype(np.float32)
    gemv_gbps = w.nbytes / _best_of(lambda: w @ v, seconds) / 1e9
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    peak = {"copy_gbps": max(copy_gbps, read_gbps, gemv_gbps), "stream_copy_gbps": copy_gbps,
            "stream_read_gbps": read_gbps, "stream_gemv_gbps": gemv_gbps,
            "matmul_gflops": 2 * n**3 / _best_of(lambda: x @ x, seconds) / 1e9}
    try:  # torch's BLAS, and its 16-bit matmuls (AVX512-BF16 / AMX make them faster than f32)
        import torch

        for suffix, dt in (("", torch.float32), ("_bfloat16", torch.bfloat16), ("_float16", torch.float16)):
            key = f"matmul_gflops{suffix}"
            if suffix:  # a CPU without 16-bit matmul units runs these at ~1 GFLOP/s: a small probe tells
                xs = torch.from_numpy(x[:256, :256]).to(dt)
                if 2 * 256**3 / _best_of(lambda: xs @ xs, seconds / 4, at_least=2) / 1e9 < 0.25 * peak["matmul_gflops"]:
                    peak[key] = peak["matmul_gflops"]  # slower than float32: its ceiling is float32's
                    continue
            xt = torch.from_numpy(x[: n // 2, : n // 2] if suffix else x).to(dt)
            rate = 2 * xt.shape[0] ** 3 / _best_of(lambda: xt @ xt, seconds) / 1e9
            peak[key] = max(rate, peak.get(key, 0.0), peak["matmul_gflops"] if suffix else 0.0)
    except ImportError:
        pass
    return peak


BACKENDS = {"cpu": CpuBackend()}
