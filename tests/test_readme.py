"""The README's quick start is what CI runs, and its main job runs as written.

The quick start gives two commands after `bash .ci/setup`: the main job and the tests.
CI (`.ci/run`) runs `.ci/setup` and then the test command itself, so the two cannot drift
apart. The main job's command is run here as written but for a filter and a short budget
appended (one fusion at one case in one dtype), which keeps the test to seconds while the command, its defaults and the
environment's entry point are the README's own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The commands of the README's quick start block, setup stripped: [main job, tests]."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert all(line.startswith("bash .ci/setup && ") for line in lines), lines
    return [line[len("bash .ci/setup && "):] for line in lines]


def test_quick_start_has_the_main_job_and_the_tests():
    main_job, tests = quick_start_commands()
    assert shlex.split(main_job)[-1] == "run" and shlex.split(main_job)[0].endswith("fusebench")
    assert shlex.split(tests)[-2:] == ["-m", "pytest"]


def test_ci_runs_setup_and_the_readmes_test_command_as_written():
    _, tests = quick_start_commands()
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    steps = [line.strip() for line in run if line.strip() and not line.lstrip().startswith("#")]
    assert "bash .ci/setup" in steps
    ran = [s for s in steps if s.endswith(tests)]
    assert ran, f".ci/run does not run the README's test command {tests!r}"
    # nothing but environment variables before it
    prefix = ran[0][: -len(tests)].split()
    assert all(re.fullmatch(r"[A-Z_]+=\S*", word) for word in prefix), prefix
    assert steps.index("bash .ci/setup") < steps.index(ran[0])


def test_setup_installs_into_the_environment_the_commands_name():
    """The commands run from .venv/bin, which .ci/setup makes (FUSEBENCH_VENV aside)."""
    main_job, tests = quick_start_commands()
    setup = (ROOT / ".ci" / "setup").read_text()
    assert 'VENV="${FUSEBENCH_VENV:-.venv}"' in setup
    assert shlex.split(main_job)[0] == ".venv/bin/fusebench"
    assert shlex.split(tests)[0] == ".venv/bin/python"


def test_the_main_job_as_written_runs_and_ends_in_a_report(tmp_path):
    """`fusebench run` with its defaults, narrowed to one fusion at one case. Run through this
    interpreter's own entry point (the README's .venv/bin/fusebench is this interpreter's
    where CI runs the tests with .venv/bin/python)."""
    main_job, _ = quick_start_commands()
    argv = shlex.split(main_job)[1:] + ["--fusion", "add_rmsnorm", "--case", "smoke.awkward,qwen2_5_0_5b.decode",
                                         "--dtype", "float32", "--budget", "0.05"]
    env = dict(os.environ, FUSEBENCH_PROGRESS="lines", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())", *argv],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = re.search(r"^report: (.+\.html)$", out.stdout, re.M)
    assert report and Path(report.group(1)).is_file(), out.stdout[-2000:]
    assert "ETA" in out.stderr or "done" in out.stderr, out.stderr[-2000:]
