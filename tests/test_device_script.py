"""The lease script for a lent GPU machine (.ci/device) is run there rarely, and a broken one
wastes the lease: its dry mode runs the same stages here, on cpu and torch and one fusion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_dry_run_of_the_device_script_writes_records_and_tables(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    env = {**os.environ, "OUT": str(tmp_path), "FUSEBENCH_DEVICE_DRY": "1", "FUSEBENCH_DEVICE_FUSION": "add_rmsnorm",
           "FUSEBENCH_COMMIT": commit, "FUSEBENCH_DIRTY": "1", "FUSEBENCH_DEVICE_DEADLINE": "300"}
    proc = subprocess.run(["bash", str(REPO / ".ci" / "device"), "gate", "bench"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "== gate: exit 0" in log and "== bench: exit 0" in log, log[-3000:]
    for name, timed in (("gate.jsonl", False), ("bench.jsonl", True)):
        recs = [json.loads(line) for line in (tmp_path / name).read_text().splitlines() if line.strip()]
        assert recs and {r["fusion"] for r in recs} == {"add_rmsnorm"}
        assert {r["backend"] for r in recs} == {"cpu", "torch"}
        assert all(r["status"] == "ok" and r["verdict"] == "pass" for r in recs), [r.get("reason") for r in recs]
        assert all(r["commit"] == commit and r["dirty"] for r in recs)  # the copy there has no git history
        assert all(("median_s" in r) == timed for r in recs)
    summary = (tmp_path / "summary.txt").read_text()
    assert "add_rmsnorm on" in summary and "cpu/fused" in summary
    assert "bench.jsonl: {'ok':" in log
    lines = [line for line in log.splitlines() if line.startswith("  add_rmsnorm smoke.awkward ")]
    fused = [line for line in lines if " cpu/fused |" in line]
    assert len(fused) == 3 and all(line.endswith("| pass") for line in fused), lines  # f32, f16, bf16
    chain = [line for line in lines if " cpu/unfused |" in line]
    assert len(chain) == 3 and all(" | 2 | " in line for line in chain), chain  # launches: add, rms_norm
