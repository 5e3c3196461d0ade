"""The command line as a user meets it: JSON outputs, exit statuses, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def fusebench(*args, cwd, plugins=""):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FUSEBENCH_PLUGINS=plugins)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)



def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`fusebench list | head`: once the reader has gone, exit 141 without a message or a
    traceback (a write into a pipe whose read end is closed fails with EPIPE)."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "harness.cli", "list", "--json"], cwd=tmp_path, stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "Broken pipe" not in p.stderr and "Exception ignored" not in p.stderr

def test_list_json_names_every_backend(tmp_path):
    r = fusebench("list", "--json", cwd=tmp_path, plugins="tests.plugins.import_error")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    rows = {i["key"]: i for i in data["implementations"]}
    assert rows["rmsnorm_gemm/cpu/fused"]["available"]
    assert rows["rmsnorm_gemm/reference/float64"]["available"]
    cuda = rows["rmsnorm_gemm/cuda/fused"]
    if not cuda["available"]:
        assert cuda["reason"]
    assert any("import_error" in p for p in data["problems"])  # reported, the rest still loads


def test_check_json_passes_on_smoke(tmp_path):
    r = fusebench("check", "--json", "--suite", "smoke", "--backend", "cpu", "--dtype", "float32", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["passed"] and {rec["verdict"] for rec in data["records"]} == {"pass"}
    assert {rec["variant"] for rec in data["records"]} >= {"fused", "unfused"}


@pytest.mark.parametrize("variant, code", [("broken_zeros", 1), ("broken_nan", 1), ("broken_unwritten", 1),
                                           ("broken_raises", 1), ("faithful", 0)])
def test_check_gate_exit_status_with_broken_kernels(tmp_path, variant, code):
    r = fusebench("check", "--suite", "smoke", "--backend", "cpu", "--variant", variant, cwd=tmp_path,
                  plugins="tests.plugins.broken_kernels")
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, words", [
    (["check", "--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["check", "--fusion", "nosuch"], "unknown fusion 'nosuch'"),
    (["check", "--dtype", "float8"], "unknown dtype 'float8'"),
    (["check", "--cases", "missing.toml"], "case file 'missing.toml' does not exist"),
    (["check", "--case", "no_such_case"], "no case matches"),
])
def test_bad_arguments_exit_2_with_one_message(tmp_path, args, words):
    r = fusebench(*args, cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_case_file_exit_2_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[case]]\nfusion = "rmsnorm_gemm"\nname = "x"\nM = 1\nH = -4\nN = 2\n')
    r = fusebench("check", "--cases", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and f"{bad}:1" in r.stderr and "'H' must be a positive integer" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_unavailable_backend_asked_by_name_is_an_error(tmp_path):
    from harness.backends import get_backend

    ok, why = get_backend("cuda").probe()
    if ok:
        pytest.skip("this machine has a CUDA device")
    r = fusebench("check", "--backend", "cuda", cwd=tmp_path)
    assert r.returncode == 2 and "cannot run here" in r.stderr


def test_run_writes_results_and_report(tmp_path):
    r = fusebench("run", "--suite", "smoke", "--backend", "cpu,reference", "--dtype", "float32", "--budget", "0.05",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = Path(next(line for line in r.stdout.splitlines() if line.startswith("report: ")).split(": ", 1)[1])
    results = tmp_path / next(line for line in r.stdout.splitlines() if line.startswith("results: ")).split(": ", 1)[1]
    assert report.is_file() and results.is_file()
    html = report.read_text()
    for words in ("Summary", "rmsnorm_gemm", "cpu/fused", "cpu/unfused", "× chain", "GB/s", "NMSE"):
        assert words in html
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert all(r["median_s"] > 0 and r["n"] >= 10 for r in recs if r["status"] == "ok" and r["kind"] != "reference")
    assert all("median_s" not in r for r in recs if r["kind"] == "reference")  # a yardstick: checked, never timed
