"""The command line as a user meets it: JSON outputs, exit statuses, clear errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def fusebench(*args, cwd, plugins="", **env_vars):
    env = dict(os.environ, PYTHONPATH=str(ROOT), FUSEBENCH_PLUGINS=plugins, **env_vars)
    env.pop("FUSEBENCH_PROGRESS", None) if "FUSEBENCH_PROGRESS" not in env_vars else None
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


RUN_CASES = """model = "tiny"
[[case]]
fusion = "rmsnorm_gemm"
name = "sized"
M = 2
H = 96
N = 40

[[case]]
fusion = "rmsnorm_gemm"
name = "odd"
M = 3
H = 33
N = 17
suites = ["smoke"]
"""


def test_run_writes_results_and_report(tmp_path):
    """run checks and times a case; a smoke-suite case it checks without timing it, without
    the torch peers, and before the timed ones; float16 is timed only when asked for."""
    (tmp_path / "tiny.toml").write_text(RUN_CASES)
    r = fusebench("run", "--cases", "tiny.toml", "--backend", "cpu,reference,torch", "--variant",
                  "fused,unfused,float64,eager", "--budget", "0.05", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = Path(next(line for line in r.stdout.splitlines() if line.startswith("report: ")).split(": ", 1)[1])
    results = tmp_path / next(line for line in r.stdout.splitlines() if line.startswith("results: ")).split(": ", 1)[1]
    assert report.is_file() and results.is_file()
    html = report.read_text()
    for words in ("Summary", "rmsnorm_gemm", "cpu/fused", "cpu/unfused", "× chain", "GB/s", "NMSE"):
        assert words in html
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    sized = [r for r in recs if r["case"] == "tiny.sized"]
    odd = [r for r in recs if r["case"] == "tiny.odd"]
    assert {r["dtype"] for r in sized} == {"float32", "bfloat16"}  # run's timed dtypes
    assert {r["dtype"] for r in odd} == {"float32", "float16", "bfloat16"}  # every dtype checked
    assert all(r["median_s"] > 0 and r["n"] >= 10 for r in sized if r["status"] == "ok" and r["kind"] != "reference")
    assert {r["impl"] for r in sized if "median_s" in r} >= {"rmsnorm_gemm/cpu/fused", "rmsnorm_gemm/torch/eager"}
    assert odd and all(r["verdict"] == "pass" and "median_s" not in r for r in odd)
    assert not [r for r in odd if r["kind"] == "peer"]
    assert max(recs.index(r) for r in odd) < min(recs.index(r) for r in sized)  # checks first
    # the warm-ups of the timed jobs (checked beside the smoke checks) leave no records
    assert len({(r["impl"], r["case"], r["dtype"]) for r in recs}) == len(recs)
    assert all("median_s" not in r for r in recs if r["kind"] == "reference")  # a yardstick: checked, never timed


# --- issue 21: the main job as a new user meets it ---------------------------------------------

# A run with a failing kernel (broken_zeros), a passing one (faithful), chains and a torch peer,
# a plugin fusion whose chain the WGSL and CUDA backends cannot run (layer_norm), and the CUDA
# backends unavailable on a machine without a GPU: three cases (three jobs), plain progress
# lines every 0.2 s (stderr is a pipe here, not a terminal).
SUMMARY_CASES = """model = "tiny"
[[case]]
fusion = "add_layernorm"
name = "ln"
M = 3
H = 67
dtypes = ["float32"]

[[case]]
fusion = "rmsnorm_gemm"
name = "g"
M = 2
H = 33
N = 17
dtypes = ["float32"]

