"""Result records: machine fingerprint, atomic JSON-lines writing, tolerant reading, merge.

One long-format record per (machine, commit, fusion, implementation, case with its
parameters (params_id), dtype). Each record is appended as one line in a single write and
flushed to disk, so an interrupted run leaves every finished record readable; the reader
skips (and reports) lines it cannot parse, such as a truncated last line, or whose fields
have the wrong types (record_problem). Whole output files (reports, JUnit XML) are written
by write_output.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import math
import os
import platform
import re
import stat
import subprocess
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

SCHEMA = 1
PACKAGES = ("fusebench", "numpy", "numba", "torch", "cupy-cuda12x", "cupy-cuda13x", "wgpu", "ml_dtypes", "pandas")
REPO_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> tuple[str, bool]:
    """(commit hash or "unknown", dirty) of the checkout the harness runs from.

    FUSEBENCH_COMMIT (and FUSEBENCH_DIRTY=1) name them where the code runs from a copy
    without its git history, as on a lent GPU machine (.ci/device)."""
    if os.environ.get("FUSEBENCH_COMMIT"):
        return os.environ["FUSEBENCH_COMMIT"], os.environ.get("FUSEBENCH_DIRTY", "0") == "1"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return head or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def machine_fingerprint(backends=()) -> dict:
    """What identifies this machine: CPU, cores, memory, OS, Python, and each available
    backend's own fingerprint (GPU name, driver, CUDA runtime, wgpu adapter...)."""
    from harness.backends.cpu import cpu_fingerprint

    fp = {"python": platform.python_version(), "machine": platform.machine(), **cpu_fingerprint(), "backends": {}}
    for b in backends:
        ok, _ = b.probe()
        if ok:
            try:
                fp["backends"][b.name] = b.fingerprint()
            except Exception as e:  # a fingerprint is informative, never fatal
                fp["backends"][b.name] = {"error": f"{type(e).__name__}: {e}"}
    return fp


def machine_name(fp: dict) -> str:
    """A short, stable, file-name-safe name: the GPU if there is one, else the CPU."""
    gpu = next((b.get("gpu") for b in fp.get("backends", {}).values() if b.get("gpu")), None)
    if gpu:
        base = gpu.lower()
    else:
        cpu = re.sub(r"\(r\)|\(tm\)|cpu @.*|processor", "", str(fp.get("cpu", "cpu")).lower())
        base = f"{cpu}-{fp.get('cores', '?')}c"
    return re.sub(r"[^a-z0-9]+", "-", base).strip("-")[:60] or "machine"


@dataclass
class RunInfo:
    """What every record of one run shares."""

    machine: str
    fingerprint: dict
    commit: str
    dirty: bool
    versions: dict
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def collect(cls, backends=()) -> "RunInfo":
        fp = machine_fingerprint(backends)
        commit, dirty = git_commit()
        return cls(machine_name(fp), fp, commit, dirty, package_versions())

    def stamp(self, record: dict) -> dict:
        """The record with the run's fields, and the `params_id` of its case's parameters."""
        workload = {"params_id": params_id(record["params"])} if isinstance(record.get("params"), dict) else {}
        return {"schema": SCHEMA, "run_id": self.run_id, "machine": self.machine, "commit": self.commit,
                "dirty": self.dirty, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **record, **workload, "fingerprint": self.fingerprint, "versions": self.versions}


