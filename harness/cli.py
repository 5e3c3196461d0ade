"""fusebench command line: list | check | bench | report | run | compare.

Every user error (bad case file, unknown fusion/backend/dtype, unreadable results) ends
in one message and exit status 2, never a traceback. `check` and `run` exit 1 when any
implementation fails the accuracy gate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path

from harness.backends import BACKEND_MODULES, get_backend
from harness.cases import SUITES, CaseError, load_cases, select
from harness.dtypes import DTYPES


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line, exit status 2."""


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _add_filters(p: argparse.ArgumentParser, suite_default: str | None = "quick") -> None:
    p.add_argument("--fusion", type=_csv, action="extend", help="fusion name(s), comma-separated")
    p.add_argument("--backend", type=_csv, action="extend",
                   help=f"backend(s): {', '.join(BACKEND_MODULES)}; naming one that cannot load is an error")
    p.add_argument("--variant", type=_csv, action="extend", help="variant(s): fused, unfused, eager, compile, ...")
    p.add_argument("--case", type=_csv, action="extend", help="case name(s) or globs: decode, llama3_8b.*")
    p.add_argument("--dtype", type=_csv, action="extend", help=f"dtype(s): {', '.join(d for d in DTYPES if d != 'float64')}")
    p.add_argument("--cases", nargs="+", metavar="FILE", help="case files to use instead of the shipped ones")
    p.add_argument("--suite", choices=SUITES, default=suite_default,
                   help=f"which cases to run (default: {suite_default}); 'full' has every case")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")


def _add_timing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=float, default=0.5, help="seconds of samples per measurement (default 0.5)")
    p.add_argument("--min-samples", type=int, default=10, help="at least this many samples (default 10)")
    p.add_argument("--hot", action="store_true", help="keep caches warm between samples (default: flush them)")
    p.add_argument("--out", "-o", help="results file (JSON lines); default reports/runs/<time>-<machine>.jsonl")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fusebench", description="Correctness and benchmarks for fused LLM kernels.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="fusions x implementations, each available or why not")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fusion", type=_csv, action="extend")
    p.add_argument("--backend", type=_csv, action="extend")

    p = sub.add_parser("check", help="accuracy gate: exit 1 on any failure")
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML, for CI")

    p = sub.add_parser("bench", help="time implementations into a results file")
    _add_filters(p)
    _add_timing(p)

    p = sub.add_parser("report", help="results files -> one self-contained HTML report")
    p.add_argument("results", nargs="*", help="results files or folders (JSON lines)")
    p.add_argument("-o", "--output", default="reports/report.html", help="HTML file to write")
    p.add_argument("--no-committed", action="store_true", help="leave out the committed runs in reports/data/")

    p = sub.add_parser("run", help="check + bench + report on the quick suite: the main job")
    _add_filters(p)
    _add_timing(p)
    p.add_argument("--report", default=None, help="HTML file to write (default reports/report-<time>.html)")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML, for CI")

    p = sub.add_parser("compare", help="BASE vs NEW results: accuracy changes, speed beyond noise; exit 1 on a regression")
    p.add_argument("base", metavar="BASE", help="results file or folder (JSON lines) to compare against")
    p.add_argument("new", metavar="NEW", help="results file or folder (JSON lines) of the newer run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-fail-on-slower", action="store_true", help="exit 0 even when something is slower beyond noise")
    p.add_argument("--no-fail-on-accuracy", action="store_true", help="exit 0 even when a verdict went pass -> fail")
    p.add_argument("--same-within", type=float, default=0.05, metavar="FRACTION",
                   help="call a change SAME when 99%% sure it is smaller than this (default 0.05); "
                        "FASTER/SLOWER are decided by the noise alone")
    return ap


def main(argv=None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, CaseError) as e:
        print(f"fusebench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fusebench {args.command}: interrupted; finished records are kept", file=sys.stderr)
        return 130


# --- selection -------------------------------------------------------------------------

def _registry():
    from harness.registry import discover

    reg = discover()
    for problem in reg.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return reg


