"""Implementations as launch plans: a fused GPU kernel binds its plan once in __init__
(`self.launches`: CUDA's cuda_launch.bind, WGSL's WgslBackend.bind) and the base
Prepared.run() launches it, so the harness counts, captures and replays launches without
help from the implementation. Here on WGSL (lavapipe); CUDA's plans are checked against
an H200's limits in tests/test_cuda_launch.py."""

from __future__ import annotations

import pytest

from harness.backends import Prepared, get_backend
from harness.cases import load_cases, select


def _wgsl():
    backend = get_backend("wgsl")
    ok, why = backend.probe()
    if not ok:
        pytest.skip(f"wgsl unavailable: {why}")
    return backend


def test_every_fused_wgsl_kernel_runs_its_bound_plan(registry):
    backend = _wgsl()
    cases = {c.fusion: c for c in select(load_cases(registry), suite="smoke")}
    for impl in registry.select(backends=["wgsl"], kinds=["fused"]):
        spec, case = registry.fusions[impl.fusion], cases[impl.fusion]
        dims, attrs = spec.split(case.params)
        prepared = impl.prepare(spec, spec.make_inputs(dims, "float32", seed=11), attrs, "float32")
        assert type(prepared).run is Prepared.run, f"{impl.key} launches outside its plan"
        assert len(prepared.launches) >= 1
        assert backend.launches(prepared) == len(prepared.launches), impl.key


def test_a_plan_naming_a_buffer_it_does_not_have_is_refused():
    from harness.backends.wgsl import Dispatch

    backend = _wgsl()
    x = backend.upload(__import__("numpy").ones(4, "float32"))
    with pytest.raises(KeyError, match="toy/wgsl: no buffer named y"):
        backend.bind([Dispatch("", "main", (1, 1, 1), (("x", "in"), ("y", "out")))], {"x": x}, "toy/wgsl")


def test_a_kernel_without_run_or_plan_says_so():
    class Planless(Prepared):
        pass

    with pytest.raises(NotImplementedError, match="Planless: no run\\(\\) and no bound launch plan"):
        Planless(get_backend("cpu"), None, {}, {}, "float32").run()
