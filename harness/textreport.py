"""Results files -> the report's per-fusion tables as text (`fusebench report --text`).

The rows are the HTML report's (harness.report.build_rows): for each machine and fusion one
table, a line per case, dtype and implementation with its median, its speedup over the
unfused chain and over the torch peers (medians of the same machine and commit, each with
its 99 % interval from that run's standard errors: report.speedup_interval), the
fraction of the measured peak it reached, and its accuracy against the float64 reference.

print_summary: the one screen that ends `fusebench run` and `bench`: failures first, then per
fusion and backend the records passed and the fused kernel's speedups over its chain and over
the fastest torch peer (geometric means, with the geometric means of the same 99 % intervals),
each unavailable backend in one line per reason.
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
    if any(_num(r.get("max_ulp")) and r["max_ulp"] >= ULP_NOTE_FROM and r.get("verdict") == "pass" for r in rows):
        console.print(ULP_NOTE, overflow="fold")
    return loaded.problems


# --- the end-of-run summary (fusebench run / bench) ---------------------------------------

ULP_NOTE = ("max ULP: the largest distance from the float64 reference at one element, in units in the last place "
            "of the dtype at that element's value. Near zero the last place is tiny, so an error that is small next "
            "to the output as a whole (one rounding of a sum of terms that cancel) is thousands to hundreds of "
            "thousands of ULPs there: a passing float32 row may show 1e5 or more. It is reported, not judged; the "
            "verdict rests on the error over the whole output and each row (NMSE, the rounding model's bound, the "
            "unfused chain's error).")
ULP_NOTE_FROM = 100  # a passing row's max ULP from which the tables print ULP_NOTE

SUMMARY_NOTE = ("× chain: the unfused chain's median over the fused kernel's, same backend (2.00 = twice as fast); "
                "× best torch: the fastest passing torch peer's (eager, compile, sdpa) of the same device class, named. "
                "Geometric means over the cases and dtypes (n) with the geometric means of their 99 % intervals "
                "(report.speedup_interval; no narrower than the mean's own); noisy: medians too unsteady to rank.")

PEER_KIND = "peer"
MAX_FAILURES = 12
MAX_SKIPPED = 4


def first_reason(r: dict, limit: int = 120) -> str:
    """The first of a record's reasons (they are joined by "; "), cut at `limit` characters;
    "…" where more was said (the full tables have it all)."""
    reason = str(r.get("reason") or r.get("status", ""))
    first = reason.split("\n")[0].split("; ")[0]
    short = first[:limit]
    return short + (" …" if short != reason else "")


def best_peer(rows: list[dict], r: dict) -> tuple[dict | None, bool]:
    """(the fastest torch peer of fused row r that may be divided by: same machine, commit,
    case parameters and dtype, on TORCH_PEER_OF's device class, passing, not invalid, the same
    timing class; whether a peer was left out as too noisy to rank)."""
    from harness.backends import TORCH_PEER_OF
    from harness.report import _identity, timing_class, too_noisy

    peer = TORCH_PEER_OF.get(r["backend"], "torch")
    noisy = False
    best = None
    for p in rows:
        if p["backend"] != peer or p["kind"] != PEER_KIND or _identity(r, p["backend"], p["variant"]) != _identity(p):
            continue
        if p.get("verdict") != "pass" or p.get("invalid") or not _num(p.get("median_s")) or p["median_s"] <= 0:
            continue
        if timing_class(p) != timing_class(r):
            continue
        if too_noisy(p):
            noisy = True
            continue
        if best is None or p["median_s"] < best["median_s"]:
            best = p
    return best, noisy


def _geomean(xs: list[float]) -> float | None:
    import math

    xs = [x for x in xs if _num(x) and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def aggregate(pairs: list[tuple[float, tuple[float, float] | None]]) -> tuple[float | None, tuple | None, int]:
    """(geometric mean of the speedups, the geometric means of their intervals' ends (None
    unless every speedup has one), how many)."""
    if not pairs:
        return None, None, 0
    gm = _geomean([s for s, _ in pairs])
    cis = [ci for _, ci in pairs]
    ci = (_geomean([c[0] for c in cis]), _geomean([c[1] for c in cis])) if all(cis) else None
    return gm, ci if ci and None not in ci else None, len(pairs)


def _speedup_cell(gm, ci, n: int, noisy: int, name: str = "") -> str:
    if gm is None:
        return "noisy" + (f" ({noisy})" if noisy > 1 else "") if noisy else ""
    text = _x(gm) + (f" ({interval_text(ci)})" if ci else "") + (f" n={n}" if n > 1 else "")
    if name:
        text += f" {name}"
    if noisy:
        text += f", {noisy} noisy"
    return text


def summary_lines(records: list[dict]) -> list[dict]:
    """Per fusion and backend (the float64 reference left out unless it is all there is):
    records checked and passed, failed, skipped, invalid timings, and the fused kernel's
    speedups over the chain and the best torch peer (aggregate()). Lines with a failure
    first, then in the report's order."""
    from harness.backends import BACKEND_MODULES
    from harness.report import speedup_interval, too_noisy

    judged = [r for r in records if r.get("status") not in ("unavailable",)]
    only_reference = bool(judged) and all(r.get("kind") == "reference" for r in judged)
    rows = build_rows(merge(judged))
    lines: dict[tuple[str, str], dict] = {}
    for r in judged:
        if r.get("kind") == "reference" and not only_reference:
            continue
        line = lines.setdefault((r["fusion"], r["backend"]), {
            "fusion": r["fusion"], "backend": r["backend"], "checked": 0, "passed": 0, "failed": 0, "skipped": 0,
            "invalid": 0, "chain": [], "chain_noisy": 0, "peer": [], "peer_noisy": 0, "peer_names": []})
        if r.get("status") == "skipped":
            line["skipped"] += 1
            continue
        line["checked"] += 1
        if r.get("status") in ("fail", "error"):
            line["failed"] += 1
        elif r.get("verdict") == "pass":
            line["passed"] += 1
        line["invalid"] += bool(r.get("invalid"))
    fused = [r for r in rows if r["kind"] == "fused" and (r["fusion"], r["backend"]) in lines]
    preferred = {(r["fusion"], r["backend"]) for r in fused if r["variant"] == "fused"}
    for r in fused:
        key = (r["fusion"], r["backend"])
        if key in preferred and r["variant"] != "fused":
            continue  # a backend with several fused variants: the one called "fused" speaks for it
        line = lines[key]
        if r.get("verdict") != "pass" or r.get("invalid") or not _num(r.get("median_s")):
            continue  # a wrong kernel's speed is no speedup, nor an invalid figure
        if r.get("speedup_chain_noisy"):
            line["chain_noisy"] += 1
        elif r.get("speedup_chain") is not None:
            line["chain"].append((r["speedup_chain"], r.get("speedup_chain_ci")))
        peer, peer_noisy = best_peer(rows, r)
        if too_noisy(r) and (peer or peer_noisy):
            line["peer_noisy"] += 1
        elif peer is not None:
            line["peer"].append((peer["median_s"] / r["median_s"], speedup_interval(peer, r)))
            line["peer_names"].append(peer["variant"])
        elif peer_noisy:
            line["peer_noisy"] += 1
    order = {b: i for i, b in enumerate(BACKEND_MODULES)}
    out = []
    for line in lines.values():
        line["chain_gm"], line["chain_ci"], line["chain_n"] = aggregate(line["chain"])
        line["peer_gm"], line["peer_ci"], line["peer_n"] = aggregate(line["peer"])
        names = line["peer_names"]
        line["peer_name"] = "/".join(sorted(set(names), key=lambda v: (-names.count(v), v)))
        out.append(line)
    out.sort(key=lambda x: (not x["failed"], x["fusion"], order.get(x["backend"], 99), x["backend"]))
    return out


