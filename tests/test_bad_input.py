"""Bad input: every malformed case file, bad argument and corrupt results file ends in one
clear message (the file, the line or key, what was expected) and exit status 2, never a
traceback; the case loader and the results reader hold up under hypothesis fuzzing.

- BAD_CASE_FILES: hand-written bad case files, each through `fusebench check --cases FILE`.
- BAD_ARGUMENTS: bad command lines.
- fuzzing: random text and bytes, and mutations of the shipped case files, must load or
  raise CaseError with file:line; random and corrupted results lines must never make
  read_records raise, each bad line is reported with file:line, every good record is kept,
  and what the reader keeps never crashes the report or compare.
"""

from __future__ import annotations

import copy
import html
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cases import MAX_DIM, CaseError, load_cases, load_file, shipped_case_files
from harness.cli import main
from harness.results import FIELD_KINDS, REQUIRED, SAMPLE_RANGE, read_records, record_problem

ROOT = Path(__file__).resolve().parent.parent


def _examples(n: int) -> int:
    """n examples, or the profile's number where that is larger (HYPOTHESIS_PROFILE=thorough)."""
    return max(n, settings.default.max_examples)


FUZZ = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                   HealthCheck.data_too_large, HealthCheck.large_base_example])


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """fusebench in this process: (exit status, stdout, stderr); argparse exits count too."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    """The single error line of stderr (registry warnings aside), checked for no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, err
    assert re.match(r"fusebench( \w+)?: error: \S", lines[0]), lines[0]
    return lines[0]


# --- bad case files ------------------------------------------------------------------

GOOD = '''model = "t"
[[case]]
fusion = "rmsnorm_gemm"
name = "a"
M = 2
H = 8
N = 4
'''
ROPE = '''model = "t"
[[case]]
fusion = "rmsnorm_qkv_rope"
name = "r"
M = 2
H = 16
n_heads = 4
n_kv_heads = 2
head_dim = 8
'''
DECODE = ROPE.replace("rmsnorm_qkv_rope", "decode_attention").replace('"r"', '"d"').replace(
    "M = 2\nH = 16", "B = 2\nT = 16")
PREFILL = DECODE.replace("decode_attention", "attention_prefill").replace("T = 16", "S = 16")
SCORES = PREFILL.replace("attention_prefill", "attn_score_softmax")
SECOND = '\n[[case]]\nfusion = "rmsnorm_gemm"\nname = "b"\nM = -1\nH = 8\nN = 4\n'  # its header: line 9 after GOOD


def sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


