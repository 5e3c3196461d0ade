"""Results files: records round-trip, a truncated or foreign line is reported and skipped."""

from __future__ import annotations

import json

import os
import stat

import pytest

from harness.results import ResultsWriter, RunInfo, machine_name, merge, read_records, write_output


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


def test_report_gives_each_speedup_its_interval_from_the_run(tmp_path):
    """× chain comes with the 99 % interval of this run's two medians: exp(±2.576 ·
    hypot(noise, noise)) around the ratio, in the HTML (grey where it holds 1) and text."""
    import html
    import math

    from harness.report import build_rows, speedup_interval, write_report
    from harness.textreport import speedup_text
    from tests.test_bad_input import make_record

    def pair(fused_ms, chain_ms, noise, case):
        f = make_record(case=case, median=fused_ms * 1e-3, noise=noise)
        c = make_record(case=case, variant="unfused", kind="unfused", median=chain_ms * 1e-3, noise=noise)
        return [f, c]

    recs = pair(1.0, 2.0, 0.01, "llama3_8b.decode") + pair(1.0, 1.02, 0.02, "llama3_8b.prefill")
    rows = {r["case"]: r for r in build_rows(recs) if r["variant"] == "fused"}
    lo, hi = rows["llama3_8b.decode"]["speedup_chain_ci"]
    w = math.exp(2.5758 * math.hypot(0.01, 0.01))
    assert math.isclose(lo, 2.0 / w) and math.isclose(hi, 2.0 * w) and lo > 1
    lo2, hi2 = rows["llama3_8b.prefill"]["speedup_chain_ci"]
    assert lo2 < 1 < hi2  # 1.02x with 2 % noise a side: not told from 1x
    assert speedup_text(rows["llama3_8b.decode"], "chain") == f"2.00 ({lo:.2f}–{hi:.2f})"
    assert speedup_text(rows["llama3_8b.decode"], "eager") == ""  # no eager record
    for bad in (float("inf"), float("nan"), -0.1, 1e300):  # 1e300 once overflowed exp() (found by the record fuzzer)
        assert speedup_interval({"median_s": 1.0, "noise": bad}, {"median_s": 1.0, "noise": 0.01}) is None
    page = html.unescape(write_report([_write(tmp_path / "r.jsonl", recs)], tmp_path / "r.html",
                                      include_committed=False).read_text())
    assert f"{lo:.2f}–{hi:.2f}" in page and f"{lo2:.2f}–{hi2:.2f}" in page
    assert page.count('class="unsure"') == 1  # the prefill speedup only


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_write_output_follows_links_keeps_modes_and_leaves_devices_in_place(tmp_path):
    """Every whole-file output (report -o, --junit) goes through write_output: through a
    link to its target, into a device directly, atomically only over a regular file."""
    real = tmp_path / "real.html"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.html"
    link.symlink_to(real)
    write_output(link, "new")
    assert link.is_symlink() and real.read_text() == "new" and stat.S_IMODE(real.stat().st_mode) == 0o640
    dangling = tmp_path / "to-be.html"
    dangling.symlink_to(tmp_path / "made" / "later.html")
    write_output(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made" / "later.html").read_text() == "made"
    write_output("/dev/null", "nothing")  # a character device: written, never replaced
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(IsADirectoryError):
        write_output(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.html", "made", "real.html", "to-be.html"]  # no temporary file


def test_write_output_into_a_full_device_fails_and_keeps_the_node(tmp_path):
    """As root, `-o /dev/full` once replaced the device node with a regular file; here a
    copy of /dev/full (the same device numbers) made in a temporary folder."""
    full = tmp_path / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.stat("/dev/full").st_rdev)
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here: {e}")
    with pytest.raises(OSError) as e:
        write_output(full, "report")
    assert e.value.errno == 28 and stat.S_ISCHR(full.lstat().st_mode)  # ENOSPC, and still the device


def test_report_output_through_a_symlink(tmp_path, capsys):
    from harness.cli import main
    from tests.test_bad_input import make_record

    results = _write(tmp_path / "r.jsonl", [make_record()])
    real, link = tmp_path / "site" / "index.html", tmp_path / "report.html"
    real.parent.mkdir()
    real.write_text("old")
    link.symlink_to(real)
    assert main(["report", str(results), "-o", str(link), "--no-committed"]) == 0
    assert link.is_symlink() and "rmsnorm_gemm" in real.read_text()


def test_append_after_a_partial_last_line_keeps_every_record(tmp_path):
    """A truncated last line (a write cut short) is ended before the next record, so the
    record does not join it in one unreadable line."""
    info = RunInfo.collect()
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as w:
        w.write(info.stamp(_rec(0)))
        w.write(info.stamp(_rec(1)))
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:40])  # a third record cut short
    with ResultsWriter(path) as w:
        assert w.partial_line == f"{path}:3"
        w.write(info.stamp(_rec(3)))
    loaded = read_records([path])
    assert [r["case"] for r in loaded.records] == ["c0", "c1", "c3"]
    assert len(loaded.problems) == 1 and loaded.problems[0].startswith(f"{path}:3: not a JSON record")
    with ResultsWriter(path) as w:  # a file that ends with a whole line is left alone
        assert w.partial_line == ""