def unavailable_groups(records: list[dict]) -> list[tuple[str, str, list[str]]]:
    """(backend, reason, implementation keys) for each backend and reason of the
    unavailable records: one line each, however many implementations and cases."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in records:
        if r.get("status") == "unavailable":
            keys = groups.setdefault((str(r.get("backend")), str(r.get("reason", ""))), [])
            if r.get("impl") not in keys:
                keys.append(r.get("impl"))
    return [(b, why, keys) for (b, why), keys in groups.items()]


def _impls_text(keys: list[str]) -> str:
    if len(keys) <= 3:
        return ", ".join(map(str, keys))
    variants = sorted({str(k).split("/")[-1] for k in keys})
    fusions = {str(k).split("/")[0] for k in keys}
    return f"{len(keys)} implementations ({', '.join(variants)} of {len(fusions)} fusion{'s' * (len(fusions) > 1)})"


def print_summary(records: list[dict], console, title: str = "summary") -> None:
    """One screen: failures first, then pass/fail and speedups per fusion and backend,
    unavailable backends one line each, skipped cases, invalid timings, the legend."""
    from rich.markup import escape
    from rich.table import Table

    from harness.backends import TORCH_PEER_OF

    failures = sorted((r for r in records if r.get("status") in ("fail", "error")),
                      key=lambda r: (str(r.get("fusion")), str(r.get("impl")), str(r.get("case")), str(r.get("dtype"))))
    if failures:
        console.print(f"[bold red]FAILED ({len(failures)})[/]")
        for r in failures[:MAX_FAILURES]:
            console.print(f"  [red]{escape(str(r.get('impl')))}[/] {escape(str(r.get('case')))} "
                          f"{escape(str(r.get('dtype')))}: {escape(first_reason(r))}", overflow="fold")
        if len(failures) > MAX_FAILURES:
            console.print(f"  ... and {len(failures) - MAX_FAILURES} more (full tables below the summary's paths)")
    lines = summary_lines(records)
    timed = any(x["chain"] or x["peer"] or x["chain_noisy"] or x["peer_noisy"] for x in lines)
    # the torch peers: a line per fusion only where one failed or was skipped, else one per backend below
    peers = {b for b in TORCH_PEER_OF.values()}
    quiet = [x for x in lines if x["backend"] in peers and not x["failed"] and not x["skipped"] and not x["invalid"]]
    if len(quiet) < len(lines):
        lines = [x for x in lines if x not in quiet]
    else:
        quiet = []
    if lines:
        t = Table(title=title, title_justify="left")
        t.add_column("fusion")
        t.add_column("backend")
        t.add_column("passed", justify="right")
        if timed:
            t.add_column("× chain [99% CI]")
            t.add_column("× best torch [99% CI]")
        t.add_column("notes")
        for x in lines:
            passed = f"{x['passed']}/{x['checked']}"
            passed = f"[bold red]{passed}[/]" if x["failed"] else f"[green]{passed}[/]" if x["checked"] else passed
            notes = []
            if x["failed"]:
                notes.append(f"[bold red]{x['failed']} failed[/]")
            if x["skipped"]:
                notes.append(f"{x['skipped']} skipped")
            if x["invalid"]:
                notes.append(f"[red]{x['invalid']} timing invalid[/]")
            cells = [x["fusion"], x["backend"], passed]
            if timed:
                cells += [_speedup_cell(x["chain_gm"], x["chain_ci"], x["chain_n"], x["chain_noisy"]),
                          _speedup_cell(x["peer_gm"], x["peer_ci"], x["peer_n"], x["peer_noisy"], x["peer_name"])]
            t.add_row(*cells, ", ".join(notes))
        console.print(t)
    for backend in sorted({x["backend"] for x in quiet}):
        mine = [x for x in quiet if x["backend"] == backend]
        console.print(f"peers {backend}: [green]{sum(x['passed'] for x in mine)}/{sum(x['checked'] for x in mine)}[/] "
                      f"passed ({len(mine)} fusion{'s' * (len(mine) > 1)}); the yardsticks of × best torch")
    for backend, why, keys in unavailable_groups(records):
        console.print(f"[yellow]unavailable[/] {escape(backend)}: {escape(_impls_text(keys))}: {escape(why)}",
                      overflow="fold")
    skipped: dict[tuple, int] = {}
    for r in records:
        if r.get("status") == "skipped":
            k = (str(r.get("case")), str(r.get("dtype")), str(r.get("reason", "")))
            skipped[k] = skipped.get(k, 0) + 1
    for (case, dtype, why), n in list(skipped.items())[:MAX_SKIPPED]:
        console.print(f"[yellow]skipped[/] {escape(case)} {escape(dtype)} ({n} implementation{'s' * (n > 1)}): "
                      f"{escape(why)}", overflow="fold")
    if len(skipped) > MAX_SKIPPED:
        console.print(f"[yellow]skipped[/] ... and {len(skipped) - MAX_SKIPPED} more case(s)")
    invalid = [r for r in records if r.get("invalid")]
    if invalid:
        console.print(f"[red]{len(invalid)} timing(s) flagged invalid[/] (counted in no speedup), e.g. "
                      f"{escape(str(invalid[0].get('impl')))} {escape(str(invalid[0].get('case')))} "
                      f"{escape(str(invalid[0].get('dtype')))}: {escape(str(invalid[0].get('invalid_reason', ''))[:120])}",
                      overflow="fold")
    if timed:
        console.print(f"[dim]{SUMMARY_NOTE}[/]", overflow="fold")
