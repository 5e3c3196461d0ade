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
