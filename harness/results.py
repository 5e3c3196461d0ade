"""Result records: machine fingerprint, atomic JSON-lines writing, tolerant reading, merge.

One long-format record per (machine, commit, fusion, implementation, case, dtype). Each
record is appended as one line in a single write and flushed to disk, so an interrupted
run leaves every finished record readable; the reader skips (and reports) lines it cannot
parse, such as a truncated last line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
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
    """(commit hash or "unknown", dirty) of the checkout the harness runs from."""
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
        return {"schema": SCHEMA, "run_id": self.run_id, "machine": self.machine, "commit": self.commit,
                "dirty": self.dirty, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **record, "fingerprint": self.fingerprint, "versions": self.versions}


class ResultsWriter:
    """Appends records to a JSON-lines file, one write + fsync per record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict) -> None:
        line = (json.dumps(record, default=_jsonable, allow_nan=True) + "\n").encode()
        os.write(self._fd, line)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "as_dict"):
        return o.as_dict()
    return str(o)


@dataclass
class Loaded:
    records: list[dict]
    problems: list[str]  # "file:line: why" for each line skipped


def read_records(paths) -> Loaded:
    """Every record from the given JSONL files (or folders of them), bad lines reported."""
    records, problems = [], []
    for path in expand_paths(paths):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            problems.append(f"{path}: cannot read: {e.strerror or e}")
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{i}: not a JSON record ({e.msg}); skipped")
                continue
            if not isinstance(rec, dict) or not {"fusion", "backend", "variant", "case", "dtype"} <= rec.keys():
                problems.append(f"{path}:{i}: not a fusebench record (missing fusion/backend/variant/case/dtype)")
                continue
            rec.setdefault("source_file", str(path))
            records.append(rec)
    return Loaded(records, problems)


def expand_paths(paths) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        out.extend(sorted(p.rglob("*.jsonl")) if p.is_dir() else [p])
    return out


RECORD_KEY = ("machine", "commit", "run_id", "fusion", "backend", "variant", "case", "dtype")


def merge(records: list[dict]) -> list[dict]:
    """Concatenate, dropping exact repeats of the same record (same run, same key)."""
    seen, out = set(), []
    for r in records:
        k = tuple(str(r.get(f)) for f in RECORD_KEY)
        if k in seen:
            continue
        seen.add(k)
        out.append(r)
    return out


def to_frame(records: list[dict]):
    """Records as a pandas DataFrame (nested fields kept as objects)."""
    import pandas as pd

    return pd.DataFrame.from_records(records)
