"""The case loader: shipped files load; bad files are refused with file:line and why."""

from __future__ import annotations

import pytest

from harness.cases import CaseError, load_cases, load_file, select

GOOD = """model = "t"
[[case]]
fusion = "rmsnorm_gemm"
name = "a"
M = 2
H = 8
N = 4
"""


def test_shipped_cases_load(registry):
    cases = load_cases(registry)
    ids = {c.id for c in cases}
    assert {"llama3_8b.decode", "llama3_8b.prefill", "qwen2_5_0_5b.decode", "qwen2_5_0_5b.prefill"} <= ids
    llama = next(c for c in cases if c.id == "llama3_8b.decode")
    assert llama.params["H"] == 4096 and llama.params["N"] == 6144 and llama.params["M"] == 1
    assert select(cases, suite="smoke") and all("smoke" in c.suites for c in select(cases, suite="smoke"))



def test_quick_suite_is_the_smoke_cases_and_one_real_size_per_fusion(registry):
    """The main job's suite (`fusebench run`, issue 21): every fusion at its smoke sizes and at
    one size of a real model, so that every fusion meets every backend in minutes."""
    quick = select(load_cases(registry), suite="quick")
    for fusion in registry.fusions:
        smoke = [c for c in quick if c.fusion == fusion and c.model == "smoke"]
        real = [c.id for c in quick if c.fusion == fusion and c.model != "smoke"]
        assert smoke and len(real) == 1, (fusion, real)
        assert all("smoke" in c.suites for c in smoke)

def test_llama3_1_405b_cases_from_its_config_in_the_full_suite_only(registry):
    """hidden 16384, intermediate 53248, 128 q and 8 kv heads of 128, rope_theta 500000, eps
    1e-5; decode (M = 1) of every block fusion and decode attention against 131072 keys."""
    cases = {c.fusion: c for c in load_cases(registry) if c.model == "Llama-3.1-405B"}
    assert set(cases) == {"rmsnorm_gemm", "add_rmsnorm", "rmsnorm_qkv_rope", "gemm_swiglu", "swiglu_ffn",
                          "decode_attention"}
    assert all(c.suites == ("full",) and c.id.startswith("llama3_1_405b.") for c in cases.values())
    heads = {"n_heads": 128, "n_kv_heads": 8, "head_dim": 128}
    assert cases["rmsnorm_gemm"].params == {"M": 1, "H": 16384, "N": 128 * 128 + 2 * 8 * 128, "eps": 1e-5}
    assert cases["add_rmsnorm"].params == {"M": 1, "H": 16384, "eps": 1e-5}
    assert cases["rmsnorm_qkv_rope"].params == {"M": 1, "H": 16384, **heads, "eps": 1e-5, "theta": 500000.0}
    assert cases["gemm_swiglu"].params == cases["swiglu_ffn"].params == {"M": 1, "H": 16384, "I": 53248}
    assert cases["decode_attention"].params == {"B": 1, "T": 131072, **heads}


def test_gemma2_2b_cases_from_its_config(registry):
    """hidden 2304, 8 q and 4 kv heads of 256 (head_dim HEAD_DIM_LIMIT), eps 1e-6, theta 10000:
    the block fusions that fit its layer at decode and the attention fusions, decode against
    4096 keys at batch 1 among them (issue 19), all in the full suite only (the quick suite
    holds one real size per fusion); no SwiGLU (Gemma-2's MLP is GeGLU)."""
    from harness.attention import HEAD_DIM_LIMIT

    cases = {(c.fusion, c.id): c for c in load_cases(registry) if c.model == "Gemma-2-2B"}
    heads = {"n_heads": 8, "n_kv_heads": 4, "head_dim": HEAD_DIM_LIMIT}
    assert cases["decode_attention", "gemma2_2b.decode4096"].params == {"B": 1, "T": 4096, **heads}
    assert [key for key, c in cases.items() if "quick" in c.suites] == []
    assert {fusion for fusion, _ in cases} == {"rmsnorm_gemm", "add_rmsnorm", "rmsnorm_qkv_rope",
                                               "decode_attention", "attention_prefill", "attn_score_softmax"}
    assert cases["rmsnorm_gemm", "gemma2_2b.decode"].params == {"M": 1, "H": 2304, "N": 8 * 256 + 2 * 4 * 256,
                                                                "eps": 1e-6}
    assert cases["rmsnorm_qkv_rope", "gemma2_2b.decode"].params == {"M": 1, "H": 2304, **heads, "eps": 1e-6,
                                                                    "theta": 10000.0}
    attention = [c for (fusion, _), c in cases.items() if "n_kv_heads" in c.params]
    assert all(c.params["head_dim"] == HEAD_DIM_LIMIT for c in attention)
    assert {c.params["S"] for c in attention if "S" in c.params} == {512, 2048}
    assert any(c.fusion == "decode_attention" and c.params["B"] > 1 for c in attention)