def _selection(args, reg):
    """(cases, implementations) chosen by the filters, with unknown names refused."""
    for f in args.fusion or []:
        if f not in reg.fusions:
            raise UsageError(f"unknown fusion {f!r}; known: {', '.join(reg.fusions)}")
    for b in args.backend or []:
        if b not in BACKEND_MODULES:
            raise UsageError(f"unknown backend {b!r}; known: {', '.join(BACKEND_MODULES)}")
    for d in args.dtype or []:
        if d not in DTYPES or d == "float64":
            raise UsageError(f"unknown dtype {d!r}; known: float32, float16, bfloat16")
    for f in args.cases or []:
        if not Path(f).is_file():
            raise UsageError(f"case file {f!r} does not exist")
    impls = reg.select(fusions=args.fusion, backends=args.backend, variants=args.variant)
    if args.variant and not impls:
        raise UsageError(f"no implementation has variant {', '.join(args.variant)}")
    for b in args.backend or []:  # asked for by name: failing to load is an error, not a skip
        ok, why = get_backend(b).probe()
        if not ok:
            raise UsageError(f"backend {b!r} was asked for but cannot run here: {why}")
    cases = select(load_cases(reg, args.cases), suite=None if args.cases else args.suite,
                   fusions=args.fusion, names=args.case)
    if not cases:
        raise UsageError("no case matches the filters (see the case files with `fusebench list`)")
    if not any(i.kind != "reference" for i in impls):
        raise UsageError("no implementation matches the filters")
    return cases, impls


# --- list ------------------------------------------------------------------------------

def cmd_list(args) -> int:
    reg = _registry()
    rows = []
    for impl in reg.select(fusions=args.fusion, backends=args.backend):
        ok, why = impl.available()
        rows.append({"fusion": impl.fusion, "backend": impl.backend, "variant": impl.variant, "kind": impl.kind,
                     "dtypes": list(impl.dtypes), "available": ok, "reason": why, "key": impl.key})
    if args.json:
        print(json.dumps({"implementations": rows, "problems": reg.problems}, indent=2))
        return 0
    from rich.table import Table

    t = Table(title="fusebench implementations")
    for col in ("fusion", "backend", "variant", "kind", "dtypes", "available"):
        t.add_column(col)
    for r in rows:
        avail = "[green]yes[/]" if r["available"] else f"[red]no[/]: {r['reason']}"
        t.add_row(r["fusion"], r["backend"], r["variant"], r["kind"], ", ".join(r["dtypes"]), avail)
    _console().print(t)
    return 0


# --- check / bench / run ---------------------------------------------------------------

def _default_results_path(info) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("reports") / "runs" / f"{stamp}-{info.machine}.jsonl"


def _execute(args, bench: bool, write: bool = False) -> tuple[list[dict], Path | None]:
    """Run the jobs with a progress bar; with `write`, records go to the results file
    (args.out, else reports/runs/<time>-<machine>.jsonl) as they finish."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.results import ResultsWriter, RunInfo
    from harness.runner import Options, plan, run_job, unavailable_records

    reg = _registry()
    cases, impls = _selection(args, reg)
    missing, usable = unavailable_records(impls)
    backends = [get_backend(b) for b in dict.fromkeys(i.backend for i in impls)]
    info = RunInfo.collect(backends)
    opts = Options(bench=bench, seed=args.seed)
    if bench:
        opts.budget_s, opts.min_samples, opts.cold = args.budget, args.min_samples, not args.hot
    jobs = plan(cases, usable, args.dtype)
    writer = None
    results_path = None
    if write:
        results_path = Path(args.out) if args.out else _default_results_path(info)
        writer = ResultsWriter(results_path)
    records: list[dict] = []

    def keep(rec):
        rec = info.stamp(rec)
        records.append(rec)
        if writer:
            writer.write(rec)

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for rec in missing:
            keep(rec)
        total = sum(len(j.impls) for j in jobs)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=False, disable=not sys.stderr.isatty() and not os.environ.get("FUSEBENCH_PROGRESS"),
                      console=_stderr_console()) as progress:
            task = progress.add_task("starting", total=total)
            for job in jobs:
                def on_impl(impl, job=job):
                    progress.update(task, description=f"{job.case.id} {job.dtype} {impl.backend}/{impl.variant}")

                def on_record(rec):
                    keep(rec)
                    progress.advance(task)

                run_job(reg, job, opts, on_record, on_impl)
    finally:
        if writer:
            writer.close()
    return records, results_path


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _console():
    """stdout console; wide enough for the tables when output is not a terminal."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", 220)))