[[case]]
fusion = "rmsnorm_gemm"
name = "h"
M = 3
H = 40
N = 9
dtypes = ["float32"]
"""
SUMMARY_PLUGINS = "tests.plugins.add_layernorm,tests.plugins.broken_kernels"


@pytest.fixture(scope="module")
def summary_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("summary")
    (tmp / "tiny.toml").write_text(SUMMARY_CASES)
    r = fusebench("run", "--cases", "tiny.toml", "--variant", "unfused,eager,faithful,broken_zeros", "--budget",
                  "0.05", "--no-isolation", cwd=tmp, plugins=SUMMARY_PLUGINS, FUSEBENCH_PROGRESS_EVERY="0.2")
    return tmp, r


def _wgsl_runs() -> bool:
    from harness.backends import get_backend

    return get_backend("wgsl").probe()[0]


def test_run_ends_in_a_one_screen_summary(summary_run):
    tmp, r = summary_run
    assert r.returncode == 1, r.stdout + r.stderr  # broken_zeros fails the gate
    out = r.stdout
    lines = out.splitlines()
    # failures first, each with its reason
    assert lines[0].startswith("FAILED (2)"), out
    assert all(f"rmsnorm_gemm/cpu/broken_zeros tiny.{c} float32: y: model bound" in lines[i] for i, c in ((1, "g"), (2, "h")))
    rows = [line for line in lines if line.startswith("│")]
    assert rows and "rmsnorm_gemm" in rows[0] and "cpu" in rows[0] and "failed" in rows[0], out
    assert any("add_layernorm" in row and "cpu" in row for row in rows)
    assert any(line.startswith("peers torch: 3/3 passed (2 fusions)") for line in lines), out  # all passed: one line
    assert "× chain [99% CI]" in out and "× best torch [99% CI]" in out
    # unavailable implementations: one line per backend and reason, never one per case
    unavailable = [line for line in lines if line.startswith("unavailable ")]
    assert len(unavailable) == len({line.split(":")[0] for line in unavailable})
    if _wgsl_runs():
        assert "unavailable wgsl: add_layernorm/wgsl/unfused: backend 'wgsl' lacks a primitive this chain needs: " \
               "layer_norm" in unavailable, unavailable
    assert out.count("cudaError") <= 1
    assert not any(f in out for f in ("swiglu_ffn", "decode_attention"))  # fusions without a case here: not named
    # then the paths, the report last of them, and the gate's verdict
    paths = [line.split(": ", 1)[0] for line in lines if line.split(": ", 1)[0] in ("full tables", "results", "report")]
    assert paths == ["full tables", "results", "report"]
    assert lines[-1].endswith("passed, 2 failed"), lines[-1]
    assert len(lines) < 40, out  # one screen


def test_run_keeps_the_full_tables(summary_run):
    tmp, r = summary_run
    tables = tmp / next(line for line in r.stdout.splitlines() if line.startswith("full tables: ")).split(": ", 1)[1] \
        .split(" (")[0]
    text = tables.read_text()
    assert "accuracy gate" in text and "timings (median, cold cache)" in text
    for words in ("rmsnorm_gemm/cpu/broken_zeros", "rmsnorm_gemm/cpu/faithful", "tiny.g", "tiny.h", "FAIL"):
        assert words in text
    # every record is in the results file beside it
    results = tmp / next(line for line in r.stdout.splitlines() if line.startswith("results: ")).split(": ", 1)[1]
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert {x["impl"] for x in recs if x["status"] != "unavailable"} <= {x for x in text.split() if "/" in x} | {
        x["impl"] for x in recs if x["status"] == "unavailable"}


def test_progress_without_a_terminal_is_plain_lines_with_an_eta(summary_run):
    _, r = summary_run
    progress = [line for line in r.stderr.splitlines() if line.startswith("progress: ")]
    assert progress, r.stderr
    assert "\x1b[" not in r.stderr and "━" not in r.stderr  # no bar, no escape codes in a log
    # no ETA before the first case has run, then one from the time it took
    first_eta = next((i for i, line in enumerate(progress) if " left (ETA " in line or "left after this case" in line),
                     None)
    assert first_eta is not None, progress
    assert re.match(r"progress: 0/\d+ records \(0%\)", progress[0]) and "ETA once the first case has run" in progress[0]
    assert all("ETA once the first case has run" in line for line in progress[:first_eta])
    assert progress[-1].endswith("done"), progress[-1]


def test_progress_can_be_turned_off(tmp_path):
    r = fusebench("check", "--suite", "smoke", "--fusion", "add_rmsnorm", "--backend", "reference", "--dtype",
                  "float32", "--no-isolation", cwd=tmp_path, FUSEBENCH_PROGRESS="off", FUSEBENCH_PROGRESS_EVERY="0.05")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "progress:" not in r.stderr


def test_check_backend_reference(tmp_path):
    """--help lists reference among the backends: checking it alone runs the float64
    reference on every case (judged against itself, the yardstick) and passes; bench says
    it is never timed."""
    r = fusebench("check", "--backend", "reference", "--suite", "smoke", "--fusion", "add_rmsnorm", "--dtype",
                  "float32", "--no-isolation", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "add_rmsnorm/reference/float64" in r.stdout and "1 passed, 0 failed" in r.stdout
    assert "no implementation matches" not in r.stderr
    r = fusebench("bench", "--backend", "reference", "--suite", "smoke", cwd=tmp_path)
    assert r.returncode == 2 and "checked, never timed" in r.stderr, r.stderr


def test_report_without_arguments_reads_reports_runs(tmp_path):
    r = fusebench("report", "--no-committed", cwd=tmp_path)
    assert r.returncode == 2 and "none in reports/runs/" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "reports" / "report.html").exists()
    runs = tmp_path / "reports" / "runs"
    runs.mkdir(parents=True)
    record = {"schema": 1, "run_id": "r", "machine": "m", "commit": "c", "dirty": False,
              "timestamp": "2026-12-04T00:00:00+00:00", "fusion": "add_rmsnorm", "backend": "cpu", "variant": "fused",
              "kind": "fused", "impl": "add_rmsnorm/cpu/fused", "case": "smoke.awkward", "dtype": "float32",
              "status": "ok", "verdict": "pass", "nmse": 1e-14, "max_ulp": 1.0, "params": {"M": 3, "H": 129}}
    (runs / "a.jsonl").write_text(json.dumps(record) + "\n")
    (runs / "b.jsonl").write_text(json.dumps({**record, "run_id": "s", "dtype": "bfloat16"}) + "\n")
    r = fusebench("report", "--no-committed", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reading 2 results files: reports/runs/a.jsonl, reports/runs/b.jsonl" in r.stdout, r.stdout
    page = (tmp_path / "reports" / "report.html").read_text()
    assert "add_rmsnorm" in page and "bfloat16" in page


def test_list_says_a_plugin_chain_lacking_a_primitive_is_unavailable(tmp_path):
    """A plugin fusion (register_fusion) whose decomposition calls layer_norm: the chains of the
    backends whose Ops lack it are unavailable, with the reason the run would give, found
    without a device; the CPU chain and the torch peers stay available."""
    r = fusebench("list", "--json", "--fusion", "add_layernorm", cwd=tmp_path, plugins="tests.plugins.add_layernorm")
    assert r.returncode == 0, r.stderr
    rows = {i["key"]: i for i in json.loads(r.stdout)["implementations"]}
    assert rows["add_layernorm/cpu/unfused"]["available"] and rows["add_layernorm/torch/eager"]["available"]
    for backend in ("wgsl", "cuda"):
        row = rows[f"add_layernorm/{backend}/unfused"]
        assert not row["available"]
    if _wgsl_runs():
        assert rows["add_layernorm/wgsl/unfused"]["reason"] == \
            "backend 'wgsl' lacks a primitive this chain needs: layer_norm"
        r = fusebench("list", "--fusion", "add_layernorm", cwd=tmp_path, plugins="tests.plugins.add_layernorm")
        line = next(line for line in r.stdout.splitlines() if "wgsl" in line and "unfused" in line)
        assert "no: backend 'wgsl' lacks a primitive this chain needs: layer_norm" in line and "yes" not in line


def test_chain_gaps_need_no_device():
    """The same check on the registry in this process, for every backend whether or not it can
    run here: only CUDA's and WGSL's Ops lack layer_norm."""
    import dataclasses

    from harness.cli import chain_gaps
    from harness.registry import DERIVED, Implementation, Registry, _chain_factory
    from tests.plugins.add_layernorm import SPEC

    reg = Registry()
    reg.add_fusion(SPEC)
    impls = [Implementation(SPEC.name, b, "unfused", "unfused", _chain_factory, SPEC.dtypes, origin=DERIVED)
             for b in ("cpu", "wgsl", "cuda")]
    impls.append(dataclasses.replace(impls[0], backend="torch", variant="eager", kind="peer"))
    gaps = chain_gaps(reg, impls)
    assert gaps == {f"add_layernorm/{b}/unfused": f"backend {b!r} lacks a primitive this chain needs: layer_norm"
                    for b in ("wgsl", "cuda")}


def test_chain_primitives_trace_small_sizes_only():
    """The trace runs the decomposition on the smallest case given, unless even that one is
    large (405B-sized weights): then on the small sizes the spec's strategy draws."""
    from harness.cases import Case
    from harness.cli import TRACE_BYTES, chain_primitives
    from tests.plugins.add_layernorm import SPEC

    def case(M, H):
        return Case("add_layernorm", f"t.{M}", "t", {"M": M, "H": H}, ("float32",), ("quick",), "t.toml", 1)

    huge = case(2**20, 16384)
    assert SPEC.cost(SPEC.split(huge.params)[0], "float32").bytes > TRACE_BYTES
    assert chain_primitives(SPEC, [huge]) == {"add", "layer_norm"}  # would need GiBs if it ran on it
    assert chain_primitives(SPEC, [huge, case(1, 8)]) == {"add", "layer_norm"}


