"""cases/*.toml -> validated Case records.

A case file names a model and lists its cases:

    model = "Llama-3-8B"
    source = "config.json: hidden_size 4096, ..."

    [[case]]
    fusion = "rmsnorm_gemm"
    name = "decode"
    M = 1
    H = 4096
    N = 6144
    eps = 1e-5
    dtypes = ["float32", "float16", "bfloat16"]   # optional: default, every dtype the fusion has
    suites = ["quick", "full"]                    # optional: default ["full"]

Every key other than fusion, name, dtypes, suites and note is a parameter of the fusion
(its dimensions and attributes). Anything wrong is a CaseError naming the file, the line
of the offending case and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from harness.dtypes import DTYPES

RESERVED = {"fusion", "name", "dtypes", "suites", "note"}
SUITES = ("smoke", "quick", "full")


class CaseError(ValueError):
    """A problem with a case file, already phrased as `file:line: what is wrong`."""


@dataclass(frozen=True)
class Case:
    fusion: str
    id: str  # "<file stem>.<name>", unique per fusion
    model: str
    params: dict
    dtypes: tuple[str, ...]
    suites: tuple[str, ...]
    file: str
    line: int
    note: str = ""
    extra: dict = field(default_factory=dict)


def shipped_case_files() -> list[Path]:
    return sorted(Path(str(p)) for p in resources.files("cases").iterdir() if str(p).endswith(".toml"))


def _case_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*case\s*\]\]", line)]


def load_file(path: str | Path, registry) -> list[Case]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CaseError(f"{path}: cannot read case file: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else str(path)
        raise CaseError(f"{where}: TOML syntax error: {str(e).split(' (at line')[0]}") from None
    lines = _case_lines(text)
    entries = doc.get("case", [])
    if not isinstance(entries, list) or not entries:
        raise CaseError(f"{path}:1: no [[case]] tables; each case is a [[case]] table with fusion, name and "
                        f"the fusion's dimensions")
    model = str(doc.get("model", path.stem))
    cases, seen = [], set()
    for i, entry in enumerate(entries):
        line = lines[i] if i < len(lines) else 1
        where = f"{path}:{line}"
        if not isinstance(entry, dict):
            raise CaseError(f"{where}: a case must be a table")
        fusion, name = entry.get("fusion"), entry.get("name")
        if not isinstance(fusion, str):
            raise CaseError(f"{where}: case needs fusion = \"<name>\"; known: {', '.join(registry.fusions)}")
        if fusion not in registry.fusions:
            raise CaseError(f"{where}: unknown fusion {fusion!r}; known: {', '.join(registry.fusions)}")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise CaseError(f"{where}: case needs name = \"...\" (letters, digits, _ and -), got {name!r}")
        spec = registry.fusions[fusion]
        params = {k: v for k, v in entry.items() if k not in RESERVED}
        problems = spec.check_params(params)
        if problems:
            raise CaseError(f"{where}: case {name!r} ({fusion}): " + "; ".join(problems))
        dtypes = entry.get("dtypes", list(spec.dtypes))
        if not isinstance(dtypes, list) or not dtypes:
            raise CaseError(f"{where}: case {name!r}: dtypes must be a non-empty list")
        for d in dtypes:
            if d not in DTYPES or d not in spec.dtypes:
                raise CaseError(f"{where}: case {name!r}: unknown dtype {d!r}; {fusion} takes "
                                f"{', '.join(spec.dtypes)}")
        suites = entry.get("suites", ["full"])
        if not isinstance(suites, list) or any(s not in SUITES for s in suites):
            raise CaseError(f"{where}: case {name!r}: suites must be a list drawn from {', '.join(SUITES)}")
        if "full" not in suites:
            suites = [*suites, "full"]  # the full suite has every case
        cid = f"{path.stem}.{name}"
        if (fusion, cid) in seen:
            raise CaseError(f"{where}: case {name!r} for {fusion} appears twice in this file")
        seen.add((fusion, cid))
        cases.append(Case(fusion, cid, model, params, tuple(dtypes), tuple(suites), str(path), line,
                          str(entry.get("note", ""))))
    return cases


def load_cases(registry, files=None) -> list[Case]:
    """Cases from `files` (default: the shipped ones), validated against the registry."""
    out: list[Case] = []
    ids = {}
    for f in files or shipped_case_files():
        for c in load_file(f, registry):
            key = (c.fusion, c.id)
            if key in ids:
                raise CaseError(f"{c.file}:{c.line}: case {c.id} for {c.fusion} also defined at {ids[key]}")
            ids[key] = f"{c.file}:{c.line}"
            out.append(c)
    return out


def select(cases: list[Case], *, suite=None, fusions=None, names=None) -> list[Case]:
    """Filter by suite, fusion and case name (`decode`, `llama3_8b.decode`, or a glob)."""
    from fnmatch import fnmatch

    out = []
    for c in cases:
        if suite and suite not in c.suites:
            continue
        if fusions and c.fusion not in fusions:
            continue
        if names and not any(fnmatch(c.id, n) or fnmatch(c.id.split(".", 1)[1], n) for n in names):
            continue
        out.append(c)
    return out