def _print_check_table(records: list[dict]) -> None:
    from rich.table import Table

    t = Table(title="accuracy gate")
    for col in ("case", "dtype", "implementation", "verdict", "NMSE", "max ULP", "chain NMSE", "reason"):
        t.add_column(col, overflow="fold")
    for r in records:
        if r["status"] == "unavailable":
            t.add_row(r["case"], r["dtype"], r["impl"], "[yellow]unavailable[/]", "", "", "", r["reason"])
            continue
        v = "[green]pass[/]" if r.get("verdict") == "pass" else "[bold red]FAIL[/]"
        t.add_row(r["case"], r["dtype"], r["impl"], v, _g(r.get("nmse")), _g(r.get("max_ulp")),
                  _g(r.get("chain_nmse")), r.get("reason", ""))
    _console().print(t)


def _g(x) -> str:
    return "" if x is None else f"{x:.3g}"


def _failures(records) -> list[dict]:
    return [r for r in records if r["status"] in ("fail", "error")]


def _write_junit(args, records: list[dict], stream=None) -> None:
    """With --junit FILE: the records as JUnit XML (harness.junit), path printed to `stream`."""
    if not getattr(args, "junit", None):
        return
    from harness.junit import write_junit

    try:
        out = write_junit(args.junit, records, seed=args.seed)
    except OSError as e:
        raise UsageError(f"cannot write JUnit file {args.junit!r}: {e.strerror or e}") from None
    print(f"junit: {out}", file=stream or sys.stdout)


def cmd_check(args) -> int:
    records, _ = _execute(args, bench=False)
    if args.json:
        slim = [{k: v for k, v in r.items() if k not in ("fingerprint", "versions", "traceback")} for r in records]
        print(json.dumps({"passed": not _failures(records), "records": slim}, indent=2, default=str))
    else:
        _print_check_table(records)
    _write_junit(args, records, sys.stderr if args.json else sys.stdout)
    bad = _failures(records)
    n = sum(r["status"] in ("ok", "fail", "error") for r in records)
    print(f"{n - len(bad)} passed, {len(bad)} failed", file=sys.stderr if args.json else sys.stdout)
    return 1 if bad else 0


def _print_bench_table(records: list[dict]) -> None:
    from rich.table import Table

    t = Table(title="timings (median, cold cache)")
    for col in ("case", "dtype", "implementation", "median", "p20-p80", "n", "GB/s", "% peak", "verdict"):
        t.add_column(col)
    for r in records:
        if "median_s" not in r:
            continue
        t.add_row(r["case"], r["dtype"], r["impl"], _ms(r["median_s"]), f"{_ms(r['p20_s'])}-{_ms(r['p80_s'])}",
                  str(r["n"]), f"{r['gbps']:.1f}", "" if r.get("frac_peak") is None else f"{100 * r['frac_peak']:.0f}%"
                  + (" [red]INVALID[/]" if r.get("invalid") else ""), r.get("verdict", ""))
    _console().print(t)


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def cmd_bench(args) -> int:
    records, path = _execute(args, bench=True, write=True)
    _print_bench_table(records)
    print(f"results: {path}")
    return 0


def cmd_report(args) -> int:
    from harness.report import write_report

    out = write_report(args.results, Path(args.output), include_committed=not args.no_committed)
    print(f"report: {out}")
    return 0


def cmd_run(args) -> int:
    from harness.report import write_report

    records, path = _execute(args, bench=True, write=True)
    _print_check_table(records)
    _print_bench_table(records)
    report_path = Path(args.report) if args.report else path.parent.parent / f"report-{path.stem}.html"
    out = write_report([path], report_path, include_committed=True)
    bad = _failures(records)
    print(f"results: {path}")
    print(f"report: {out.resolve()}")
    _write_junit(args, records)
    print(f"{sum(r['status'] in ('ok', 'fail', 'error') for r in records) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


def cmd_compare(args) -> int:
    from harness.compare import CompareError, main as compare_main

    try:
        return compare_main(args.base, args.new, as_json=args.json, fail_on_slower=not args.no_fail_on_slower,
                            fail_on_accuracy=not args.no_fail_on_accuracy, same_within=args.same_within,
                            console=_console())
    except CompareError as e:
        raise UsageError(str(e)) from None


COMMANDS = {"list": cmd_list, "check": cmd_check, "bench": cmd_bench, "report": cmd_report, "run": cmd_run,
            "compare": cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
