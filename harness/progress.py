"""Progress of a check / bench / run: records done, time elapsed, and an honest ETA.

The ETA comes from this run's own figures only. Each finished job (one case in one dtype,
every selected implementation of it) gives each of its implementations a share of the
job's wall time (in proportion to the record's `duration_s`, so that the job's own
overhead, inputs and reference included, is spread over them). A record still to run is
expected to take the mean share of the same implementation (fusion/backend/variant) so
far, else of the same backend/variant in other fusions, else of the same backend, else of
any record. Before the first job has finished there is no basis, and no ETA is shown.

Where it goes (FUSEBENCH_PROGRESS):

- unset or `auto`: a progress bar on stderr when stderr is a terminal, else a plain line on
  stderr every FUSEBENCH_PROGRESS_EVERY seconds (default 30), and one at the end;
- `bar` (or `1`, `yes`, `on`): the bar even without a terminal;
- `lines`: the plain lines even on a terminal;
- `off` (or `0`, `no`, `none`): nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from typing import Callable

PROGRESS_ENV = "FUSEBENCH_PROGRESS"
EVERY_ENV = "FUSEBENCH_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0
MODES = {"": "auto", "auto": "auto", "bar": "bar", "1": "bar", "yes": "bar", "on": "bar", "true": "bar",
         "lines": "lines", "off": "off", "0": "off", "no": "off", "none": "off", "false": "off"}


def mode(environ=os.environ, stream=None) -> tuple[str, str]:
    """("bar" | "lines" | "off", a warning or "") from FUSEBENCH_PROGRESS and whether
    `stream` (stderr) is a terminal."""
    raw = environ.get(PROGRESS_ENV, "").strip().lower()
    chosen = MODES.get(raw)
    warning = ""
    if chosen is None:
        warning = (f"{PROGRESS_ENV}={environ.get(PROGRESS_ENV)!r} is not understood (expected auto, bar, lines or "
                   f"off); using auto")
        chosen = "auto"
    if chosen == "auto":
        stream = stream if stream is not None else sys.stderr
        chosen = "bar" if _isatty(stream) else "lines"
    return chosen, warning


def every_s(environ=os.environ) -> tuple[float, str]:
    """(seconds between plain lines, a warning or "") from FUSEBENCH_PROGRESS_EVERY."""
    raw = environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY_S, ""
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0 <= v < float("inf"):
        return DEFAULT_EVERY_S, f"{EVERY_ENV}={raw!r} is not a number of seconds; using {DEFAULT_EVERY_S:g}"
    return v, ""


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration_text(s: float) -> str:
    """Seconds as a person says them: "45 s", "2 min 05 s", "12 min", "2 h 05 min"."""
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 10 * 60:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r:02d} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    h, m = divmod(int(round(s / 60)), 60)
    return f"{h} h {m:02d} min"


class Estimator:
    """Records done and the time left, from the jobs finished so far (module docstring).

    `jobs`: (case id, dtype, [(impl key, backend, variant[, case id, dtype])], and
    optionally the job's phase, e.g. "checked" or "timed") per job, in the order they
    run. Call start_job(i) before job i, finished(record) for each record, end_job()
    after it. Thread-safe: the plain-line printer reads it from its own thread."""

    def __init__(self, jobs: list[tuple], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        # each job as its units (impl key, backend, variant, case, dtype): a unit may name a
        # case and dtype of its own (a job that stands for several, run at once)
        self.jobs = [[(*u[:3], *(u[3:5] if len(u) > 3 else (case, dtype))) for u in units]
                     for case, dtype, units, *_ in jobs]
        self.phases = [j[3] if len(j) > 3 else "" for j in jobs]
        self.total = sum(len(units) for units in self.jobs)
        self.done = 0
        self.jobs_done = 0
        self.current: int | None = None
        self.now_doing = ""
        self._lock = threading.Lock()
        self._pending: list[set] = [{(k, c, d) for k, _, _, c, d in units} for units in self.jobs]
        self._durations: dict[tuple, float] = {}  # unit -> the record's duration_s, for the job in progress
        self._job_started = self.started
        self._last = self.started
        self._shares: dict[tuple, list[float]] = {}  # class key -> seconds per record

    # events -------------------------------------------------------------------------
    def start_job(self, i: int) -> None:
        with self._lock:
            self.current = i
            self._job_started = self._last = self.clock()
            self._durations = {}

    def finished(self, rec: dict) -> None:
        with self._lock:
            self.done += 1
            self._last = self.clock()
            if self.current is None:
                return
            unit = (rec.get("impl"), rec.get("case"), rec.get("dtype"))
            self._pending[self.current].discard(unit)
            d = rec.get("duration_s")
            self._durations[unit] = float(d) if isinstance(d, (int, float)) and d >= 0 else 0.0

    def end_job(self) -> None:
        """The job's wall time shared out among its records (by duration_s; equally where
        none has one)."""
        with self._lock:
            if self.current is None:
                return
            wall = self.clock() - self._job_started
            mine = [(k, b, v, c, dy) for k, b, v, c, dy in self.jobs[self.current] if (k, c, dy) in self._durations]
            total = sum(self._durations[(k, c, dy)] for k, _, _, c, dy in mine)
            for k, b, v, c, dy in mine:
                d = self._durations[(k, c, dy)]
                share = wall * (d / total if total > 0 else 1 / len(mine))
                for cls in self._classes(k, b, v, self.phases[self.current]):
                    self._shares.setdefault(cls, []).append(share)
            self._pending[self.current] = set()
            self.jobs_done += 1
            self.current = None
            self._last = self.clock()

    # estimates ----------------------------------------------------------------------
    @staticmethod
    def _classes(key: str, backend: str, variant: str, phase: str = "") -> tuple:
        # a record is expected to take what the same implementation took in the same phase
        # of the run (a check-only job's records are much shorter than timed ones), else
        # the same variant, backend or any record in that phase, else any record at all
        return (("impl", key, phase), ("variant", backend, variant, phase), ("backend", backend, phase),
                ("any", phase), ("any",))

    def _predict(self, key: str, backend: str, variant: str, phase: str = "") -> float:
        for cls in self._classes(key, backend, variant, phase):
            seen = self._shares.get(cls)
            if seen:
                return sum(seen) / len(seen)
        return 0.0

    def remaining_s(self) -> float | None:
        """Seconds left, None before the first job has finished (no basis yet)."""
        return self._remaining()[0]

    def _remaining(self) -> tuple[float | None, bool]:
        """(seconds left or None, whether the job in progress has run past its estimate)."""
        with self._lock:
            if not self.jobs_done:
                return None, False
            rest = 0.0
            current = 0.0
            for i, units in enumerate(self.jobs):
                pending = self._pending[i]
                if not pending:
                    continue
                expect = sum(self._predict(k, b, v, self.phases[i]) for k, b, v, c, dy in units if (k, c, dy) in pending)
                if i == self.current:
                    current = expect
                else:
                    rest += expect
            spent = self.clock() - max(self._job_started, self._last) if self.current is not None else 0.0
            return rest + max(0.0, current - spent), current > 0 and spent > current

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def eta_text(self) -> str:
        """"about 12 min left (ETA 14:32)", or why there is none yet."""
        left, over = self._remaining()
        if left is None:
            return "ETA once the first case has run"
        if self.done >= self.total:
            return "done"
        at = (dt.datetime.now() + dt.timedelta(seconds=left)).strftime("%H:%M")
        if over:  # the case in progress has taken longer than its records took elsewhere
            return f"about {duration_text(left)} left after this case, which runs over its estimate (ETA {at} or later)"
        return f"about {duration_text(left)} left (ETA {at})"

    def line(self) -> str:
        """The plain progress line."""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        head = f"progress: {self.done}/{self.total} records{pct}, {duration_text(self.elapsed_s())} elapsed"
        if self.done >= self.total:
            return head + ", done"
        doing = f"; now {self.now_doing}" if self.now_doing else ""
        return f"{head}, {self.eta_text()}{doing}"


class LinePrinter:
    """Prints Estimator.line() to `stream` every `every` seconds from a thread of its own
    (so a long measurement still shows the run is alive), and once at close()."""

    def __init__(self, est: Estimator, stream=None, every: float = DEFAULT_EVERY_S):
        self.est, self.stream, self.every = est, stream if stream is not None else sys.stderr, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fusebench-progress", daemon=True)

    def start(self) -> "LinePrinter":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(max(self.every, 0.05)):
            self._print()

    def _print(self) -> None:
        try:
            print(self.est.line(), file=self.stream, flush=True)
        except (OSError, ValueError):  # stderr closed: progress is not worth failing over
            self._stop.set()

    def close(self, final: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if final:
            self._print()


def eta_column(est: Estimator):
    """A rich progress column showing the estimator's ETA, recomputed at every refresh."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(est.eta_text(), style="progress.remaining")

    return EtaColumn()


class Reporter:
    """The run's progress where FUSEBENCH_PROGRESS puts it (module docstring): use as a
    context manager; doing(text) names what runs now, finished(record) counts a record."""

    def __init__(self, est: Estimator, console_factory: Callable, warn: Callable[[str], None] = lambda s: None,
                 environ=os.environ, stream=None):
        self.est = est
        self.stream = stream if stream is not None else sys.stderr
        self.how, problem = mode(environ, self.stream)
        if problem:
            warn(problem)
        self._bar = self._task = self._lines = None
        if self.how == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), eta_column(est), transient=False, console=console_factory())
        elif self.how == "lines":
            every, problem = every_s(environ)
            if problem:
                warn(problem)
            self._lines = LinePrinter(est, self.stream, every)

    def __enter__(self) -> "Reporter":
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=self.est.total)
        elif self._lines is not None:
            self._lines.start()
        return self

    def doing(self, text: str) -> None:
        self.est.now_doing = text
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def finished(self, rec: dict) -> None:
        self.est.finished(rec)
        if self._bar is not None:
            self._bar.advance(self._task)

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self._lines is not None:
            self._lines.close(final=exc[0] is None)
        return False
