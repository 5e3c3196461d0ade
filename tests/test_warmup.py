"""Compiling first (harness.warmup): what is cold is prepared in parallel before any timing,
once; a kernel that crashes or hangs there costs at most its time limit, and the timed pass
records it as it would have."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import warmup
from harness.cases import load_cases, select
from harness.runner import plan

ROOT = Path(__file__).resolve().parents[1]


class _AlwaysCold:
    def __init__(self, variants):
        self.variants = variants

    def needs_warming(self, impl):
        return impl.variant in self.variants


def _jobs(registry, fusion, variants, dtypes=("float32",), backends=("cpu", "wgsl", "torch", "cuda")):
    cases = select(load_cases(registry), suite="smoke", fusions=[fusion])
    impls = [i for i in registry.impls.values()
             if i.fusion == fusion and i.variant in variants and i.backend in backends]
    return plan(cases, impls, list(dtypes))


def test_only_what_its_backend_calls_cold_is_warmed(registry, monkeypatch):
    monkeypatch.setattr(warmup, "get_backend", lambda name: _AlwaysCold({"fused"}))
    jobs = _jobs(registry, "rmsnorm_gemm", {"fused", "unfused"}, ("float32", "bfloat16"))
    groups = dict(warmup.warm_groups(jobs))
    assert set(groups) == {i.backend for j in jobs for i in j.impls if i.variant == "fused"}
    for backend, items in groups.items():
        assert {key for _, _, key in items} == {f"rmsnorm_gemm/{backend}/fused"}
        assert len(items) == sum(1 for j in jobs for i in j.impls if i.key == f"rmsnorm_gemm/{backend}/fused")


def test_nothing_cold_means_no_warm_up(registry, monkeypatch):
    monkeypatch.setattr(warmup, "get_backend", lambda name: _AlwaysCold(set()))
    said = []
    assert warmup.warm(_jobs(registry, "add_rmsnorm", {"fused"}), say=said.append) == 0.0
    assert said == []


def test_crashing_and_hanging_kernels_cost_their_time_limit_only(registry, monkeypatch):
    """A segfault ends its process (the rest of that backend's share goes to the timed pass);
    a hang is killed after the time limit; the other kernels are prepared."""
    monkeypatch.setenv("FUSEBENCH_PLUGINS", "tests.plugins.broken_kernels")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    from harness.registry import discover

    reg = discover()
    monkeypatch.setattr(warmup, "get_backend", lambda name: _AlwaysCold({"broken_segfault", "broken_hang", "unfused"}))
    said = []
    started = time.monotonic()
    for bad in ("broken_segfault", "broken_hang"):
        jobs = _jobs(reg, "rmsnorm_gemm", {bad})
        warmup.warm(jobs, timeout_s=3, say=said.append)
    assert time.monotonic() - started < 120, said
    assert any("stopped after 3 s" in s for s in said), said
    said.clear()
    warmup.warm(_jobs(reg, "rmsnorm_gemm", {"unfused"}, backends=("cpu",)), timeout_s=60, say=said.append)
    n = len(_jobs(reg, "rmsnorm_gemm", {"unfused"}, backends=("cpu",)))
    assert said[-1].startswith(f"compiling first: {n} of {n} prepared"), said


@pytest.mark.skipif(not Path("/usr/bin/env").exists(), reason="needs a POSIX machine")
def test_a_first_run_compiles_first_and_a_second_does_not(tmp_path):
    """With empty caches a bench says it compiles first and fills numba's cache; the same
    bench again finds it warm."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               PYTHONPATH=str(ROOT), FUSEBENCH_PROGRESS="off", FUSEBENCH_PLUGINS="")
    env.pop("NUMBA_CACHE_DIR", None)
    argv = [sys.executable, "-m", "harness.cli", "bench", "--fusion", "add_rmsnorm", "--backend", "cpu",
            "--variant", "fused", "--case", "smoke.awkward", "--dtype", "float32", "--budget", "0.02"]
    first = subprocess.run(argv + ["-o", str(tmp_path / "a.jsonl")], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "compiling first: 1 implementation-cases on cpu" in first.stderr, first.stderr[-2000:]
    assert "compiling first: 1 of 1 prepared" in first.stderr, first.stderr[-2000:]
    again = subprocess.run(argv + ["-o", str(tmp_path / "b.jsonl")], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "compiling first" not in again.stderr, again.stderr[-2000:]
