"""Backends: one module each, all with the same parts.

Every backend module defines a `Backend` subclass and exposes instances in `BACKENDS`
(a dict name -> Backend). The parts, in the same order in every file:

1. probe and fingerprint   `probe() -> (ok, reason)`, `fingerprint() -> dict`
2. upload and download     `upload(np.ndarray)`, `write(buf, np.ndarray)` (in place),
                           `download(buf) -> np.ndarray`, `poison(buf)`
3. synchronise             `synchronize()`
4. timer                   `time_run(prepared) -> seconds` (device time where it can), `flush_cache()`,
                           `minimal_prepared()` (the smallest timed run: the host check's
                           probe on device-timed backends)
5. primitive ops           `ops(dtype) -> harness.ops.Ops` for the unfused chain
6. peak probe              `measure_peak() -> {"copy_gbps": .., "matmul_gflops": ..}`

Heavy libraries (numba, cupy, wgpu, torch) are imported inside the methods, never at
module import, so that listing the registry works on any machine.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import numpy as np

# name -> module that defines it. Peers (torch) are backends too.
BACKEND_MODULES = {
    "reference": "harness.backends.reference",
    "cpu": "harness.backends.cpu",
    "wgsl": "harness.backends.wgsl",
    "cuda": "harness.backends.cuda",
    "torch": "harness.backends.torch_peer",
    "torch_cuda": "harness.backends.torch_peer",
}

# The peer a fused kernel on a backend is compared with (same device class).
TORCH_PEER_OF = {"cpu": "torch", "wgsl": "torch", "reference": "torch", "cuda": "torch_cuda"}


class BackendUnavailable(RuntimeError):
    """Raised when a backend is used on a machine that cannot run it."""


class Backend:
    name = "abstract"
    device_kind = "cpu"  # "cpu" or "gpu": where its memory lives
    dtypes: tuple[str, ...] = ("float32",)
    # host seconds the last time_run() spent recording the run's own launches into a
    # command buffer (WebGPU encodes the pending dispatches at submission): launch work,
    # not work the device timer missed
    last_encode_s = 0.0
    # How many worker processes may check (never time) this backend's jobs side by side,
    # the jobs split by dtype: float32 in the first, 16-bit in the second (numba compiles
    # each CPU kernel once for float32 arrays and once for 16-bit bit patterns, each
    # compile on one core)
    check_lanes = 1
    # Whether what this backend compiles depends on the problem's sizes (a shader, a
    # torch.compile graph, a CUDA module specialised per shape), so that run's warm-ups of
    # the timed sizes (harness.cli.warm_ups) fill its compile caches; numba's kernels are
    # compiled per dtype, once, by the smoke checks
    compiles_per_size = True

    def __init__(self) -> None:
        self._probe: tuple[bool, str] | None = None
        self._peak: dict[str, float] | None = None
        self._repeaks = 0  # how often repeak() has measured the peak again

    # 1. probe and fingerprint ------------------------------------------------------
    def probe(self) -> tuple[bool, str]:
        """(True, "") when this machine can run the backend, else (False, why). Cached."""
        if self._probe is None:
            try:
                self._probe = self._probe_impl()
            except Exception as e:  # a probe must never take the harness down
                self._probe = (False, f"{type(e).__name__}: {e}")
        return self._probe

    def _probe_impl(self) -> tuple[bool, str]:
        return True, ""

    def require(self) -> None:
        ok, why = self.probe()
        if not ok:
            raise BackendUnavailable(f"backend {self.name!r} is unavailable: {why}")

    def fingerprint(self) -> dict[str, Any]:
        return {}

    def memory_available(self) -> int | None:
        """Free bytes on the device this backend allocates on; None where that is host
        memory (the runner checks RAM for every job) or unknown."""
        return None

    # 2. upload and download --------------------------------------------------------
    def upload(self, a: np.ndarray) -> Any:
        return np.array(a, copy=True)

    def write(self, buf: Any, a: np.ndarray) -> None:
        """Overwrite the buffer `buf` (made by upload) with the host values `a` (same shape
        and dtype) in place, so that a kernel bound to it reads the new values."""
        if np.shape(buf) != np.shape(a):
            raise ValueError(f"{self.name}: cannot write shape {np.shape(a)} into a buffer of {np.shape(buf)}")
        buf[...] = a

    def download(self, buf: Any) -> np.ndarray:
        return np.array(buf, copy=True)

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        """An uninitialised buffer of `shape` in the storage dtype (outputs, scratch)."""
        from harness.dtypes import np_dtype

        return np.empty(shape, dtype=np_dtype(dtype))

    # The most elements one buffer may hold for this backend's kernels (CUDA's index them
    # with 32-bit ints); None: no limit beyond memory.
    max_elements: int | None = None

    def poison(self, buf: Any) -> None:
        """Fill a device buffer with NaN so that an element never written shows."""
        buf[...] = np.nan

    # 3. synchronise ----------------------------------------------------------------
    def synchronize(self) -> None:
        pass

    # 4. timer ----------------------------------------------------------------------
    def time_run(self, prepared: "Prepared") -> float:
        """One timed run in seconds: host clock around run() and a synchronisation."""
        self.synchronize()
        t0 = time.perf_counter()
        prepared.run()
        self.synchronize()
        return time.perf_counter() - t0

    def flush_cache(self) -> None:
        pass

    def wake(self, prepared: "Prepared") -> None:
        """After a flush, before `prepared`'s timed run: wake the worker threads it runs
        on, so that a cold figure pays for cold data, not for parked threads (the CPU
        backend wakes numba's pool for its numba kernels)."""

    # Device-timed backends (events, timestamp queries) set this: the timing loop then checks the
    # host clock around every sample against the device time it reports, so that work the
    # timer does not see (another stream, a side submission) cannot shorten a result.
    device_timed = False

    def minimal_prepared(self) -> "Prepared":
        """A Prepared whose run() launches the smallest work this backend can time."""
        raise NotImplementedError

    # How this backend's time_run() measures, in the record's words.
    timing_method = "host clock around one run and a synchronisation"

    def timing_target(self, prepared: "Prepared") -> tuple["Prepared", str]:
        """(what the timing loop runs, how it is timed): the run itself here; a graph of
        the run, captured once, on backends that can replay one (Replay)."""
        return prepared, self.timing_method

    def launches(self, timed: "Prepared") -> int | None:
        """Kernel launches (dispatches) of one run of `timed`, None where not counted."""
        return getattr(timed, "launch_count", None)

    def latency(self, prepared: "Prepared", runs: int = 5, cold: bool = True) -> float:
        """Median host seconds from calling run() to the device having finished it,
        starting from an idle device: the launch-inclusive figure a caller waits for."""
        samples = []
        for _ in range(max(1, runs)):
            if cold:
                self.flush_cache()
            self.synchronize()
            t0 = time.perf_counter()
            prepared.run()
            self.synchronize()
            samples.append(time.perf_counter() - t0)
        return float(np.median(samples))

    # 5. primitive ops --------------------------------------------------------------
    def ops(self, dtype: str):
        """The primitives for the unfused chain in `dtype`, or None when there is none."""
        return None

    # 6. peak probe -----------------------------------------------------------------
    def peak(self) -> dict[str, float]:
        """Measured copy bandwidth (GB/s, read + write) and matmul rate (GFLOP/s). Cached."""
        if self._peak is None:
            self._peak = self.measure_peak()
        return self._peak

    def measure_peak(self) -> dict[str, float]:
        return {}

    def measure_peak_again(self) -> dict[str, float]:
        """A fresh measurement, past any cache measure_peak() keeps (repeak)."""
        return self.measure_peak()

    # how often a peak may be measured again in one process (each probe takes seconds)
    REPEAKS = 3

    def repeak(self) -> dict[str, float]:
        """The peak measured once more, each figure the best of all measurements so far: a
        probe run while other work kept the machine busy reads low (a copy rate of 6.8 GB/s
        against 11.8 reached by an honest kernel a moment later on a loaded 2-core machine),
        and a kernel above it must not be called invalid for the machine's load. At most
        REPEAKS times per process; after that the peak as it stands."""
        peak = dict(self.peak())
        if self._repeaks < self.REPEAKS:
            self._repeaks += 1
            for k, v in self.measure_peak_again().items():
                old = peak.get(k)
                numbers = isinstance(v, (int, float)) and isinstance(old, (int, float))
                peak[k] = max(old, v) if numbers else (v if old is None else old)
            self._peak = peak
        return peak


class Prepared:
    """One implementation, ready to run on one input set.

    Subclasses upload inputs and compile in __init__ (never timed), launch the work in
    run() (timed; no host synchronisation inside), and keep their device outputs in
    `self.out` (name -> device buffer) so that outputs() and poison() work unchanged.

    The base class reads the problem's dimensions from the inputs under the spec's
    declared shapes (`self.dims`, e.g. {"M": 1, "H": 4096, "N": 6144}), refusing inputs
    that disagree with one clear ShapeError, and `alloc_outputs()` makes every output
    buffer from those shapes: no implementation re-derives or re-checks a shape.

    The device buffers the kernel reads its inputs from are kept in `self.inputs` (name ->
    buffer; bind_inputs() uploads and records them). The harness writes fresh values into
    them between timed runs (refresh(); a kernel that caches its result across calls
    then fails the check after the timing loop) and reads them back to check that the
    kernel left its inputs unmodified. A kernel that derives data from an input at
    prepare time (a transposed or packed weight) overrides refresh() to derive it again.
    """

    def __init__(self, backend: Backend, spec, inputs: dict[str, np.ndarray],
                 attrs: dict[str, float], dtype: str) -> None:
        self.backend = backend
        self.spec = spec
        self.attrs = attrs
        self.dtype = dtype
        self.out: dict[str, Any] = {}
        self.inputs: dict[str, Any] = {}
        self.dims: dict[str, int] = {}
        if inputs and getattr(spec, "shapes", None):
            self.dims = spec.dims_of(inputs, attrs)
            if self.indexes_with_backend_ints:
                self._check_sizes()

    # the kernel indexes its buffers the way the backend's kernels do (Backend.max_elements);
    # a chain of library calls does not
    indexes_with_backend_ints = True
    # the launch plan bound in __init__ (cuda_launch.bind, WgslBackend.bind) that run() launches
    launches = None

    def _check_sizes(self) -> None:
        limit = self.backend.max_elements
        if limit is None:
            return
        from harness.spec import ShapeError

        big = {n: s for n, s in ((n, self.spec.shape(n, self.dims)) for n in self.spec.shapes)
               if int(np.prod(s, dtype=np.int64)) > limit}
        if big:
            raise ShapeError(f"{self.spec.name}/{self.backend.name}: " + ", ".join(
                f"{n} {s}" for n, s in big.items()) + f" hold more than {limit} elements, the most this "
                f"backend's kernels index")

    def alloc_outputs(self) -> dict[str, Any]:
        """Every output's buffer (backend.empty), shaped from the spec and self.dims."""
        self.out = {n: self.backend.empty(s, self.dtype) for n, s in self.spec.output_shapes(self.dims).items()}
        return self.out

    def bind_inputs(self, inputs: dict[str, np.ndarray], names, place=None) -> tuple:
        """The named inputs placed where the kernel reads them (backend.upload, or
        `place`, e.g. np.ascontiguousarray for a CPU kernel that reads host arrays in
        place), recorded in self.inputs; returned in the order of `names`."""
        place = place or self.backend.upload
        bufs = tuple(place(inputs[n]) for n in names)
        self.inputs.update(zip(names, bufs))
        return bufs

    def refresh(self, values: dict[str, np.ndarray]) -> None:
        """Write new input values into the buffers the kernel reads (never timed). The
        timing loop calls this method itself, never an override: a kernel that derives
        data from a rotated input must derive it in run()."""
        missing = [k for k in values if k not in self.inputs]
        if missing:
            raise NotRotatable(f"the implementation does not declare its input buffer(s) {', '.join(missing)} "
                               f"(Prepared.bind_inputs), so fresh inputs cannot be written between timed runs")
        for k, v in values.items():
            self.backend.write(self.inputs[k], v)
        self.backend.synchronize()

    def input_values(self) -> dict[str, np.ndarray]:
        """The declared inputs as the kernel sees them now, downloaded."""
        self.backend.synchronize()
        return {k: self.backend.download(v) for k, v in self.inputs.items()}

    def run(self) -> None:
        """Launch the work: by default the launch plan bound in __init__ (`self.launches`:
        CUDA's cuda_launch.bind, WGSL's WgslBackend.bind); a kernel that calls a library
        (numba) overrides this."""
        if self.launches is None:
            raise NotImplementedError(f"{type(self).__name__}: no run() and no bound launch plan (self.launches)")
        self.launches.run()

    def buffers(self, **scratch) -> dict[str, Any]:
        """Every buffer a launch plan may name: the inputs, the outputs and `scratch`."""
        return {**self.inputs, **self.out, **scratch}

    def outputs(self) -> dict[str, np.ndarray]:
        self.backend.synchronize()
        return {k: self.backend.download(v) for k, v in self.out.items()}

    def poison(self) -> None:
        for v in self.out.values():
            self.backend.poison(v)
        self.backend.synchronize()

    def close(self) -> None:
        """Release device memory early (optional)."""
        self.out = {}


class Replay(Prepared):
    """A prepared run captured once (a CUDA graph) and replayed: run() issues the whole
    captured run with one call. It reads the prepared's input buffers (refresh() writes
    them in place, where the captured kernels read them: `inputs` is the prepared's) and
    writes the outputs of the captured run, which it keeps alive with whatever else the
    graph needs (`keep`)."""

    def __init__(self, prepared: Prepared, replay, outputs: dict, launches: dict[str, int], keep=()) -> None:
        super().__init__(prepared.backend, prepared.spec, {}, prepared.attrs, prepared.dtype)
        self.prepared = prepared
        self.dims = prepared.dims
        self.inputs = prepared.inputs
        self.out = dict(outputs)
        self.launch_count = sum(launches.values())
        self.launch_kinds = launches
        self._replay, self._keep = replay, keep

    def run(self) -> None:
        self._replay()

    def close(self) -> None:
        self.out, self._replay, self._keep = {}, None, ()


class NotRotatable(RuntimeError):
    """An implementation whose input buffers the harness cannot overwrite."""


class ChainPrepared(Prepared):
    """The unfused chain: the spec's decomposition run with the backend's primitives
    (or another function of the same form, `decompose(ops, **inputs, **attrs)`: a peer
    written directly in the backend's library, such as torch's SDPA)."""

    indexes_with_backend_ints = False

    def __init__(self, backend, spec, inputs, attrs, dtype, decompose=None):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.decompose = decompose or spec.decompose
        self.ops = backend.ops(dtype)
        if self.ops is None:
            raise BackendUnavailable(f"backend {backend.name!r} has no primitive ops for {dtype}")
        try:
            self.bind_inputs(inputs, list(inputs))
        except (TypeError, NotImplementedError) as e:  # e.g. int32 positions on a float-only backend
            raise BackendUnavailable(f"backend {backend.name!r} cannot hold an input of this chain: {e}") from None
        counting = _CountingOps(self.ops)
        try:  # one untimed run: a primitive this backend lacks shows here, not in the timing
            self.out = self.decompose(counting, **self.inputs, **self.attrs)
        except NotImplementedError as e:
            raise BackendUnavailable(f"backend {backend.name!r} lacks a primitive this chain needs: {e}") from None
        # one launch (library call) per primitive; a peer written directly in the library
        # makes calls the vocabulary does not see
        self.launch_count = counting.calls if decompose is None else None

    def run(self) -> None:
        self.out = self.decompose(self.ops, **self.inputs, **self.attrs)


class _CountingOps:
    """An Ops that counts the primitive calls made through it (reshape, a view, aside)."""

    def __init__(self, ops):
        self._ops, self.calls = ops, 0

    def __getattr__(self, name):
        f = getattr(self._ops, name)
        if name == "reshape" or not callable(f):
            return f

        def counted(*args, **kwargs):
            self.calls += 1
            return f(*args, **kwargs)

        return counted


class BinaryKernelOps:
    """For a backend's Ops whose add and mul are one elementwise kernel, reached through its
    `_binary(op, a, b)` with op "add" or "mul" (listed before Ops among the bases)."""

    def add(self, a, b):
        return self._binary("add", a, b)

    def mul(self, a, b):
        return self._binary("mul", a, b)


_loaded: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend instance called `name` (its module imported on first use)."""
    if name not in BACKEND_MODULES:
        raise KeyError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_MODULES)}")
    if name not in _loaded:
        module = importlib.import_module(BACKEND_MODULES[name])
        _loaded.update(module.BACKENDS)
    return _loaded[name]


def all_backends() -> list[Backend]:
    return [get_backend(n) for n in BACKEND_MODULES]
