"""The CUDA attention kernels: attn_score_softmax, attention_prefill, decode_attention.

Without a GPU: the sources compile (nvcc and NVRTC, each source once per compiler, every
storage dtype in it), define every kernel their modules launch, and a NumPy emulation of
every kernel's loops checks the indexing: loads in bounds (16-byte loads aligned), every
shared-memory slot written once before it is read, every output element written exactly
once, the causal tiles above the diagonal never loaded, the KV cache never read at
positions >= lens[b] and read exactly once below, and the split-K partials and their
combination. The emulations (tests/cuda_emulation.py) compute in float64 and must match the
float64 reference. The GPU tests (cuda probe passes; elsewhere one skip each) run the
kernels against the accuracy gate.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest

from harness import cuda_compile as cc
from tests.cuda_emulation import (CU, causal_key_reads, close, decode_inputs, defines, emulate_decode,
                                  emulate_prefill, emulate_score_softmax, impl_module, inputs_and_attrs, reference)
from tests.devices import cuda_backend, judge, need_compiler, needs_cuda

FUSIONS = ("attn_score_softmax", "attention_prefill", "decode_attention")
DTYPES = ("float32", "float16", "bfloat16")


@functools.lru_cache(maxsize=None)
def _compiled(fusion: str, compiler: str) -> cc.CompileResult:
    return cc.compile_to_ptx(cc.cuda_source(CU[fusion]), CU[fusion].name, compiler)


# ---- sources, kernels, registration ------------------------------------------------------------
@pytest.mark.parametrize("compiler", cc.COMPILERS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_source_compiles_with_every_kernel(fusion, compiler):
    need_compiler(compiler)
    r = _compiled(fusion, compiler)
    assert r.ok, f"{CU[fusion].name} failed to compile with {compiler}:\n{r.log}"
    mod = impl_module(fusion)
    assert len(mod.KERNELS) == len(set(mod.KERNELS))
    missing = sorted(set(mod.KERNELS) - r.entries())
    assert not missing, f"{compiler}: kernels missing from the PTX: {missing}"
    for dtype in DTYPES:  # every storage dtype the implementation claims has its kernels
        sfx = mod.SUFFIX[dtype]
        assert any(n.endswith(f"_{sfx}") for n in r.entries()), (dtype, sorted(r.entries()))


def test_sources_listed_and_registered():
    from harness.registry import discover

    reg = discover(entry_points=False)
    for fusion in FUSIONS:
        assert CU[fusion] in cc.cuda_sources()
        impl = reg.impls[f"{fusion}/cuda/fused"]
        assert impl.kind == "fused" and impl.dtypes == DTYPES and impl.doc.strip()
        ok, why = impl.available()
        assert ok or why.strip()


def test_launch_constants_match_sources():
    from harness.attention import HEAD_DIM_LIMIT

    for fusion, p in (("attn_score_softmax", "FB_ATT"), ("attention_prefill", "FB_ATT")):
        m, d = impl_module(fusion), defines(CU[fusion])
        assert (m.THREADS, m.TILE, m.MAX_GRID_Y) == (d[f"{p}_THREADS"], d[f"{p}_BM"], d[f"{p}_MAX_GRID_Y"])
        assert d[f"{p}_THREADS"] == 256 and d[f"{p}_BM"] == 64   # 16 x 16 threads, 4 x 4 each
        assert (d[f"{p}_BM"] + d[f"{p}_PAD"]) % 4 == 0           # 16-byte aligned shared rows
    m = impl_module("attention_prefill")
    assert m.HEAD_DIMS[-1] == HEAD_DIM_LIMIT and all(h % 16 == 0 for h in m.HEAD_DIMS)
    m, d = impl_module("decode_attention"), defines(CU["decode_attention"])
    assert (m.THREADS, m.DMAX, m.GMAX, m.COMBINE_THREADS, m.MAX_GRID) == (
        d["FB_DA_THREADS"], d["FB_DA_DMAX"], d["FB_DA_GMAX"], d["FB_DA_COMBINE_THREADS"], d["FB_DA_MAX_GRID"])
    assert m.DMAX == HEAD_DIM_LIMIT and m.THREADS % 32 == 0 and m.GROUPS[-1] == m.GMAX


def test_plans_name_only_defined_kernels():
    sc, ap, da = (impl_module(f) for f in FUSIONS)
    for dtype in DTYPES:
        for d in (1, 4, 17, 64, 65, 80, 96, 128, 129, 256):
            (launch,) = ap.launch_plan(2, 3, 70, d, dtype).launches
            name, grid, block = launch.kernel, launch.grid, launch.block
            assert name in ap.KERNELS and grid == (2, 6) and block == (256,) and launch.smem == 0
            assert int(name.split("_d")[1].split("_")[0]) >= d
        (launch,) = sc.launch_plan(1, 70000, 5, dtype).launches
        assert launch.kernel in sc.KERNELS and launch.grid == (1, 65535)
        assert sc.launch_plan(0, 3, 70, dtype).launches == ()   # nothing to launch for an empty p
        for g in (1, 2, 3, 4, 5, 7, 8, 9, 16):
            p = da.launch_plan(2, 4096, 2 * g, 2, 128, dtype)
            nsplit, G, plan = p.switches["nsplit"], p.switches["G"], p.launches
            assert all(launch.kernel in da.KERNELS for launch in plan)
            assert G == next((x for x in (1, 2, 4, 8) if x >= g), 8)
            assert plan[0][1] == (nsplit, 2 * 2 * -(-g // G))
            assert len(plan) == (2 if nsplit > 1 else 1)


def test_decode_split_rule():
    da = impl_module("decode_attention")
    # registers -> resident 4-warp blocks per SM (65536 registers, 256 per warp at a time)
    assert [da.resident_blocks(r) for r in (0, 16, 64, 93, 166, 255)] == [da.DEFAULT_BLOCKS_PER_SM, 16, 8, 5, 3, 2]
    # small B·Hkv, long cache: split to fill an H200; the case gets 32 splits of 128 keys
    assert da.choose_splits(rows=8, T=4096, sm_count=132, blocks_per_sm=3) == 32
    assert da.choose_splits(rows=8, T=32768, sm_count=132, blocks_per_sm=3) == da.MAX_SPLITS
    assert da.choose_splits(rows=64, T=8192, sm_count=132, blocks_per_sm=3) == 25   # about 4 waves
    assert da.choose_splits(rows=1, T=1, sm_count=132) == 1                 # no split under 128 keys
    assert da.choose_splits(rows=1, T=129, sm_count=132) == 2
    assert da.choose_splits(rows=4096, T=8192, sm_count=132) == 1           # the grid is full already
    for rows in (1, 3, 8, 40, 200, 1000):
        for T in (1, 100, 4096, 100000):
            for bps in (1, 3, 8):
                n = da.choose_splits(rows, T, 132, bps)
                assert 1 <= n <= da.MAX_SPLITS and (n == 1 or T / n >= da.SPLIT_MIN_KEYS / 2)
                assert n == da.MAX_SPLITS or n * rows >= min(da.WAVES * bps * 132, rows * -(-T // 128))
    p = da.launch_plan(1, 4096, 32, 8, 128, "float16")
    assert p.switches == {"vec": 1, "nsplit": 32, "G": 4}
    assert p.launches == (("decode_attention_split_g4_f16", (32, 8), (128,), 0, 0),
                          ("decode_attention_combine_f16", (32,), (128,), 0, 0))
    assert da.launch_plan(1, 4096, 32, 8, 17, "float16").switches["vec"] == 0       # 17 % 8: scalar loads
    # Gemma-2-2B (issue 19: head_dim 256, 2 q heads per kv head), and the property tests' limits:
    # T past MAX_SPLITS x SPLIT_MIN_KEYS, 9 q heads per kv head (two head chunks of G = 8)
    p = da.launch_plan(1, 4096, 8, 4, 256, "bfloat16")
    assert p.switches == {"vec": 1, "nsplit": 32, "G": 2} and p.launches[0].grid == (32, 4)
    p = da.launch_plan(1, 16385, 9, 1, 256, "bfloat16")
    assert p.switches == {"vec": 1, "nsplit": da.MAX_SPLITS, "G": 8} and p.launches[0].grid == (da.MAX_SPLITS, 2)
    assert da.launch_plan(1, 4096, 32, 8, 128, "float32", aligned=False).switches["vec"] == 0


# ---- attn_score_softmax ------------------------------------------------------------------------
SCORE_CASES = [
    # (B, Hq, Hkv, S, d, dtype, grid-y cap)
    (1, 1, 1, 1, 4, "float32", None),        # one query, one key
    (1, 2, 1, 65, 17, "float16", None),      # two tiles, ragged d (two 16-dim steps), g = 2
    (2, 3, 3, 64, 80, "bfloat16", 2),        # exactly one tile, blocks loop over heads
    (1, 4, 2, 130, 8, "float32", 3),         # three tiles: zero tiles right of the diagonal
]


@pytest.mark.parametrize("B,Hq,Hkv,S,d,dtype,cap", SCORE_CASES)
def test_emulated_score_softmax(B, Hq, Hkv, S, d, dtype, cap):
    dims = {"B": B, "S": S, "n_heads": Hq, "n_kv_heads": Hkv, "head_dim": d}
    inputs, attrs = inputs_and_attrs("attn_score_softmax", dims, dtype, seed=S + d)
    p, q, k = emulate_score_softmax(inputs, dtype, attrs, cap)
    p.once("p")
    close(p.v, reference("attn_score_softmax", inputs, attrs)["p"])
    # two passes over the tiles left of and on the diagonal, nothing right of it
    np.testing.assert_array_equal(k.reads, causal_key_reads(B, Hq, Hkv, S, d, 64, passes=2))
    assert (q.reads > 0).all()


# ---- attention_prefill -----------------------------------------------------------------------
PREFILL_CASES = [
    # (B, Hq, Hkv, S, d, dtype, grid-y cap)
    (1, 1, 1, 1, 4, "float32", None),        # S = 1
    (1, 2, 1, 65, 17, "float16", None),      # DMAX 64, two tiles, ragged last tile
    (2, 2, 1, 70, 80, "bfloat16", 3),        # DMAX 128, blocks loop over heads
    (1, 1, 1, 67, 256, "float32", None),     # DMAX 256
    (1, 4, 2, 130, 64, "float16", None),     # three tiles: causal skipping above the diagonal
]


@pytest.mark.parametrize("B,Hq,Hkv,S,d,dtype,cap", PREFILL_CASES)
def test_emulated_prefill(B, Hq, Hkv, S, d, dtype, cap):
    dims = {"B": B, "S": S, "n_heads": Hq, "n_kv_heads": Hkv, "head_dim": d}
    inputs, attrs = inputs_and_attrs("attention_prefill", dims, dtype, seed=S * 3 + d)
    o, q, k, v = emulate_prefill(inputs, dtype, attrs, cap)
    o.once("o")
    close(o.v, reference("attention_prefill", inputs, attrs)["o"])
    want = causal_key_reads(B, Hq, Hkv, S, d, 64, passes=1)
    np.testing.assert_array_equal(k.reads, want)    # each key tile once per query tile at or below it
    np.testing.assert_array_equal(v.reads, want)


def test_emulated_prefill_large_logits():
    """Logits near ±80 (the "large" value shape): the running maximum keeps exp() finite."""
    dims = {"B": 1, "S": 70, "n_heads": 2, "n_kv_heads": 1, "head_dim": 64}
    inputs, attrs = inputs_and_attrs("attention_prefill", dims, "float32", seed=5, value_shape="large")
    o, *_ = emulate_prefill(inputs, "float32", attrs)
    o.once("o")
    assert np.isfinite(o.v).all()
    close(o.v, reference("attention_prefill", inputs, attrs)["o"])


# ---- decode_attention ------------------------------------------------------------------------
DECODE_CASES = [
    # (B, T, Hq, Hkv, d, dtype, nsplit (None: the rule), aligned, grid cap)
    (1, 1, 1, 1, 4, "float32", None, True, None),       # T = 1, one lane per key
    (2, 17, 4, 2, 17, "float16", None, True, None),     # scalar loads (17 % 8), g = 2
    (3, 37, 6, 2, 64, "bfloat16", 3, True, None),       # g = 3 in a G = 4 block, 3 splits, ragged lens
    (2, 50, 10, 1, 8, "float32", 4, True, 2),           # g = 10: two head chunks (8 + 2), rows loop
    (1, 300, 8, 8, 256, "float32", 5, True, None),      # d = 256 float32: two chunks per lane
    (1, 517, 8, 4, 256, "bfloat16", 1, True, None),     # Gemma-2's g = 2 at d = 256, unsplit, T > 512
    (2, 100, 4, 1, 80, "float16", 7, True, None),       # 10 vectors on 16 lanes, empty splits
    (2, 64, 2, 2, 96, "bfloat16", None, False, None),   # unaligned pointers: scalar path
    (1, 23, 1, 1, 128, "float32", 2, True, None),       # 16 lanes x 2 chunks per key, 2 keys per warp
    (3, 131, 4, 4, 5, "bfloat16", 2, True, 2),          # prime T, d = 5, combine blocks loop
]


@pytest.mark.parametrize("B,T,Hq,Hkv,d,dtype,nsplit,aligned,cap", DECODE_CASES)
def test_emulated_decode(B, T, Hq, Hkv, d, dtype, nsplit, aligned, cap):
    inputs, poisoned, attrs, dead = decode_inputs(B, T, Hq, Hkv, d, dtype, seed=T + d)
    o, k, v, scratch, plan = emulate_decode(poisoned, dtype, attrs, nsplit, aligned, cap)
    o.once("o")
    assert np.isfinite(o.v).all(), "a cache position past lens[b] reached the output"
    close(o.v, reference("decode_attention", inputs, attrs)["o"])
    # the valid cache read exactly once per head chunk, nothing past lens[b] ever
    g = Hq // Hkv
    G = impl_module("decode_attention").head_group(g)
    want = np.where(dead[:, None, :, None], 0, -(-g // G))
    for mem in (k, v):
        np.testing.assert_array_equal(mem.reads.reshape(B, Hkv, T, d), np.broadcast_to(want, (B, Hkv, T, d)))
    used = plan[0][1][0]
    assert used == (nsplit or used) and len(plan) == (2 if used > 1 else 1)


def test_emulated_decode_all_empty_and_large_logits():
    """Every sequence empty: zeros, nothing read; logits near ±80 over split partials: finite."""
    inputs, poisoned, attrs, _ = decode_inputs(2, 40, 4, 2, 16, "float16", seed=1)
    poisoned["lens"] = np.zeros(2, dtype=np.int32)
    for n in ("k", "v"):
        poisoned[n] = np.full_like(poisoned[n], np.nan)
    o, k, v, _, _ = emulate_decode(poisoned, "float16", attrs, nsplit=3)
    o.once("o")
    assert (o.v == 0).all() and not k.reads.any() and not v.reads.any()

    inputs, poisoned, attrs, _ = decode_inputs(1, 200, 2, 1, 32, "float32", seed=2, value_shape="large")
    o, *_ = emulate_decode(poisoned, "float32", attrs, nsplit=4)
    o.once("o")
    assert np.isfinite(o.v).all()
    close(o.v, reference("decode_attention", inputs, attrs)["o"])


def test_gather_packs_like_a_vector_load():
    """fb_gather (decode_attention.cu) builds the 16 bytes a vector load would give: element e
    of 8 halves in word e / 2, the low half for even e, as the prelude's unpack reads them."""
    src = CU["decode_attention"].read_text()
    assert "w[e >> 1] |= (unsigned int)p[i + e] << (16 * (e & 1));" in src
    halves = np.arange(1, 9, dtype=np.uint16) * 0x1111
    words = np.zeros(4, dtype=np.uint32)
    for e in range(8):
        words[e >> 1] |= np.uint32(halves[e]) << np.uint32(16 * (e & 1))
    np.testing.assert_array_equal(words.view(np.uint16), halves)    # little-endian: a plain copy


