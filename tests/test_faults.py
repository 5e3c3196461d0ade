"""Faults a run must survive: a kernel that crashes its process or hangs, an interrupted
run resumed, a case too large for the machine. Each fault comes from a deliberately broken
plugin (tests/plugins/broken_kernels.py) or case file, and every other record must come
through intact. The unfused NumPy chain (no compilation) keeps these runs quick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.results import params_id
from tests.test_cli import ROOT, fusebench

PLUGIN = "tests.plugins.broken_kernels"
SMOKE = ["--suite", "smoke", "--fusion", "rmsnorm_gemm", "--backend", "cpu"]


def _records(stdout: str) -> list[dict]:
    return json.loads(stdout)["records"]


def test_segfaulting_kernel_is_recorded_and_the_run_goes_on(tmp_path):
    r = fusebench("check", "--json", *SMOKE, "--variant", "broken_segfault,unfused", cwd=tmp_path, plugins=PLUGIN)
    assert r.returncode == 1, r.stderr
    recs = _records(r.stdout)
    crashed = [x for x in recs if x["variant"] == "broken_segfault"]
    assert crashed and all(x["status"] == "error" and "SIGSEGV" in x["reason"] for x in crashed)
    good = [x for x in recs if x["variant"] == "unfused"]
    assert len(good) == len(crashed) and all(x["verdict"] == "pass" for x in good)  # one per case and dtype


def test_hanging_kernel_times_out_and_the_run_goes_on(tmp_path):
    t0 = time.monotonic()
    r = fusebench("check", "--json", *SMOKE, "--variant", "broken_hang,unfused", "--dtype", "float32",
                  "--case", "smoke.awkward", "--timeout", "5", cwd=tmp_path, plugins=PLUGIN)
    assert r.returncode == 1, r.stderr
    recs = _records(r.stdout)
    hung = [x for x in recs if x["variant"] == "broken_hang"]
    assert len(hung) == 1 and hung[0]["status"] == "error" and "timed out after 5 s" in hung[0]["reason"]
    assert [x["verdict"] for x in recs if x["variant"] == "unfused"] == ["pass"]
    assert time.monotonic() - t0 < 120


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    args = ["check", "--json", *SMOKE, "--variant", "broken_raises,unfused"]
    going = _records(fusebench(*args, cwd=tmp_path, plugins=PLUGIN).stdout)
    r = fusebench(*args, "--fail-fast", cwd=tmp_path, plugins=PLUGIN)
    assert r.returncode == 1 and "--fail-fast" in r.stderr
    stopped = _records(r.stdout)
    assert stopped[-1]["variant"] == "broken_raises" and len(stopped) < len(going)


def test_interrupted_run_keeps_its_records_and_resumes(tmp_path):
    out = tmp_path / "run.jsonl"
    args = ["bench", *SMOKE, "--variant", "unfused,float64", "--budget", "0.02", "--min-samples", "5", "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), FUSEBENCH_PLUGINS="")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    before = [json.loads(line) for line in out.read_text().splitlines()]  # every line a whole record
    assert len(before) >= 3

    r = fusebench(*args, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = [json.loads(line) for line in out.read_text().splitlines()]
    assert after[:len(before)] == before
    keys = [(x["impl"], x["case"], x["dtype"]) for x in after]
    assert len(keys) == len(set(keys)), "a finished record was redone"

    full = fusebench(*args[:-1], str(tmp_path / "full.jsonl"), cwd=tmp_path)
    assert full.returncode == 0
    expected = {(x["impl"], x["case"], x["dtype"]) for x in map(json.loads, (tmp_path / "full.jsonl").open())}
    assert set(keys) == expected


def test_case_too_large_for_memory_is_skipped_before_allocation(tmp_path):
    cases = tmp_path / "huge.toml"
    cases.write_text('model = "Huge"\nsource = "a test"\n\n[[case]]\nfusion = "add_rmsnorm"\nname = "huge"\n'
                     'M = 1048576\nH = 1048576\ndtypes = ["float32"]\nsuites = ["smoke"]\n')
    r = fusebench("check", "--json", "--cases", str(cases), "--suite", "smoke", "--backend", "cpu,reference",
                  "--variant", "unfused,float64", "--allow-empty", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    recs = _records(r.stdout)
    assert recs and all(x["status"] == "skipped" and "too large for this machine" in x["reason"] for x in recs)


def test_a_check_that_checked_nothing_is_not_a_pass(tmp_path):
    """Every case skipped (M = 10**9: too large, refused before allocating): the table says
    "skipped", never FAIL, and the gate exits 1 unless --allow-empty."""
    cases = tmp_path / "huge.toml"
    cases.write_text('model = "Huge"\n[[case]]\nfusion = "add_rmsnorm"\nname = "huge"\nM = 1000000000\n'
                     'H = 4096\ndtypes = ["float32"]\n')
    args = ["check", "--cases", str(cases), "--backend", "cpu", "--variant", "fused,unfused", "--no-isolation"]
    r = fusebench(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if "huge.huge" in line]
    assert len(rows) == 2 and all("skipped" in line and "FAIL" not in line for line in rows), r.stdout
    assert "0 passed, 0 failed, 2 skipped" in r.stdout and "nothing was checked" in r.stdout
    assert fusebench(*args, "--allow-empty", cwd=tmp_path).returncode == 0


# One run of the unfused NumPy chain on the two smoke cases of rmsnorm_gemm in float32.
RESUMED = ["bench", "--suite", "smoke", "--fusion", "rmsnorm_gemm", "--backend", "cpu", "--variant", "unfused",
           "--dtype", "float32", "--budget", "0.02", "--min-samples", "5", "--no-isolation"]


def _finished_records(run_id: str) -> list[dict]:
    """What a finished run of RESUMED writes, one record per job, as harness.runner keys them."""
    from harness.cases import load_cases, select
    from harness.registry import discover
    from harness.runner import case_seed, plan

    reg = discover(entry_points=False)
    impl = reg.impls["rmsnorm_gemm/cpu/unfused"]
    jobs = plan(select(load_cases(reg), suite="smoke", fusions=["rmsnorm_gemm"]), [impl], ["float32"])
    assert len(jobs) == 2
    return [{"schema": 1, "run_id": run_id, "machine": "m", "commit": "c0", "timestamp": f"2026-01-01T00:0{i}:00",
             "fusion": "rmsnorm_gemm", "backend": "cpu", "variant": "unfused", "kind": "unfused", "impl": impl.key,
             "case": job.case.id, "params": job.case.params, "params_id": params_id(job.case.params),
             "dtype": "float32", "seed": case_seed(job.case, "float32", 0), "status": "ok", "verdict": "pass",
             "median_s": 1e-3, "p20_s": 1e-3, "p80_s": 1e-3, "min_s": 1e-3, "n": 5, "noise": 0.01, "gbps": 1.0}
            for i, job in enumerate(jobs)]


def _write_runs(path: Path, *runs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for run in runs for r in run))


def test_resume_continues_the_last_run_of_a_file_and_only_the_same_workload(tmp_path):
    """Two complete runs, then a third cut short after one record: --resume continues the
    third (its id on the new records), not "any record with this key" (which kept 2 and ran
    nothing, forever). The third run's record of the second case has other parameters (a
    user case file reusing the name): it is no finished record of this workload."""
    out = tmp_path / "runs.jsonl"
    third = _finished_records("run-c")
    third[1]["params"] = {**third[1]["params"], "H": 4096}
    third[1]["params_id"] = params_id(third[1]["params"])
    _write_runs(out, _finished_records("run-a"), _finished_records("run-b"), third)
    r = fusebench(*RESUMED, "-o", str(out), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming run run-c" in r.stderr and "1 finished records kept, 1 to run" in r.stderr
    assert "2 earlier run(s) in the file left alone" in r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    new = recs[6:]
    assert len(new) == 1 and new[0]["run_id"] == "run-c" and new[0]["case"] == third[1]["case"]
    assert new[0]["params"] == _finished_records("x")[1]["params"] and new[0]["params_id"] != third[1]["params_id"]


def test_resume_run_names_the_run_and_a_folder_is_refused(tmp_path):
    out = tmp_path / "runs.jsonl"
    _write_runs(out, _finished_records("run-a"), _finished_records("run-b")[:1])
    r = fusebench(*RESUMED, "-o", str(out), "--resume-run", "run-a", cwd=tmp_path)
    assert r.returncode == 0 and "resuming run run-a" in r.stderr and "2 finished records kept, 0 to run" in r.stderr
    assert len(out.read_text().splitlines()) == 3  # nothing was run again
    r = fusebench(*RESUMED, "-o", str(out), "--resume-run", "run-z", cwd=tmp_path)
    assert r.returncode == 2 and "no run 'run-z'" in r.stderr and "run-a, run-b" in r.stderr
    r = fusebench(*RESUMED, "--resume", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and f"--resume: '{tmp_path}' is a directory; give the results file to continue " \
                                  f"(the newest here: {out})" in r.stderr, r.stderr
