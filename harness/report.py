"""Results files -> one self-contained HTML report (no network needed to view it).

Runs from any number of machines and commits are merged; for each (machine, commit,
fusion, case with its parameters, dtype, implementation) the newest record is shown, so
no commit's figures are hidden by another's. Speedups compare medians from the same
machine, commit and case parameters: over the unfused chain on the same backend, and over
the torch peers on the same device class (harness.backends.TORCH_PEER_OF), each of them and
the fastest that passes; each speedup has its 99 % interval from the run's noise, which says
whether it is faster, slower, or cannot be told from 1× (interval_class). Committed runs from real
hardware under reports/data/ are merged in unless asked not to.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from harness.backends import TORCH_PEER_OF
from harness.results import REPO_ROOT, merge, read_records, workload_of, write_output

COMMITTED_DATA = REPO_ROOT / "reports" / "data"
IDENTITY = ("machine", "commit", "fusion", "case", "dtype", "backend", "variant")

UNDER_TEST = ("fused",)  # the kernels under test; reference, chains and torch peers are yardsticks
KIND_ORDER = {"fused": 0, "unfused": 1, "peer": 2, "reference": 3}


def failed(r: dict) -> bool:
    return r.get("status") in ("fail", "error") or r.get("verdict") == "fail"


def _identity(r: dict, backend: str | None = None, variant: str | None = None) -> tuple:
    """IDENTITY and the case's parameters (a case name may stand for other dimensions in a
    user's case file); with `backend`/`variant`, the identity of r's baseline there."""
    fields = {**r, **({"backend": backend, "variant": variant} if backend else {})}
    return (*(fields.get(f) for f in IDENTITY), workload_of(r))


def _latest(records: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in records:
        k = _identity(r)
        if k not in best or str(r.get("timestamp", "")) >= str(best[k].get("timestamp", "")):
            best[k] = r
    return list(best.values())


def _commit(r: dict) -> str:
    return str(r.get("commit", "?"))[:10] + ("+dirty" if r.get("dirty") else "")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _geomean(xs) -> float | None:
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


# Backends whose figures, before records named their timing method (2026-12-04), were
# CUDA events around the host's launches: launch-inclusive, not device time.
_EVENT_TIMED = ("cuda", "torch_cuda")
LAUNCH_INCLUSIVE = "launch-inclusive (events around the host's launches; recorded before device timing)"


def timing_method(r: dict) -> str | None:
    """How a record's median was timed: its own words, or LAUNCH_INCLUSIVE for GPU
    records from before records said (the first H200 run)."""
    if not _num(r.get("median_s")):
        return None
    if r.get("timing_method"):
        return r["timing_method"]
    return LAUNCH_INCLUSIVE if r.get("backend") in _EVENT_TIMED else "host clock"


def timing_class(r: dict) -> str | None:
    """Medians of one class can be divided by each other: "launch-inclusive", "device"
    (graph replay or a held stream, WebGPU timestamps) or "host"."""
    m = timing_method(r)
    if m is None:
        return None
    return "launch-inclusive" if m == LAUNCH_INCLUSIVE else "host" if m.startswith("host") else "device"


def build_rows(records: list[dict]) -> list[dict]:
    """Measured/checked rows with their speedups over the chain and the torch peers."""
    latest = _latest([r for r in records if r.get("status") != "unavailable"])
    index = {_identity(r): r for r in latest}

    def baseline(r, backend, variant):
        other = index.get(_identity(r, backend, variant))
        ok = other and other.get("verdict") == "pass" and not other.get("invalid") and other.get("median_s")
        return other if ok and timing_class(other) == timing_class(r) else None  # never mix the classes

    peers: dict[tuple, list[dict]] = {}  # the torch peers of each case, every variant (eager, compile, sdpa ...)
    for r in latest:
        if r["kind"] == "peer":
            peers.setdefault(_identity(r, r["backend"], "*"), []).append(r)

    rows = []
    for r in latest:
        med = r.get("median_s")
        peer = TORCH_PEER_OF.get(r["backend"], "torch")
        base = {
            "chain": baseline(r, r["backend"], "unfused"),
            "eager": baseline(r, peer, "eager"),
            "compile": baseline(r, peer, "compile"),
        }
        if r["kind"] == "reference":
            base = {}  # float64 NumPy is the accuracy yardstick, not a contender
        base.pop(r["variant"] if r["backend"] == peer else "chain" if r["variant"] == "unfused" else None, None)
        if r.get("invalid") or not _num(med) or med <= 0:
            base = {}  # a figure flagged invalid (beyond the peak, work the timer missed) is no speedup
        row = {**r, "commit_short": _commit(r), "details": _details(r), "timing_class": timing_class(r),
               "under_test": r["kind"] in UNDER_TEST, "failed": failed(r), "place": f"{r['machine']} · {_commit(r)}"}
        for k in ("chain", "eager", "compile"):
            noisy = bool(base.get(k)) and (too_noisy(r) or too_noisy(base[k]))
            row[f"speedup_{k}_noisy"] = noisy  # said so, never drawn as a speedup
            if noisy:
                base[k] = None
            row[f"speedup_{k}"] = base[k]["median_s"] / med if base.get(k) else None
            row[f"speedup_{k}_ci"] = speedup_interval(base[k], r) if base.get(k) else None
        timed = not r.get("invalid") and _num(med) and med > 0
        row["speedup_chain_why"] = None if row["speedup_chain"] or row["speedup_chain_noisy"] or not row["under_test"] else (
            "this figure is invalid" if r.get("invalid") else "not timed" if not timed
            else _why_not(r, index.get(_identity(r, r["backend"], "unfused")), "chain"))
        _best_peer(row, r, peers.get(_identity(r, peer, "*"), []) if r["kind"] in ("fused", "unfused") and timed else [],
                   lambda p: baseline(r, p["backend"], p["variant"]))
        rows.append(row)
    rows.sort(key=lambda r: (r["fusion"], r["case"], r["dtype"], r["machine"], r["backend"], r["variant"],
                             str(r.get("timestamp"))))
    return rows


def _best_peer(row: dict, r: dict, peers: list[dict], usable) -> None:
    """row["speedup_peer"] (and _ci, _noisy, _name): over the fastest torch peer of r's case
    that passes and was timed as r was (any variant: eager, compile, sdpa ...); noisy when
    that peer's or r's median is too noisy to rank (a slower peer is never put in its place)."""
    best = min((p for p in peers if usable(p)), key=lambda p: p["median_s"], default=None)
    noisy = bool(best) and (too_noisy(r) or too_noisy(best))
    whys = sorted({_why_not(r, p, "torch peer") for p in peers})
    row["speedup_peer_why"] = None if best else "; ".join(whys) if peers else "no torch peer measured"
    row["speedup_peer_name"] = best["variant"] if best else None
    row["speedup_peer_noisy"] = noisy
    ok = best and not noisy
    row["speedup_peer"] = best["median_s"] / r["median_s"] if ok else None
    row["speedup_peer_ci"] = speedup_interval(best, r) if ok else None


def _why_not(r: dict, other: dict | None, what: str) -> str:
    """Why r has no speedup over `other` (its chain or a torch peer)."""
    if other is None:
        return f"no {what} measured"
    if other.get("verdict") != "pass":
        return f"{what} fails"
    if other.get("invalid") or not _num(other.get("median_s")):
        return f"no valid {what} time"
    if timing_class(other) != timing_class(r):
        return f"{what} timed differently ({timing_class(other)} vs {timing_class(r)})"
    return f"{what} not comparable"


def interval_class(ci) -> str:
    """What a speedup's interval says: "faster" (all of it above 1×), "slower" (all below)
    or "unsure" (it holds 1×, or there is none: this run cannot tell)."""
    if not ci:
        return "unsure"
    return "faster" if ci[0] > 1 else "slower" if ci[1] < 1 else "unsure"


# A median whose relative standard error is above this cannot rank two implementations
# (bimodal samples on a loaded machine gave intervals such as 0.00–1435x): no speedup is
# drawn from it; the tables say "noisy".
NOISE_LIMIT = 0.10


# ... nor one timed while other processes kept this share of the machine's cores busy
BUSY_LIMIT = 0.25


def too_noisy(r: dict) -> bool:
    n, busy = r.get("noise"), r.get("machine_busy")
    return (_num(n) and not n <= NOISE_LIMIT) or (_num(busy) and busy > BUSY_LIMIT)


CI_Z = 2.5758  # the normal's 99.5 % quantile: a two-sided 99 % interval


def speedup_interval(base: dict, r: dict) -> tuple[float, float] | None:
    """The 99 % interval of median(base) / median(r) from the two medians' relative
    standard errors (their `noise`, harness.timing), as log-normal: what this run can tell
    the speedup to. Drift between runs is not in it (two runs of one commit on the CI VM
    differ by ~11 %); `fusebench compare` over repeated runs counts that. None where a
    record has no usable noise figure (missing, negative, or so large that the interval
    says nothing: a relative error of 10 or more)."""
    nb, nr = base.get("noise"), r.get("noise")
    if not (_num(nb) and _num(nr)) or not (0 <= nb < 10 and 0 <= nr < 10):
        return None
    s = base["median_s"] / r["median_s"]
    w = math.exp(CI_Z * math.hypot(nb, nr))
    return s / w, s * w



def interval_text(ci) -> str:
    """(lo, hi) -> "0.91–1.21" (as many digits as it takes to tell the ends apart, up to 3)."""
    lo, hi = ci
    for digits in (2, 3):
        if f"{lo:.{digits}f}" != f"{hi:.{digits}f}":
            break
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def _details(r: dict) -> str:
    fp = r.get("fingerprint", {})
    bfp = fp.get("backends", {}).get(r["backend"], {})
    parts = [f"machine {r.get('machine')} ({fp.get('cpu', '?')}, {fp.get('cores', '?')} cores)",
             f"commit {str(r.get('commit', '?'))[:10]}{' (dirty)' if r.get('dirty') else ''}",
             f"run {r.get('run_id')} at {r.get('timestamp')}"]
    if bfp:  # the backend's whole fingerprint is under Machines, by run
        parts.append(f"backend {r['backend']}: " + ", ".join(
            str(bfp[k]) for k in ("gpu", "adapter_device", "torch", "numba", "cupy") if k in bfp) + " (more under Machines)")
    versions = r.get("versions")
    if isinstance(versions, dict) and versions:
        parts.append("versions " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if timing_method(r):
        parts.append(f"timed by: {timing_method(r)}" + (f"; path: {r['path']}" if r.get("path") else ""))
    if r.get("n"):
        seg = r.get("segments")
        rounds = f", in {seg} interleaved rounds" if isinstance(seg, int) and seg > 1 else ""
        busy = r.get("machine_busy")
        parts.append(f"{r['n']} samples{rounds}, noise {100 * r.get('noise', 0):.2f}%, mode {r.get('time', {}).get('mode')}"
                     + (f", other processes used {100 * busy:.0f}% of the cores meanwhile" if _num(busy) else ""))
    parts.append(f"seed {r.get('seed')}, params {json.dumps(r.get('params'))}")
    if r.get("reason"):
        parts.append(f"reason: {r['reason']}")
    if r.get("invalid"):
        parts.append(f"timing invalid: {r.get('invalid_reason') or 'beyond the measured peak'}")
    return "\n".join(parts)


def summarize(rows: list[dict]) -> list[dict]:
    """Per machine, backend and commit: pass rate, fast_p, geometric-mean speedups."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] in ("fused", "unfused", "peer"):
            groups.setdefault((r["machine"], r["backend"], _commit(r)), []).append(r)
    out = []
    for (machine, backend, commit), rs in sorted(groups.items()):
        fused = [r for r in rs if r["kind"] == "fused"]
        judged = [r for r in rs if r.get("verdict")]
        out.append({
            "machine": machine, "backend": backend, "commit": commit, "n": len(rs),
            "pass_rate": sum(r["verdict"] == "pass" for r in judged) / len(judged) if judged else None,
            "fast_1": _fast(fused, 1.0), "fast_12": _fast(fused, 1.2),
            "gm_chain": _geomean(r["speedup_chain"] for r in fused),
            "gm_eager": _geomean(r["speedup_eager"] for r in fused),
            "gm_compile": _geomean(r["speedup_compile"] for r in fused),
        })
    return out