def test_a_short_write_is_a_full_disk_named_with_its_file(tmp_path, monkeypatch):
    import errno

    import harness.results

    path = tmp_path / "r.jsonl"
    real_write = os.write
    writes = []

    def short(fd, data):  # the first call writes half the record, the next ones nothing
        writes.append(len(data))
        return real_write(fd, bytes(data[:len(data) // 2])) if len(writes) == 1 else 0

    w = ResultsWriter(path)
    w.write(_rec(0))
    monkeypatch.setattr(harness.results.os, "write", short)
    with pytest.raises(harness.results.ResultsWriteError) as e:
        w.write(_rec(1))
    monkeypatch.undo()
    w.close()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path) and e.value.written == 1
    assert f"record 2 of this run cut short after {writes[0] // 2} of {writes[0]} bytes" in e.value.strerror
    with ResultsWriter(path) as again:  # resumed later: the fragment is ended, the next record whole
        assert again.partial_line == f"{path}:2"
        again.write(_rec(2))
    assert [r["case"] for r in read_records([path]).records] == ["c0", "c2"]


@pytest.mark.parametrize("command, then", [
    ("check", "free some space and run it again"),
    ("bench", "free some space, then continue with `fusebench bench --resume {path}` (and the same filters)")])
def test_a_full_disk_ends_the_run_with_the_file_and_how_to_go_on(tmp_path, capsys, command, then):
    from tests.test_bad_input import run_cli

    full = "/dev/full"  # every write fails with ENOSPC
    argv = [command, "--fusion", "add_rmsnorm", "--backend", "cpu", "--variant", "unfused", "--case", "smoke.awkward",
            "--dtype", "float32", "--no-isolation", "-o", full]
    if command == "bench":
        argv += ["--budget", "0.01", "--min-samples", "2"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"error: cannot write results file {full}: No space left on device (record 1 of this run); no record of " \
           f"this run was written; {then.format(path=full)}" in err, err


def test_report_pairs_a_kernel_with_its_chain_only_on_the_same_parameters():
    """A user's case file reusing a case name with other dimensions, in the same commit: the
    fused kernel's speedup is not taken against a chain of another workload."""
    from harness.report import build_rows
    from tests.test_bad_input import make_record

    fused = make_record(params={"M": 512, "H": 4096, "N": 6144, "eps": 1e-5}, median=40e-3)
    chain = make_record(variant="unfused", kind="unfused", median=2e-3)  # M = 1
    (row,) = [r for r in build_rows([fused, chain]) if r["variant"] == "fused"]
    assert row["speedup_chain"] is None
    (row,) = [r for r in build_rows([make_record(median=1e-3), chain]) if r["variant"] == "fused"]
    assert row["speedup_chain"] == 2.0
