"""Cold CPU timing: the flush leaves the caches cold and wakes only the thread pool the
timed kernel runs on. numba's workers keep spinning for a while after a wake, and on a
2-core machine the NumPy chain's BLAS threads then fought them: rmsnorm_gemm's chain at
qwen2_5_0_5b.decode took 4.1 ms cold against 0.57 ms, a 1.4x kernel read "9.6x chain"."""

from __future__ import annotations

from harness.backends import ChainPrepared, get_backend
from harness.cases import load_cases, select
from harness.timing import measure


def test_the_pool_is_woken_for_numba_kernels_and_never_for_the_numpy_chain(registry, monkeypatch):
    import harness.backends.cpu as cpu_backend

    woken = []
    monkeypatch.setattr(cpu_backend, "wake_threads", lambda: woken.append(1))
    cpu = get_backend("cpu")
    spec = registry.fusions["add_rmsnorm"]
    case = next(c for c in select(load_cases(registry), suite="smoke") if c.fusion == "add_rmsnorm")
    dims, attrs = spec.split(case.params)
    inputs = spec.make_inputs(dims, "float32", seed=3)
    chain = registry.impls["add_rmsnorm/cpu/unfused"].prepare(spec, inputs, attrs, "float32")
    fused = registry.impls["add_rmsnorm/cpu/fused"].prepare(spec, inputs, attrs, "float32")
    assert isinstance(chain, ChainPrepared) and not isinstance(fused, ChainPrepared)
    measure(cpu, chain, budget_s=0.0, warmup_s=None, min_samples=4)
    assert woken == []
    measure(cpu, fused, budget_s=0.0, warmup_s=None, min_samples=4)
    assert len(woken) == 4
    measure(cpu, fused, budget_s=0.0, warmup_s=None, min_samples=4, cold=False)
    assert len(woken) == 4  # hot: no flush, nothing to wake