# ---- GPU tests (skipped without a usable device) -----------------------------------------------
GPU_CASES = {
    "attn_score_softmax": [
        {"B": 1, "S": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 4},
        {"B": 2, "S": 67, "n_heads": 4, "n_kv_heads": 2, "head_dim": 17},
        {"B": 1, "S": 600, "n_heads": 3, "n_kv_heads": 1, "head_dim": 128},    # S > 512
        {"B": 1, "S": 129, "n_heads": 2, "n_kv_heads": 2, "head_dim": 256},
        {"B": 1, "S": 512, "n_heads": 8, "n_kv_heads": 4, "head_dim": 256},     # Gemma-2-2B prefill512
    ],
    "attention_prefill": [
        {"B": 1, "S": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 4},
        {"B": 2, "S": 67, "n_heads": 4, "n_kv_heads": 2, "head_dim": 17},
        {"B": 1, "S": 257, "n_heads": 6, "n_kv_heads": 2, "head_dim": 80},
        {"B": 1, "S": 1031, "n_heads": 2, "n_kv_heads": 1, "head_dim": 128},
        {"B": 1, "S": 97, "n_heads": 2, "n_kv_heads": 1, "head_dim": 256},
        {"B": 1, "S": 512, "n_heads": 8, "n_kv_heads": 4, "head_dim": 256},     # Gemma-2-2B prefill512
        {"B": 2, "S": 130, "n_heads": 2, "n_kv_heads": 2, "head_dim": 96},
    ],
    "decode_attention": [
        {"B": 1, "T": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 4},
        {"B": 3, "T": 131, "n_heads": 6, "n_kv_heads": 2, "head_dim": 17},
        {"B": 5, "T": 700, "n_heads": 4, "n_kv_heads": 4, "head_dim": 64},
        {"B": 1, "T": 4096, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128},
        {"B": 2, "T": 4099, "n_heads": 14, "n_kv_heads": 2, "head_dim": 64},
        {"B": 2, "T": 513, "n_heads": 20, "n_kv_heads": 2, "head_dim": 80},     # g = 10: head chunks
        {"B": 1, "T": 1000, "n_heads": 2, "n_kv_heads": 1, "head_dim": 256},
        {"B": 1, "T": 4096, "n_heads": 8, "n_kv_heads": 4, "head_dim": 256},    # Gemma-2-2B decode4096 (issue 19)
        {"B": 1, "T": 16385, "n_heads": 9, "n_kv_heads": 1, "head_dim": 256},   # nsplit = MAX_SPLITS, 2 head chunks
    ],
}
GPU_PARAMS = [(f, p) for f, ps in GPU_CASES.items() for p in ps]


