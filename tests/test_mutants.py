"""The accuracy gate has teeth in every dtype: wrong kernels (tests/plugins/mutants.py,
registered through $FUSEBENCH_PLUGINS) fail on every smoke and quick case of every fusion
in float32, float16 and bfloat16, while honest ones (the reference rounded once; the
decomposition in float32, rounded once) pass there and on shapes and values hypothesis
draws, and so does the same-dtype NumPy chain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cases import Case, load_cases, select
from harness.registry import PLUGINS_ENV, discover
from harness.runner import Job, Options, plan, run_job

PLUGIN = "tests.plugins.mutants"


@pytest.fixture(scope="module")
def reg():
    from harness.registry import _declared_impls

    mp = pytest.MonkeyPatch()
    mp.setenv(PLUGINS_ENV, PLUGIN)
    registry = discover(entry_points=False)
    mp.undo()
    assert not registry.problems, registry.problems
    yield registry
    for key in [k for k, v in _declared_impls.items() if v.origin == PLUGIN]:  # later registries must not see them
        _declared_impls.pop(key)


def plugin_impls(reg, fusion, prefix):
    return [i for i in reg.select(fusions=[fusion]) if i.origin == PLUGIN and i.variant.startswith(prefix)]


def _table(records) -> str:
    rows = [f"  {r['variant']:32s} {r['status']:11s} NMSE {r.get('nmse', float('nan')):.3g}  "
            f"bound {r.get('nmse_bound') or float('nan'):.3g}" for r in records]
    return "\n".join(rows)


FUSIONS = sorted(discover(entry_points=False).fusions)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_mutants_fail_and_honest_kernels_pass_on_smoke_and_quick_cases(reg, fusion):
    cases = [c for c in select(load_cases(reg), suite="quick", fusions=[fusion])]
    assert any("smoke" in c.suites for c in cases) and any("smoke" not in c.suites for c in cases)
    mutants, honest = plugin_impls(reg, fusion, "mutant_"), plugin_impls(reg, fusion, "honest_")
    applied: set[str] = set()
    for job in plan(cases, mutants + honest):
        records: list[dict] = []
        run_job(reg, job, Options(), records.append)
        where = f"{fusion} {job.case.id} {job.dtype}:\n{_table(records)}"
        for rec in records:
            if rec["variant"].startswith("honest_"):
                assert rec["status"] == "ok", f"honest {rec['variant']} failed: {rec['reason']}\n{where}"
            elif rec["status"] != "unavailable":  # unavailable: the mutant does not apply to this case
                applied.add(rec["variant"])
                assert rec["status"] == "fail" and rec["reason"], f"{rec['variant']} passed the gate\n{where}"
    generic = {"zeros", "constant", "neighbour_row", "one_row_negated", "tail_zeroed", "coarser"}
    assert {f"mutant_{m}" for m in generic} <= applied


def test_every_mutant_applies_somewhere(reg):
    """No mutant is a no-op everywhere (which would make its test pass vacuously)."""
    from tests.plugins.mutants import MUTANTS

    applied = set()
    for case in select(load_cases(reg), suite="smoke"):
        spec = reg.fusions[case.fusion]
        dims, attrs = spec.split(case.params)
        inputs = spec.make_inputs(dims, "float32", 0)
        for name, fn in MUTANTS.items():
            try:
                fn(spec, inputs, attrs, "float32")
                applied.add(name)
            except Exception:
                pass
    assert applied == set(MUTANTS)


def test_failed_rules_say_their_figures(reg):
    """Each failure names the rule, the value, the bound and how far over; the row rule
    names the worst row."""
    case = Case("decode_attention", "t.heads", "test", {"B": 2, "T": 300, "n_heads": 8, "n_kv_heads": 2,
                                                        "head_dim": 64}, ("bfloat16",), ("smoke",), "t.toml", 1)
    records: list[dict] = []
    chosen = [reg.impls[f"decode_attention/cpu/mutant_{m}"] for m in ("zeros", "one_row_negated")]
    run_job(reg, Job(case, "bfloat16", chosen), Options(), records.append)
    zeros, negated = records
    assert "model bound: error" in zeros["reason"] and "over" in zeros["reason"]
    assert "chain rule: error" in zeros["reason"] and "the floor" in zeros["reason"]
    assert "row rule: 1 of 16 rows off; worst row (" in negated["reason"]
    assert zeros["nmse"] == pytest.approx(1.0) and 0 < zeros["nmse_bound"] < 1e-3


@pytest.mark.parametrize("fusion", FUSIONS)
def test_honest_kernels_and_the_chain_pass_drawn_cases(reg, fusion):
    """Shapes from the spec's strategy (awkward sizes), every value shape it declares
    (outliers, near-constant rows, logits near ±80, empty sequences), every dtype: the
    honest kernels pass, and the NumPy chain passes the rules against the reference that
    do not mention itself (model bound and rows)."""
    spec = reg.fusions[fusion]
    honest = plugin_impls(reg, fusion, "honest_")

    @settings(max_examples=min(8, settings().max_examples))
    @given(dims=spec.strategy(), dtype=st.sampled_from(spec.dtypes), value_shape=st.sampled_from(spec.value_shapes),
           seed=st.integers(0, 2**16))
    def prop(dims, dtype, value_shape, seed):
        from harness.accuracy import Yardstick

        case = Case(fusion, "prop.case", "property", dict(dims), (dtype,), ("smoke",), "<hypothesis>", 0)
        records: list[dict] = []
        run_job(reg, Job(case, dtype, honest), Options(seed=seed, value_shape=value_shape), records.append)
        for rec in records:
            assert rec["status"] == "ok", f"{rec['impl']} {dims} {dtype} {value_shape} seed={seed}: {rec['reason']}"
        full_dims, attrs = spec.split(dims)
        inputs = spec.make_inputs(full_dims, dtype, seed, value_shape)
        yard = Yardstick.for_inputs(spec, inputs, attrs, dtype)
        verdict = yard.judge(yard.chain)
        assert verdict.passed, f"the NumPy chain {dims} {dtype} {value_shape} seed={seed}: {verdict.reasons}"

    prop()