@pytest.mark.parametrize("text, line, words", [
    ("[[case]\nfusion = 'x'", 1, "TOML syntax error"),
    (GOOD.replace('"rmsnorm_gemm"', '"no_such"'), 2, "unknown fusion 'no_such'"),
    (GOOD.replace("M = 2\n", ""), 2, "missing dimension 'M'"),
    (GOOD.replace("M = 2", "M = -3"), 2, "'M' must be a positive integer"),
    (GOOD.replace("M = 2", "M = 2.5"), 2, "'M' must be a positive integer"),
    (GOOD + 'dtypes = ["float8"]\n', 2, "unknown dtype 'float8'"),
    (GOOD + "K = 3\n", 2, "unknown parameter 'K'"),
    (GOOD + GOOD.split("\n", 1)[1].replace("M = 2", "M = 0"), 8, "'M' must be a positive integer"),
    (GOOD + 'suites = ["nightly"]\n', 2, "suites must be"),
    ("model = 'x'\n", 1, "no [[case]] tables"),
])
def test_bad_case_files_name_file_line_and_problem(registry, tmp_path, text, line, words):
    f, msg = refused(registry, tmp_path, text)
    assert msg.startswith(f"{f}:{line}"), msg
    assert words in msg


def refused(registry, tmp_path, text: str) -> tuple:
    """(the file, load_file's CaseError message) for a case file holding `text`."""
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(CaseError) as e:
        load_file(f, registry)
    return f, str(e.value)


def test_good_file_loads(registry, tmp_path):
    f = tmp_path / "good.toml"
    f.write_text(GOOD)
    (case,) = load_file(f, registry)
    assert case.id == "good.a" and case.dtypes == ("float32", "float16", "bfloat16") and "full" in case.suites


# --- the [model] table: values said once, taken by the cases whose fusions have them ---------

MODEL = """# a comment
[model]
name = "Toy-1B"
source = "toy config.json"
H = 64
I = 96
n_heads = 4
n_kv_heads = 2
head_dim = 16
eps = 1e-6
theta = 500000.0

[[case]]
fusion = "add_rmsnorm"
name = "decode"
M = 1

[[case]]
fusion = "gemm_swiglu"
name = "decode"
M = 1

[[case]]
fusion = "rmsnorm_qkv_rope"
name = "decode"
M = 1

[[case]]
fusion = "decode_attention"
name = "decode"
B = 2
T = 32

[[case]]
fusion = "rmsnorm_gemm"
name = "decode"
M = 1
N = 128           # (n_heads + 2*n_kv_heads) * head_dim
"""


def _load(tmp_path, registry, text, name="toy.toml"):
    f = tmp_path / name
    f.write_text(text)
    return f, {c.fusion: c for c in load_file(f, registry)}


def test_cases_take_the_model_values_their_fusion_has(registry, tmp_path):
    _, cases = _load(tmp_path, registry, MODEL)
    heads = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 16}
    assert cases["add_rmsnorm"].params == {"M": 1, "H": 64, "eps": 1e-6}
    assert cases["gemm_swiglu"].params == {"M": 1, "H": 64, "I": 96}
    assert cases["rmsnorm_qkv_rope"].params == {"M": 1, "H": 64, **heads, "eps": 1e-6, "theta": 500000.0}
    assert cases["decode_attention"].params == {"B": 2, "T": 32, **heads}  # no H, eps or theta: it takes none
    assert cases["rmsnorm_gemm"].params == {"M": 1, "H": 64, "N": 128, "eps": 1e-6}
    assert {c.model for c in cases.values()} == {"Toy-1B"}
    assert list(cases["rmsnorm_qkv_rope"].params) == ["M", "H", "n_heads", "n_kv_heads", "head_dim", "eps", "theta"]


