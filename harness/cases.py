"""cases/*.toml -> validated Case records.

A case file names a model once, with the dimensions and attributes its cases share, and
lists its cases:

    [model]
    name = "Llama-3-8B"
    source = "config.json: hidden_size 4096, ..."
    H = 4096
    eps = 1e-5

    [[case]]
    fusion = "rmsnorm_gemm"
    name = "decode"
    M = 1
    N = 6144                                      # H and eps come from [model]
    dtypes = ["float32", "float16", "bfloat16"]   # optional: default, every dtype the fusion has
    suites = ["quick", "full"]                    # optional: default ["full"]

Every key of a case other than fusion, name, dtypes, suites and note is a parameter of the
fusion (its dimensions and attributes). A case takes from [model] each value whose key its
fusion has as a parameter and that it does not set itself (its own value wins); the rest of
[model] is not passed to it. A [model] key that no case in the file takes is an error (a
typo, or a value that every case overrides). The older form, top-level `model = "name"` and
`source = "..."` with every parameter written in each case, still loads. Anything wrong is a
CaseError naming the file, the line of the offending case (or [model] key) and what was
expected.
"""

from __future__ import annotations

import difflib
import math
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

    @property
    def where(self) -> str:
        """"file:line" for records: relative to the repository for its own case files, so
        that records from another machine's checkout name the same file."""
        path = Path(self.file)
        try:
            path = path.resolve().relative_to(_REPO_ROOT)
        except (OSError, ValueError):
            pass
        return f"{path}:{self.line}"


_REPO_ROOT = Path(__file__).resolve().parent.parent


def shipped_case_files() -> list[Path]:
    return sorted(Path(str(p)) for p in resources.files("cases").iterdir() if str(p).endswith(".toml"))


# Dimensions reach the kernels as 32-bit integers (CUDA int, WGSL u32/i32); offsets are
# 64-bit, so a tensor may be larger, but no single extent may pass this. Whether a case
# fits in memory is the runner's question (it skips what does not fit).
MAX_DIM = 2**31 - 1
# Attributes with a required sign (any spec that uses the name means the same thing).
ATTR_RANGES = {
    "eps": (lambda v: v >= 0, "a finite number >= 0 (added to the mean square before the square root)"),
    "theta": (lambda v: v > 0, "a finite number > 0 (the RoPE base)"),
}
TOP_LEVEL = ("model", "source", "case")
MODEL_INFO = ("name", "source")  # the [model] table's keys that are not parameters
_HEADER = re.compile(r"""\s*\[\[\s*(case|"case"|'case')\s*\]\]""")
_SHOWN = 60  # characters of an offending value quoted in a message


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= _SHOWN else r[: _SHOWN - 5] + "...'" if r[:1] in "'\"" else r[: _SHOWN - 3] + "..."


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an integer beyond any float
        return False


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _case_lines(text: str, n_entries: int) -> list[int]:
    """The line of each case's [[case]] header; when they cannot be told apart (an inline
    `case = [...]` array), the line of `case =` for every case."""
    lines = text.split("\n")  # TOML counts lines by \n alone, as tomllib's messages do
    headers = [i + 1 for i, line in enumerate(lines) if _HEADER.match(line)]
    if len(headers) == n_entries:
        return headers
    inline = next((i + 1 for i, line in enumerate(lines) if re.match(r"""\s*("case"|'case'|case)\s*=""", line)), 1)
    return [inline] * n_entries


def _key_line(text: str, key: str, default: int = 1) -> int:
    """The first line that assigns or opens `key` at the start of a line, else `default`."""
    pat = re.compile(rf"""\s*(\[+\s*)?("{re.escape(key)}"|'{re.escape(key)}'|{re.escape(key)})\s*(=|\]|\.)""")
    return next((i + 1 for i, line in enumerate(text.split("\n")) if pat.match(line)), default)


def _read(path: Path) -> str:
    if path.is_dir():
        raise CaseError(f"{path}: is a directory, not a case file; give the .toml files in it")
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a path with a NUL in it
        raise CaseError(f"{path}: cannot read case file: {getattr(e, 'strerror', None) or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise CaseError(f"{path}:{line}:{col}: not UTF-8 text (byte 0x{data[e.start]:02x}); a case file is "
                        f"TOML, which must be saved as UTF-8") from None


