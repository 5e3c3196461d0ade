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
    the block fusions that fit its layer at decode and the attention fusions, with decode
    against 4096 keys at batch 1 the one quick case (issue 19); no SwiGLU (Gemma-2's MLP is GeGLU)."""
    from harness.attention import HEAD_DIM_LIMIT

    cases = {(c.fusion, c.id): c for c in load_cases(registry) if c.model == "Gemma-2-2B"}
    heads = {"n_heads": 8, "n_kv_heads": 4, "head_dim": HEAD_DIM_LIMIT}
    assert cases["decode_attention", "gemma2_2b.decode4096"].params == {"B": 1, "T": 4096, **heads}
    assert [key for key, c in cases.items() if "quick" in c.suites] == [("decode_attention", "gemma2_2b.decode4096")]
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
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(CaseError) as e:
        load_file(f, registry)
    assert str(e.value).startswith(f"{f}:{line}"), str(e.value)
    assert words in str(e.value)


def test_good_file_loads(registry, tmp_path):
    f = tmp_path / "good.toml"
    f.write_text(GOOD)
    (case,) = load_file(f, registry)
    assert case.id == "good.a" and case.dtypes == ("float32", "float16", "bfloat16") and "full" in case.suites