def test_a_case_value_overrides_the_models(registry, tmp_path):
    text = MODEL.replace('name = "decode"\nM = 1\n\n[[case]]\nfusion = "gemm_swiglu"',
                         'name = "decode"\nM = 1\nH = 32\neps = 1e-5\n\n[[case]]\nfusion = "gemm_swiglu"')
    _, cases = _load(tmp_path, registry, text)
    assert cases["add_rmsnorm"].params == {"M": 1, "H": 32, "eps": 1e-5}
    assert cases["gemm_swiglu"].params["H"] == 64 and cases["rmsnorm_gemm"].params["eps"] == 1e-6


def test_without_a_name_the_model_is_the_file_stem(registry, tmp_path):
    _, cases = _load(tmp_path, registry, MODEL.replace('name = "Toy-1B"\n', ""), "toy_2b.toml")
    assert {c.model for c in cases.values()} == {"toy_2b"}


@pytest.mark.parametrize("text, line, words", [
    # a key no case takes: a typo, or a value no fusion in the file has
    (MODEL.replace("theta = 500000.0\n", "theta = 500000.0\nS = 7\n"), 12,
     "[model] S = 7 is used by no case in this file: none of its cases' fusions"),
    (MODEL.replace("eps = 1e-6\n", "esp = 1e-6\n"), 10, "[model] unknown key 'esp' (did you mean 'eps'?)"),
    (MODEL.replace("eps = 1e-6\n", 'suites = ["quick"]\n'), 10, "unknown key 'suites' (it belongs in each [[case]])"),
    # a value every case that takes it sets itself
    (MODEL.replace('name = "decode"\nM = 1\n\n[[case]]\nfusion = "gemm_swiglu"\nname = "decode"\nM = 1\n',
                   'name = "decode"\nM = 1\n\n[[case]]\nfusion = "gemm_swiglu"\nname = "decode"\nM = 1\nI = 8\n'),
     6, "[model] I = 96 is used by no case in this file: every case whose fusion takes it sets its own: "
        "decode (gemm_swiglu, line 18)"),
    # values checked where they stand
    (MODEL.replace("H = 64", "H = -64"), 5, "[model] dimension 'H' must be a positive integer"),
    (MODEL.replace("H = 64", "H = 64.0"), 5, "[model] dimension 'H' must be a positive integer"),
    (MODEL.replace("eps = 1e-6", "eps = -1.0"), 10, "[model] attribute 'eps' must be a finite number >= 0"),
    (MODEL.replace('name = "Toy-1B"', "name = 3"), 3, "[model] name must be a string, got 3"),
    (MODEL.replace("# a comment\n", 'source = "x"\n'), 1, "with a [model] table, source goes inside it"),
    # a value the case takes that its fusion refuses names the [model] line it came from
    (MODEL.replace("n_kv_heads = 2", "n_kv_heads = 3"), 23,
     "n_kv_heads (3) must divide n_heads (4) (n_heads = 4, n_kv_heads = 3 from [model], lines 7, 8)"),
])
def test_bad_model_tables_name_file_line_and_problem(registry, tmp_path, text, line, words):
    f, msg = refused(registry, tmp_path, text)
    assert msg.startswith(f"{f}:{line}: "), msg
    assert words in msg


def test_a_case_key_its_fusion_lacks_is_still_an_error(registry, tmp_path):
    """I is a key [model] may hold, but add_rmsnorm does not take it: written in the case, it
    is refused as before (from [model] it would simply not be passed)."""
    f, msg = refused(registry, tmp_path, MODEL.replace('fusion = "add_rmsnorm"\nname = "decode"\nM = 1\n',
                                                      'fusion = "add_rmsnorm"\nname = "decode"\nM = 1\nI = 96\n'))
    assert msg.startswith(f"{f}:13: case 'decode' (add_rmsnorm): unknown parameter 'I'"), msg
    assert "[model]" not in msg


def test_shipped_case_files_say_their_model_once(registry):
    """Every shipped file has a [model] table with name and source, and no [[case]] repeats
    a value its [model] has (the cases that set one differ from it)."""
    import tomllib

    from harness.cases import shipped_case_files

    for path in shipped_case_files():
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        assert isinstance(doc["model"], dict) and {"name", "source"} <= set(doc["model"]), path
        assert "source" not in doc, path
        for case in doc["case"]:
            same = {k for k, v in case.items() if k in doc["model"] and k not in ("name", "source")
                    and doc["model"][k] == v}
            assert not same, f"{path}: case {case['name']} repeats {same} from [model]"
