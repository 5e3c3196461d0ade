"""`--junit FILE`: check records as JUnit XML that CI systems can read."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.junit import reproduce_command, write_junit
from harness.registry import PLUGINS_ENV
from harness.results import REPO_ROOT

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = str(REPO_ROOT / "cases" / "smoke.toml")


def _rec(**kw) -> dict:
    base = {"machine": "test-box-8c", "commit": "abc123", "timestamp": "2026-01-02T03:04:05+00:00",
            "fusion": "rmsnorm_gemm", "backend": "cpu", "variant": "fused", "kind": "fused",
            "case": "smoke.awkward", "dtype": "float32", "seed": 123456, "case_file": f"{SHIPPED}:5"}
    base.update(kw)
    base["impl"] = f"{base['fusion']}/{base['backend']}/{base['variant']}"
    return base


def _records(external: Path) -> list[dict]:
    return [
        _rec(status="ok", verdict="pass", reason="", nmse=1e-15, max_ulp=1.0, max_abs=1e-7, chain_nmse=2e-15),
        _rec(variant="broken", status="fail", verdict="fail", nmse=0.25, nmse_bound=1e-9, max_ulp=1.5e9,
             max_abs=2.5, chain_nmse=3e-15, reason="y: NMSE 0.25 > bound 1e-09 for float32 & <worse>\x00\x1b[31m"),
        _rec(variant="raises", case="mine.odd", dtype="float16", case_file=f"{external}:3", status="error",
             verdict="fail", reason="RuntimeError: this kernel always fails\x07",
             traceback='Traceback (most recent call last):\n  File "k.py", line 1\nRuntimeError: boom\n'),
        _rec(fusion="add_rmsnorm", backend="wgsl", variant="fused", case="-", dtype="-", status="unavailable",
             reason="no WebGPU adapter", case_file=None, seed=None),
        _rec(fusion="add_rmsnorm", backend="cpu", variant="unfused", dtype="bfloat16", status="ok", verdict="pass",
             reason=""),
    ]


def _argv(command: str) -> list[str]:
    """The fusebench arguments of a reproduce command (environment assignments dropped)."""
    words = shlex.split(command)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)
    assert words[:2] == ["fusebench", "check"], command
    return words[1:]


def _command(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("reproduce: ")).split(": ", 1)[1]


@pytest.fixture
def written(tmp_path, monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    external = tmp_path / "mine.toml"
    external.write_text("")
    out = write_junit(tmp_path / "ci" / "junit.xml", _records(external), seed=7)
    return out, external


def test_counts_suites_and_properties(written):
    out, _ = written
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["rmsnorm_gemm", "add_rmsnorm"]
    rg, ar = suites["rmsnorm_gemm"], suites["add_rmsnorm"]
    assert (rg.get("tests"), rg.get("failures"), rg.get("errors"), rg.get("skipped")) == ("3", "1", "1", "0")
    assert (ar.get("tests"), ar.get("failures"), ar.get("errors"), ar.get("skipped")) == ("2", "0", "0", "1")
    for s in suites.values():
        assert s.get("hostname") == "test-box-8c" and s.get("timestamp") == "2026-01-02T03:04:05+00:00"
        float(s.get("time"))
        props = {p.get("name"): p.get("value") for p in s.find("properties")}
        assert props == {"commit": "abc123", "machine": "test-box-8c", "seed": "7"}


def test_testcase_names_and_outcomes(written):
    out, _ = written
    cases = [(tc.get("classname"), tc.get("name"), [c.tag for c in tc]) for tc in ET.parse(out).iter("testcase")]
    assert cases == [
        ("fusebench.rmsnorm_gemm.cpu.fused", "smoke.awkward[float32]", []),
        ("fusebench.rmsnorm_gemm.cpu.broken", "smoke.awkward[float32]", ["failure"]),
        ("fusebench.rmsnorm_gemm.cpu.raises", "mine.odd[float16]", ["error"]),
        ("fusebench.add_rmsnorm.wgsl.fused", "(all cases)", ["skipped"]),
        ("fusebench.add_rmsnorm.cpu.unfused", "smoke.awkward[bfloat16]", []),
    ]
    for tc in ET.parse(out).iter("testcase"):
        assert float(tc.get("time")) >= 0
    skipped = ET.parse(out).find(".//skipped")
    assert skipped.get("message") == "no WebGPU adapter"


def test_failure_text_has_figures_and_a_command_that_selects_the_record(written):
    out, _ = written
    failure = ET.parse(out).find(".//failure")
    text = failure.text
    for words in ("nmse: 0.25 (bound 1e-09)", "max_ulp: 1.5e+09", "max_abs: 2.5", "chain_nmse: 3e-15",
                  "reason: y: NMSE 0.25 > bound 1e-09 for float32 & <worse>", "input seed: 123456"):
        assert words in text, text
    assert failure.get("message").startswith("y: NMSE 0.25 > bound 1e-09 for float32 & <worse>")
    # control characters never reach the file
    assert "\x00" not in out.read_text(encoding="utf-8") and "\x1b" not in out.read_text(encoding="utf-8")
    command = _command(text)
    assert "--seed 7" in command and PLUGINS_ENV not in command
    args = build_parser().parse_args(_argv(command))
    assert (args.command, args.fusion, args.backend, args.variant, args.case, args.dtype, args.seed) == (
        "check", ["rmsnorm_gemm"], ["cpu"], ["broken"], ["smoke.awkward"], ["float32"], 7)
    assert args.cases is None and args.suite == "full"  # shipped case: the suite that has every case


def test_error_has_reason_traceback_and_command_with_case_file(written):
    out, external = written
    error = ET.parse(out).find(".//error")
    assert error.get("message") == "RuntimeError: this kernel always fails" and error.get("type") == "RuntimeError"
    assert "Traceback (most recent call last)" in error.text and "RuntimeError: boom" in error.text
    args = build_parser().parse_args(_argv(_command(error.text)))
    assert (args.fusion, args.backend, args.variant, args.case, args.dtype, args.seed) == (
        ["rmsnorm_gemm"], ["cpu"], ["raises"], ["mine.odd"], ["float16"], 7)
    assert args.cases == [str(external)]  # a case file outside cases/ travels with the command


def test_command_selects_exactly_that_case_and_implementation(registry):
    from harness.cli import _selection

    rec = _rec(fusion="add_rmsnorm", backend="cpu", variant="unfused", case="smoke.awkward", status="fail")
    args = build_parser().parse_args(_argv(reproduce_command(rec, seed=3, env={})))
    cases, impls = _selection(args, registry)
    assert [(c.fusion, c.id) for c in cases] == [("add_rmsnorm", "smoke.awkward")]
    assert [i.key for i in impls] == ["add_rmsnorm/cpu/unfused"]


def test_command_carries_the_plugins_variable():
    command = reproduce_command(_rec(status="fail"), seed=0, env={PLUGINS_ENV: "my.plugin, other:fn"})
    assert command.startswith(f"{PLUGINS_ENV}='my.plugin, other:fn' fusebench check ")
    assert shlex.split(command)[0] == f"{PLUGINS_ENV}=my.plugin, other:fn"


def test_write_is_atomic_and_replaces(tmp_path):
    out = tmp_path / "junit.xml"
    out.write_text("old, not XML")
    write_junit(out, [_rec(status="ok", verdict="pass", reason="")])
    assert ET.parse(out).getroot().get("tests") == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]  # no temporary file left


def test_write_goes_through_a_symlink_and_into_a_pipe(tmp_path):
    """--junit LINK writes the file the link leads to (the link stays a link); a FIFO is
    written into, never replaced by a regular file (harness.results.write_output)."""
    import threading

    target, link = tmp_path / "ci" / "junit.xml", tmp_path / "link.xml"
    target.parent.mkdir()
    target.write_text("old")
    link.symlink_to(target)
    write_junit(link, [_rec(status="ok", verdict="pass", reason="")])
    assert link.is_symlink() and ET.parse(target).getroot().get("tests") == "1"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_junit(fifo, [_rec(status="ok", verdict="pass", reason="")])
    reader.join(30)
    assert got and got[0].startswith(b"<?xml") and fifo.is_fifo()


# --- end to end ------------------------------------------------------------------------

def test_check_junit_passing_in_process(tmp_path, monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    from harness.cli import main

    path = tmp_path / "junit.xml"
    old = signal.getsignal(signal.SIGTERM)
    try:  # reference + the cpu NumPy chain: no kernel to compile, fast
        code = main(["check", "--fusion", "add_rmsnorm", "--backend", "reference,cpu", "--variant", "float64,unfused",
                     "--case", "smoke.awkward", "--dtype", "float32", "--junit", str(path)])
    finally:
        signal.signal(signal.SIGTERM, old)
    assert code == 0
    root = ET.parse(path).getroot()
    tcs = list(root.iter("testcase"))
    assert root.get("tests") == "2" and root.get("failures") == root.get("errors") == "0"
    assert {tc.get("classname") for tc in tcs} == {"fusebench.add_rmsnorm.reference.float64",
                                                   "fusebench.add_rmsnorm.cpu.unfused"}
    assert all(tc.get("name") == "smoke.awkward[float32]" and len(tc) == 0 for tc in tcs)


def _fusebench(*args, cwd, plugins=""):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{PLUGINS_ENV: plugins})
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_check_junit_with_broken_kernels_and_the_command_reproduces(tmp_path):
    # the broken plugin is loaded the way test_cli loads it: $FUSEBENCH_PLUGINS, in a child
    # process, so that its kernels never enter this process's registry
    plugins = "tests.plugins.broken_kernels"
    path = tmp_path / "junit.xml"
    r = _fusebench("check", "--fusion", "rmsnorm_gemm", "--backend", "cpu", "--variant", "broken_zeros,broken_raises",
                   "--case", "smoke.row", "--dtype", "float32", "--seed", "5", "--junit", str(path), cwd=tmp_path,
                   plugins=plugins)
    assert r.returncode == 1, r.stdout + r.stderr
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "1")
    failure = root.find(".//testcase[@classname='fusebench.rmsnorm_gemm.cpu.broken_zeros']/failure")
    error = root.find(".//testcase[@classname='fusebench.rmsnorm_gemm.cpu.broken_raises']/error")
    assert "nmse: " in failure.text and "max_ulp: " in failure.text and "bound" in failure.text
    assert "this kernel always fails" in error.get("message") and "Traceback" in error.text
    command = _command(failure.text)
    assert command.startswith(f"{PLUGINS_ENV}={plugins} fusebench check ") and "--seed 5" in command

    again = tmp_path / "again.xml"
    r = _fusebench(*_argv(command), "--junit", str(again), cwd=tmp_path, plugins=plugins)
    assert r.returncode == 1, r.stdout + r.stderr
    tcs = list(ET.parse(again).iter("testcase"))
    assert [(tc.get("classname"), tc.get("name"), [c.tag for c in tc]) for tc in tcs] == [
        ("fusebench.rmsnorm_gemm.cpu.broken_zeros", "smoke.row[float32]", ["failure"])]


def test_a_skipped_case_is_skipped_and_plugin_problems_are_errors():
    """A case too large for the machine was never run: <skipped>, not an error. A plugin
    that failed to load (or was refused) is an error of a "registry" suite, so that CI shows
    why the gate did not pass."""
    from harness.junit import build_junit

    skipped = _rec(status="skipped", reason="too large for this machine: needs about 15.1 GiB of RAM")
    root = build_junit([skipped], problems=["plugin my.plugin (from $FUSEBENCH_PLUGINS): called sys.exit(0)"])
    (tc,) = [tc for tc in root.iter("testcase") if tc.get("classname").startswith("fusebench.rmsnorm_gemm")]
    assert [c.tag for c in tc] == ["skipped"] and "too large" in tc[0].get("message")
    (registry,) = [s for s in root.iter("testsuite") if s.get("name") == "registry"]
    assert registry.get("errors") == "1" and "sys.exit(0)" in registry.find("testcase/error").get("message")
    assert (root.get("tests"), root.get("errors"), root.get("skipped")) == ("2", "1", "1")