def aggregate_speedup(rows: list[dict], base: str) -> dict:
    """The geometric mean of rows' speedups over `base` ("chain", "peer") with its 99 %
    interval: each speedup's interval read as log-normal (report.speedup_interval), their
    logs averaged, so the half-width is z·sqrt(Σσ²)/n. No interval where a speedup has none.
    With how many of the rows were faster, slower or could not be told, and a line per row."""
    have = [r for r in rows if _num(r.get(f"speedup_{base}")) and 0 < r[f"speedup_{base}"] < math.inf]
    whys = [r[f"speedup_{base}_why"] for r in rows if r.get(f"speedup_{base}_why")]
    out = {"n": len(have), "of": len(rows), "noisy": sum(bool(r.get(f"speedup_{base}_noisy")) for r in rows),
           "why": max(sorted(set(whys)), key=whys.count) if whys else None}
    if not have:
        return out
    logs = [math.log(r[f"speedup_{base}"]) for r in have]
    cis = [r.get(f"speedup_{base}_ci") for r in have]
    gm = math.exp(sum(logs) / len(logs))
    ci = None
    if all(c and 0 < c[0] <= c[1] < math.inf for c in cis):
        sigma = math.sqrt(sum((math.log(hi / lo) / (2 * CI_Z)) ** 2 for lo, hi in cis)) / len(cis)
        w = math.exp(CI_Z * sigma)
        ci = (gm / w, gm * w) if math.isfinite(w) else None
    classes = [interval_class(c) for c in cis]
    names = {r.get(f"speedup_{base}_name") for r in have} - {None}
    lines = [f"{r['case']} {r['dtype']}{' over ' + r[f'speedup_{base}_name'] if r.get(f'speedup_{base}_name') else ''}: "
             f"{r[f'speedup_{base}']:.2f}×" + (f" ({interval_text(c)})" if c else "") for r, c in zip(have, cis)]
    return {**out, "gm": gm, "ci": ci, "cls": interval_class(ci), "peers": sorted(names),
            "faster": classes.count("faster"), "slower": classes.count("slower"), "unsure": classes.count("unsure"),
            "lines": lines}