# (file contents, the line the message must name, words it must hold)
BAD_CASE_FILES = [
    # TOML itself
    pytest.param("[[case]\nfusion = 'x'\n", 1, "TOML syntax error: Expected ']]'", id="toml-unclosed-header"),
    pytest.param(sub(GOOD, 'name = "a"', 'name = "a'), 4, "TOML syntax error", id="toml-unterminated-string"),
    pytest.param(GOOD + 'dtypes = ["float32",\n', 8, "TOML syntax error", id="toml-end-of-document"),
    pytest.param(GOOD + "M = 3\n", 8, "TOML syntax error: Cannot overwrite a value", id="toml-key-twice"),
    pytest.param(GOOD + "\x00\n", 8, "TOML syntax error", id="toml-nul-byte"),
    pytest.param(GOOD + "x = " + "[" * 3000 + "]" * 3000 + "\n", 8, "nested too deeply", id="toml-deep-nesting"),
    pytest.param(sub(GOOD, "M = 2", "M = " + "9" * 5000), 5, "number too long", id="toml-5000-digit-number"),
    pytest.param("", 1, "no [[case]] tables", id="empty-file"),
    pytest.param("# nothing\n# here\n", 1, "no [[case]] tables", id="only-comments"),
    pytest.param('model = "x"\n', 1, "no [[case]] tables", id="no-cases"),
    # the file's own keys
    pytest.param(sub(GOOD, "[[case]]", "[[cases]]"), 2, "unknown key 'cases' (did you mean 'case'?)",
                 id="typo-cases"),
    pytest.param(sub(GOOD, "model", "modle"), 1, "unknown key 'modle' (did you mean 'model'?)", id="typo-model"),
    pytest.param(sub(GOOD, "[[case]]", "[case]"), 2, "[case] is a single table", id="single-table"),
    pytest.param('model = "t"\ncase = "x"\n', 2, "case must be [[case]] tables, got 'x'", id="case-a-string"),
    pytest.param('case = [1, 2]\n', 1, "a case must be a table", id="case-an-int-array"),
    pytest.param(sub(GOOD, 'model = "t"', "model = 3"), 1, "model must be a string, got 3", id="model-an-int"),
    pytest.param('source = ["x"]\n' + GOOD, 1, "source must be a string", id="source-an-array"),
    # fusion and name
    pytest.param(sub(GOOD, '"rmsnorm_gemm"', '"rmsnorm_gemn"'), 2,
                 "unknown fusion 'rmsnorm_gemn' (did you mean 'rmsnorm_gemm'?); known: add_rmsnorm",
                 id="unknown-fusion"),
    pytest.param(sub(GOOD, 'fusion = "rmsnorm_gemm"\n', ""), 2, 'case needs fusion = "<name>"', id="no-fusion"),
    pytest.param(sub(GOOD, 'fusion = "rmsnorm_gemm"', "fusion = 3"), 2, "fusion must be a string",
                 id="fusion-an-int"),
    pytest.param(sub(GOOD, 'name = "a"\n', ""), 2, 'case needs name = "..."', id="no-name"),
    pytest.param(sub(GOOD, 'name = "a"', 'name = "a b"'), 2, "(letters, digits, _ and -), got 'a b'",
                 id="name-with-a-space"),
    # dimensions
    pytest.param(sub(GOOD, "M = 2\n", ""), 2, "missing dimension 'M' (a positive integer)", id="missing-dimension"),
    pytest.param(sub(GOOD, "M = 2", "M = -3"), 2, "dimension 'M' must be a positive integer, got -3", id="negative"),
    pytest.param(sub(GOOD, "M = 2", "M = 0"), 2, "dimension 'M' must be a positive integer, got 0", id="zero"),
    pytest.param(sub(GOOD, "M = 2", "M = 2.5"), 2, "'M' must be a positive integer, got 2.5", id="fraction"),
    pytest.param(sub(GOOD, "M = 2", "M = 2.0"), 2, "'M' must be a positive integer, got 2.0", id="float"),
    pytest.param(sub(GOOD, "M = 2", "M = true"), 2, "'M' must be a positive integer, got True", id="boolean"),
    pytest.param(sub(GOOD, "M = 2", 'M = "2"'), 2, "'M' must be a positive integer, got '2'", id="string"),
    pytest.param(sub(GOOD, "M = 2", "M = [2]"), 2, "'M' must be a positive integer, got [2]", id="array"),
    pytest.param(sub(GOOD, "M = 2", "M = {v = 2}"), 2, "'M' must be a positive integer, got {'v': 2}",
                 id="inline-table"),
    pytest.param(sub(GOOD, "M = 2", "M = 1979-05-27"), 2, "'M' must be a positive integer, got datetime.date",
                 id="date"),
    pytest.param(sub(GOOD, "M = 2", "M = 1000000000000000000000000000000"), 2,
                 f"dimension 'M' = 1000000000000000000000000000000 is too large; dimensions reach the kernels "
                 f"as 32-bit integers, at most {MAX_DIM}", id="huge"),
    pytest.param(sub(GOOD, "H = 8", f"H = {MAX_DIM + 1}"), 2, "dimension 'H' = 2147483648 is too large",
                 id="one-past-int32"),
    pytest.param(sub(GOOD, "N = 4", "N = 0x7fffffffffffffff"), 2, "dimension 'N' = 9223372036854775807 is too large",
                 id="int64-max-hex"),
    # attributes
    pytest.param(GOOD + 'eps = "1e-5"\n', 2, "attribute 'eps' must be a number, got '1e-5'", id="eps-a-string"),
    pytest.param(GOOD + "eps = true\n", 2, "attribute 'eps' must be a number, got True", id="eps-a-boolean"),
    pytest.param(GOOD + "eps = nan\n", 2, "attribute 'eps' must be a finite number >= 0", id="eps-nan"),
    pytest.param(GOOD + "eps = inf\n", 2, "attribute 'eps' must be a finite number >= 0", id="eps-inf"),
    pytest.param(GOOD + "eps = 1e400\n", 2, "attribute 'eps' must be a finite number >= 0 (added to the mean "
                 "square before the square root), got inf", id="eps-overflows"),
    pytest.param(GOOD + "eps = -1e-5\n", 2, "attribute 'eps' must be a finite number >= 0 (added to the mean "
                 "square before the square root), got -1e-05", id="eps-negative"),
    pytest.param(GOOD + "eps = 1" + "0" * 400 + "\n", 2, "attribute 'eps' must be a finite number >= 0",
                 id="eps-beyond-float"),
    pytest.param(ROPE + "theta = 0.0\n", 2, "attribute 'theta' must be a finite number > 0 (the RoPE base)",
                 id="theta-zero"),
    pytest.param(ROPE + "theta = -10000.0\n", 2, "attribute 'theta' must be a finite number > 0", id="theta-negative"),
    pytest.param(DECODE + "scale = nan\n", 2, "attribute 'scale' must be a finite number, got nan", id="scale-nan"),
    # dtypes, suites, note
    pytest.param(GOOD + 'dtypes = ["float8"]\n', 2,
                 "unknown dtype 'float8' (did you mean 'float32'?); rmsnorm_gemm takes float32, float16, bfloat16",
                 id="unknown-dtype"),
    pytest.param(GOOD + 'dtypes = ["bfloat61"]\n', 2, "unknown dtype 'bfloat61' (did you mean 'bfloat16'?)",
                 id="dtype-typo"),
    pytest.param(GOOD + 'dtypes = ["float64"]\n', 2,
                 "dtype 'float64' is not one rmsnorm_gemm runs in; it takes float32, float16, bfloat16",
                 id="dtype-float64"),
    pytest.param(GOOD + 'dtypes = "float32"\n', 2, "dtypes must be a non-empty list", id="dtypes-a-string"),
    pytest.param(GOOD + "dtypes = []\n", 2, "dtypes must be a non-empty list", id="dtypes-empty"),
    pytest.param(GOOD + 'dtypes = [["float32"]]\n', 2, "unknown dtype ['float32']", id="dtypes-nested"),
    pytest.param(GOOD + "dtypes = [{a = 1}]\n", 2, "unknown dtype {'a': 1}", id="dtypes-of-tables"),
    pytest.param(GOOD + "dtypes = [32]\n", 2, "unknown dtype 32", id="dtypes-of-ints"),
    pytest.param(GOOD + 'dtypes = ["float32", "float32"]\n', 2, "dtypes lists 'float32' twice", id="dtype-twice"),
    pytest.param(GOOD + 'suites = ["nightly"]\n', 2, "suites must be a list drawn from smoke, quick, full",
                 id="unknown-suite"),
    pytest.param(GOOD + 'suites = "quick"\n', 2, "suites must be a list drawn from", id="suites-a-string"),
    pytest.param(GOOD + "suites = [[1]]\n", 2, "suites must be a list drawn from", id="suites-nested"),
    pytest.param(GOOD + "note = {a = 1}\n", 2, "note must be a string", id="note-a-table"),
    # unknown keys
    pytest.param(GOOD + 'dtpyes = ["float32"]\n', 2,
                 "unknown parameter 'dtpyes' (did you mean 'dtypes'?); rmsnorm_gemm takes H, M, N, eps",
                 id="typo-dtypes"),
    pytest.param(GOOD + 'suite = ["quick"]\n', 2, "unknown parameter 'suite' (did you mean 'suites'?)",
                 id="typo-suites"),
    pytest.param(sub(ROPE, "n_heads = 4", "n_head = 4"), 2, "unknown parameter 'n_head' (did you mean 'n_heads'?)",
                 id="typo-dimension"),
    pytest.param(GOOD + "K = 3\n", 2, "unknown parameter 'K'; rmsnorm_gemm takes H, M, N, eps", id="foreign-dimension"),
    pytest.param(GOOD + "[[case.x]]\na = 1\n", 2, "unknown parameter 'x'", id="sub-table"),
    # shapes the fusion's spec rejects
    pytest.param(sub(ROPE, "head_dim = 8", "head_dim = 7"), 2, "head_dim must be even for rotary embedding, got 7",
                 id="rope-odd-head-dim"),
    pytest.param(sub(ROPE, "n_kv_heads = 2", "n_kv_heads = 3"), 2, "n_kv_heads (3) must divide n_heads (4)",
                 id="rope-heads-do-not-divide"),
    pytest.param(sub(ROPE, "n_kv_heads = 2", "n_kv_heads = 8"), 2, "n_kv_heads (8) must divide n_heads (4)",
                 id="rope-more-kv-heads-than-heads"),
    pytest.param(sub(DECODE, "n_kv_heads = 2", "n_kv_heads = 3"), 2, "n_kv_heads (3) must divide n_heads (4)",
                 id="decode-heads-do-not-divide"),
    pytest.param(sub(DECODE, "head_dim = 8", "head_dim = 512"), 2, "head_dim 512 is above 256",
                 id="decode-head-dim-too-large"),
    pytest.param(sub(PREFILL, "n_kv_heads = 2", "n_kv_heads = 3"), 2, "n_kv_heads (3) must divide n_heads (4)",
                 id="prefill-heads-do-not-divide"),
    pytest.param(sub(SCORES, "head_dim = 8", "head_dim = 300"), 2, "head_dim 300 is above 256",
                 id="scores-head-dim-too-large"),
    pytest.param(sub(DECODE, "T = 16", "T = 0"), 2, "dimension 'T' must be a positive integer, got 0",
                 id="decode-empty-cache"),
    # which case: the line of its own [[case]] header
    pytest.param(GOOD + GOOD.split("\n", 1)[1], 8, "case 'a' for rmsnorm_gemm appears twice in this file "
                 "(first at line 2)", id="duplicate-name"),
    pytest.param(GOOD + SECOND, 9, "case 'b' (rmsnorm_gemm): dimension 'M' must be a positive integer",
                 id="second-case-bad"),
    pytest.param(sub(GOOD, "[[case]]", '[["case"]]') + SECOND, 9, "case 'b'", id="quoted-header"),
    pytest.param('model = "t"\ncase = [{fusion = "rmsnorm_gemm", name = "a", M = 1, H = 2, N = -1}]\n', 2,
                 "dimension 'N' must be a positive integer, got -1", id="inline-case-array"),
    # bytes that are not UTF-8
    pytest.param((GOOD + "# caf\xe9\n").encode("latin-1"), "8:6", "not UTF-8 text (byte 0xe9)", id="latin-1"),
    pytest.param(GOOD.encode("utf-16"), "1:1", "not UTF-8 text (byte 0xff)", id="utf-16"),
]


