"""The end-of-run summary (harness.textreport.print_summary) and the progress estimate
(harness.progress), on records and clocks made up here: no kernel runs."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from harness.progress import Estimator, LinePrinter, duration_text, every_s, mode
from harness.report import speedup_interval
from harness.textreport import aggregate, print_summary, summary_lines, unavailable_groups

CUDA_WHY = "no CUDA device: cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"


def rec(fusion="add_rmsnorm", backend="cpu", variant="fused", kind=None, case="smoke.awkward", dtype="float32",
        status="ok", median=None, noise=0.01, **extra) -> dict:
    kind = kind or {"fused": "fused", "unfused": "unfused", "float64": "reference"}.get(variant, "peer")
    r = {"fusion": fusion, "backend": backend, "variant": variant, "kind": kind, "impl": f"{fusion}/{backend}/{variant}",
         "case": case, "dtype": dtype, "status": status, "machine": "m", "commit": "c0ffee", "run_id": "r1",
         "timestamp": "2026-12-04T00:00:00+00:00", "params": {"M": 3, "H": 129}, "params_id": "p"}
    if status == "ok":
        r.update(verdict="pass", nmse=1e-14, max_ulp=2.0)
    elif status in ("fail", "error"):
        r.update(verdict="fail", reason="model bound: ‖e‖ 1.0 > 8σ")
    if median is not None:
        r.update(median_s=median, noise=noise, timing_method="host clock around one run and a synchronisation")
    return {**r, **extra}


def unavailable(fusion, backend, variant, why=CUDA_WHY) -> dict:
    return {**rec(fusion, backend, variant, case="-", dtype="-", status="unavailable"), "reason": why}


def run_records() -> list[dict]:
    recs = []
    for fusion in ("add_rmsnorm", "rmsnorm_gemm"):
        for variant in ("fused", "unfused"):
            recs.append(unavailable(fusion, "cuda", variant))
        for variant in ("eager", "compile"):
            recs.append(unavailable(fusion, "torch_cuda", variant, "torch 2.13.0+cpu sees no CUDA device"))
    for dtype in ("float32", "bfloat16"):
        recs += [rec("add_rmsnorm", "reference", "float64", dtype=dtype),
                 rec("add_rmsnorm", "cpu", "fused", dtype=dtype, median=1e-3, noise=0.01),
                 rec("add_rmsnorm", "cpu", "unfused", dtype=dtype, median=2e-3, noise=0.02),
                 rec("add_rmsnorm", "torch", "eager", dtype=dtype, median=4e-3, noise=0.01),
                 rec("add_rmsnorm", "torch", "compile", dtype=dtype, median=3e-3, noise=0.03)]
    recs += [rec("rmsnorm_gemm", "cpu", "fused", status="fail"),
             rec("rmsnorm_gemm", "cpu", "unfused", median=2e-3),
             rec("rmsnorm_gemm", "cpu", "fused", case="smoke.row", median=1e-3)]
    return recs


def rendered(records) -> str:
    buf = io.StringIO()
    print_summary(records, Console(file=buf, width=300, color_system=None), title="run: test")
    return buf.getvalue()


def test_summary_failures_first_unavailable_collapsed():
    text = rendered(run_records())
    lines = text.splitlines()
    assert lines[0].startswith("FAILED (1)")
    assert "rmsnorm_gemm/cpu/fused smoke.awkward float32: model bound" in lines[1]
    # the table: the fusion and backend with a failure before the others, although later by name
    rows = [line for line in lines if line.startswith("│")]
    assert rows[0].split("│")[1].strip() == "rmsnorm_gemm" and "1 failed" in rows[0]
    assert [r.split("│")[1].strip() for r in rows[1:]] == ["add_rmsnorm"]
    assert not any("reference" in r for r in rows)  # the yardstick is no contender
    # the torch peers, all passing: one line for the backend, not one per fusion
    assert "peers torch: 4/4 passed (1 fusion)" in text
    # one line per unavailable backend and reason, however many implementations
    cuda = [line for line in lines if line.startswith("unavailable cuda")]
    assert len(cuda) == 1 and CUDA_WHY in text and text.count("cudaErrorInsufficientDriver") == 1
    assert "4 implementations (fused, unfused of 2 fusions)" in cuda[0]
    assert sum(line.startswith("unavailable torch_cuda") for line in lines) == 1
    # the failures, then the table, then the unavailable lines
    assert text.index("FAILED") < text.index("run: test") < text.index("peers torch") < text.index("unavailable cuda")


def test_summary_speedups_are_the_reports_intervals():
    """× chain and × best torch of one case and dtype are report.speedup_interval's figures;
    over several, the geometric mean with the geometric means of the interval ends."""
    recs = [r for r in run_records() if r["dtype"] == "float32" and r["fusion"] == "add_rmsnorm"]
    line = next(x for x in summary_lines(recs) if x["backend"] == "cpu")
    fused, chain, compiled = (next(r for r in recs if r["variant"] == v) for v in ("fused", "unfused", "compile"))
    assert line["chain_gm"] == pytest.approx(2.0) and line["chain_ci"] == pytest.approx(speedup_interval(chain, fused))
    # the best peer is the fastest passing one: compile (3 ms), not eager (4 ms)
    assert line["peer_gm"] == pytest.approx(3.0) and line["peer_name"] == "compile"
    assert line["peer_ci"] == pytest.approx(speedup_interval(compiled, fused))
    assert line["passed"] == line["checked"] == 2
    both = next(x for x in summary_lines(run_records()) if x["fusion"] == "add_rmsnorm" and x["backend"] == "cpu")
    assert both["chain_n"] == 2 and both["chain_gm"] == pytest.approx(2.0)
    text = rendered(recs)
    lo, hi = speedup_interval(chain, fused)
    assert f"2.00 ({lo:.2f}–{hi:.2f})" in text and "3.00 (" in text and "compile" in text


def test_aggregate_is_geometric():
    gm, ci, n = aggregate([(2.0, (1.0, 4.0)), (8.0, (4.0, 16.0))])
    assert n == 2 and gm == pytest.approx(4.0) and ci == pytest.approx((2.0, 8.0))
    assert aggregate([(2.0, (1.0, 4.0)), (8.0, None)])[1] is None  # an interval only where every one has one
    assert aggregate([]) == (None, None, 0)


def test_a_failing_kernel_has_no_speedup():
    """A kernel that fails the gate is still timed; its speed is no speedup."""
    recs = [rec(status="fail", median=1e-4), rec(variant="unfused", median=2e-3), rec(backend="torch", variant="eager",
                                                                                    median=3e-3)]
    line = summary_lines(recs)[0]
    assert line["failed"] == 1 and line["chain_gm"] is None and line["peer_gm"] is None


def test_summary_says_noisy_rather_than_a_speedup():
    recs = [rec(median=1e-3, noise=0.3), rec(variant="unfused", median=2e-3)]
    line = summary_lines(recs)[0]
    assert line["chain_gm"] is None and line["chain_noisy"] == 1
    assert "noisy" in rendered(recs)


def test_unavailable_per_case_records_fold_into_one_line():
    why = "backend 'wgsl' lacks a primitive this chain needs: layer_norm"
    recs = [{**rec("add_layernorm", "wgsl", "unfused", case=c, status="unavailable"), "reason": why}
            for c in ("a", "b", "c")]
    assert unavailable_groups(recs) == [("wgsl", why, ["add_layernorm/wgsl/unfused"])]


# --- progress -------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def jobs():
    units = [("f/cpu/fused", "cpu", "fused"), ("f/cpu/unfused", "cpu", "unfused")]
    return [(case, "float32", units) for case in ("a", "b", "c")]


def done(est, case, key, duration):
    est.finished({"impl": key, "case": case, "dtype": "float32", "duration_s": duration})


def test_eta_only_once_a_case_has_run_then_from_the_time_per_implementation():
    clock = Clock()
    est = Estimator(jobs(), clock)
    est.start_job(0)
    clock.t = 3.0
    done(est, "a", "f/cpu/fused", 2.0)
    assert est.remaining_s() is None and "ETA once the first case has run" in est.line()
    clock.t = 4.0
    done(est, "a", "f/cpu/unfused", 0.5)
    est.end_job()
    # 4 s of wall time shared 2.0 : 0.5 -> 3.2 s and 0.8 s; two cases left
    assert est.remaining_s() == pytest.approx(8.0)
    assert "about 8 s left (ETA" in est.line() and "2/6 records (33%)" in est.line()
    est.start_job(1)
    clock.t = 6.0
    assert est.remaining_s() == pytest.approx(6.0)  # 2 s into a case expected to take 4
    clock.t = 9.0  # past its estimate: the rest is still counted, and the line says so
    assert est.remaining_s() == pytest.approx(4.0)
    assert "runs over its estimate" in est.eta_text()


def test_eta_falls_back_to_the_backend_and_variant_elsewhere():
    clock = Clock()
    est = Estimator([("a", "float32", [("f/cpu/fused", "cpu", "fused")]),
                     ("a", "float32", [("g/cpu/fused", "cpu", "fused")])], clock)
    est.start_job(0)
    clock.t = 10.0
    done(est, "a", "f/cpu/fused", 1.0)
    est.end_job()
    assert est.remaining_s() == pytest.approx(10.0)  # g/cpu/fused never seen: cpu/fused's time


def test_eta_keeps_checked_and_timed_jobs_apart():
    """run checks the smoke cases before it times the others: a check-only record says
    nothing of what the same implementation will take when it is timed."""
    clock = Clock()
    est = Estimator([("s", "float32", [("f/cpu/fused", "cpu", "fused")], "checked"),
                     ("s2", "float32", [("f/cpu/fused", "cpu", "fused")], "checked"),
                     ("a", "float32", [("f/cpu/fused", "cpu", "fused")], "timed"),
                     ("b", "float32", [("f/cpu/fused", "cpu", "fused")], "timed")], clock)
    est.start_job(0)
    clock.t = 1.0
    done(est, "s", "f/cpu/fused", 1.0)
    est.end_job()
    assert est.remaining_s() == pytest.approx(3.0)  # nothing timed yet: any record's time
    est.start_job(1)
    clock.t = 2.0
    done(est, "s2", "f/cpu/fused", 1.0)
    est.end_job()
    est.start_job(2)
    clock.t = 12.0
    done(est, "a", "f/cpu/fused", 1.0)
    est.end_job()
    assert est.remaining_s() == pytest.approx(10.0)  # the timed record's 10 s, not the checks' 1 s


def test_progress_mode_from_the_environment():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert mode({}, io.StringIO()) == ("lines", "")
    assert mode({}, Tty()) == ("bar", "")
    assert mode({"FUSEBENCH_PROGRESS": "1"}, io.StringIO())[0] == "bar"  # the old meaning of any value
    assert mode({"FUSEBENCH_PROGRESS": "lines"}, Tty())[0] == "lines"
    assert mode({"FUSEBENCH_PROGRESS": "off"}, Tty())[0] == "off"
    how, warning = mode({"FUSEBENCH_PROGRESS": "loud"}, io.StringIO())
    assert how == "lines" and "not understood" in warning
    assert every_s({"FUSEBENCH_PROGRESS_EVERY": "5"}) == (5.0, "")
    assert every_s({"FUSEBENCH_PROGRESS_EVERY": "soon"})[0] == 30.0


def test_line_printer_prints_periodically_and_at_the_end():
    est = Estimator(jobs())
    out = io.StringIO()
    printer = LinePrinter(est, out, every=0.05).start()
    import time

    time.sleep(0.3)
    printer.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("progress: 0/6 records") for line in lines)


def test_duration_text():
    assert duration_text(45) == "45 s" and duration_text(125) == "2 min 05 s" and duration_text(600) == "10 min"
    assert duration_text(2 * 3600 + 300) == "2 h 05 min"
    assert duration_text(-1) == "0 s" and not math.isnan(float(duration_text(0).split()[0]))
