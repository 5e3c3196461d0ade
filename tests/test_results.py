"""Results files: records round-trip, a truncated or foreign line is reported and skipped."""

from __future__ import annotations

import json

from harness.results import ResultsWriter, RunInfo, machine_name, merge, read_records


def _rec(i):
    return {"fusion": "rmsnorm_gemm", "backend": "cpu", "variant": "fused", "case": f"c{i}", "dtype": "float32",
            "median_s": 1e-3 * (i + 1)}


def test_roundtrip_and_corruption(tmp_path):
    info = RunInfo.collect()
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as w:
        for i in range(3):
            w.write(info.stamp(_rec(i)))
    with open(path, "a") as f:
        f.write('{"fusion": "rmsnorm_gemm", "backe')  # an interrupted write
    with open(path, "a") as f:
        f.write("\n" + json.dumps({"hello": 1}) + "\n")
    loaded = read_records([path])
    assert [r["case"] for r in loaded.records] == ["c0", "c1", "c2"]
    assert len(loaded.problems) == 2 and f"{path}:4" in loaded.problems[0]
    assert loaded.records[0]["machine"] == info.machine and loaded.records[0]["commit"]
    assert len(merge(loaded.records + loaded.records)) == 3


def test_machine_name_prefers_gpu():
    assert machine_name({"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "cores": 2}) == "intel-xeon-platinum-8481c-2c"
    assert machine_name({"cpu": "x", "backends": {"cuda": {"gpu": "NVIDIA H200"}}}) == "nvidia-h200"