@pytest.mark.parametrize("content, line, words", BAD_CASE_FILES)
def test_bad_case_file_one_message_exit_2(tmp_path, capsys, content, line, words):
    f = tmp_path / "bad.toml"
    (f.write_bytes if isinstance(content, bytes) else f.write_text)(content)
    code, out, err = run_cli(["check", "--cases", f], capsys)
    assert code == 2, out + err
    msg = one_error(err)
    assert msg.startswith(f"fusebench check: error: {f}:{line}:"), msg
    assert words in msg, msg


def test_bad_shipped_case_file_is_reported_the_same_way(tmp_path, capsys, monkeypatch):
    import harness.cases

    f = tmp_path / "llama.toml"
    f.write_text(sub(GOOD, "M = 2", "M = -2"))
    monkeypatch.setattr(harness.cases, "shipped_case_files", lambda: [*shipped_case_files(), f])
    code, _, err = run_cli(["check"], capsys)
    assert code == 2 and one_error(err).startswith(f"fusebench check: error: {f}:2: case 'a' (rmsnorm_gemm)")


def test_case_id_in_two_files(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "m.toml", tmp_path / "y" / "m.toml"
    a.write_text(GOOD)
    b.write_text(GOOD)
    code, _, err = run_cli(["check", "--cases", a, b], capsys)
    assert code == 2
    assert one_error(err).startswith(f"fusebench check: error: {b}:2: case m.a for rmsnorm_gemm also defined at {a}:2")


def test_good_files_load_bom_crlf_and_the_same_file_twice(registry, tmp_path):
    f = tmp_path / "ok.toml"
    f.write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    (case,) = load_cases(registry, [f, f])
    assert case.id == "ok.a" and case.params == {"M": 2, "H": 8, "N": 4}


# --- bad arguments -------------------------------------------------------------------

BAD_ARGUMENTS = [
    (["check", "--fusion", "nosuch"], "unknown fusion 'nosuch'; known: add_rmsnorm"),
    (["check", "--backend", "nosuch"], "unknown backend 'nosuch'; known: reference, cpu"),
    (["check", "--dtype", "float8"], "unknown dtype 'float8'; known: float32, float16, bfloat16"),
    (["check", "--dtype", "float64"], "unknown dtype 'float64'"),
    (["check", "--variant", "nosuch"], "no implementation has variant nosuch"),
    (["check", "--suite", "nightly"], "argument --suite: invalid choice: 'nightly'"),
    (["check", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    (["check", "--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
    (["check", "--case", "no_such_case"], "no case matches the filters (--case no_such_case; --suite quick)"),
    (["check", "--case", "zz*"], "no case matches the filters (--case zz*"),
    (["check", "--fusion", "rmsnorm_gemm", "--case", "*prefill2048"], "--fusion rmsnorm_gemm"),
    (["check", "--case", ""], "argument --case: expected a name or comma-separated names, got ''"),
    (["check", "--dtype", ""], "argument --dtype: expected a name or comma-separated names, got ''"),
    (["check", "--fusion", " , "], "argument --fusion: expected a name or comma-separated names, got ' , '"),
    (["check", "--cases", "missing.toml"], "case file 'missing.toml' does not exist"),
    (["check", "--cases", "{dir}"], "is a directory; give the .toml files in it"),
    (["check", "--cases"], "argument --cases: expected at least one argument"),
    (["check", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["bench", "--budget", "-1"], "argument --budget: expected a positive number of seconds, got '-1'"),
    (["bench", "--budget", "0"], "argument --budget: expected a positive number"),
    (["bench", "--budget", "nan"], "argument --budget: expected a positive number"),
    (["bench", "--budget", "inf"], "argument --budget: expected a positive number"),
    (["bench", "--budget", "soon"], "argument --budget: expected a number of seconds, got 'soon'"),
    (["bench", "--min-samples", "0"], "argument --min-samples: expected at least 1, got '0'"),
    (["bench", "--min-samples", "-3"], "argument --min-samples: expected at least 1"),
    (["bench", "--min-samples", "2.5"], "argument --min-samples: expected a whole number, got '2.5'"),
    (["run", "--min-samples", "many"], "argument --min-samples: expected a whole number"),
    (["bench", "--out", "{dir}", "--suite", "smoke", "--fusion", "add_rmsnorm", "--backend", "cpu",
      "--dtype", "float32"], "Is a directory"),
    (["report", "missing.jsonl"], "results file 'missing.jsonl' does not exist"),
    (["report", "-o", "{dir}"], "is a directory; give the HTML file to write"),
    (["compare", "missing1.jsonl", "missing2.jsonl"], "missing1.jsonl: no such file or folder"),
    (["compare", "a", "b", "--same-within", "-0.1"], "argument --same-within: expected a fraction from 0"),
    (["compare", "a", "b", "--same-within", "1.5"], "argument --same-within: expected a fraction from 0"),
    (["compare", "a", "b", "--same-within", "nan"], "argument --same-within: expected a fraction from 0"),
    (["compare", "a", "b", "--same-within", "5%"], "argument --same-within: expected a fraction such as 0.05"),
    (["compare", "a"], "the following arguments are required: NEW"),
    (["list", "--fusion", "nosuch"], "unknown fusion 'nosuch'"),
    (["list", "--backend", "nosuch"], "unknown backend 'nosuch'"),
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, words", BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_argument_one_message_exit_2(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    argv = [a.replace("{dir}", str(tmp_path / "adir")) for a in argv]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, out + err
    msg = one_error(err)
    assert words in msg, msg


def test_bad_inputs_in_a_real_process(tmp_path):
    """The same through `python -m harness.cli`: status 2, one line, no traceback."""
    latin = tmp_path / "latin.toml"
    latin.write_bytes((GOOD + "# caf\xe9\n").encode("latin-1"))
    nested = tmp_path / "nested.toml"
    nested.write_text(GOOD + 'dtypes = [["float32"]]\n')
    deep = tmp_path / "deep.toml"
    deep.write_text(GOOD + "x = " + "[" * 3000 + "]" * 3000 + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FUSEBENCH_PLUGINS="")
    for argv, words in [(["check", "--cases", latin], f"{latin}:8:6: not UTF-8"),
                        (["check", "--cases", nested], f"{nested}:2: case 'a' (rmsnorm_gemm): unknown dtype"),
                        (["check", "--cases", deep], f"{deep}:8: TOML nested too deeply"),
                        (["check", "--seed", "abc"], "argument --seed: invalid int value"),
                        (["bench", "--budget", "nan"], "argument --budget")]:
        r = subprocess.run([sys.executable, "-m", "harness.cli", *map(str, argv)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert words in one_error(r.stderr)


# --- fuzzing the case loader ---------------------------------------------------------

def loads_or_says_where(registry, path: Path, data: bytes) -> list | None:
    """load_file either gives valid cases or a one-line CaseError naming path:line."""
    path.write_bytes(data)
    try:
        cases = load_file(path, registry)
    except CaseError as e:
        msg = str(e)
        m = re.match(rf"{re.escape(str(path))}:(\d+)(:\d+)?: \S", msg)
        assert m and "\n" not in msg, msg
        assert 1 <= int(m.group(1)) <= data.count(b"\n") + 1, msg
        return None
    for c in cases:  # whatever loads is a case the runner can take
        spec = registry.fusions[c.fusion]
        assert spec.check_params(c.params) == []
        assert all(1 <= c.params[d] <= MAX_DIM for d in spec.dims)
        assert all(math.isfinite(float(c.params[a])) for a in spec.attrs if a in c.params)
        assert c.dtypes and set(c.dtypes) <= set(spec.dtypes) and len(set(c.dtypes)) == len(c.dtypes)
        assert "full" in c.suites and isinstance(c.model, str) and isinstance(c.note, str)
    return cases


SHIPPED = {p.name: p.read_text(encoding="utf-8") for p in shipped_case_files()}
TOML_VALUES = ["-1", "0", "1", "7", "2147483647", "2147483648", "1e400", "nan", "-inf", "true", '"x"', '""', "[1, 2]",
               "{a = 1}", "1.5", "2.0", '["float8"]', '["float32", "float32"]', '["float16"]', "[]", "9" * 40,
               "1979-05-27", '"rmsnorm_gemm"', '"decode_attention"', '"nosuch"', '["quick"]', '"a b"', "0x10",
               "[", '"unterminated', "1_000", "+5"]
TOML_KEYS = ["M", "H", "N", "I", "B", "S", "T", "fusion", "name", "dtypes", "suites", "note", "dtpyes", "n_heads",
             "n_kv_heads", "head_dim", "eps", "theta", "scale", "model", "source", "case", "[[case]]", "[case]", "x"]


@st.composite
def mutated_case_file(draw) -> bytes:
    """A shipped case file with a few lines deleted, duplicated, swapped or rewritten, or
    characters inserted, deleted or replaced, or the text cut short."""
    lines = SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))].split("\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "key", "insert", "remove", "replace",
                                   "truncate"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "value":
            key = lines[i].split("=", 1)[0] if "=" in lines[i] else draw(st.sampled_from(TOML_KEYS))
            lines[i] = f"{key.strip()} = {draw(st.sampled_from(TOML_VALUES))}"
        elif op == "key":
            value = lines[i].split("=", 1)[1] if "=" in lines[i] else " 1"
            lines[i] = f"{draw(st.sampled_from(TOML_KEYS))} ={value}"
        elif op in ("insert", "remove", "replace"):
            k = draw(st.integers(0, len(lines[i])))
            c = draw(st.characters(codec="utf-8"))
            if op == "insert":
                lines[i] = lines[i][:k] + c + lines[i][k:]
            elif k < len(lines[i]):
                lines[i] = lines[i][:k] + ("" if op == "remove" else c) + lines[i][k + 1:]
        elif op == "truncate":
            lines = lines[: i + 1]
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


TOML_FRAGMENTS = ["[[case]]", '[["case"]]', "[case]", 'fusion = "rmsnorm_gemm"', 'fusion = "decode_attention"',
                  'name = "a"', 'name = "b"', "M = 1", "H = 8", "N = 4", "B = 2", "T = 8", "n_heads = 4",
                  "n_kv_heads = 2", "head_dim = 8", "eps = 1e-5", 'dtypes = ["float32"]', 'suites = ["smoke"]',
                  'model = "m"', "", "# comment", "case = []", "M = -1", "x = [[1], [2]]", '"""', "a.b = 1"]


@settings(max_examples=_examples(150), **FUZZ)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                      st.lists(st.sampled_from(TOML_FRAGMENTS), max_size=14).map(lambda ls: "\n".join(ls).encode())))
def test_fuzz_random_case_files(registry, tmp_path, data):
    loads_or_says_where(registry, tmp_path / "fuzz.toml", data)


@settings(max_examples=_examples(250), **FUZZ)
@given(data=mutated_case_file())
def test_fuzz_mutated_shipped_case_files(registry, tmp_path, data):
    loads_or_says_where(registry, tmp_path / "mutated.toml", data)


def test_shipped_case_files_load_unchanged(registry, tmp_path):
    for name, text in SHIPPED.items():
        assert loads_or_says_where(registry, tmp_path / name, text.encode())


# --- fuzzing the results reader ------------------------------------------------------

FINGERPRINT = {"python": "3.11.7", "machine": "x86_64", "cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.5,
               "backends": {"cpu": {"numba": "0.68.1", "threads": 2}, "torch": {"torch": "2.13.0+cpu"}}}
PEAK = {"copy_gbps": 28.6, "matmul_gflops": 150.8, "matmul_gflops_bfloat16": 410.5, "matmul_gflops_float16": 150.8}


def make_record(case="llama3_8b.decode", backend="cpu", variant="fused", kind="fused", dtype="float32",
                machine="amd-epyc-2c", median=1e-3, timed=True, **extra) -> dict:
    """A record as `fusebench bench` writes it (harness.runner + RunInfo.stamp)."""
    samples = [median * (1 + 0.01 * ((i * 7) % 5 - 2)) for i in range(12)]
    r = {"schema": 1, "run_id": "0b25a687807a", "machine": machine, "commit": "2779e1e2f454905cd29191e981ad587b",
         "dirty": False, "timestamp": "2026-11-21T13:51:53+00:00", "fusion": "rmsnorm_gemm", "backend": backend,
         "variant": variant, "kind": kind, "impl": f"rmsnorm_gemm/{backend}/{variant}", "case": case,
         "model": "Llama-3-8B", "params": {"M": 1, "H": 4096, "N": 6144, "eps": 1e-5}, "dtype": dtype,
         "seed": 3615101658, "bytes": 100720640, "flops": 50348032, "nmse_bound": 1e-9,
         "case_file": "cases/llama3_8b.toml:7", "status": "ok", "verdict": "pass", "reason": "", "max_abs": 1e-6,
         "max_rel": 1e-5, "nmse": 1e-12, "max_ulp": 2.0, "nonfinite_mismatch": 0, "shape_ok": True,
         "chain_nmse": 1.7e-13, "outputs": {"y": {"max_abs": 1e-6, "nmse": 1e-12, "shape_ok": True}},
         "duration_s": 0.8, "fingerprint": FINGERPRINT, "versions": {"numpy": "2.4.6"}}
    if timed:
        r.update({"time": {"median": median, "p20": median * 0.99, "p80": median * 1.01, "min": median * 0.98,
                           "n": len(samples), "noise": 0.004, "mode": "cold", "samples": samples},
                  "median_s": median, "p20_s": median * 0.99, "p80_s": median * 1.01, "min_s": median * 0.98,
                  "n": len(samples), "noise": 0.004, "gbps": 100720640 / median / 1e9,
                  "gflops": 50348032 / median / 1e9, "peak": PEAK, "frac_bw": 0.4, "frac_flops": 0.05,
                  "frac_peak": 0.4, "invalid": False})
    r.update(extra)
    return r


def unavailable(backend="cuda", variant="fused") -> dict:
    r = make_record(backend=backend, variant=variant, timed=False, case="-", dtype="-", status="unavailable",
                    reason="no CUDA device")
    for k in ("verdict", "max_abs", "max_rel", "nmse", "max_ulp", "nonfinite_mismatch", "shape_ok", "chain_nmse",
              "outputs", "params", "seed", "bytes", "flops", "model", "case_file", "nmse_bound", "duration_s"):
        r.pop(k)
    return r


BASE_RECORDS = [make_record(), make_record(variant="unfused", kind="unfused", median=2e-3),
                make_record(backend="reference", variant="float64", kind="reference", median=7e-3),
                make_record(backend="torch", variant="eager", kind="peer", median=3e-3),
                make_record(case="llama3_8b.prefill", dtype="float16", median=5e-2),
                make_record(case="llama3_8b.prefill", dtype="float16", variant="unfused", kind="unfused", median=9e-2),
                make_record(machine="other", median=1.1e-3), unavailable()]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)

# values of the wrong kind for each kind of field the reader checks (harness.results.FIELD_KINDS)
WRONG = {"text": [1, None, [], {}, True, 1.5, "\ud800"], "text?": [1, [], {}, False, "\udfff"],
         "bool": [0, 1, "true", None, []], "count": [-1, 1.5, "3", True, None, 2**63, [1]],
         "int": [1.5, "1", None, True, 2**64, -2**64], "number": ["1", None, [], True, {}, 10**400],
         "number?": ["1", [], True, {}, 10**400], "time": [-1.0, math.nan, math.inf, -math.inf, "0.1", None, True, [],
                                                         10**400, -1e-9],
         "table": [None, [], "x", 1, True]}
NESTED_WRONG = [("time", "samples", ["a"]), ("time", "samples", 3), ("time", "samples", [None]),
                ("time", "samples", [1e-3, math.inf]), ("time", "samples", [math.nan]), ("time", "samples", [0.0]),
                ("time", "samples", [-1e-3]), ("time", "samples", [1e308]), ("time", "samples", [10**400]),
                ("time", "mode", 3), ("time", "median", math.nan), ("time", "n", -1), ("time", "noise", None),
                ("peak", "copy_gbps", "x"), ("peak", "matmul_gflops", 1e300), ("peak", "matmul_gflops", -1.0),
                ("peak", "matmul_gflops", math.inf), ("fingerprint", "backends", []),
                ("fingerprint", "backends", {"cpu": 1}), ("fingerprint", "backends", None)]


def _dump(rec, ascii_only=True) -> bytes:
    return json.dumps(rec, allow_nan=True, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def good_line(draw) -> tuple[bytes, dict]:
    """A record the reader must keep: a real one, with type-correct variations (NaN and Inf
    metrics of a failing kernel, null verdicts and ratios, extreme but finite timings, any
    text, extra fields, anything inside params/outputs/versions)."""
    rec = copy.deepcopy(draw(st.sampled_from(BASE_RECORDS)))
    rec["case"] = draw(st.sampled_from([rec["case"], "qwen.decode", "ü-case", "c" * 80]))
    if "nmse" in rec:
        rec["nmse"] = draw(st.sampled_from([1e-12, 0.0, math.nan, math.inf, None, 3]))
    if "median_s" in rec:
        rec["median_s"] = draw(st.sampled_from([1e-3, 0.0, 5e-324, 1e300, 7]))
        rec["frac_peak"] = draw(st.sampled_from([0.4, None, math.nan, -1.0]))
    if "verdict" in rec:
        rec["verdict"] = draw(st.sampled_from(["pass", "fail", None, "weird"]))
    rec["reason"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        rec[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in FIELD_KINDS and k not in REQUIRED))] = \
            draw(json_values)
    for k in ("params", "outputs", "versions"):
        if k in rec and draw(st.booleans()):
            rec[k] = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    return _dump(rec, ascii_only=draw(st.booleans())), rec


@st.composite
def bad_line(draw) -> bytes:
    """A line the reader must report and skip."""
    rec = copy.deepcopy(draw(st.sampled_from(BASE_RECORDS)))
    how = draw(st.sampled_from(["truncated", "wrong type", "nested wrong", "missing key", "not an object",
                                "huge number", "deep", "not utf-8", "garbage"]))
    if how == "truncated":
        text = _dump(rec)
        return text[: draw(st.integers(1, len(text) - 1))]
    if how == "wrong type":
        k = draw(st.sampled_from(sorted(set(FIELD_KINDS) & rec.keys()) + list(REQUIRED)))
        rec[k] = draw(st.sampled_from(WRONG[FIELD_KINDS.get(k, "text")]))
        return _dump(rec)
    if how == "nested wrong":
        top, k, v = draw(st.sampled_from([n for n in NESTED_WRONG if n[0] in rec]))
        rec[top] = {**rec[top], k: v}
        return _dump(rec)
    if how == "missing key":
        del rec[draw(st.sampled_from(REQUIRED))]
        return _dump(rec)
    if how == "not an object":
        return _dump(draw(json_values.filter(lambda v: not isinstance(v, dict))))
    if how == "huge number":
        return _dump(rec)[:-1] + b', "n": ' + b"9" * draw(st.integers(4301, 6000)) + b"}"
    if how == "deep":
        return b"[" * draw(st.integers(10_000, 100_000))
    if how == "not utf-8":
        text = _dump(rec)
        k = draw(st.integers(0, len(text)))
        return text[:k] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) + text[k:]
    return b"#" + draw(st.binary(max_size=40)).replace(b"\n", b"")


@settings(max_examples=_examples(120), **FUZZ)
@given(lines=st.lists(st.one_of(good_line(), bad_line(), st.sampled_from([b"", b"   ", b"\r"])), max_size=12),
       crlf=st.booleans(), last_newline=st.booleans())
def test_fuzz_reader_keeps_good_records_and_reports_bad_lines(tmp_path, lines, crlf, last_newline):
    path = tmp_path / "results.jsonl"
    raw = [x[0] if isinstance(x, tuple) else x for x in lines]
    path.write_bytes((b"\r\n" if crlf else b"\n").join(raw) + (b"\n" if last_newline and raw else b""))
    loaded = read_records([path])
    good = [x[1] for x in lines if isinstance(x, tuple)]
    bad_lines = [i for i, x in enumerate(lines, 1) if isinstance(x, bytes) and x.strip()]
    assert [_dump({k: v for k, v in r.items() if k != "source_file"}) for r in loaded.records] == \
        [_dump(r) for r in good]
    where = [re.match(rf"{re.escape(str(path))}:(\d+): \S", p) for p in loaded.problems]
    assert all(where), loaded.problems
    assert [int(m.group(1)) for m in where] == bad_lines, loaded.problems


@settings(max_examples=_examples(120), **FUZZ)
@given(lines=st.lists(st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    json_values.map(_dump),
    st.tuples(st.sampled_from(BASE_RECORDS), st.sampled_from(sorted({k for r in BASE_RECORDS for k in r})),
              json_values).map(lambda t: _dump({**t[0], t[1]: t[2]}))), max_size=10))
def test_fuzz_reader_never_raises(tmp_path, lines):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n".join(lines))
    loaded = read_records([path, tmp_path / "missing.jsonl"])
    assert len(loaded.records) + len(loaded.problems) == sum(bool(x.strip()) for x in lines) + 1
    assert all(re.match(rf"{re.escape(str(path))}:\d+: \S", p) for p in loaded.problems[:-1])
    assert loaded.problems[-1].startswith(f"{tmp_path / 'missing.jsonl'}: cannot read")
    assert all(record_problem(r) is None for r in loaded.records)


# --- what the reader keeps, the report and compare can take ---------------------------

@st.composite
def accepted_variation(draw) -> list[dict]:
    """The base records, each field possibly swapped for another value of the same kind,
    extremes included; all of them pass the reader."""
    values = {"text": st.text(max_size=10), "text?": st.none() | st.text(max_size=10), "bool": st.booleans(),
              "count": st.integers(0, 2**63 - 1), "int": st.integers(-2**63, 2**63 - 1),
              "number": st.floats() | st.integers(-2**62, 2**62),
              "number?": st.none() | st.floats() | st.integers(-2**62, 2**62),
              "time": st.floats(0, 1e300) | st.integers(0, 2**62),
              "table": st.dictionaries(st.text(max_size=6), json_values, max_size=3)}
    out = []
    for rec in copy.deepcopy(BASE_RECORDS):
        for k in draw(st.lists(st.sampled_from(sorted(set(FIELD_KINDS) & rec.keys())), max_size=4, unique=True)):
            if k in ("time", "peak", "fingerprint") or (k == "status" and rec["status"] == "unavailable"):
                continue  # their contents are checked below / an unavailable record stays one
            rec[k] = draw(values[FIELD_KINDS[k]])
        if "time" in rec and draw(st.booleans()):
            rec["time"]["samples"] = draw(st.lists(st.floats(*SAMPLE_RANGE) | st.integers(1, 5), max_size=30))
            rec["time"]["mode"] = draw(st.sampled_from(["cold", "hot", "", "x"]))
        if "peak" in rec and draw(st.booleans()):
            rec["peak"] = draw(st.dictionaries(st.sampled_from(["copy_gbps", "matmul_gflops", "matmul_gflops_float16"]),
                                               st.none() | st.floats(0, 1e14), max_size=3))
        out.append(rec)
    return out


@settings(max_examples=_examples(40), **FUZZ)
@given(base=accepted_variation(), new=accepted_variation())
def test_report_and_compare_take_whatever_the_reader_keeps(tmp_path, monkeypatch, base, new):
    from rich.console import Console

    from harness import compare, report, textreport

    paths = []
    for name, recs in (("base", base), ("new", new)):
        paths.append(tmp_path / f"{name}.jsonl")
        paths[-1].write_bytes(b"\n".join(_dump(r) for r in recs) + b"\n")
        loaded = read_records([paths[-1]])
        assert not loaded.problems and len(loaded.records) == len(recs)
    monkeypatch.setattr(report, "_plots", lambda rows, fusions: {"speedup": {}, "error": {}, "roofline": []})
    report.write_report(paths, tmp_path / "report.html", include_committed=False)
    textreport.print_tables(paths, Console(file=io.StringIO(), width=200))
    try:
        c = compare.compare(compare.load(str(paths[0])), compare.load(str(paths[1])))
    except compare.CompareError:
        return
    compare.print_table(c, Console(file=io.StringIO(), width=200), "t")
    compare.summary_line(c)


def test_report_plots_take_extreme_records(tmp_path):
    recs = [*BASE_RECORDS, make_record(case="big", median=1e300, bytes=2**63 - 1, flops=1, nmse=math.inf),
            make_record(case="tiny", median=5e-324, gbps=1e14, gflops=1e13,
                        peak={"copy_gbps": 1e14, "matmul_gflops": None}),
            make_record(case="nan", nmse=math.nan, max_ulp=math.inf, frac_peak=None, verdict=None)]
    for rec, end in zip(recs[-3:-1], SAMPLE_RANGE[::-1]):  # the samples at the ends of what a record may hold
        rec["time"]["samples"] = [end] * len(rec["time"]["samples"])
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(map(_dump, recs)) + b'\n{"fusion": "rmsnorm_gemm", "backe\n')
    from harness.report import write_report

    out = write_report([path], tmp_path / "report.html", include_committed=False)
    page = html.unescape(out.read_text())
    assert f"{path}:{len(recs) + 1}: not a JSON record" in page and "big" in page and "tiny" in page


def test_report_and_compare_cli_on_a_corrupt_file(tmp_path, capsys):
    good = [make_record(), make_record(variant="unfused", kind="unfused", median=2e-3)]
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(map(_dump, good)) + b"\n" + _dump({**good[0], "median_s": "fast"}) + b"\n"
                     + _dump(good[0])[:50])
    code, out, err = run_cli(["report", path, "-o", tmp_path / "r.html", "--no-committed"], capsys)
    assert code == 0 and "Traceback" not in err
    # said on the terminal too, not only inside the page
    assert f"warning: {path}:3: field 'median_s'" in err and f"warning: {path}:4: not a JSON record" in err
    page = html.unescape((tmp_path / "r.html").read_text())
    assert f"{path}:3: field 'median_s' must be a finite number >= 0, got 'fast'" in page
    assert f"{path}:4: not a JSON record" in page
    code, out, err = run_cli(["report", path, "--text", "--no-committed"], capsys)
    assert code == 0 and "Traceback" not in err and "report: " not in out  # tables only, no HTML
    assert f"{path}:3: field 'median_s'" in err and f"{path}:4: not a JSON record" in err
    code, out, err = run_cli(["report", path, "--text", "-o", tmp_path / "r2.html", "--no-committed"], capsys)
    assert code == 0 and (tmp_path / "r2.html").is_file()
    assert err.count(f"{path}:4: not a JSON record") == 1  # once, though both reports read it
    fused = next(line for line in out.splitlines() if "cpu/fused" in line)
    assert "1000.0 µs" not in fused and "1.000 ms" in fused and "2.00" in fused  # 2 ms chain / 1 ms fused
    code, out, err = run_cli(["compare", path, path], capsys)
    assert code == 0 and "Traceback" not in err
    assert f"{path}:3: field 'median_s'" in err and f"{path}:4: not a JSON record" in err


