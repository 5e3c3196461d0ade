"""Check records -> JUnit XML, so that CI systems show each result as one test case.

One <testsuite> per fusion; one <testcase> per (implementation, case, dtype) with
classname `fusebench.<fusion>.<backend>.<variant>` and name `<case>[<dtype>]`. A record
with status "fail" becomes a <failure> whose text gives the failing figures, "error" an
<error> with the reason and traceback, "unavailable" a <skipped>; each failure and error
carries a one-line `fusebench check ...` command that reproduces it, seed included.

The file is written by harness.results.write_output (atomically over a regular file,
through a symbolic link to its target, directly into a device or a pipe), and every text
is stripped of the characters XML 1.0 cannot hold.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.registry import PLUGINS_ENV
from harness.results import REPO_ROOT, write_output

# Characters XML 1.0 does not allow (even escaped): C0 controls but tab, LF, CR; surrogates; U+FFFE/F.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_FIGURES = ("nmse", "max_ulp", "max_abs", "max_rel", "chain_nmse")


def _clean(text) -> str:
    return _NOT_XML.sub("", str(text))


def _num(x) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _seconds(rec: dict) -> float:
    t = rec.get("duration_s")
    try:
        return max(0.0, float(t)) if t is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _shipped(case_path: str) -> bool:
    try:  # records name the repository's own case files relative to it
        return (REPO_ROOT / case_path).resolve().is_relative_to((REPO_ROOT / "cases").resolve())
    except (OSError, ValueError):
        return False


def reproduce_command(rec: dict, seed: int, env=None) -> str:
    """A `fusebench check` command line that runs this one record again.

    `seed` is the run's --seed (the record's own "seed" is the per-case input seed derived
    from it). Cases from a file outside the shipped cases/ folder get `--cases FILE`;
    shipped ones get `--suite full`, the suite that holds every case. When $FUSEBENCH_PLUGINS
    is set (in `env`, default os.environ) the command starts with the same assignment."""
    argv = ["fusebench", "check", "--fusion", rec["fusion"], "--backend", rec["backend"],
            "--variant", rec["variant"], "--case", rec["case"], "--dtype", rec["dtype"]]
    case_file = str(rec.get("case_file") or "")
    path = case_file.rpartition(":")[0] if re.search(r":\d+$", case_file) else case_file
    if path and not _shipped(path):
        argv += ["--cases", path]
    else:
        argv += ["--suite", "full"]
    argv += ["--seed", str(seed)]
    command = " ".join(shlex.quote(str(a)) for a in argv)
    plugins = (os.environ if env is None else env).get(PLUGINS_ENV, "").strip()
    if plugins:  # the implementation may come from one of them
        command = f"{PLUGINS_ENV}={shlex.quote(plugins)} {command}"
    return command


def _figures(rec: dict) -> list[str]:
    lines = []
    for key in _FIGURES:
        if rec.get(key) is None:
            continue
        line = f"{key}: {_num(rec[key])}"
        if key == "nmse" and rec.get("nmse_bound") is not None:
            line += f" (bound {_num(rec['nmse_bound'])})"
        lines.append(line)
    return lines


def _context(rec: dict, seed: int) -> list[str]:
    lines = []
    if rec.get("case_file"):
        lines.append(f"case file: {rec['case_file']}")
    if rec.get("seed") is not None:
        lines.append(f"input seed: {rec['seed']} (from --seed {seed})")
    lines.append(f"reproduce: {reproduce_command(rec, seed)}")
    return lines


def _testcase(rec: dict, seed: int) -> tuple[ET.Element, str]:
    """(the <testcase> element, its outcome: passed, failure, error or skipped)."""
    case, dtype = rec.get("case", "-"), rec.get("dtype", "-")
    name = "(all cases)" if case == "-" else f"{case}[{dtype}]"
    el = ET.Element("testcase", {
        "classname": _clean(f"fusebench.{rec['fusion']}.{rec['backend']}.{rec['variant']}"),
        "name": _clean(name), "time": f"{_seconds(rec):.3f}"})
    status = rec.get("status")
    reason = str(rec.get("reason") or "")
    if status == "ok":
        return el, "passed"
    if status in ("unavailable", "skipped"):  # skipped: a case too large for this machine, never run
        ET.SubElement(el, "skipped", {"message": _clean(reason or status)})
        return el, "skipped"
    if status == "fail":
        lines = _figures(rec) + [f"reason: {reason}"] + _context(rec, seed)
        sub = ET.SubElement(el, "failure", {"message": _clean(reason or "accuracy gate failed"), "type": "accuracy"})
        sub.text = _clean("\n".join(lines))
        return el, "failure"
    # "error", and any status this writer does not know: never let it pass silently
    kind = reason.split(":", 1)[0] if re.match(r"^[A-Za-z_][\w.]*:", reason) else "error"
    lines = [f"reason: {reason or f'status {status!r}'}"] + _context(rec, seed)
    if rec.get("traceback"):
        lines += ["", str(rec["traceback"]).rstrip()]
    sub = ET.SubElement(el, "error", {"message": _clean(reason or f"status {status!r}"), "type": _clean(kind)})
    sub.text = _clean("\n".join(lines))
    return el, "error"


def build_junit(records: list[dict], seed: int = 0, problems=()) -> ET.Element:
    """The <testsuites> element for these records (one <testsuite> per fusion), and one
    "registry" suite with an error per registry problem (a plugin that failed to load or was
    refused), so that CI shows why the gate cannot pass."""
    root = ET.Element("testsuites", {"name": "fusebench"})
    suites: dict[str, dict] = {}
    for rec in records:
        fusion = rec["fusion"]
        if fusion not in suites:
            first = next((r for r in records if r["fusion"] == fusion), rec)
            el = ET.SubElement(root, "testsuite", {"name": _clean(fusion)})
            props = ET.SubElement(el, "properties")
            for key, value in (("commit", first.get("commit", "unknown")), ("machine", first.get("machine", "")),
                               ("seed", seed)):
                ET.SubElement(props, "property", {"name": key, "value": _clean(value)})
            suites[fusion] = {"el": el, "tests": 0, "failure": 0, "error": 0, "skipped": 0, "time": 0.0,
                              "stamps": [], "machine": first.get("machine") or socket.gethostname()}
        s = suites[fusion]
        tc, outcome = _testcase(rec, seed)
        s["el"].append(tc)
        s["tests"] += 1
        s["time"] += _seconds(rec)
        if outcome != "passed":
            s[outcome] += 1
        if rec.get("timestamp"):
            s["stamps"].append(str(rec["timestamp"]))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for s in suites.values():
        attrs = {"tests": s["tests"], "failures": s["failure"], "errors": s["error"], "skipped": s["skipped"],
                 "time": f"{s['time']:.3f}", "hostname": _clean(s["machine"])}
        if s["stamps"]:
            attrs["timestamp"] = _clean(min(s["stamps"]))
        # attributes in the usual order, before the children
        el = s["el"]
        for k, v in attrs.items():
            el.set(k, str(v))
        totals["tests"] += s["tests"]
        totals["failures"] += s["failure"]
        totals["errors"] += s["error"]
        totals["skipped"] += s["skipped"]
        totals["time"] += s["time"]
    if problems:
        el = ET.SubElement(root, "testsuite", {"name": "registry", "tests": str(len(problems)), "failures": "0",
                                               "errors": str(len(problems)), "skipped": "0", "time": "0.000"})
        for i, problem in enumerate(problems, 1):
            tc = ET.SubElement(el, "testcase", {"classname": "fusebench.registry", "name": f"plugin problem {i}",
                                                "time": "0.000"})
            ET.SubElement(tc, "error", {"message": _clean(problem), "type": "plugin"}).text = _clean(problem)
        totals["tests"] += len(problems)
        totals["errors"] += len(problems)
    for k, v in totals.items():
        root.set(k, f"{v:.3f}" if k == "time" else str(v))
    return root


def write_junit(path: str | os.PathLike, records: list[dict], seed: int = 0, problems=()) -> Path:
    """Write the JUnit XML for `records` (and the registry's `problems`) to `path`; `seed`
    is the run's --seed."""
    tree = ET.ElementTree(build_junit(records, seed, problems))
    ET.indent(tree)
    xml = io.BytesIO()
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    return write_output(path, xml.getvalue())
