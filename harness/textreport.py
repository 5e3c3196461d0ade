"""Results files -> the report's per-fusion tables as text (`fusebench report --text`).

The rows are the HTML report's (harness.report.build_rows): for each machine and fusion one
table, a line per case, dtype and implementation with its median, its speedup over the
unfused chain and over the torch peers (medians of the same machine and commit, each with
its 99 % interval from that run's standard errors: report.speedup_interval), the
fraction of the measured peak it reached, and its accuracy against the float64 reference.
"""

from __future__ import annotations

from harness.report import _num, build_rows, interval_text
from harness.results import merge, read_records

COLUMNS = ("case", "dtype", "implementation", "commit", "median", "latency", "launches", "×chain", "×eager",
           "×compile", "GB/s", "% peak", "NMSE", "max ULP", "verdict")


def _x(v) -> str:
    return "" if v is None else f"{v:.2f}"


def speedup_text(r: dict, base: str) -> str:
    """A speedup and its 99 % interval from this run: "1.06 (0.91–1.21)"."""
    if r.get(f"speedup_{base}_noisy"):
        return "noisy"
    v, ci = r[f"speedup_{base}"], r.get(f"speedup_{base}_ci")
    return _x(v) + (f" ({interval_text(ci)})" if v is not None and ci else "")


def _g(v) -> str:
    return f"{v:.3g}" if _num(v) else ""


def _seconds(s) -> str:
    if not _num(s):
        return ""
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def _median(r: dict) -> str:
    """The median, marked ‡ where it is launch-inclusive (report.timing_class)."""
    return _seconds(r.get("median_s")) + (" ‡" if r.get("timing_class") == "launch-inclusive" else "")


def _verdict(r: dict) -> str:
    v = r.get("verdict") or r.get("status", "")
    if r.get("invalid"):
        v += " (timing invalid)"
    if v != "pass" and r.get("reason"):
        v += f": {r['reason'][:80]}"
    return v


def table_rows(rows: list[dict]) -> dict[tuple[str, str], list[tuple[str, ...]]]:
    """(machine, fusion) -> the text cells of each of its rows, in the report's order."""
    out: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for r in rows:
        peak = r.get("frac_peak")
        launches = r.get("launches")
        cells = (r["case"], r["dtype"], f"{r['backend']}/{r['variant']}", r["commit_short"], _median(r),
                 _seconds(r.get("latency_s")), "" if launches is None else str(launches), speedup_text(r, "chain"), speedup_text(r, "eager"), speedup_text(r, "compile"), _g(r.get("gbps")),
                 "" if peak is None else f"{100 * peak:.0f}%", _g(r.get("nmse")), _g(r.get("max_ulp")), _verdict(r))
        out.setdefault((r["machine"], r["fusion"]), []).append(cells)
    return out


def print_tables(paths, console) -> list[str]:
    """Print one table per machine and fusion; returns the problems met reading the files."""
    from rich.table import Table

    loaded = read_records(paths)
    rows = build_rows(merge([r for r in loaded.records if r.get("status") != "unavailable"]))
    if not rows:
        console.print("no checked or timed records in the results given")
    for (machine, fusion), lines in table_rows(rows).items():
        t = Table(title=f"{fusion} on {machine}")
        for c in COLUMNS:
            t.add_column(c, justify="right" if c.startswith("×") or c in ("median", "latency", "launches", "GB/s",
                                                                          "% peak") else "left")
        for cells in lines:
            t.add_row(*cells)
        console.print(t)
    if any(r.get("timing_class") == "launch-inclusive" for r in rows):
        console.print("‡ launch-inclusive: CUDA events around the host's launches (recorded before device timing)")
    return loaded.problems