def _parse(path: Path, text: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            where = f"{path}:{m.group(1)}:{m.group(2)}"
        elif "(at end of document)" in msg:
            where = f"{path}:{text.rstrip().count(chr(10)) + 1}"  # the last line with anything on it
        else:
            where = f"{path}:1"
        raise CaseError(f"{where}: TOML syntax error: {re.sub(r' [(]at (line|end).*', '', msg)}") from None
    except RecursionError:
        lines = text.split("\n")
        line = max(range(len(lines)), key=lambda i: lines[i].count("[") + lines[i].count("{")) + 1
        raise CaseError(f"{path}:{line}: TOML nested too deeply to read; a case holds numbers, strings and "
                        f"lists of strings") from None
    except ValueError:  # an integer literal longer than Python converts (sys.int_max_str_digits)
        m = re.search(r"\d{1000,}", text)
        line = text.count("\n", 0, m.start()) + 1 if m else 1
        raise CaseError(f"{path}:{line}: number too long to read (thousands of digits); dimensions are at most "
                        f"{MAX_DIM}") from None


def _check_entry(entry: dict, registry, where: str, model: dict | None = None,
                 model_lines: dict | None = None) -> tuple[str, str, dict, list, list, set]:
    """(fusion, name, params, dtypes, suites, the keys taken from [model]) of one [[case]]
    table, or a CaseError. `model`: the [model] table's parameters (`model_lines`: the line of
    each); the case takes those its fusion has and it does not set itself."""
    known_fusions = ", ".join(registry.fusions)
    fusion, name = entry.get("fusion"), entry.get("name")
    if "fusion" not in entry:
        raise CaseError(f"{where}: case needs fusion = \"<name>\"; known: {known_fusions}")
    if not isinstance(fusion, str):
        raise CaseError(f"{where}: fusion must be a string naming a fusion, got {_show(fusion)}; "
                        f"known: {known_fusions}")
    if fusion not in registry.fusions:
        raise CaseError(f"{where}: unknown fusion {_show(fusion)}{_did_you_mean(fusion, registry.fusions)}; "
                        f"known: {known_fusions}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise CaseError(f"{where}: case needs name = \"...\" (letters, digits, _ and -), got {_show(name)}")
    spec = registry.fusions[fusion]
    what = f"{where}: case {name!r} ({fusion})"
    params = {k: v for k, v in entry.items() if k not in RESERVED}
    known = set(spec.dims) | set(spec.attrs)
    for k in params:  # before the spec's own check, to suggest the key that was meant
        if k not in known:
            raise CaseError(f"{what}: unknown parameter {_show(k)}{_did_you_mean(k, known | RESERVED)}; "
                            f"{fusion} takes {', '.join(sorted(known))}, and every case may have "
                            f"{', '.join(sorted(RESERVED - {'fusion', 'name'}))}")
    inherited = {k: v for k, v in (model or {}).items() if k in known and k not in params}
    if inherited:  # in the spec's order, as a case that wrote them all would have them
        params = {k: params[k] if k in params else inherited[k] for k in (*spec.dims, *spec.attrs)
                  if k in params or k in inherited}

    def blame(problem: str) -> str:  # which of the values at fault the case took from [model]
        named = [k for k in inherited if re.search(rf"\b{re.escape(k)}\b", problem)]
        if not named:
            return problem
        lines = ", ".join(str((model_lines or {}).get(k, "?")) for k in named)
        return (f"{problem} ({', '.join(f'{k} = {_show(inherited[k])}' for k in named)} from [model], "
                f"line{'s' * (len(named) > 1)} {lines})")

    for a, v in params.items():  # before the spec's check, which converts them to float
        if a in spec.attrs and isinstance(v, (int, float)) and not isinstance(v, bool):
            ok, expected = ATTR_RANGES.get(a, (lambda v: True, "a finite number"))
            if not _finite(v) or not ok(v):
                raise CaseError(blame(f"{what}: attribute {a!r} must be {expected}, got {_show(v)}"))
    try:
        problems = spec.check_params(params)
    except Exception as e:  # a spec's own validation must not take the loader down
        problems = [f"the spec could not check these parameters ({type(e).__name__}: {e})"]
    if problems:
        raise CaseError(blame(f"{what}: " + "; ".join(problems)))
    for d in spec.dims:
        if params[d] > MAX_DIM:
            raise CaseError(blame(f"{what}: dimension {d!r} = {_show(params[d])} is too large; dimensions reach "
                                  f"the kernels as 32-bit integers, at most {MAX_DIM}"))
    dtypes = entry.get("dtypes", list(spec.dtypes))
    if not isinstance(dtypes, list) or not dtypes:
        raise CaseError(f"{what}: dtypes must be a non-empty list of dtype names drawn from "
                        f"{', '.join(spec.dtypes)}, got {_show(dtypes)}")
    for d in dtypes:
        if isinstance(d, str) and d in DTYPES and d not in spec.dtypes:
            raise CaseError(f"{what}: dtype {d!r} is not one {fusion} runs in; it takes {', '.join(spec.dtypes)}")
        if not isinstance(d, str) or d not in DTYPES:
            hint = _did_you_mean(d, spec.dtypes) if isinstance(d, str) else ""
            raise CaseError(f"{what}: unknown dtype {_show(d)}{hint}; {fusion} takes {', '.join(spec.dtypes)}")
    if len(set(dtypes)) != len(dtypes):
        raise CaseError(f"{what}: dtypes lists {next(d for d in dtypes if dtypes.count(d) > 1)!r} twice")
    suites = entry.get("suites", ["full"])
    if not isinstance(suites, list) or any(not isinstance(s, str) or s not in SUITES for s in suites):
        raise CaseError(f"{what}: suites must be a list drawn from {', '.join(SUITES)}, got {_show(suites)}")
    if "note" in entry and not isinstance(entry["note"], str):
        raise CaseError(f"{what}: note must be a string, got {_show(entry['note'])}")
    return fusion, name, params, dtypes, suites, set(inherited)


def _model_key_line(text: str, key: str) -> int:
    """The line of `key` in the [model] table (or of `model.key = ...`), else the line of
    [model] itself."""
    def bare_or_quoted(k: str) -> str:
        k = re.escape(k)
        return rf"""("{k}"|'{k}'|{k})"""

    lines = text.split("\n")
    header = re.compile(rf"\s*\[\s*{bare_or_quoted('model')}\s*\]")
    assign = re.compile(rf"\s*{bare_or_quoted(key)}\s*=")
    dotted = re.compile(rf"\s*{bare_or_quoted('model')}\s*\.\s*{bare_or_quoted(key)}\s*=")
    for i, line in enumerate(lines):
        if header.match(line):
            for j in range(i + 1, len(lines)):
                if re.match(r"\s*\[", lines[j]):  # the next table
                    break
                if assign.match(lines[j]):
                    return j + 1
        elif dotted.match(line):
            return i + 1
    return _key_line(text, "model")


def _model_table(path: Path, text: str, table: dict, registry) -> tuple[str | None, dict]:
    """(name, parameters) of a [model] table, each value checked where it stands."""
    dims = {d for spec in registry.fusions.values() for d in spec.dims}
    attrs = {a for spec in registry.fusions.values() for a in spec.attrs}
    params = {}
    for k, v in table.items():
        where = f"{path}:{_model_key_line(text, k)}: [model]"
        if k in MODEL_INFO:
            if not isinstance(v, str):
                raise CaseError(f"{where} {k} must be a string, got {_show(v)}")
            continue
        if k not in dims | attrs:
            hint = (" (it belongs in each [[case]])" if k in RESERVED
                    else _did_you_mean(k, dims | attrs | set(MODEL_INFO)))
            raise CaseError(f"{where} unknown key {_show(k)}{hint}; [model] holds name, source and parameters "
                            f"of the fusions ({', '.join(sorted(dims | attrs))})")
        if k in dims and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM):
            raise CaseError(f"{where} dimension {k!r} must be a positive integer of at most {MAX_DIM}, "
                            f"got {_show(v)}")
        if k in attrs:
            ok, expected = ATTR_RANGES.get(k, (lambda v: True, "a finite number"))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or not ok(v):
                raise CaseError(f"{where} attribute {k!r} must be {expected}, got {_show(v)}")
        params[k] = v
    return table.get("name"), params