@pytest.mark.parametrize("samples, shown", [("[1e400, 0.001]", "Infinity"), ("[1e308]", "1e+308"),
                                            ("[0.001, -0.001]", "-0.001"), ("[0]", "0")])
def test_compare_rejects_samples_that_are_no_measurement(tmp_path, capsys, samples, shown):
    """time.samples = [1e400] (inf once read) killed compare with an OverflowError, and 1e308
    was UNSURE: samples must be finite seconds in harness.results.SAMPLE_RANGE, else the
    record is skipped with a warning naming file:line, as any unreadable line is."""
    good = [make_record(), make_record(case="llama3_8b.prefill")]
    base = tmp_path / "base.jsonl"
    base.write_bytes(b"\n".join(map(_dump, good)) + b"\n")
    bad = _dump(good[1]).replace(json.dumps(good[1]["time"]["samples"]).encode(), samples.encode())
    new = tmp_path / "new.jsonl"
    new.write_bytes(_dump(good[0]) + b"\n" + bad + b"\n")
    code, out, err = run_cli(["compare", base, new], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert f"warning: {new}:2: field 'time.samples' must hold seconds from 1e-12 to 1e+06, got {shown}" in err
    assert "1 matched" in out and "1 only in BASE" in out


# Valid records the reader keeps that once crashed the report (found by the tests above).
def test_report_with_an_untimed_error_record(tmp_path):
    from harness.report import write_report

    err = make_record(case="zzz", timed=False, status="error", verdict="fail", reason="RuntimeError: boom")
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(map(_dump, [*BASE_RECORDS, err])))
    page = write_report([path], tmp_path / "report.html", include_committed=False).read_text()
    assert "zzz" in page and "Undefined" not in page


def test_report_when_every_nmse_of_a_fusion_is_nan(tmp_path):
    from harness.report import write_report

    recs = [{**r, "nmse": math.nan} for r in BASE_RECORDS]
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(map(_dump, recs)))
    page = write_report([path], tmp_path / "report.html", include_committed=False).read_text()
    assert "nan" in page.lower()