def test_run_plans_checks_then_warm_ups_then_timed_jobs():
    """run: smoke-suite cases checked (every dtype, no peers), the other cases timed in
    float32 and bfloat16; warm-ups of the small timed jobs go between the two."""
    from harness.cli import run_jobs, warm_ups
    from harness.registry import discover
    from harness.cases import load_cases, select
    from harness.runner import plan

    reg = discover()
    cases = [c for c in select(load_cases(reg, None), suite="quick") if c.fusion == "add_rmsnorm"]
    impls = [i for i in reg.impls.values() if i.fusion == "add_rmsnorm" and i.backend in ("cpu", "torch", "reference")]
    jobs = run_jobs(plan(cases, impls), dtypes_named=False)
    checks = [j for j in jobs if not j.timed]
    timed = [j for j in jobs if j.timed]
    assert jobs == checks + timed and checks and timed
    assert {j.dtype for j in checks} == {"float32", "float16", "bfloat16"}
    assert all("smoke" in j.case.suites and all(i.kind != "peer" for i in j.impls) for j in checks)
    assert {j.dtype for j in timed} == {"float32", "bfloat16"}
    assert all(any(i.kind == "peer" for i in j.impls) for j in timed)
    assert {j.dtype for j in run_jobs(plan(cases, impls, ["float16"]), dtypes_named=True) if j.timed} == {"float16"}
    warmed = warm_ups(jobs, reg)
    warm = [j for j in warmed if not j.kept]
    assert warmed == checks + warm + timed
    assert [(j.case, j.dtype) for j in warm] == [(j.case, j.dtype) for j in timed]
    assert all(not j.timed for j in warm)
    # numba compiles per dtype (the smoke checks did it) and NumPy not at all: only the
    # torch peers are warmed here
    assert {i.backend for j in warm for i in j.impls} == {"torch"}