def overview(rows: list[dict]) -> dict:
    """The report's first screen: what failed (grouped by fusion and implementation, kernels
    under test first), then for each fusion and each (machine, commit, backend) with a
    kernel under test its verdict and its speedups over the chain and the best torch peer."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["fusion"], r["machine"], _commit(r), r["backend"], r["variant"]), []).append(r)
    failures = []
    for (fusion, machine, commit, backend, variant), rs in groups.items():
        bad = [r for r in rs if failed(r)]
        if bad:
            reasons = [str(r.get("reason") or r.get("status") or "") for r in bad]
            failures.append({"fusion": fusion, "machine": machine, "commit": commit, "impl": f"{backend}/{variant}",
                             "under_test": rs[0]["kind"] in UNDER_TEST, "n": len(bad), "of": len(rs),
                             "cases": [f"{r['case']} {r['dtype']}" for r in bad],
                             "reason": max(sorted(set(reasons)), key=reasons.count)})
    failures.sort(key=lambda f: (not f["under_test"], f["fusion"], f["impl"], f["machine"], f["commit"]))
    tested = [r for r in rows if r["kind"] in UNDER_TEST]
    columns = sorted({(r["machine"], _commit(r), r["backend"]) for r in tested}, key=lambda c: tuple(map(str, c)))
    cells: dict[tuple, dict] = {}
    for r in tested:
        cells.setdefault((r["fusion"], (r["machine"], _commit(r), r["backend"])), {}).setdefault(r["variant"], []).append(r)
    fusions = sorted({r["fusion"] for r in tested})
    table = []
    for fusion in fusions:
        line = []
        for col in columns:
            entries = []
            for variant, rs in sorted(cells.get((fusion, col), {}).items()):
                judged = [r for r in rs if r.get("verdict") or failed(r)]
                entries.append({"variant": variant, "n": len(rs), "judged": len(judged),
                                "failed": sum(failed(r) for r in rs),
                                "invalid": sum(bool(r.get("invalid")) for r in rs),
                                "chain": aggregate_speedup(rs, "chain"), "peer": aggregate_speedup(rs, "peer")})
            line.append(entries)
        table.append({"fusion": fusion, "cells": line})
    invalid = [r for r in rows if r.get("invalid")]
    return {"failures": failures, "columns": columns, "table": table, "invalid": len(invalid),
            "checked": sum(bool(r.get("verdict")) or failed(r) for r in rows), "failed": sum(failed(r) for r in rows),
            "yardstick_backends": sorted({r["backend"] for r in rows if r["kind"] == "peer"})}


def _fast(fused: list[dict], p: float) -> float | None:
    timed = [r for r in fused if r.get("median_s")]
    if not timed:
        return None
    return sum(r.get("verdict") == "pass" and (r.get("speedup_chain") or 0) > p for r in timed) / len(timed)


def cross_machine(rows: list[dict], fusion: str) -> dict:
    """The same fusion, case, dtype and variant side by side across machines and backends:
    columns are (machine, backend) pairs, cells the row measured there (or None)."""
    mine = [r for r in rows if r["fusion"] == fusion and r["kind"] != "reference"]
    columns = sorted({(r["machine"], r["backend"]) for r in mine})
    cells: dict[tuple, dict] = {}
    for r in sorted(mine, key=lambda r: str(r.get("timestamp"))):  # the newest commit's record wins
        cells.setdefault((r["case"], r["dtype"], r["variant"]), {})[(r["machine"], r["backend"])] = r
    return {"columns": columns,
            "rows": [{"case": k[0], "dtype": k[1], "variant": k[2], "cells": [v.get(c) for c in columns]}
                     for k, v in sorted(cells.items())]}


def _number(v) -> str:
    """3 significant digits, whole numbers from 1000 to a million written out (2170, not 2.17e+03)."""
    if not _num(v):
        return ""
    return f"{v:.0f}" if 1000 <= abs(v) < 1e6 else f"{v:.3g}"


def _peer_detail(r: dict) -> str:
    """The × torch cell's hover text: which peer was the fastest, and each peer's speedup."""
    parts = [f"fastest passing torch peer: {r['speedup_peer_name']}"] if r.get("speedup_peer_name") else []
    for k in ("eager", "compile"):
        v, ci = r.get(f"speedup_{k}"), r.get(f"speedup_{k}_ci")
        if r.get(f"speedup_{k}_noisy"):
            parts.append(f"over {k}: noisy")
        elif _num(v):
            parts.append(f"over {k}: {v:.2f}×" + (f" ({interval_text(ci)})" if ci else ""))
    return "".join("\n" + p for p in parts)


def _plots(rows: list[dict], fusions: list[str]) -> dict:
    from harness import plots

    return {"speedup": {f: plots.speedup_bars(rows, f) for f in fusions},
            "error": {f: plots.error_by_dtype(rows, f) for f in fusions},
            "roofline": [(m, b, uri) for m, b in sorted({(r["machine"], r["backend"]) for r in rows})
                         if (uri := plots.roofline(rows, m, b))]}


def _machines(records: list[dict]) -> list[dict]:
    """Each machine's fingerprints (its backends' devices, drivers and libraries), one per
    distinct fingerprint with the runs that had it: the tables' rows name their run."""
    seen: dict = {}
    for r in records:
        text = json.dumps(r.get("fingerprint", {}), indent=1, default=str)
        seen.setdefault(r.get("machine"), {}).setdefault(text, set()).add(str(r.get("run_id")))
    return [{"name": k, "fingerprints": [{"text": t, "runs": sorted(runs)} for t, runs in v.items()]}
            for k, v in sorted(seen.items(), key=lambda kv: str(kv[0]))]


