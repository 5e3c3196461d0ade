"""fusebench command line: list | check | bench | report | run | compare.

Every user error (bad case file, unknown fusion/backend/dtype, unreadable results) ends
in one message and exit status 2, never a traceback. `check` and `run` exit 1 when any
implementation fails the accuracy gate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import json
import os
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from harness.backends import BACKEND_MODULES, get_backend
from harness.cases import SUITES, CaseError, load_cases, select
from harness.dtypes import DTYPES
from harness.results import ResultsWriteError


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least_one(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.05, got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 up to (not including) 1, got {text!r}")
    return v


def _csv(s: str) -> list[str]:
    """Comma-separated names; a value that names nothing ('', ',') is refused rather than
    read as no filter at all."""
    names = [p.strip() for p in s.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a name or comma-separated names, got {s!r}")
    return names


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
    p.add_argument("--budget", type=_positive, default=0.5, help="seconds of samples per measurement (default 0.5)")
    p.add_argument("--min-samples", type=_int_at_least_one, default=10, help="at least this many samples (default 10)")
    p.add_argument("--hot", action="store_true", help="keep caches warm between samples (default: flush them)")
    p.add_argument("--rounds", type=_int_at_least_one, default=4,
                   help="time a job's implementations on one backend in this many interleaved rounds (A B B A "
                        "...), each a share of the budget, so that the machine's drift falls on all alike "
                        "(default 4; 1: one after the other)")
    p.add_argument("--out", "-o", help="results file (JSON lines); default reports/runs/<time>-<machine>.jsonl")
    p.add_argument("--resume", nargs="?", const="latest", metavar="FILE",
                   help="continue an interrupted run: the last run in FILE (default: -o, else this machine's "
                        "newest results file), appending what that run has not finished (earlier runs in the "
                        "file are left alone)")
    p.add_argument("--resume-run", metavar="ID",
                   help="continue the run with this run_id instead of the file's last run (implies --resume)")


def _add_isolation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=_positive, default=600.0, metavar="SECONDS",
                   help="time limit per implementation and case, compilation included (default 600)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--keep-going", dest="fail_fast", action="store_false",
                      help="record a failing or crashing kernel and go on (the default)")
    mode.add_argument("--fail-fast", dest="fail_fast", action="store_true", help="stop at the first failure")
    p.set_defaults(fail_fast=False)
    p.add_argument("--no-isolation", action="store_true",
                   help="run every kernel in this process (faster to start, for debugging; a crash ends the run)")


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print the full tables (every record's verdict, errors, timings) before the one-screen "
                        "summary; they are written to <results>.txt either way")


def _add_allow_empty(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-empty", action="store_true",
                   help="exit 0 when nothing was checked (every case skipped, every implementation unavailable); "
                        "by default such a run is not a pass")


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


PROGRESS_HELP = ("Progress goes to stderr, with an ETA once the first case has run (from the time each implementation "
                 "took so far): a bar on a terminal, else a plain line every 30 s. FUSEBENCH_PROGRESS=auto|bar|lines|off "
                 "chooses, FUSEBENCH_PROGRESS_EVERY=SECONDS sets the lines' interval.")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="fusebench", description="Correctness and benchmarks for fused LLM kernels.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="fusions x implementations, each available or why not")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fusion", type=_csv, action="extend")
    p.add_argument("--backend", type=_csv, action="extend")

    p = sub.add_parser("check", help="accuracy gate: exit 1 on any failure", epilog=PROGRESS_HELP)
    _add_filters(p)
    _add_isolation(p)
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML, for CI")
    p.add_argument("--out", "-o", metavar="FILE",
                   help="also append the records (verdicts and errors, no timings) to this results file")
    _add_allow_empty(p)

    p = sub.add_parser("bench", help="time implementations into a results file", epilog=PROGRESS_HELP)
    _add_filters(p)
    _add_isolation(p)
    _add_timing(p)
    _add_verbose(p)

    p = sub.add_parser("report", help="results files -> one self-contained HTML report")
    p.add_argument("results", nargs="*",
                   help="results files or folders (JSON lines); default: every results file in reports/runs/, where "
                        "run and bench write them")
    p.add_argument("-o", "--output", default=None, help="HTML file to write (default reports/report.html)")
    p.add_argument("--no-committed", action="store_true", help="leave out the committed runs in reports/data/")
    p.add_argument("--text", action="store_true",
                   help="print the per-fusion tables (medians, speedups, %% of peak, accuracy) instead of writing "
                        "HTML (both with -o)")

    p = sub.add_parser("run", help="check + bench + report on the quick suite: the main job", epilog=PROGRESS_HELP)
    _add_filters(p)
    _add_isolation(p)
    _add_timing(p)
    _add_verbose(p)
    p.add_argument("--report", default=None, help="HTML file to write (default reports/report-<time>.html)")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML, for CI")
    _add_allow_empty(p)

    p = sub.add_parser("compare", help="BASE vs NEW results: accuracy changes, speed beyond noise; exit 1 on a regression")
    p.add_argument("base", metavar="BASE", help="results file or folder (JSON lines) to compare against")
    p.add_argument("new", metavar="NEW", help="results file or folder (JSON lines) of the newer run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-fail-on-slower", action="store_true", help="exit 0 even when something is slower beyond noise")
    p.add_argument("--no-fail-on-accuracy", action="store_true", help="exit 0 even when a verdict went pass -> fail")
    p.add_argument("--same-within", type=_fraction, default=0.05, metavar="FRACTION",
                   help="call a change SAME when 99%% sure it is smaller than this (default 0.05); "
                        "FASTER/SLOWER are decided by the noise alone")
    p.add_argument("--drift", type=_fraction, default=None, metavar="FRACTION",
                   help="the machine's spread between runs of one commit (e.g. 0.1), counted as noise; "
                        "default: measured when a side holds repeated runs, else none")
    return ap


def main(argv=None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, CaseError) as e:
        print(f"fusebench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ResultsWriteError as e:  # a full disk: say what is kept and how to go on
        print(f"fusebench {args.command}: error: {_write_failure(args, e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fusebench list | head`: the reader has gone, so stop quietly as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE
    except OSError as e:  # a file the user named cannot be written or read (permissions, a folder, disk full)
        where = f"{e.filename}: " if e.filename else ""
        print(f"fusebench {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fusebench {args.command}: interrupted; finished records are kept", file=sys.stderr)
        return 130


def _write_failure(args, e: ResultsWriteError) -> str:
    """What a results file that could not be written means for this run, and what to do."""
    kept = f"the {e.written} record(s) written before it are kept" if e.written else "no record of this run was written"
    if args.command in ("bench", "run"):
        then = f"free some space, then continue with `fusebench {args.command} --resume {e.filename}` (and the same " \
               f"filters)"
    else:
        then = "free some space and run it again"
    return f"cannot write results file {e.filename}: {e.strerror}; {kept}; {then}"


# --- selection -------------------------------------------------------------------------

def _warn(problem: str) -> None:
    print(f"warning: {problem}", file=sys.stderr)


def _registry():
    from harness.registry import discover

    reg = discover()
    for problem in reg.problems:
        _warn(problem)
    return reg


def _check_names(args, reg) -> None:
    """Refuse a --fusion or --backend that names nothing."""
    for f in args.fusion or []:
        if f not in reg.fusions:
            raise UsageError(f"unknown fusion {f!r}; known: {', '.join(reg.fusions)}")
    for b in args.backend or []:
        if b not in BACKEND_MODULES:
            raise UsageError(f"unknown backend {b!r}; known: {', '.join(BACKEND_MODULES)}")


def _selection(args, reg):
    """(cases, implementations) chosen by the filters, with unknown names refused."""
    _check_names(args, reg)
    for d in args.dtype or []:
        if d not in DTYPES or d == "float64":
            raise UsageError(f"unknown dtype {d!r}; known: float32, float16, bfloat16")
    for f in args.cases or []:
        if Path(f).is_dir():
            raise UsageError(f"case file {f!r} is a directory; give the .toml files in it (e.g. {f}/*.toml)")
        if not Path(f).exists():
            raise UsageError(f"case file {f!r} does not exist")
        if not Path(f).is_file():
            raise UsageError(f"case file {f!r} is not a regular file; give a .toml file")
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
        used = [f"--{k} {','.join(v)}" for k, v in (("case", args.case), ("fusion", args.fusion)) if v]
        used += [] if args.cases else [f"--suite {args.suite}"]
        raise UsageError(f"no case matches the filters ({'; '.join(used)}); case names are <file>.<name> from "
                         f"{'the given case files' if args.cases else 'cases/*.toml'}, e.g. llama3_8b.decode, "
                         f"and --suite full has every case")
    chosen = {c.fusion for c in cases}
    kept = [i for i in impls if i.fusion in chosen]  # a fusion without a case here runs nothing: not even listed
    if not kept:
        raise UsageError("no implementation matches the filters" + (
            f" among the fusions of the cases selected ({', '.join(sorted(chosen))})" if impls else ""))
    impls = kept
    if not any(i.kind != "reference" for i in impls) and args.command == "bench":  # check and run take it
        raise UsageError("the float64 reference is the yardstick every verdict is measured against: checked, never "
                         "timed; `fusebench check --backend reference` checks it, or name a backend to time")
    return cases, impls


# --- what a chain needs ------------------------------------------------------------------

class _Recording:
    """An Ops that notes the name of every primitive called through it."""

    def __init__(self, ops):
        self._ops, self.used = ops, set()

    def __getattr__(self, name):
        f = getattr(self._ops, name)
        if callable(f):
            self.used.add(name)
        return f


TRACE_BYTES = 64 * 2**20  # the largest case chain_primitives runs the decomposition on


def chain_primitives(spec, cases=()) -> set[str] | None:
    """The primitives the spec's decomposition calls, found by running it once in float64
    NumPy on the smallest of `cases` for the fusion, if that is small (TRACE_BYTES), else on
    sizes its hypothesis strategy draws; None where that cannot be done (the decomposition
    raised, or no sizes)."""
    import warnings

    from harness.ops import NumpyOps

    mine = [c for c in cases if c.fusion == spec.name]
    try:
        smallest = min(mine, key=lambda c: spec.cost(spec.split(c.params)[0], "float32").bytes) if mine else None
        if smallest is not None and spec.cost(spec.split(smallest.params)[0], "float32").bytes <= TRACE_BYTES:
            params = smallest.params
        else:  # no case, or only large ones (Llama-3.1-405B's weights): the small sizes property tests draw
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = dict(spec.strategy().example())
        dims, attrs = spec.split(params)
        inputs = spec.make_inputs(dims, "float32", 0)
        ops = _Recording(NumpyOps("float64"))
        spec.decompose(ops, **inputs, **attrs)
    except Exception:  # a spec that cannot be traced here: say nothing rather than guess
        return None
    return ops.used


def _ops_class(backend: str):
    """The Ops class the backend's chain runs with, found in its module without
    instantiating it (no device needed); None when the module does not name exactly one."""
    import importlib

    from harness.ops import Ops

    try:
        module = importlib.import_module(BACKEND_MODULES[backend])
    except Exception:
        return None
    found = {v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Ops) and v is not Ops}
    leaves = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
    return leaves[0] if len(leaves) == 1 else None


def chain_gaps(reg, impls, cases=()) -> dict[str, str]:
    """{implementation key: why it cannot run} for the derived chains (unfused, the torch
    eager and compile peers, the float64 reference) whose backend's Ops lacks a primitive
    the fusion's decomposition calls: the reason ChainPrepared would give on the first
    case, found without a device."""
    from harness.ops import Ops
    from harness.registry import DERIVED, _chain_factory, _compile_factory

    used: dict[str, set[str] | None] = {}
    out = {}
    for impl in impls:
        if impl.origin != DERIVED or impl.factory not in (_chain_factory, _compile_factory):
            continue
        if impl.fusion not in used:
            used[impl.fusion] = chain_primitives(reg.fusions[impl.fusion], cases)
        cls = _ops_class(impl.backend)
        if used[impl.fusion] is None or cls is None:
            continue
        lacking = sorted(op for op in used[impl.fusion] if getattr(cls, op, None) is getattr(Ops, op, None))
        if lacking:
            out[impl.key] = f"backend {impl.backend!r} lacks a primitive this chain needs: {', '.join(lacking)}"
    return out


# --- list ------------------------------------------------------------------------------

def cmd_list(args) -> int:
    reg = _registry()
    _check_names(args, reg)
    rows = []
    impls = reg.select(fusions=args.fusion, backends=args.backend)
    gaps = chain_gaps(reg, impls, _shipped_cases(reg))
    for impl in impls:
        ok, why = impl.available()
        if ok and impl.key in gaps:
            ok, why = False, gaps[impl.key]
        rows.append({"fusion": impl.fusion, "backend": impl.backend, "variant": impl.variant, "kind": impl.kind,
                     "dtypes": list(impl.dtypes), "available": ok, "reason": why, "key": impl.key})
    if args.json:
        print(json.dumps({"implementations": rows, "problems": reg.problems}, indent=2))
        return 0
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="fusebench implementations")
    for col in ("fusion", "backend", "variant", "kind", "dtypes", "available"):
        t.add_column(col)
    for r in rows:
        avail = "[green]yes[/]" if r["available"] else f"[red]no[/]: {escape(r['reason'])}"
        t.add_row(r["fusion"], r["backend"], r["variant"], r["kind"], ", ".join(r["dtypes"]), avail)
    _console().print(t)
    return 0


def _shipped_cases(reg) -> list:
    """The shipped cases (sizes to trace the chains on); none where they cannot be read."""
    try:
        return load_cases(reg)
    except CaseError:
        return []


# --- check / bench / run ---------------------------------------------------------------

# where `run` and `bench` write results (relative to the working directory), and `report` reads them
RUNS = Path("reports") / "runs"


def _default_results_path(info) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RUNS / f"{stamp}-{info.machine}.jsonl"


# The dtypes `run` times where --dtype does not say: float32, and bfloat16, the dtype models
# are served in (float16 takes the same 16-bit paths on the CPU; every dtype is checked at
# the smoke sizes, and `bench` or --dtype time it).
RUN_TIMED_DTYPES = ("float32", "bfloat16")


def run_jobs(jobs: list, dtypes_named: bool) -> list:
    """`run`'s jobs: the smoke suite's cases, checked and not timed (their sizes are there to
    catch indexing bugs; at 3 x 129 a kernel's time is its launch), without the torch peers
    (yardsticks for time); the other cases checked and timed, in RUN_TIMED_DTYPES unless
    --dtype named dtypes. The checks run first, each backend's share at the same time as
    the others' (IsolatedRunner), and so do warm-ups of the timed jobs (warm_ups)."""
    checks = [replace(j, impls=[i for i in j.impls if i.kind != "peer"], timed=False)
              for j in jobs if "smoke" in j.case.suites]
    timed = [j for j in jobs if "smoke" not in j.case.suites and (dtypes_named or j.dtype in RUN_TIMED_DTYPES)]
    return [j for j in checks if j.impls] + timed


WARM_MAX_BYTES = 64 * 2**20  # a warm-up is worth its inputs and reference where compiling is most of a job


def warm_ups(jobs: list, reg) -> list:
    """`jobs` with a warm-up of each small timed job (at most WARM_MAX_BYTES of work)
    placed before the first timed one: its implementations whose compiles depend on the
    sizes (Backend.compiles_per_size: not numba's, which the smoke checks compile) prepared
    and checked, records dropped, each backend's share at once, so that torch.compile's
    graphs and lavapipe's shaders for the timed sizes are compiled (into their on-disk
    caches) while the CPU kernels compile, not one after the other in the timed part.
    What is recorded and timed is the timed job, which prepares afresh."""
    def small(job) -> bool:
        spec = reg.fusions[job.case.fusion]
        return spec.cost(spec.split(job.case.params)[0], job.dtype).bytes <= WARM_MAX_BYTES

    timed = [j for j in jobs if j.timed]
    warm = [replace(j, impls=[i for i in j.impls if get_backend(i.backend).compiles_per_size], timed=False,
                    kept=False) for j in timed if small(j)]
    warm = [j for j in warm if j.impls]
    if not warm:
        return jobs
    first = jobs.index(timed[0])
    return jobs[:first] + warm + jobs[first:]


class Outcome(NamedTuple):
    """What _execute leaves: the records (earlier ones of a resumed run first), the results
    file they went to (or None), and the registry's problems (plugins that failed to load)."""

    records: list[dict]
    path: Path | None
    problems: list[str]


def _execute(args, bench: bool, write: bool = False) -> Outcome:
    """Run the jobs with progress and an ETA (harness.progress: a bar on a terminal, plain
    lines without one, as FUSEBENCH_PROGRESS says), each backend's kernels in its worker process
    (harness.workers) unless --no-isolation; with `write`, records go to the results file
    (args.out, else reports/runs/<time>-<machine>.jsonl) as they finish, and --resume
    continues the last run of an earlier file (or --resume-run's), skipping what that run
    finished (_resume)."""
    from harness.backends.cpu import HOST_PEAK_FILE_ENV
    from harness.progress import Estimator, Reporter
    from harness.results import ResultsWriter, RunInfo
    from harness.runner import Options, impl_fields, plan, run_job, unavailable_records
    from harness.workers import IsolatedRunner

    reg = _registry()
    cases, impls = _selection(args, reg)
    missing, usable = unavailable_records(impls)
    gaps = chain_gaps(reg, usable, cases + _shipped_cases(reg))  # unavailable on every case: one record, not one a case
    missing += [{**impl_fields(i), "case": "-", "dtype": "-", "status": "unavailable", "reason": gaps[i.key]}
                for i in usable if i.key in gaps]
    usable = [i for i in usable if i.key not in gaps]
    backends = [get_backend(b) for b in dict.fromkeys(i.backend for i in impls)]
    info = RunInfo.collect(backends)
    opts = Options(bench=bench, seed=args.seed)
    if bench:
        opts.budget_s, opts.min_samples, opts.cold = args.budget, args.min_samples, not args.hot
        opts.rounds = args.rounds
    jobs = plan(cases, usable, args.dtype)
    if args.command == "run":
        jobs = run_jobs(jobs, bool(args.dtype))
    isolated = None if args.no_isolation else IsolatedRunner(args.timeout)
    writer = None
    results_path = None
    records: list[dict] = []
    if write:
        results_path = Path(args.out) if args.out else _default_results_path(info)
        if getattr(args, "resume", None) or getattr(args, "resume_run", None):
            results_path = _resume_path(args, info)
            records, jobs, missing, run_id = _resume(results_path, jobs, missing, opts, args.resume_run, info)
            info.run_id = run_id
        writer = ResultsWriter(results_path)
        if writer.partial_line:
            _warn(f"{writer.partial_line}: the file ended inside this line (a write cut short: an interruption or a "
                  f"full disk); it is ended there, so that new records start on a line of their own, and skipped "
                  f"as unreadable")
    if isolated and args.command == "run":
        jobs = warm_ups(jobs, reg)  # after --resume: only what is left to time
    run = isolated.run_job if isolated else lambda *a: run_job(*a)
    peak_dir = tempfile.TemporaryDirectory(prefix="fusebench-peak-")  # the host's peak, measured once a run
    os.environ[HOST_PEAK_FILE_ENV] = str(Path(peak_dir.name) / "host_peak.json")

    def keep(rec):
        rec = info.stamp(rec)
        records.append(rec)
        if writer:
            writer.write(rec)
        if args.fail_fast and rec["status"] in ("fail", "error"):
            raise _FailFast(rec)

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for rec in missing:
            keep(rec)
        # run's untimed head (checks, warm-ups) goes to every backend's worker at once: one
        # job to the progress estimate, its units naming their own case and dtype
        head = list(itertools.takewhile(lambda j: not j.timed, jobs)) if isolated and args.command == "run" else []
        rest = jobs[len(head):]
        est_jobs = [("-", "-", [(i.key, i.backend, i.variant, j.case.id, j.dtype) for j in head for i in j.impls],
                     "checked")] if head else []
        est_jobs += [(j.case.id, j.dtype, [(i.key, i.backend, i.variant) for i in j.impls],
                      "timed" if j.timed else "checked") for j in rest]
        est = Estimator(est_jobs)
        with Reporter(est, _stderr_console, _warn) as progress:
            def on_impl(job, impl):
                warming = "" if job.kept else " (warming up)"
                progress.doing(f"{impl.fusion} {job.case.id} {job.dtype} {impl.backend}/{impl.variant}{warming}")

            def on_record(job, rec):
                if job.kept:
                    keep(rec)
                progress.finished(rec)

            if head:
                est.start_job(0)
                isolated.run_untimed(reg, head, opts, on_record, on_impl)
                est.end_job()
            for n, job in enumerate(rest, start=bool(head)):
                est.start_job(n)
                run(reg, job, opts, functools.partial(on_record, job), functools.partial(on_impl, job))
                est.end_job()
    except _FailFast as stop:
        print(f"stopped at the first failure (--fail-fast): {stop.record['impl']} {stop.record['case']} "
              f"{stop.record['dtype']}: {stop.record.get('reason', '')}", file=sys.stderr)
    except KeyboardInterrupt:
        if results_path is not None:
            print(f"interrupted: the finished records are in {results_path}; continue with "
                  f"`fusebench {args.command} --resume {results_path}` (and the same filters)", file=sys.stderr)
        raise
    finally:
        if isolated:
            isolated.close()
        if writer:
            writer.close()
        os.environ.pop(HOST_PEAK_FILE_ENV, None)
        peak_dir.cleanup()
    return Outcome(records, results_path, reg.problems)


class _FailFast(Exception):
    def __init__(self, record: dict):
        super().__init__(record.get("impl"))
        self.record = record


def _resume_path(args, info) -> Path:
    if args.resume not in (None, "latest"):
        path = Path(args.resume)
    elif args.out:
        path = Path(args.out)
    else:
        found = sorted(RUNS.glob(f"*-{info.machine}.jsonl"))
        if not found:
            raise UsageError(f"--resume: no earlier results file of machine {info.machine} in reports/runs/")
        path = found[-1]
    if path.is_dir():
        inside = sorted(path.glob("*.jsonl"), key=lambda f: f.stat().st_mtime)
        example = f" (the newest here: {inside[-1]})" if inside else ""
        raise UsageError(f"--resume: {str(path)!r} is a directory; give the results file to continue{example}")
    if not path.is_file():
        raise UsageError(f"--resume: results file {str(path)!r} does not exist")
    return path


def _resume(path: Path, jobs, missing, opts, run_id: str | None, info):
    """(the resumed run's finished records of this selection, the jobs left to run,
    unavailable records not yet written, the run's id). The run is the file's last one
    (that of its last record), or `run_id`; other runs in the file are left alone. A
    record counts as finished for the same implementation, case, parameters (params_id),
    dtype and seed."""
    from harness.results import params_id, read_records, workload_of
    from harness.runner import case_seed

    loaded = read_records([path])
    for problem in loaded.problems:
        _warn(problem)
    runs = list(dict.fromkeys(r.get("run_id") for r in loaded.records))
    if run_id is not None and run_id not in runs:
        known = ", ".join(map(str, runs)) or "none"
        raise UsageError(f"--resume-run: no run {run_id!r} in {path}; its runs: {known}")
    if run_id is None:
        run_id = loaded.records[-1].get("run_id") if loaded.records else info.run_id
    mine = [r for r in loaded.records if r.get("run_id") == run_id]
    finished = {(r.get("impl"), r.get("case"), workload_of(r), r.get("dtype"), r.get("seed")): r for r in mine
                if r.get("status") in ("ok", "fail", "error", "skipped")}
    earlier, left = [], []
    for job in jobs:
        seed = case_seed(job.case, job.dtype, opts.seed)
        timed = opts.bench and job.timed
        todo = []
        for impl in job.impls:
            rec = finished.get((impl.key, job.case.id, params_id(job.case.params), job.dtype, seed))
            if rec and timed and "median_s" not in rec and rec.get("status") == "ok":
                rec = None  # checked, never timed: not finished for a timed job
            (earlier.append(rec) if rec else todo.append(impl))
        if todo:
            left.append(replace(job, impls=todo))
    written = {r.get("impl") for r in mine if r.get("status") == "unavailable"}
    others = len(runs) - (run_id in runs)
    commits = {r.get("commit") for r in mine}
    if mine and info.commit not in commits:
        _warn(f"run {run_id} in {path} was made at commit {', '.join(sorted(map(str, commits)))[:40]}; this is "
              f"{info.commit}: the run will hold records of both")
    print(f"resuming run {run_id} in {path}: {len(earlier)} finished records kept, "
          f"{sum(len(j.impls) for j in left)} to run" + (f" ({others} earlier run(s) in the file left alone)"
                                                           if others else ""), file=sys.stderr)
    return earlier, left, [r for r in missing if r["impl"] not in written], run_id


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _console():
    """stdout console; wide enough for the tables when output is not a terminal."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", 220)))


def _print_check_table(records: list[dict], console=None) -> None:
    """The accuracy gate's table: failures first, then one row per record, except that the
    unavailable implementations of a backend collapse to one row per reason."""
    from rich.markup import escape
    from rich.table import Table

    from harness.textreport import ULP_NOTE, ULP_NOTE_FROM, _impls_text, unavailable_groups

    t = Table(title="accuracy gate")
    for col in ("case", "dtype", "implementation", "verdict", "NMSE", "max ULP", "chain NMSE", "reason"):
        t.add_column(col, overflow="fold")
    failed = [r for r in records if r["status"] in ("fail", "error")]
    for r in failed + [r for r in records if r["status"] not in ("fail", "error", "unavailable")]:
        if r["status"] == "skipped":  # too large for this machine: not a failure
            t.add_row(r["case"], r["dtype"], r["impl"], f"[yellow]{r['status']}[/]", "", "", "",
                      escape(r.get("reason", "")))
            continue
        v = "[green]pass[/]" if r.get("verdict") == "pass" else "[bold red]FAIL[/]"
        t.add_row(r["case"], r["dtype"], r["impl"], v, _g(r.get("nmse")), _g(r.get("max_ulp")),
                  _g(r.get("chain_nmse")), escape(r.get("reason", "")))
    for backend, why, keys in unavailable_groups(records):  # not run here (no device, a missing primitive)
        t.add_row("-", "-", f"{backend}: {_impls_text(keys)}", "[yellow]unavailable[/]", "", "", "", escape(why))
    console = console or _console()
    console.print(t)
    if any(_num(r.get("max_ulp")) and r["max_ulp"] >= ULP_NOTE_FROM and r.get("verdict") == "pass"
           for r in records):
        console.print(f"[dim]{ULP_NOTE}[/]", overflow="fold")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _g(x) -> str:
    return "" if x is None else f"{x:.3g}"


def _failures(records) -> list[dict]:
    return [r for r in records if r["status"] in ("fail", "error")]


JUDGED = ("ok", "fail", "error")


def _gate(outcome: Outcome, allow_empty: bool) -> tuple[int, list[str]]:
    """The gate's exit status and summary lines: 1 when an implementation failed, when the
    registry has problems (a plugin that failed to load or was refused: what it registered
    went unchecked), or when nothing was checked (every case skipped, every implementation
    unavailable) unless `allow_empty`; else 0."""
    records = outcome.records
    bad = _failures(records)
    judged = sum(r["status"] in JUDGED for r in records)
    skipped = sum(r["status"] == "skipped" for r in records)
    lines = [f"{judged - len(bad)} passed, {len(bad)} failed" + (f", {skipped} skipped" if skipped else "")]
    code = 1 if bad else 0
    if outcome.problems:
        lines.append(f"the gate cannot pass: {len(outcome.problems)} registry problem(s) (a plugin that failed to "
                     f"load or was refused), each in a warning above")
        code = 1
    # the float64 reference counts as checked only where it was all that was asked for (--backend reference:
    # its decomposition run on every case and judged against itself, the yardstick)
    only_reference = bool(records) and all(r.get("kind") == "reference" for r in records)
    if not any(r["status"] in JUDGED and (r.get("kind") != "reference" or only_reference) for r in records) \
            and not allow_empty:
        unavailable = sum(r["status"] == "unavailable" for r in records)
        lines.append(f"nothing was checked ({skipped} skipped, {unavailable} unavailable): not a pass; "
                     f"--allow-empty accepts a run that checks nothing")
        code = 1
    return code, lines


def _write_junit(args, outcome: Outcome, stream=None) -> None:
    """With --junit FILE: the records and the registry's problems as JUnit XML
    (harness.junit), path printed to `stream`."""
    if not getattr(args, "junit", None):
        return
    from harness.junit import write_junit

    try:
        out = write_junit(args.junit, outcome.records, seed=args.seed, problems=outcome.problems)
    except OSError as e:
        raise UsageError(f"cannot write JUnit file {args.junit!r}: {e.strerror or e}") from None
    print(f"junit: {out}", file=stream or sys.stdout)


def cmd_check(args) -> int:
    outcome = _execute(args, bench=False, write=bool(args.out))
    records = outcome.records
    code, summary = _gate(outcome, args.allow_empty)
    if args.json:
        slim = [{k: v for k, v in r.items() if k not in ("fingerprint", "versions", "traceback")} for r in records]
        print(json.dumps({"passed": code == 0, "problems": outcome.problems, "records": slim}, indent=2,
                         default=str))
    else:
        _print_check_table(records)
    stream = sys.stderr if args.json else sys.stdout
    _write_junit(args, outcome, stream)
    for line in summary:
        print(line, file=stream)
    return code


def _print_bench_table(records: list[dict], console=None, warn: bool = True) -> None:
    from rich.table import Table

    t = Table(title="timings (median, cold cache)")
    for col in ("case", "dtype", "implementation", "median", "p20-p80", "n", "GB/s", "% peak", "verdict"):
        t.add_column(col)
    for r in records:
        if "median_s" not in r:
            continue
        peak = "" if r.get("frac_peak") is None else f"{100 * r['frac_peak']:.0f}%"
        t.add_row(r["case"], r["dtype"], r["impl"], _ms(r["median_s"]), f"{_ms(r['p20_s'])}-{_ms(r['p80_s'])}",
                  str(r["n"]), f"{r['gbps']:.1f}", peak + (" [red]INVALID[/]" if r.get("invalid") else ""),
                  r.get("verdict", ""))
    (console or _console()).print(t)
    for r in records if warn else ():
        if r.get("invalid"):
            print(f"INVALID timing: {r['impl']} {r['case']} {r['dtype']}: {r.get('invalid_reason', '')}", file=sys.stderr)


def _write_tables(records: list[dict], results: Path, bench: bool) -> Path | None:
    """The full tables (accuracy gate, timings, and the invalid timings' reasons) as text
    beside the results file (<results>.txt); None, with a warning, where it cannot be written."""
    import io

    from rich.console import Console

    if not results.is_file():  # -o /dev/stdout or the like: no place beside it
        return None
    buf = io.StringIO()
    console = Console(file=buf, width=240, color_system=None, force_terminal=False, soft_wrap=False)
    _print_check_table(records, console)
    if bench:
        _print_bench_table(records, console, warn=False)
        for r in records:
            if r.get("invalid"):
                console.print(f"INVALID timing: {r['impl']} {r['case']} {r['dtype']}: {r.get('invalid_reason', '')}",
                              markup=False, overflow="fold")
    from harness.results import write_output

    try:
        return write_output(results.with_suffix(".txt"), buf.getvalue())
    except OSError as e:
        _warn(f"cannot write the full tables beside {results}: {e.strerror or e}")
        return None


def _print_summary(args, outcome: Outcome) -> None:
    """The end of a run or bench: the one-screen summary (harness.textreport.print_summary),
    after the full tables with --verbose; the tables also go to <results>.txt."""
    from harness.textreport import print_summary

    records = outcome.records
    if args.verbose:
        _print_check_table(records)
        _print_bench_table(records)
    console = _console()
    machines = sorted({str(r.get("machine")) for r in records if r.get("machine")})
    commits = sorted({str(r.get("commit", ""))[:10] + ("+dirty" if r.get("dirty") else "") for r in records
                      if r.get("commit")})
    title = f"{args.command}: {len(records)} records" + (f" on {', '.join(machines)}" if machines else "") + \
        (f" at {', '.join(commits)}" if commits else "")
    print_summary(records, console, title=title)
    tables = _write_tables(records, outcome.path, bench=True) if outcome.path else None
    if tables:
        print(f"full tables: {tables}" + ("" if args.verbose else " (or --verbose)"))


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def cmd_bench(args) -> int:
    outcome = _execute(args, bench=True, write=True)
    _print_summary(args, outcome)
    print(f"results: {outcome.path}")
    return 0


def cmd_report(args) -> int:
    from harness.report import write_report

    for r in args.results:
        if not Path(r).exists():
            raise UsageError(f"results file {r!r} does not exist")
    if args.output and Path(args.output).is_dir():
        raise UsageError(f"-o {args.output!r} is a directory; give the HTML file to write")
    if not args.results:  # what `run` and `bench` wrote here
        found = sorted(f for f in RUNS.glob("*.jsonl") if f.is_file()) if RUNS.is_dir() else []
        if not found:
            raise UsageError(f"no results files given, and none in {RUNS}/ (where `fusebench run` and `bench` write "
                             f"them); give results files or folders (JSON lines), e.g. `fusebench report "
                             f"path/to/run.jsonl`")
        args.results = [str(f) for f in found]
    _say_read(args.results, not args.no_committed)
    if args.text:
        from harness.report import with_committed
        from harness.textreport import print_tables

        for problem in print_tables(with_committed(args.results, not args.no_committed), _console()):
            _warn(problem)
        if not args.output:
            return 0
    out = write_report(args.results, Path(args.output or "reports/report.html"), include_committed=not args.no_committed,
                       on_problem=None if args.text else _warn)  # --text has listed them already
    print(f"report: {out}")
    return 0


def _say_read(paths, include_committed: bool) -> None:
    """One line naming the results files a report reads (folders expanded), and whether
    the committed runs are merged in."""
    from harness.report import COMMITTED_DATA, with_committed
    from harness.results import expand_paths

    files = [str(f) for f in expand_paths(paths)]
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    committed = with_committed([], include_committed)
    extra = f"; with the committed runs in {COMMITTED_DATA} (--no-committed leaves them out)" if committed else ""
    print(f"reading {len(files)} results file{'s' * (len(files) != 1)}: {shown}{extra}")


def cmd_run(args) -> int:
    from harness.report import write_report

    outcome = _execute(args, bench=True, write=True)
    path = outcome.path
    report_path = Path(args.report) if args.report else path.parent.parent / f"report-{path.stem}.html"
    out = write_report([path], report_path, include_committed=True, on_problem=_warn)
    _print_summary(args, outcome)
    print(f"results: {path}")
    print(f"report: {out.resolve()}")
    _write_junit(args, outcome)
    code, summary = _gate(outcome, args.allow_empty)
    print("\n".join(summary))
    return code


def cmd_compare(args) -> int:
    from harness.compare import CompareError, main as compare_main

    try:
        return compare_main(args.base, args.new, as_json=args.json, fail_on_slower=not args.no_fail_on_slower,
                            fail_on_accuracy=not args.no_fail_on_accuracy, same_within=args.same_within,
                            drift=args.drift, console=_console())
    except CompareError as e:
        raise UsageError(str(e)) from None


COMMANDS = {"list": cmd_list, "check": cmd_check, "bench": cmd_bench, "report": cmd_report, "run": cmd_run,
            "compare": cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