def params_id(params: dict) -> str:
    """A short hash of a case's parameters (its dimensions and attributes as the case file
    gives them): part of a record's identity, since a case name alone does not say what
    was measured (a user's case file may reuse a shipped name with other dimensions)."""
    text = json.dumps(params, sort_keys=True, allow_nan=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def workload_of(record: dict) -> str | None:
    """The params_id of the workload a record measured: from its parameters where it has
    them (records written before params_id was stored too), else as stored, else None."""
    params = record.get("params")
    return params_id(params) if isinstance(params, dict) else record.get("params_id")


class ResultsWriteError(OSError):
    """A record could not be written whole (a full disk: ENOSPC, or a write cut short);
    the records before it are in the file. `written`: records this writer wrote."""

    def __init__(self, path: Path, cause: OSError, written: int, detail: str = ""):
        super().__init__(cause.errno, (cause.strerror or str(cause)) + detail, str(path))
        self.written = written


class ResultsWriter:
    """Appends records to a JSON-lines file, one write + fsync per record.

    A file that ends inside a line (a write cut short by a crash or a full disk) gets that
    line ended first, so that the next record starts on a line of its own instead of
    joining the fragment in one unreadable line; `partial_line` then says where it was
    ("file:line", else ""). The fragment is kept (nothing is ever cut from the file) and
    the reader skips it as it skips any unreadable line. A record that cannot be written
    whole raises ResultsWriteError."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)  # not /dev/null, a pipe...
        self.partial_line = self._end_partial_line()

    def _end_partial_line(self) -> str:
        if not self._regular or os.fstat(self._fd).st_size == 0:
            return ""
        try:
            data = self.path.read_bytes()
        except OSError:  # a file this user may append to but not read: nothing to tell
            return ""
        if not data or data.endswith(b"\n"):
            return ""
        self._write(b"\n", "ending its partial last line")
        line = data.count(b"\n") + 1
        return f"{self.path}:{line}"

    def write(self, record: dict) -> None:
        line = (json.dumps(record, default=jsonable, allow_nan=True) + "\n").encode()
        self._write(line, f"record {self.written + 1} of this run")
        self.written += 1

    def _write(self, data: bytes, what: str) -> None:
        done = 0
        try:
            while done < len(data):
                n = os.write(self._fd, data[done:])
                if n == 0:  # a short write that writes nothing: no room left
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
            if self._regular:  # fsync of a pipe or a character device fails with EINVAL
                os.fsync(self._fd)
        except OSError as e:
            cut = f" ({what} cut short after {done} of {len(data)} bytes)" if done else f" ({what})"
            raise ResultsWriteError(self.path, e, self.written, cut) from e

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_output(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a whole output file (an HTML report, JUnit XML) where the user pointed it, the
    one way every writer does:

    - a new path or a regular file: atomically, through a temporary file beside it and a
      rename, so that no reader sees half a file; an existing file keeps its permissions;
    - a symbolic link: the same at the file it leads to, which may be new (the link stays);
    - a character device, a FIFO or a socket (/dev/null, /dev/full, a named pipe), and any
      path under /dev or /proc (/dev/stdout): written directly, never replaced.

    Raises OSError (IsADirectoryError for a folder, ENOSPC from /dev/full...)."""
    path = Path(path)
    data = data.encode("utf-8") if isinstance(data, str) else data
    try:
        st = os.stat(path)  # through links
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if _written_in_place(path, st):
        with open(path, "wb") as f:
            f.write(data)
        return path
    target = Path(os.path.realpath(path))  # a link's file, or the path itself
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            if st is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _written_in_place(path: Path, st: os.stat_result | None) -> bool:
    """Whether write_output writes `path` directly rather than replacing it: anything but a
    regular file or a new path, and any path under /dev or /proc (/dev/stdout leads through
    /proc/self/fd to whatever the shell opened, which a rename would cut off)."""
    if st is not None and not stat.S_ISREG(st.st_mode):
        return True
    return Path(os.path.abspath(path)).parts[1:2] in (("dev",), ("proc",))


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written; a write that writes nothing is a full disk."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "as_dict"):
        return o.as_dict()
    return str(o)


@dataclass
class Loaded:
    records: list[dict]
    problems: list[str]  # "file:line: why" for each line skipped


# What read_records guarantees of every record it returns: these keys are strings...
REQUIRED = ("fusion", "backend", "variant", "case", "dtype")
# ...and each of these fields, where present, has the type its consumers (harness.report,
# harness.compare, the resume logic, the tables) rely on. A line that breaks one is
# reported and skipped like a truncated one. Kinds: text (a UTF-8 string), text? (or null),
# bool, count (an integer >= 0), int, number (a float, NaN and Inf allowed: metrics of a
# failing kernel), number? (or null), time (a finite number >= 0), table (an object).
FIELD_KINDS = {
    **{k: "text" for k in ("machine", "commit", "run_id", "timestamp", "kind", "impl", "status", "model",
                           "case_file", "traceback", "params_id")},
    "verdict": "text?", "reason": "text?", "invalid_reason": "text?",
    "schema": "int", "seed": "int", "dirty": "bool", "invalid": "bool", "shape_ok": "bool",
    **{k: "count" for k in ("bytes", "flops", "n", "nonfinite_mismatch", "segments")},
    **{k: "time" for k in ("median_s", "p20_s", "p80_s", "min_s", "gbps", "gflops")},
    "noise": "number",
    **{k: "number?" for k in ("nmse", "max_abs", "max_rel", "max_ulp", "chain_nmse", "nmse_bound",
                              "frac_bw", "frac_flops", "frac_peak", "duration_s", "unaccounted_s",
                              "timer_overhead_s", "latency_s", "machine_busy")},
    **{k: "text?" for k in ("timing_method", "path")},
    "launches": "count?",
    **{k: "table" for k in ("params", "fingerprint", "versions", "peak", "time", "outputs")},
}
TIME_KINDS = {"median": "time", "p20": "time", "p80": "time", "min": "time", "n": "count", "noise": "number",
              "mode": "text"}
PEAK_LIMIT = 1e15  # GB/s or GFLOP/s: a million times any machine today, far from overflow when plotted
# A timing sample is the seconds of one run: from a picosecond to a million seconds (11.6
# days). Anything else is no measurement, and ratios of such figures overflow (compare died
# on time.samples = [1e400], which JSON reads as inf, and called 1e308 UNSURE).
SAMPLE_RANGE = (1e-12, 1e6)
EXPECTED = {"text": "a string", "text?": "a string or null", "bool": "true or false",
            "count": "an integer from 0 to 2**63 - 1", "int": "a 64-bit integer", "number": "a number",
            "number?": "a number or null", "count?": "an integer from 0 to 2**63 - 1 or null",
            "time": "a finite number >= 0", "table": "an object"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_text(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        v.encode("utf-8")  # a lone surrogate (from a "\ud800" escape) cannot be written out again
    except UnicodeEncodeError:
        return False
    return True


def _fits(kind: str, v) -> bool:
    if kind.endswith("?") and v is None:
        return True
    kind = kind.rstrip("?")
    if kind == "text":
        return _is_text(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63
    if kind == "count":
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63
    if kind == "number":
        return _is_number(v) and (not isinstance(v, int) or abs(v) < 2**1023)
    if kind == "time":
        return _is_number(v) and (not isinstance(v, int) or v < 2**1023) and math.isfinite(v) and v >= 0
    if kind == "table":
        return isinstance(v, dict)
    raise ValueError(kind)


def _shown(v) -> str:
    r = json.dumps(v, allow_nan=True, default=str) if not isinstance(v, str) else repr(v)
    return r if len(r) <= 60 else r[:55] + " ..."


def record_problem(rec) -> str | None:
    """Why `rec` (a parsed JSON line) is not a record read_records can hand on, or None."""
    if not isinstance(rec, dict):
        return f"not a fusebench record (a JSON {type(rec).__name__.replace('dict', 'object')}, expected an object)"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"not a fusebench record (missing {'/'.join(missing)})"
    for k in REQUIRED:
        if not _is_text(rec[k]):
            return f"field {k!r} must be a string, got {_shown(rec[k])}"
    for k, kind in FIELD_KINDS.items():
        if k in rec and not _fits(kind, rec[k]):
            return f"field {k!r} must be {EXPECTED[kind]}, got {_shown(rec[k])}"
    t = rec.get("time")
    if t is not None:
        for k, kind in TIME_KINDS.items():
            if k in t and not _fits(kind, t[k]):
                return f"field 'time.{k}' must be {EXPECTED[kind]}, got {_shown(t[k])}"
        if "samples" in t and not (isinstance(t["samples"], list) and all(_is_number(x) for x in t["samples"])):
            return f"field 'time.samples' must be a list of numbers, got {_shown(t['samples'])}"
        lo, hi = SAMPLE_RANGE
        wrong = next((x for x in t.get("samples", ()) if not lo <= x <= hi), None)  # NaN fails both
        if wrong is not None:
            return f"field 'time.samples' must hold seconds from {lo:g} to {hi:g}, got {_shown(wrong)}"
    for k, v in rec.get("peak", {}).items():  # a machine's measured GB/s and GFLOP/s (the roofline's ceilings)
        if v is not None and not (_fits("time", v) and v < PEAK_LIMIT):
            return f"field 'peak.{k}' must be a rate from 0 up to {PEAK_LIMIT:g}, or null, got {_shown(v)}"
    fp = rec.get("fingerprint", {})
    if "backends" in fp and not (isinstance(fp["backends"], dict)
                                 and all(isinstance(b, dict) for b in fp["backends"].values())):
        return f"field 'fingerprint.backends' must be an object of objects, got {_shown(fp['backends'])}"
    return None


def read_records(paths) -> Loaded:
    """Every record from the given JSONL files (or folders of them), bad lines reported.

    Never raises: an unreadable file, a line that is not UTF-8 or not JSON (a truncated
    last line), and a record whose fields have the wrong types (record_problem) each
    become one "file:line: why" problem, and every other record is kept."""
    records, problems = [], []
    for path in expand_paths(paths):
        if Path(path).is_dir():
            problems.append(f"{path}: no results files (*.jsonl) in this folder")
            continue
        try:
            data = Path(path).read_bytes()
        except (OSError, ValueError) as e:  # ValueError: a path with a NUL in it
            problems.append(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}")
            continue
        for i, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{path}:{i}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                f"skipped")
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{i}: not a JSON record ({e.msg} at column {e.colno}); skipped")
                continue
            except (ValueError, RecursionError) as e:  # a number too long to convert, nesting too deep
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
                problems.append(f"{path}:{i}: not a JSON record ({why}); skipped")
                continue
            why = record_problem(rec)
            if why:
                problems.append(f"{path}:{i}: {why}; skipped")
                continue
            rec.setdefault("source_file", str(path))
            records.append(rec)
    return Loaded(records, problems)


def expand_paths(paths) -> list[Path]:
    """Files as given, folders as the *.jsonl files under them (a folder without any is
    kept as itself, for read_records to report)."""
    out = []
    for p in paths:
        p = Path(p)
        found = sorted(f for f in p.rglob("*.jsonl") if f.is_file()) if p.is_dir() else [p]
        out.extend(found or [p])
    return out


RECORD_KEY = ("machine", "commit", "run_id", "fusion", "backend", "variant", "case", "dtype")


def merge(records: list[dict]) -> list[dict]:
    """Concatenate, dropping exact repeats of the same record (same run, same key, same workload)."""
    seen, out = set(), []
    for r in records:
        k = (*(str(r.get(f)) for f in RECORD_KEY), workload_of(r))
        if k in seen:
            continue
        seen.add(k)
        out.append(r)
    return out


def to_frame(records: list[dict]):
    """Records as a pandas DataFrame (nested fields kept as objects)."""
    import pandas as pd

    return pd.DataFrame.from_records(records)