def _case_name(c: Case) -> str:
    return f"{c.id.split('.', 1)[1]} ({c.fusion}, line {c.line})"


def load_file(path: str | Path, registry) -> list[Case]:
    path = Path(path)
    text = _read(path)
    doc = _parse(path, text)
    for k, v in doc.items():
        if k not in TOP_LEVEL:
            raise CaseError(f"{path}:{_key_line(text, k)}: unknown key {_show(k)}{_did_you_mean(k, TOP_LEVEL)}; a "
                            f"case file has a [model] table and [[case]] tables")
        if k == "model" and not isinstance(v, (str, dict)):
            raise CaseError(f"{path}:{_key_line(text, k)}: model must be a string, got {_show(v)}; or a [model] "
                            f"table with name, source and the parameters its cases share")
        if k == "source" and not isinstance(v, str):
            raise CaseError(f"{path}:{_key_line(text, k)}: source must be a string, got {_show(v)}")
    if isinstance(doc.get("model"), dict) and "source" in doc:
        raise CaseError(f"{path}:{_key_line(text, 'source')}: with a [model] table, source goes inside it "
                        f"(source = \"...\" under [model])")
    name, shared = path.stem, {}
    if isinstance(doc.get("model"), dict):
        name, shared = _model_table(path, text, doc["model"], registry)
        name = name if name is not None else path.stem
    elif "model" in doc:
        name = doc["model"]
    shared_lines = {k: _model_key_line(text, k) for k in shared}
    entries = doc.get("case", [])
    if isinstance(entries, dict):
        raise CaseError(f"{path}:{_key_line(text, 'case')}: [case] is a single table; write each case as a "
                        f"[[case]] table (an array of tables)")
    if not isinstance(entries, list):
        raise CaseError(f"{path}:{_key_line(text, 'case')}: case must be [[case]] tables, got {_show(entries)}")
    if not entries:
        raise CaseError(f"{path}:{_key_line(text, 'case')}: no [[case]] tables; each case is a [[case]] table with "
                        f"fusion, name and the fusion's dimensions")
    lines = _case_lines(text, len(entries))
    cases, seen, used = [], {}, set()
    for entry, line in zip(entries, lines):
        where = f"{path}:{line}"
        if not isinstance(entry, dict):
            raise CaseError(f"{where}: a case must be a table ([[case]] or {{fusion = ..., name = ...}}), "
                            f"got {_show(entry)}")
        fusion, case_name, params, dtypes, suites, taken = _check_entry(entry, registry, where, shared, shared_lines)
        used |= taken
        if "full" not in suites:
            suites = [*suites, "full"]  # the full suite has every case
        cid = f"{path.stem}.{case_name}"
        if (fusion, cid) in seen:
            raise CaseError(f"{where}: case {case_name!r} for {fusion} appears twice in this file (first at line "
                            f"{seen[fusion, cid]}); names must be unique per fusion")
        seen[fusion, cid] = line
        cases.append(Case(fusion, cid, name, params, tuple(dtypes), tuple(dict.fromkeys(suites)), str(path), line,
                          entry.get("note", "")))
    for k in shared:  # a value no case takes is a typo, or one that misleads the reader
        if k not in used:
            takers = [c for c in cases if k in registry.fusions[c.fusion].dims or k in registry.fusions[c.fusion].attrs]
            why = (f"every case whose fusion takes it sets its own: {', '.join(_case_name(c) for c in takers)}"
                   if takers else f"none of its cases' fusions ({', '.join(sorted({c.fusion for c in cases}))}) "
                   f"takes it")
            raise CaseError(f"{path}:{shared_lines[k]}: [model] {k} = {_show(shared[k])} is used by no case in "
                            f"this file: {why}; remove it, or fix the key")
    return cases


def load_cases(registry, files=None) -> list[Case]:
    """Cases from `files` (default: the shipped ones), validated against the registry."""
    out: list[Case] = []
    ids = {}
    read = set()
    for f in files or shipped_case_files():
        if Path(f).resolve() in read:  # the same file named twice
            continue
        read.add(Path(f).resolve())
        for c in load_file(f, registry):
            key = (c.fusion, c.id)
            if key in ids:
                raise CaseError(f"{c.file}:{c.line}: case {c.id} for {c.fusion} also defined at {ids[key]}; case "
                                f"ids are <file stem>.<name>, so two files of the same name cannot both hold it")
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
