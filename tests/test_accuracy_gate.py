"""The gate can fail: zeros, a NaN, an unwritten element, a wrong shape and a raising
kernel each fail it, and a faithfully rounded output (within one ULP, unbiased) passes, in
every dtype; each of its three rules (harness.accuracy) bites on its own, and the rounding
model behind them predicts what the unfused chain really does.
The mutation suite, every fusion against many more wrong kernels, is tests/test_mutants.py."""

from __future__ import annotations

import numpy as np
import pytest

from harness.accuracy import judge, metrics
from harness.cases import Case
from harness.dtypes import np_dtype, step_ulps, ulp_distance
from harness.runner import Job, Options, run_job

DTYPES = ["float32", "float16", "bfloat16"]
EXPECT = {"broken_zeros": "fail", "broken_nan": "fail", "broken_unwritten": "fail", "broken_shape": "fail",
          "broken_raises": "error", "faithful": "ok"}


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
def test_broken_kernels_fail_and_a_faithful_one_passes(registry, broken, variant, dtype):
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
    exact = {"y": ref}
    rounded = {"y": ref.astype(np_dtype(dtype))}
    v = judge(rounded, exact, rounded, dtype)
    assert v.passed, v.reasons
    assert v.worst.max_ulp <= 0.5 and 0 < v.worst.nmse < v.worst.nmse_bound
    v = judge({"y": np.zeros_like(ref)}, exact, rounded, dtype)
    assert not v.passed and v.worst.nmse == pytest.approx(1.0)
    nan = ref.copy()
    nan[3, 4] = np.nan
    v = judge({"y": nan}, exact, rounded, dtype)
    assert not v.passed and v.worst.nonfinite_mismatch == 1
    inf = ref.copy()
    inf[0, 0] = np.inf
    assert not judge({"y": inf}, exact, rounded, dtype).passed


def test_nan_where_reference_has_nan_passes():
    ref = np.array([[1.0, np.nan, 3.0]])
    assert judge({"y": ref.astype(np.float32)}, {"y": ref}, {"y": ref}, "float32").passed
    assert not judge({"y": np.array([[1.0, 2.0, 3.0]], np.float32)}, {"y": ref}, {"y": ref}, "float32").passed


def test_k_times_chain_rule():
    """An error within the model's bound but more than 2x the chain's still fails."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((4, 64))
    sigma2 = {"y": (1e-6 * ref) ** 2}  # model bound 8e-6 of |y|, floor 1e-6
    chain = ref * (1 + 1e-6 * rng.standard_normal(ref.shape))
    worse = ref * (1 + 3e-6 * rng.standard_normal(ref.shape))
    v = judge({"y": worse}, {"y": ref}, {"y": chain}, "float64", allowance=sigma2)
    assert not v.passed and "chain rule" in v.reasons[0] and "2x the unfused chain's" in v.reasons[0]
    assert judge({"y": chain * (1 + 1e-7)}, {"y": ref}, {"y": chain}, "float64", allowance=sigma2).passed


def test_floor_never_exceeds_a_small_fraction_of_the_output():
    """However loose the model, with an exact chain an error of 1/32 of the output's norm
    fails, and an output of zeros always fails the chain rule."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((8, 64))
    loose = {"y": np.full_like(ref, 10.0)}  # a model that allows errors 10x the values
    off = ref * (1 + (1 / 32 + 1e-3) * rng.choice([-1.0, 1.0], size=ref.shape))
    v = judge({"y": off}, {"y": ref}, {"y": ref}, "bfloat16", allowance=loose)
    assert not v.passed and "chain rule" in v.reasons[0]
    v = judge({"y": np.zeros_like(ref)}, {"y": ref}, {"y": ref + 0.1 * ref}, "bfloat16", allowance=loose)
    assert not v.passed


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_wrong_row_among_many_fails_by_the_row_rule(dtype):
    """512 rows, one of them 10 % off: the whole output's error (0.4 % of its norm) passes
    both global rules against a chain 0.5 % off, the row rule does not."""
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((512, 64))
    chain = ref * (1 + 0.005 * rng.standard_normal(ref.shape))
    sigma2 = {"y": (0.005 * ref) ** 2}
    out = ref.copy()
    out[300] *= 1.10
    v = judge({"y": out}, {"y": ref}, {"y": chain}, dtype, allowance=sigma2)
    assert not v.passed and len(v.reasons) == 1, v.reasons
    assert "row rule: 1 of 512 rows off; worst row (300,)" in v.reasons[0]
    out[300] = ref[300]
    assert judge({"y": out}, {"y": ref}, {"y": chain}, dtype, allowance=sigma2).passed


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_rounding_model_predicts_the_chains_error(registry, dtype):
    """On every smoke case (value shape "normal"), the model's σ is within a factor 4 of the
    NumPy chain's actual error, and below 2 unit roundoffs of the output's norm: loose
    enough for any honest order of work, tight enough that zeros fail by 4x or more."""
    from harness.accuracy import Yardstick
    from harness.cases import load_cases, select
    from harness.dtypes import UNIT_ROUNDOFF

    for case in select(load_cases(registry), suite="smoke"):
        spec = registry.fusions[case.fusion]
        dims, attrs = spec.split(case.params)
        yard = Yardstick.for_inputs(spec, spec.make_inputs(dims, dtype, 11), attrs, dtype)
        for name in yard.reference:
            y = yard._yard(name)
            assert 0.25 <= y.chain_err / y.sigma_norm <= 4, (case.id, case.fusion, name, y.chain_err, y.sigma_norm)
            assert y.sigma_norm <= 2 * UNIT_ROUNDOFF[dtype] * y.ref_norm, (case.fusion, name)


def test_ulp_distance_counts_representable_steps():
    a = np.array([1.0, -1.0, 0.0, 1000.0], dtype=np.float16)
    assert list(ulp_distance(step_ulps(a, "float16", 3), a, "float16")) == [3, 3, 3, 3]
    assert ulp_distance(np.array([-0.0]), np.array([0.0]), "float32")[0] == 0
    m = metrics(np.float32([1.0, 2.0]), np.array([1.0, 2.0]), "float32")
    assert m.nmse == 0 and m.max_ulp == 0


def test_overflow_of_the_output_dtype_expects_inf():
    ref = np.array([[1.0, 1e6, -2.0]])  # 1e6 is beyond float16's range
    ok = np.array([[1.0, np.inf, -2.0]], dtype=np.float16)
    assert judge({"y": ok}, {"y": ref}, {"y": ok}, "float16").passed
    wrong = np.array([[1.0, 65504.0, -2.0]], dtype=np.float16)
    assert not judge({"y": wrong}, {"y": ref}, {"y": ok}, "float16").passed
    assert not judge({"y": np.array([[np.inf, 1e6, -2.0]])}, {"y": ref}, {"y": ref}, "float32").passed