def with_committed(paths, include_committed: bool = True) -> list:
    """The results paths given, plus reports/data/ (runs committed from real hardware) when
    asked and it holds any."""
    paths = list(paths)
    if include_committed and COMMITTED_DATA.is_dir() and any(COMMITTED_DATA.rglob("*.jsonl")):
        paths.append(COMMITTED_DATA)
    return paths


def write_report(paths, output: Path, include_committed: bool = True, on_problem=None) -> Path:
    """The HTML report of the records in `paths` (and in reports/data/ unless
    include_committed is false) written to `output`; each line that could not be read is
    listed in the page and, when on_problem is given, passed to it ("file:line: why")."""
    paths = with_committed(paths, include_committed)
    loaded = read_records(paths)
    for problem in loaded.problems if on_problem else ():
        on_problem(problem)
    records = merge(loaded.records)
    rows = build_rows(records)
    fusions = sorted({r["fusion"] for r in rows})
    env = Environment(loader=PackageLoader("harness", "templates"), autoescape=select_autoescape(["html", "j2"]))
    # a row without a figure (an untimed error, a skipped case) has None or jinja's Undefined
    env.filters["ms"] = lambda s: "" if not _num(s) else (f"{s * 1e3:.3f}" if s < 10 else f"{s * 1e3:.0f}")
    env.filters["x"] = lambda v: "" if not _num(v) else f"{v:.2f}×"
    env.filters["g"] = lambda v: "" if not _num(v) else f"{v:.3g}"
    env.filters["num"] = _number
    env.filters["breakable"] = lambda s: Markup("<wbr>").join(re.split(r"(?<=[._])", str(s)))  # escapes each part
    env.filters["pct"] = lambda v: "" if not _num(v) else f"{100 * v:.0f}%"
    env.filters["interval"] = interval_text
    env.filters["interval_class"] = interval_class
    env.filters["peer_detail"] = _peer_detail
    page = env.get_template("report.html.j2").render(
        generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        sources=[str(p) for p in paths], problems=loaded.problems,
        summary=summarize(rows), overview=overview(rows), fusions=fusions, rows=rows, plots=_plots(rows, fusions),
        cross={f: cross_machine(rows, f) for f in fusions}, commits=sorted({_commit(r) for r in rows}),
        unavailable=sorted(_latest([r for r in records if r.get("status") == "unavailable"]),
                           key=lambda r: (r["machine"], r["impl"])),
        machines=_machines(records))
    return write_output(output, page)