def _ids(v):
    return v if isinstance(v, str) else "-".join(str(x) for x in v.values())


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fusion,params", GPU_PARAMS, ids=_ids)
def test_gpu_fused_matches_reference(fusion, params, dtype):
    spec = importlib.import_module(f"impls.{fusion}").SPEC
    for value_shape in spec.value_shapes:
        verdict = judge(f"{fusion}/cuda/fused", fusion, params, dtype, value_shape, seed=sum(params.values()))
        assert verdict.passed, (value_shape, verdict.reasons)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_gpu_chain_matches_reference(fusion, dtype):
    params = GPU_CASES[fusion][1]
    verdict = judge(f"{fusion}/cuda/unfused", fusion, params, dtype, "normal", seed=3)
    assert verdict.passed, verdict.reasons


def _run_decode(inputs, attrs, dtype):
    from harness.registry import discover
    from impls.decode_attention import SPEC

    p = discover(entry_points=False).impls["decode_attention/cuda/fused"].prepare(SPEC, inputs, attrs, dtype)
    p.poison()
    p.run()
    return p, p.outputs()["o"].astype(np.float64)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nsplit", [1, 3, 64])
def test_gpu_decode_never_reads_past_lens(dtype, nsplit, monkeypatch):
    """Cache rows past lens[b] hold NaN: the output is the same as with finite values there,
    whatever the number of splits (forced through choose_splits)."""
    mod = impl_module("decode_attention")
    monkeypatch.setattr(mod, "choose_splits", lambda *args: nsplit)
    inputs, poisoned, attrs, _ = decode_inputs(5, 1000, 8, 2, 128, dtype, seed=7)
    p, clean = _run_decode(inputs, attrs, dtype)
    assert p.nsplit == nsplit
    _, out = _run_decode(poisoned, attrs, dtype)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, clean)
    lens = np.asarray(inputs["lens"])
    assert (out[lens == 0] == 0).all()


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_chain_attention_ops_match_numpy(dtype):
    from harness.dtypes import np_dtype
    from harness.ops import NumpyOps

    b = cuda_backend()
    ops, ref = b.ops(dtype), NumpyOps(dtype)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 5, 17)).astype(np_dtype(dtype))
    c = rng.standard_normal((2, 3, 7, 17)).astype(np_dtype(dtype))
    w = rng.standard_normal((2, 3, 5, 7)).astype(np_dtype(dtype))
    lens = np.array([0, 4], dtype=np.int32)
    da, dc, dw, dl = (b.upload(x) for x in (a, c, w, lens))
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    masked = ref.length_mask(w, lens)           # row b = 0 fully masked
    cases = [
        (ops.matmul_nt(da, dc), ref.matmul_nt(a, c)),
        (ops.matmul(dw, dc), ref.matmul(w, c)),
        (ops.scale(da, 0.37), ref.scale(a, 0.37)),
        (ops.causal_mask(dw), ref.causal_mask(w)),
        (ops.length_mask(dw, dl), masked),
        (ops.softmax(ops.length_mask(dw, dl)), ref.softmax(masked)),
        (ops.softmax(ops.causal_mask(dw)), ref.softmax(ref.causal_mask(w))),
    ]
    for got, want in cases:
        got = b.download(got)
        assert got.dtype == np_dtype(dtype) and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)
    sm = b.download(ops.softmax(ops.length_mask(dw, dl))).astype(np.float64)
    assert (sm[0] == 0).all() and not np.isnan(sm).any()
