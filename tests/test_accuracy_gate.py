"""The gate can fail: zeros, a NaN, an unwritten element, a wrong shape and a raising
kernel each fail it, and an output one ULP from the reference passes, in every dtype."""

from __future__ import annotations

import numpy as np
import pytest

from harness.accuracy import judge, metrics
from harness.cases import Case
from harness.dtypes import step_ulps, ulp_distance
from harness.runner import Job, Options, run_job

DTYPES = ["float32", "float16", "bfloat16"]
EXPECT = {"broken_zeros": "fail", "broken_nan": "fail", "broken_unwritten": "fail", "broken_shape": "fail",
          "broken_raises": "error", "one_ulp": "ok"}


@pytest.fixture(scope="module")
def broken():
    import tests.plugins.broken_kernels  # noqa: F401  (declares the broken implementations)
    from harness.registry import _declared_impls

    mine = {k: v for k, v in _declared_impls.items() if v.origin == "tests.plugins.broken_kernels"}
    yield {k.split("/")[-1]: v for k, v in mine.items()}
    for k in mine:  # later registries (discover() in other test modules) must not see them
        _declared_impls.pop(k, None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", sorted(EXPECT))
def test_broken_kernels_fail_and_one_ulp_passes(registry, broken, variant, dtype):
    case = Case("rmsnorm_gemm", "t.awkward", "test", {"M": 3, "H": 129, "N": 67}, (dtype,), ("smoke",), "t.toml", 1)
    records = []
    run_job(registry, Job(case, dtype, [broken[variant]]), Options(), records.append)
    (rec,) = records
    assert rec["status"] == EXPECT[variant], rec.get("reason")
    if EXPECT[variant] != "ok":
        assert rec["verdict"] == "fail" and rec["reason"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_judge_figures(dtype):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((7, 33))
    exact = {"y": ref.astype(np.float64)}
    chain = {"y": ref}
    one_ulp = step_ulps(ref, dtype, 1)
    v = judge({"y": one_ulp}, exact, chain, dtype, nmse_bound=1e-3)
    assert v.passed, v.reasons
    assert v.worst.max_ulp <= 1.0
    v = judge({"y": np.zeros_like(ref)}, exact, chain, dtype, nmse_bound=1e-3)
    assert not v.passed and v.worst.nmse == pytest.approx(1.0)
    nan = ref.copy()
    nan[3, 4] = np.nan
    v = judge({"y": nan}, exact, chain, dtype, nmse_bound=1e-3)
    assert not v.passed and v.worst.nonfinite_mismatch == 1
    inf = ref.copy()
    inf[0, 0] = np.inf
    assert not judge({"y": inf}, exact, chain, dtype, nmse_bound=1e-3).passed


def test_nan_where_reference_has_nan_passes():
    ref = np.array([[1.0, np.nan, 3.0]])
    assert judge({"y": ref.astype(np.float32)}, {"y": ref}, {"y": ref}, "float32", 1e-9).passed
    assert not judge({"y": np.array([[1.0, 2.0, 3.0]], np.float32)}, {"y": ref}, {"y": ref}, "float32", 1e-9).passed


def test_k_times_chain_rule():
    """An error within the NMSE bound but far worse than the chain's still fails."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((4, 64))
    chain = ref * (1 + 1e-6 * rng.standard_normal(ref.shape))
    worse = ref * (1 + 1e-4 * rng.standard_normal(ref.shape))
    v = judge({"y": worse.astype(np.float32)}, {"y": ref}, {"y": chain}, "float32", nmse_bound=1e-6)
    assert not v.passed and "unfused chain" in v.reasons[0]


def test_ulp_distance_counts_representable_steps():
    a = np.array([1.0, -1.0, 0.0, 1000.0], dtype=np.float16)
    assert list(ulp_distance(step_ulps(a, "float16", 3), a, "float16")) == [3, 3, 3, 3]
    assert ulp_distance(np.array([-0.0]), np.array([0.0]), "float32")[0] == 0
    m = metrics(np.float32([1.0, 2.0]), np.array([1.0, 2.0]), "float32")
    assert m.nmse == 0 and m.max_ulp == 0


def test_overflow_of_the_output_dtype_expects_inf():
    ref = np.array([[1.0, 1e6, -2.0]])  # 1e6 is beyond float16's range
    ok = np.array([[1.0, np.inf, -2.0]], dtype=np.float16)
    assert judge({"y": ok}, {"y": ref}, {"y": ok}, "float16", 1e-5).passed
    wrong = np.array([[1.0, 65504.0, -2.0]], dtype=np.float16)
    assert not judge({"y": wrong}, {"y": ref}, {"y": ok}, "float16", 1e-5).passed
    assert not judge({"y": np.array([[np.inf, 1e6, -2.0]])}, {"y": ref}, {"y": ref}, "float32", 1e-9).passed
