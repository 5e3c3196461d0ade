"""torch peers: the same decomposition in torch eager, and under torch.compile.

These are what a user would pick instead of a hand-fused kernel. Backend "torch" runs on
the CPU, "torch_cuda" on the first CUDA device. Each primitive is the torch function a
user would call (F.rms_norm, F.linear, ...) in the storage dtype; torch.compile fuses
what Inductor can. Compiled functions are cached per (fusion, attributes, device) and
Inductor's on-disk cache goes to ~/.cache/fusebench/inductor unless set.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np

from harness.backends import Backend, Prepared, Replay
from harness.backends.gpu_timing import Hold, graph_launches, method_name
from harness.backends.cpu import cpu_fingerprint, host_peak, host_peak_again, last_level_cache_bytes
from harness.dtypes import DTYPES
from harness.ops import MAX_POSITION, Ops, rope_angles

def _torch():
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "fusebench" / "inductor"))
    import torch

    return torch


class TorchOps(Ops):
    """torch primitives in the storage dtype (whatever torch itself does inside). Rotary
    tables are built once per (device, d, theta) and looked up by position, the way
    engines keep a cos/sin cache, never inside a timed run."""

    _rope_tables: dict = {}

    def __init__(self, device: str):
        self.name = f"torch-{device}"

    def rms_norm(self, x, gamma, eps):
        import torch.nn.functional as F

        return F.rms_norm(x, (x.shape[-1],), gamma, eps)

    def layer_norm(self, x, gamma, beta, eps):
        import torch.nn.functional as F

        return F.layer_norm(x, (x.shape[-1],), gamma, beta, eps)

    def linear(self, x, w):
        import torch.nn.functional as F

        return F.linear(x, w)

    def add(self, a, b):
        return a + b

    def mul(self, a, b):
        return a * b

    def silu(self, x):
        import torch.nn.functional as F

        return F.silu(x)

    def split(self, x, sizes):
        return [t.contiguous() for t in x.split(list(sizes), dim=-1)]

    def reshape(self, x, shape):
        return x.reshape(shape)

    def rope(self, x, pos, theta):
        # float32 rotation (as Inductor computes 16-bit pointwise ops), one rounding out
        import torch

        d = x.shape[-1]
        c, s = self.rope_table(x.device, d, theta)
        c, s = c.index_select(0, pos)[:, None, :], s.index_select(0, pos)[:, None, :]
        xf = x.to(torch.float32)
        x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)

    @classmethod
    def rope_table(cls, device, d: int, theta: float):
        """(cos, sin), each (MAX_POSITION, d/2) float32, angles in float64 (rope_angles)."""
        import torch

        key = (str(device), int(d), float(theta))
        if key not in cls._rope_tables:
            ang = torch.from_numpy(rope_angles(np.arange(MAX_POSITION), d, theta))
            cls._rope_tables[key] = (ang.cos().to(torch.float32).to(device), ang.sin().to(torch.float32).to(device))
        return cls._rope_tables[key]

    def matmul_nt(self, a, b):
        return a @ b.transpose(-1, -2)

    def matmul(self, a, b):
        return a @ b

    def scale(self, x, s):
        return x * s

    def causal_mask(self, x):
        import torch

        S, T = x.shape[-2:]
        future = torch.ones(S, T, dtype=torch.bool, device=x.device).triu(T - S + 1)
        return x.masked_fill(future, float("-inf"))

    def length_mask(self, x, lens):
        import torch

        past_end = torch.arange(x.shape[-1], device=x.device)[None, :] >= lens[:, None]
        return x.masked_fill(past_end[:, None, None, :], float("-inf"))

    def softmax(self, x):
        # torch's own softmax; a fully masked row (all -inf) gives NaN there, and zeros in
        # the vocabulary, so such rows are zeroed after
        return x.softmax(dim=-1).masked_fill(x.amax(dim=-1, keepdim=True) == float("-inf"), 0.0)


class CompiledChain(Prepared):
    """The decomposition under torch.compile (compiled while prepared, never timed)."""

    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        shapes = tuple((k, np.shape(v)) for k, v in sorted(inputs.items()))
        self.fn = backend.compiled(spec, attrs, (dtype, shapes))
        self.bind_inputs(inputs, list(inputs))
        self.out = self.fn(**self.inputs)  # the first call compiles
        self.path = "torch.compile (default mode, static shapes)"
        backend.synchronize()

    def run(self):
        self.out = self.fn(**self.inputs)


class _Minimal(Prepared):
    """The timer's overhead probe: one tiny in-place add."""

    def __init__(self, backend):
        super().__init__(backend, None, {}, {}, "float32")
        self.t = _torch().zeros(4, device=backend.device)

    def run(self):
        self.t.add_(1.0)


