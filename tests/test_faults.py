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
