"""`fusebench compare`: speed verdicts on distributions with a known answer, accuracy
changes, exit statuses and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.cli import main
from harness.compare import compare, speed
from harness.timing import summarize


def _samples(seed: int, median: float = 1e-3, sigma: float = 0.01, n: int = 50) -> list[float]:
    """Lognormal timing noise around `median` (relative spread about `sigma`)."""
    return list(median * np.exp(np.random.default_rng(seed).normal(0.0, sigma, n)))


def _rec(case="c0", samples=None, verdict="pass", nmse=1e-9, machine="m1", ts="2026-01-01T00:00:00+00:00", **kw):
    r = {"machine": machine, "commit": "abc", "run_id": ts, "timestamp": ts, "fusion": "rmsnorm_gemm",
         "backend": "cpu", "variant": "fused", "impl": "rmsnorm_gemm/cpu/fused", "case": case, "dtype": "float32",
         "status": "ok" if verdict == "pass" else "fail", "verdict": verdict,
         "reason": "" if verdict == "pass" else "NMSE 3e-3 over the bound 1e-5", "nmse": nmse, **kw}
    if samples is not None:
        t = summarize(samples, "cold")
        r.update(time=t.as_dict(), median_s=t.median, noise=t.noise)
    return r


def _write(path, records, extra=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + extra)
    return str(path)


@pytest.mark.parametrize("seed", range(3))
def test_same_distribution_is_same(seed):
    assert speed(_samples(seed), _samples(100 + seed)).verdict == "SAME"


@pytest.mark.parametrize("seed", range(3))
def test_shift_beyond_noise_is_slower_or_faster(seed):
    slow = speed(_samples(seed), _samples(100 + seed, median=1.3e-3))
    assert slow.verdict == "SLOWER" and 1.25 < slow.lo < slow.ratio < slow.hi < 1.35
    fast = speed(_samples(seed), _samples(100 + seed, median=1e-3 / 1.3))
    assert fast.verdict == "FASTER" and fast.hi < 0.8


@pytest.mark.parametrize("seed", range(3))
def test_heavy_overlap_is_unsure(seed):
    noisy = speed(_samples(seed, sigma=0.3, n=15), _samples(100 + seed, median=1.05e-3, sigma=0.3, n=15))
    assert noisy.verdict == "UNSURE" and noisy.lo < 1 < noisy.hi


def test_too_few_samples_is_unsure():
    sp = speed(_samples(0, n=4), _samples(1, median=2e-3, n=4))
    assert sp.verdict == "UNSURE" and "too few" in sp.note


def test_margin_grows_with_noise_not_fixed():
    quiet = speed(_samples(0, sigma=0.001), _samples(1, sigma=0.001))
    loud = speed(_samples(0, sigma=0.2), _samples(1, sigma=0.2))
    assert quiet.margin == pytest.approx(0.01) and loud.margin > 0.04


# A machine that drifts between runs: each run's samples are tight (1 %), but every run's
# level moves by a lognormal factor of about 12 %, as on the CI VM (issue notes: 11 %
# median difference per record between two bench runs of one commit).
DRIFT = 0.12


def _drifting_runs(seed: int, k: int, cases: int = 8, level: float = 1.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for run in range(k):
        shift = float(np.exp(rng.normal(0.0, DRIFT)))
        ts = f"2026-01-0{run + 1}T00:00:00+00:00"
        for c in range(cases):
            recs.append(_rec(f"c{c}", _samples(seed * 1000 + run * 50 + c, median=1e-3 * level * shift), ts=f"{ts}"))
    return recs


def _verdicts(c) -> list[str]:
    return [r["speed"]["verdict"] for r in c.rows]


@pytest.mark.parametrize("seed", range(4))
def test_between_run_drift_alone_is_never_a_change_with_repeated_runs(seed):
    one = compare(_drifting_runs(seed, 1), _drifting_runs(seed + 50, 1))
    assert one.drift is None and one.drift_source == ""
    many = compare(_drifting_runs(seed, 3), _drifting_runs(seed + 50, 3))
    assert many.drift_source == "measured" and many.drift_df == 4  # one per run beyond the first of each side
    assert 0.3 * DRIFT < many.drift < 2 * DRIFT  # three runs a side: a rough estimate
    assert not {"SLOWER", "FASTER"} & set(_verdicts(many)), _verdicts(many)
    for r in many.rows:  # the figures are the geometric means of the three runs
        assert r["speed"]["note"].startswith("3 vs 3 runs")


def test_t_quantiles():
    from harness.compare import _t

    assert _t(0.99, 1) == pytest.approx(63.657, rel=1e-3) and _t(0.99, 4) == pytest.approx(4.604, rel=1e-3)
    assert _t(0.90, 10) == pytest.approx(1.812, rel=1e-3) and _t(0.99, 500) == pytest.approx(2.576, rel=1e-3)


def test_single_runs_of_a_drifting_machine_give_false_alarms_that_drift_removes():
    # the reason for counting the drift: one run a side, same code, levels 25 % apart
    base, new = _drifting_runs(0, 1), [dict(r, median_s=None) for r in _drifting_runs(0, 1)]
    for r in new:
        r["time"] = summarize([v * 1.25 for v in r["time"]["samples"]], "cold").as_dict()
    assert set(_verdicts(compare(base, new))) == {"SLOWER"}
    assert not {"SLOWER", "FASTER"} & set(_verdicts(compare(base, new, drift=DRIFT)))


@pytest.mark.parametrize("seed", range(3))
def test_a_change_well_beyond_the_drift_is_still_found(seed):
    c = compare(_drifting_runs(seed, 3), _drifting_runs(seed + 50, 3, level=2.0))
    assert c.drift_source == "measured" and set(_verdicts(c)) == {"SLOWER"}
    c = compare(_drifting_runs(seed, 3), _drifting_runs(seed + 50, 3, level=0.5))
    assert set(_verdicts(c)) == {"FASTER"}


def test_drift_is_stated_in_the_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    base = _write(tmp_path / "base.jsonl", _drifting_runs(1, 3))
    new = _write(tmp_path / "new.jsonl", _drifting_runs(2, 3))
    main(["compare", base, new])
    assert "between-run spread on this machine" in capsys.readouterr().out
    one = _write(tmp_path / "one.jsonl", _drifting_runs(3, 1))
    main(["compare", one, one, "--drift", "0.1"])
    assert "between-run spread given: 10.0%" in capsys.readouterr().out
    main(["compare", one, one])
    assert "one run a side" in capsys.readouterr().out


def test_newest_record_wins_and_one_sided_records_are_counted():
    base = [_rec("c0", verdict="fail", ts="2026-01-01T00:00:00+00:00"),
            _rec("c0", verdict="pass", ts="2026-01-02T00:00:00+00:00"), _rec("only_base")]
    new = [_rec("c0", verdict="fail"), _rec("only_new"), _rec("only_new2"),
           _rec("c1", status="unavailable", verdict=None)]
    c = compare(base, new)
    assert [(r["case"], r["accuracy"]) for r in c.rows] == [("c0", "NEW FAILURE")]
    assert (c.only_base, c.only_new) == (1, 2)


def test_new_failure_exit_status(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    base = _write(tmp_path / "base.jsonl", [_rec("c0"), _rec("c1"), _rec("c2", verdict="fail")])
    new = _write(tmp_path / "new.jsonl", [_rec("c0", verdict="fail"), _rec("c1", nmse=1e-6), _rec("c2")],
                 extra='{"truncated": ')
    assert main(["compare", base, new]) == 1
    out, err = capsys.readouterr()
    assert "NEW FAILURE" in out and "over the bound" in out and "FIXED" in out and "ACCURACY DRIFT" in out
    assert out.index("NEW FAILURE") < out.index("ACCURACY DRIFT") < out.index("FIXED")
    assert "new.jsonl:4" in err  # the bad line, as a warning
    assert main(["compare", base, new, "--no-fail-on-accuracy"]) == 0


def test_slowdown_exit_status_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    base = _write(tmp_path / "base.jsonl", [_rec("slow", _samples(0)), _rec("fast", _samples(1)),
                                            _rec("same", _samples(2))])
    new = _write(tmp_path / "new.jsonl", [_rec("slow", _samples(10, median=1.3e-3)),
                                          _rec("fast", _samples(11, median=0.7e-3)), _rec("same", _samples(12))])
    assert main(["compare", base, new, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(r["case"], r["speed"]["verdict"]) for r in data["rows"]] == [
        ("slow", "SLOWER"), ("fast", "FASTER"), ("same", "SAME")]
    assert data["failed"] and data["counts"]["SLOWER"] == 1
    assert main(["compare", base, new, "--no-fail-on-slower"]) == 0
    out = capsys.readouterr().out
    assert out.index("SLOWER") < out.index("FASTER") < out.index("SAME")


def test_missing_path_and_no_match_exit_2(tmp_path, capsys):
    base = _write(tmp_path / "base.jsonl", [_rec("c0", machine="m1")])
    assert main(["compare", base, str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err
    other = _write(tmp_path / "other.jsonl", [_rec("c0", machine="m2")])
    assert main(["compare", base, other]) == 2
    err = capsys.readouterr().err
    assert "m1" in err and "m2" in err and "same machine" in err


LLAMA = {"M": 1, "H": 4096, "N": 6144, "eps": 1e-5}


def test_same_name_other_parameters_is_a_different_workload(tmp_path, capsys, monkeypatch):
    """A user case file reusing a shipped case name with other dimensions: those records are
    not compared (they once gave SLOWER up to 74x and exit 1)."""
    monkeypatch.setenv("COLUMNS", "250")
    base = _write(tmp_path / "base.jsonl", [_rec("decode", _samples(0), params=LLAMA),
                                            _rec("prefill", _samples(1), params={**LLAMA, "M": 512})])
    new = _write(tmp_path / "new.jsonl", [_rec("decode", _samples(2, median=74e-3), params={**LLAMA, "M": 64}),
                                          _rec("prefill", _samples(3), params={**LLAMA, "M": 512})])
    assert main(["compare", base, new]) == 0
    out = capsys.readouterr().out
    assert "DIFFERENT WORKLOAD" in out and "M=1, H=4096" in out and "M=64, H=4096" in out and "SLOWER" not in out
    assert "1 matched" in out and "1 different workload" in out and "0 only in BASE, 0 only in NEW" in out
    only = _write(tmp_path / "only.jsonl", [_rec("decode", _samples(2), params={**LLAMA, "M": 64})])
    assert main(["compare", base, only]) == 2
    assert "different workload" in capsys.readouterr().err


def test_records_without_parameters_still_pair():
    c = compare([_rec("c0", _samples(0))], [_rec("c0", _samples(1))])
    assert [r["speed"]["verdict"] for r in c.rows] == ["SAME"]


def test_the_reference_is_never_a_contender(tmp_path, capsys, monkeypatch):
    """An A/A comparison (two runs of one commit) once exited 1 on the float64 reference's
    "SLOWER" record: the yardstick gets no verdict and no say in the exit status."""
    monkeypatch.setenv("COLUMNS", "250")
    ref = dict(backend="reference", variant="float64", kind="reference", impl="rmsnorm_gemm/reference/float64")
    base = _write(tmp_path / "base.jsonl", [_rec("c0", _samples(0)), _rec("c0", _samples(1), dtype="bfloat16", **ref)])
    new = _write(tmp_path / "new.jsonl", [_rec("c0", _samples(2)),
                                          _rec("c0", _samples(3, median=1.3e-3), dtype="bfloat16", **ref)])
    assert main(["compare", base, new]) == 0
    out = capsys.readouterr().out
    assert "float64" not in out and "SLOWER" not in out and "1 matched" in out


def test_one_run_a_side_says_the_verdicts_cannot_see_drift_and_a_slowdown_still_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    base = _write(tmp_path / "base.jsonl", [_rec("c0", _samples(0))])
    new = _write(tmp_path / "new.jsonl", [_rec("c0", _samples(1, median=1.3e-3))])
    assert main(["compare", base, new]) == 1
    out = capsys.readouterr().out
    assert "one run a side: the verdicts cannot see between-run drift" in out
    assert "1 SLOWER/FASTER may be the machine's drift between the two runs" in out
    assert main(["compare", base, new, "--json"]) == 1
    assert "cannot see between-run drift" in json.loads(capsys.readouterr().out)["note"]


def _wgsl(case, samples, api):
    return _rec(case, samples, backend="wgsl", impl="rmsnorm_gemm/wgsl/fused",
                fingerprint={"backends": {"wgsl": {"adapter_device": "llvmpipe (LLVM 15.0.6, 256 bits)",
                                                   "backend_type": api, "api": api}}})


def test_vulkan_and_opengl_records_are_not_paired(tmp_path, capsys, monkeypatch):
    """Without a Vulkan driver wgpu falls back to OpenGL on llvmpipe: another machine, as far
    as the figures go."""
    monkeypatch.setenv("COLUMNS", "250")
    base = _write(tmp_path / "base.jsonl", [_wgsl("c0", _samples(0), "Vulkan"), _wgsl("c1", _samples(1), "Vulkan")])
    new = _write(tmp_path / "new.jsonl", [_wgsl("c0", _samples(2, median=2e-3), "OpenGL"),
                                          _wgsl("c1", _samples(3), "Vulkan")])
    assert main(["compare", base, new]) == 0
    out = capsys.readouterr().out
    assert "DIFFERENT API" in out and "Vulkan vs OpenGL" in out and "SLOWER" not in out and "1 same" in out