class TorchBackend(Backend):
    dtypes = ("float32", "float16", "bfloat16")

    def __init__(self, name: str, device: str):
        super().__init__()
        self.name = name
        self.device = device
        self.device_kind = "gpu" if device == "cuda" else "cpu"
        self.device_timed = device == "cuda"  # CUDA events; the host clock on the CPU
        self._compiled: dict = {}
        self._flush = None
        self.hold = Hold()

    # 1. probe and fingerprint
    def _probe_impl(self):
        try:
            torch = _torch()
        except ImportError as e:
            return False, f"torch is not installed ({e}); pip install 'fusebench[torch]'"
        if self.device == "cuda" and not torch.cuda.is_available():
            return False, f"torch {torch.__version__} sees no CUDA device"
        return True, ""

    def memory_available(self):
        if self.device != "cuda":
            return None
        torch = _torch()
        free = torch.cuda.mem_get_info()[0]  # plus what torch's caching allocator holds unused
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())

    def fingerprint(self):
        torch = _torch()
        fp = {"torch": torch.__version__, "threads": torch.get_num_threads()}
        if self.device == "cuda":
            p = torch.cuda.get_device_properties(0)
            fp.update(gpu=p.name, cuda_runtime=torch.version.cuda, gpu_memory_gib=round(p.total_memory / 1024**3, 1))
        else:
            fp.update(cpu_fingerprint())
        return fp

    # 2. upload and download
    def upload(self, a):
        torch = _torch()
        a = np.ascontiguousarray(a)
        if a.dtype == DTYPES["bfloat16"]:
            t = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(a.copy())
        return t.to(self.device)

    def write(self, t, a):
        t.copy_(self.upload(a))

    def download(self, t):
        torch = _torch()
        t = t.detach().to("cpu")
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(DTYPES["bfloat16"]).copy()
        return t.numpy().copy()

    def poison(self, t):
        t.fill_(float("nan"))

    # 3. synchronise
    def synchronize(self):
        if self.device == "cuda":
            _torch().cuda.synchronize()

    # 4. timer: on the GPU, events around a graph replay with the stream held
    # (harness.backends.gpu_timing); the host clock on the CPU
    @property
    def timing_method(self):
        return method_name(True) if self.device == "cuda" else Backend.timing_method

    def timing_target(self, prepared):
        """On the GPU, prepared.run() captured into a CUDA graph (torch.cuda.graph, after
        warm-up runs on a side stream, as torch's documentation asks), or the run itself
        with the reason where capture fails."""
        if self.device != "cuda":
            return prepared, self.timing_method
        torch = _torch()
        try:
            return self._capture(prepared), method_name(True)
        except Exception as e:
            torch.cuda.synchronize()
            return prepared, method_name(False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")

    def _capture(self, prepared):
        torch = _torch()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                prepared.run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(graph):
            prepared.run()
        launches = graph_launches(graph.raw_cuda_graph())
        graph.instantiate()
        torch.cuda.synchronize()
        return Replay(prepared, graph.replay, prepared.out, launches, keep=(graph,))

    def time_run(self, prepared):
        if self.device != "cuda":
            return super().time_run(prepared)
        torch = _torch()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def enqueue():
            start.record()
            prepared.run()
            end.record()

        def elapsed():
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3

        return self.hold.sample(lambda cycles: torch.cuda._sleep(int(cycles)), enqueue, start.query, elapsed)

    def minimal_prepared(self):
        return _Minimal(self)

    def flush_cache(self):
        torch = _torch()
        if self._flush is None:
            if self.device == "cuda":
                l2 = torch.cuda.get_device_properties(0).L2_cache_size
                self._flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
            else:
                self._flush = torch.zeros(2 * last_level_cache_bytes(), dtype=torch.uint8)
        self._flush.add_(1)  # read-modify-write: every line passes through the caches

    # 5. primitive ops (eager chain) and the compiled chain
    def ops(self, dtype):
        return TorchOps(self.device)

    def compiled(self, spec, attrs, key=()):
        """spec's decomposition under torch.compile, one compiled function per (fusion,
        attributes, `key`: the caller passes dtype and shapes).

        Each gets a code object of its own: dynamo keeps its compiled graphs on the code
        object and, after `recompile_limit` (8) recompiles of one code object, silently
        runs it eagerly instead; a run over many cases and dtypes would reach that and
        time eager code under the name torch/compile."""
        key = (spec.name, tuple(sorted(attrs.items())), key)
        if key not in self._compiled:
            torch = _torch()
            ops = TorchOps(self.device)

            def chain(**inputs):
                return spec.decompose(ops, **inputs, **attrs)

            code = chain.__code__.replace(co_name=f"fusebench_chain_{len(self._compiled)}")
            fresh = types.FunctionType(code, chain.__globals__, code.co_name, None, chain.__closure__)
            self._compiled[key] = torch.compile(fresh, dynamic=False)
        return self._compiled[key]

    def compiled_chain(self, spec, inputs, attrs, dtype):
        return CompiledChain(self, spec, inputs, attrs, dtype)

    # 6. peak probe
    def measure_peak_again(self):
        return host_peak_again() if self.device != "cuda" else self.measure_peak()

    def measure_peak(self):
        if self.device != "cuda":
            return host_peak()
        torch = _torch()
        a = torch.empty(2**30 // 4, dtype=torch.float32, device="cuda").normal_()
        b = torch.empty_like(a)

        def best(fn, reps=20):
            out = float("inf")
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                out = min(out, start.elapsed_time(end) / 1e3)
            return out

        peak = {"copy_gbps": 2 * a.nbytes / best(lambda: b.copy_(a)) / 1e9}
        n = 8192
        for name, dt in (("", torch.float32), ("_bfloat16", torch.bfloat16), ("_float16", torch.float16)):
            x = torch.randn(n, n, device="cuda", dtype=dt)
            peak[f"matmul_gflops{name}"] = 2 * n**3 / best(lambda: x @ x, reps=10) / 1e9
        return peak


BACKENDS = {"torch": TorchBackend("torch", "cpu"), "torch_cuda": TorchBackend("torch_cuda", "cuda")}
