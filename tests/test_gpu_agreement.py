"""On a GPU: the harness's device time agrees with an independent timer.

Three workloads on torch_cuda, timed by the harness (harness.timing.measure on what
TorchBackend.timing_target returns: a CUDA-graph replay with the stream held, hot cache)
and by triton.testing.do_bench_cudagraph (many replays of one captured graph): a 1 GiB
copy, F.linear at (1, 4096) x (6144, 4096) in float16 (Llama-3-8B's QKV at decode) and
SDPA decode at T = 4096 (32 q / 8 kv heads, d 128). They must agree within 10 % or
2 µs. Skipped where there is no CUDA device or no triton."""

from __future__ import annotations

import pytest

from harness.backends import Prepared, get_backend
from harness.timing import measure


def _torch_cuda():
    backend = get_backend("torch_cuda")
    ok, why = backend.probe()
    if not ok:
        pytest.skip(why)
    return backend


class _Work(Prepared):
    def __init__(self, backend, fn, out):
        super().__init__(backend, None, {}, {}, "float16")
        self.fn, self.out = fn, {"y": out}

    def run(self):
        self.fn()


def _workloads(torch):
    import torch.nn.functional as F

    dev = "cuda"
    a = torch.randn(2**30 // 4, device=dev)
    b = torch.empty_like(a)
    x = torch.randn(1, 4096, device=dev, dtype=torch.float16)
    w = torch.randn(6144, 4096, device=dev, dtype=torch.float16) / 64
    y = torch.empty(1, 6144, device=dev, dtype=torch.float16)
    q = torch.randn(1, 32, 1, 128, device=dev, dtype=torch.float16)
    k = torch.randn(1, 8, 4096, 128, device=dev, dtype=torch.float16)
    v = torch.randn_like(k)
    o = torch.empty_like(q)
    return {
        "copy 1 GiB": (lambda: b.copy_(a), b),
        "F.linear (1, 4096) x (6144, 4096) float16": (lambda: torch.matmul(x, w.t(), out=y), y),
        "SDPA decode T = 4096": (lambda: o.copy_(F.scaled_dot_product_attention(q, k, v, enable_gqa=True)), o),
    }


def test_device_time_agrees_with_triton_do_bench_cudagraph():
    backend = _torch_cuda()
    triton_testing = pytest.importorskip("triton.testing")
    import torch

    rows = []
    for name, (fn, out) in _workloads(torch).items():
        timed, method = backend.timing_target(_Work(backend, fn, out))
        assert method.startswith("cuda-graph replay"), method
        ours = measure(backend, timed, budget_s=0.5, cold=False).median
        theirs = triton_testing.do_bench_cudagraph(fn, rep=200) / 1e3
        rows.append((name, ours, theirs))
    report = "; ".join(f"{n}: harness {o * 1e6:.1f} µs, do_bench_cudagraph {t * 1e6:.1f} µs" for n, o, t in rows)
    print(report)
    for name, ours, theirs in rows:
        assert abs(ours - theirs) <= max(0.10 * theirs, 2e-6), report
