"""The CUDA sources: they compile (nvcc or NVRTC, no GPU needed), define the kernels their
modules launch, and index memory correctly (a NumPy emulation of every kernel's loops that
checks bounds, 16-byte alignment and that each output is written exactly once; the
emulations are in tests/cuda_emulation.py, shared with tests/test_cuda_attention.py). The cuda
backend's probe must fail softly without a GPU. GPU tests run only where the probe passes
(elsewhere each is one skip, tests/devices.py).

Without nvcc and NVRTC the compile tests skip, or fail when the environment variable CI is
set (CI must be able to compile the sources).
"""

from __future__ import annotations

import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from harness import cuda_compile as cc
from tests.cuda_emulation import (CU, REPO, bf16_round_like_kernel, check_written_once, close, defines,
                                  emulate_add_rmsnorm, emulate_gemm_swiglu, emulate_qkv, emulate_rmsnorm_gemm,
                                  emulate_swiglu_ffn, impl_module, reference, small_shared_device)
from tests.devices import cuda_backend, judge, need_compiler, needs_cuda, registry

RMS_CU = CU["rmsnorm_gemm"]


# ---- sources compile -----------------------------------------------------------------------
def test_sources_are_listed():
    srcs = cc.cuda_sources()
    assert RMS_CU in srcs
    assert all(p.suffix == ".cu" and p.parent.parent.name == "impls" for p in srcs)


@pytest.mark.parametrize("src", cc.cuda_sources(), ids=lambda p: p.parent.name)
def test_sources_are_header_free(src):
    assert not re.search(r"^\s*#\s*include", cc.cuda_source(src), re.M), \
        f"{src.name} includes a header; keep it header-free (NVRTC has none built in)"


@pytest.mark.parametrize("compiler", cc.COMPILERS)
@pytest.mark.parametrize("src", cc.cuda_sources(), ids=lambda p: p.parent.name)
def test_source_compiles(src, compiler):
    need_compiler(compiler)
    r = cc.compile_to_ptx(cc.cuda_source(src), src.name, compiler)
    assert r.ok, f"{src.name} failed to compile with {compiler}:\n{r.log}"
    assert r.entries(), f"{src.name}: PTX defines no kernels"


def test_compile_cuda_source_default_compiler():
    need_compiler()
    ok, log = cc.compile_cuda_source(RMS_CU)
    assert ok, log


@pytest.mark.parametrize("src", cc.cuda_sources(), ids=lambda p: p.parent.name)
def test_expected_kernels_in_ptx(src):
    comp = need_compiler()
    mod = impl_module(src.parent.name)
    expected = getattr(mod, "KERNELS", ())
    assert expected, f"impls/{src.parent.name}/cuda.py should list its kernel names in KERNELS"
    ok, msg = cc.check_entries(src, expected, comp)
    assert ok, msg


@pytest.mark.parametrize("compiler", cc.COMPILERS)
def test_chain_source_compiles(compiler):
    need_compiler(compiler)
    from harness.backends.cuda import CHAIN_CU, CHAIN_KERNELS

    r = cc.compile_to_ptx(cc.cuda_source(CHAIN_CU), CHAIN_CU.name, compiler)
    assert r.ok, r.log
    assert set(CHAIN_KERNELS) <= r.entries()


@pytest.mark.parametrize("compiler", cc.COMPILERS)
def test_broken_source_fails_with_log(compiler, tmp_path):
    need_compiler(compiler)
    bad = tmp_path / "broken.cu"
    bad.write_text('extern "C" __global__ void k(float* p) { p[0] = no_such_name; }\n')
    r = cc.compile_to_ptx(bad.read_text(), bad.name, compiler)
    assert not r.ok
    assert "no_such_name" in r.log and "error" in r.log.lower()
    ok, log = cc.compile_cuda_source(bad, compiler)
    assert not ok and "no_such_name" in log


def test_no_compiler_message(monkeypatch):
    monkeypatch.setattr(cc, "available_compilers", lambda: [])
    ok, log = cc.compile_cuda_source(RMS_CU)
    assert not ok and log == cc.NO_COMPILER


# ---- backend probe without a GPU -------------------------------------------------------------
def test_probe_never_raises_and_explains():
    from harness.backends.cuda import CudaBackend

    ok, why = CudaBackend().probe()
    assert isinstance(ok, bool) and isinstance(why, str)
    if ok:
        pytest.skip("this machine has a usable CUDA device")
    assert why.strip(), "the probe must say why the backend is unavailable"


def test_backend_module_does_not_import_cupy():
    code = ("import sys, harness.backends.cuda as m, impls; "
            "assert 'cupy' not in sys.modules, 'cupy imported at module import'; "
            "assert m.BACKENDS['cuda'].name == 'cuda'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    # nor does any fused kernel's module (they are imported by the registry on every machine)
    code = ("import importlib, pathlib, sys; "
            "[importlib.import_module(f'impls.{p.parent.name}.cuda') for p in pathlib.Path('impls').glob('*/cuda.py')]; "
            "assert 'cupy' not in sys.modules, 'cupy imported by an impls/*/cuda.py at import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_kernel_module_compiles_spliced_source_once_per_device(monkeypatch):
    cp = pytest.importorskip("cupy")
    from harness.backends.cuda import KernelModule

    src = REPO / "impls" / "swiglu_ffn" / "swiglu_ffn.cu"
    assert "//@fusebench-splice" in src.read_text()
    device, compiled = [0], []
    monkeypatch.setattr(cp.cuda.runtime, "getDevice", lambda: device[0])
    monkeypatch.setattr(cp, "RawModule", lambda code, options: compiled.append(code) or object())
    load = KernelModule(src)
    first = load()
    assert load() is first and len(compiled) == 1
    device[0] = 1
    second = load()
    assert second is not first and load() is second and len(compiled) == 2
    assert compiled[0] == cc.cuda_source(src)
    assert not re.search(r"^//@fusebench-splice", compiled[0], re.M)


# ---- launch geometry matches the #defines ------------------------------------------------------
def test_launch_constants_match_source():
    m, d = impl_module("rmsnorm_gemm"), defines(RMS_CU)
    assert m.GEMV_ROWS_PER_BLOCK == (d["FB_GEMV_THREADS"] // 32) * d["FB_GEMV_ROWS"]  # its own GEMV
    assert m.TILE_N == 2 * d["FB_TP"] == 64  # the pair core's tiles: 32 pairs of W rows


# ---- emulation of the kernels' indexing (tests/cuda_emulation.py) ---------------------------
EMU_CASES = [
    # (M, H, N, dtype, grid_y_cap)
    (1, 8, 16, "float16", None),          # one vector per W row, exactly one block
    (1, 5, 3, "float32", None),           # scalar path, N < warps
    (3, 12, 17, "float32", None),         # vec (12 % 4 == 0), N crosses a block edge
    (2, 12, 33, "bfloat16", None),        # 16-bit scalar path (12 % 8 != 0)
    (5, 24, 18, "bfloat16", 2),           # vec, blockIdx.y loop over m (grid y capped)
    (1, 4096 + 8, 3, "float16", None),    # two chunks of shared memory, vec
    (1, 4096 + 3, 2, "float32", None),    # two chunks, scalar
    (9, 7, 5, "float32", None),           # smallest prefill, everything ragged
    (70, 37, 67, "float32", None),        # tiles ragged in M, N and K, scalar
    (66, 40, 65, "float16", None),        # vec 16-bit tiles, K = 2.5 steps
    (130, 32, 64, "bfloat16", 1),         # three M tiles through the blockIdx.y loop
    (65, 36, 130, "float32", 2),          # vec f32, three N tiles
]


@pytest.mark.parametrize("M,H,N,dtype,cap", EMU_CASES)
def test_emulated_kernel_indexing(M, H, N, dtype, cap):
    from impls.rmsnorm_gemm import SPEC

    inputs = SPEC.make_inputs({"M": M, "H": H, "N": N}, dtype, seed=M * 1000 + H + N)
    y, vec, plan = emulate_rmsnorm_gemm(inputs, dtype, 1e-5, cap)
    assert (y.writes == 1).all(), f"{(y.writes != 1).sum()} outputs written 0 or 2+ times"
    x = inputs["x"].astype(np.float64)
    ref = (x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * inputs["gamma"].astype(np.float64)) \
        @ inputs["w"].astype(np.float64).T
    np.testing.assert_allclose(y.v.reshape(M, N), ref, rtol=1e-9, atol=1e-9)


def test_emulated_unaligned_pointers_use_scalar_loads():
    from impls.rmsnorm_gemm import SPEC

    inputs = SPEC.make_inputs({"M": 2, "H": 16, "N": 20}, "float32", seed=1)
    y, vec, _ = emulate_rmsnorm_gemm(inputs, "float32", 1e-5, aligned=False)
    assert vec == 0 and (y.writes == 1).all()


def test_bf16_rounding_matches_ml_dtypes():
    rng = np.random.default_rng(0)
    f = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(1e3),
        rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, 3.3895314e38, -3.3895314e38, 1e-40, 1.0 + 2**-8,
                  1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20], dtype=np.float32),
    ])
    got = bf16_round_like_kernel(f)
    with np.errstate(invalid="ignore"):
        want = f.astype(ml_dtypes.bfloat16).view(np.uint16)
    finite = ~np.isnan(f)
    np.testing.assert_array_equal(got[finite], want[finite])
    assert (got[~finite] & 0x7FFF == 0x7FC0).all()


# ---- GPU tests (skipped without a usable device) -----------------------------------------------
AWKWARD_SHAPES = [(1, 1, 1), (1, 7, 33), (1, 4096, 6144), (1, 4099, 257), (3, 130, 129),
                  (8, 257, 31), (9, 33, 127), (64, 128, 64), (130, 257, 131), (512, 4096, 384)]
NMSE_BOUND = {"float32": 1e-9, "float16": 1e-5, "bfloat16": 3e-4}


def _run(impl_key, inputs, dtype, eps=1e-5, poison=True):
    from impls.rmsnorm_gemm import SPEC

    p = registry().impls[impl_key].prepare(SPEC, inputs, {"eps": eps}, dtype)
    if poison:
        p.poison()
    p.run()
    return p, p.outputs()["y"]


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M,H,N", AWKWARD_SHAPES)
def test_gpu_fused_matches_reference(M, H, N, dtype):
    from harness.ops import NumpyOps
    from impls.rmsnorm_gemm import SPEC, decompose

    for value_shape in ("normal", "outliers", "large"):
        inputs = SPEC.make_inputs({"M": M, "H": H, "N": N}, dtype, seed=M + H + N,
                                  value_shape=value_shape)
        ref = decompose(NumpyOps("float64"), **inputs, eps=1e-5)["y"]
        _, fused = _run("rmsnorm_gemm/cuda/fused", inputs, dtype)
        _, chain = _run("rmsnorm_gemm/cuda/unfused", inputs, dtype)
        fused, chain = fused.astype(np.float64), chain.astype(np.float64)
        assert fused.shape == ref.shape
        assert not np.isnan(fused).any(), "NaN in the output: an element was never written"
        denom = max(float((ref ** 2).sum()), 1e-300)
        nmse = float(((fused - ref) ** 2).sum()) / denom
        nmse_chain = float(((chain - ref) ** 2).sum()) / denom
        assert nmse <= NMSE_BOUND[dtype], (value_shape, nmse)
        assert np.sqrt(nmse) <= 2 * np.sqrt(nmse_chain) + 1e-7, (value_shape, nmse, nmse_chain)


@needs_cuda
def test_gpu_time_run_and_flush():
    from impls.rmsnorm_gemm import SPEC

    b = cuda_backend()
    inputs = SPEC.make_inputs({"M": 1, "H": 4096, "N": 6144}, "float16", seed=0)
    p, _ = _run("rmsnorm_gemm/cuda/fused", inputs, "float16")
    b.flush_cache()
    t = b.time_run(p)
    assert 0 < t < 1.0
    fp = b.fingerprint()
    assert fp["gpu"] and fp["sm_count"] > 0 and fp["l2_bytes"] > 0


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_chain_ops_match_numpy(dtype):
    from harness.dtypes import np_dtype
    from harness.ops import NumpyOps

    b = cuda_backend()
    ops, ref = b.ops(dtype), NumpyOps(dtype)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 67)).astype(np_dtype(dtype))
    c = rng.standard_normal((5, 67)).astype(np_dtype(dtype))
    g = rng.standard_normal(67).astype(np_dtype(dtype))
    w = rng.standard_normal((33, 67)).astype(np_dtype(dtype))
    da, dc, dg, dw = (b.upload(v) for v in (a, c, g, w))
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    cases = [
        (ops.rms_norm(da, dg, 1e-5), ref.rms_norm(a, g, 1e-5)),
        (ops.linear(da, dw), ref.linear(a, w)),
        (ops.add(da, dc), ref.add(a, c)),
        (ops.mul(da, dc), ref.mul(a, c)),
        (ops.silu(da), ref.silu(a)),
        (ops.softmax(da), ref.softmax(a)),
    ]
    for got, want in cases:
        got = b.download(got)
        assert got.dtype == np_dtype(dtype)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


@needs_cuda
def test_gpu_upload_download_poison_roundtrip():
    b = cuda_backend()
    for dt in (np.float32, np.float16, ml_dtypes.bfloat16):
        a = np.arange(12, dtype=np.float32).reshape(3, 4).astype(dt)
        buf = b.upload(a)
        back = b.download(buf)
        assert back.dtype == np.dtype(dt) and (back == a).all()
        b.poison(buf)
        assert np.isnan(b.download(buf).astype(np.float32)).all()


@needs_cuda
def test_gpu_measure_peak():
    peak = cuda_backend().measure_peak()
    assert peak["copy_gbps"] > 0 and peak["matmul_gflops"] > 0


# ==== the fusions written on the shared pair-GEMV / pair-tiled core ============================
NEW_FUSIONS = ("add_rmsnorm", "rmsnorm_qkv_rope", "gemm_swiglu", "swiglu_ffn")
NEW_CU = {f: CU[f] for f in NEW_FUSIONS}


@pytest.mark.parametrize("fusion", NEW_FUSIONS)
def test_new_sources_listed_with_entries(fusion):
    assert NEW_CU[fusion] in cc.cuda_sources()
    mod = impl_module(fusion)
    assert len(mod.KERNELS) == len(set(mod.KERNELS)) >= 3
    for compiler in cc.available_compilers():
        ok, msg = cc.check_entries(NEW_CU[fusion], mod.KERNELS, compiler)
        assert ok, f"{compiler}: {msg}"


@pytest.mark.parametrize("fusion", NEW_FUSIONS)
def test_new_fusions_registered(fusion):
    from harness.registry import discover

    reg = discover(entry_points=False)
    impl = reg.impls[f"{fusion}/cuda/fused"]
    assert impl.kind == "fused" and impl.dtypes == ("float32", "float16", "bfloat16")
    assert impl.doc.strip()


def test_new_launch_constants_match_sources():
    """The pair core's launch geometry (harness.cuda_launch) against each source's #defines."""
    from harness import cuda_launch as cl

    for fusion in ("rmsnorm_gemm", "rmsnorm_qkv_rope", "gemm_swiglu", "swiglu_ffn"):
        d = defines(CU[fusion])
        assert cl.GEMV_THREADS == d["FB_GEMV_THREADS"] == 256
        assert cl.GEMV_PAIRS_PER_BLOCK == d["FB_GEMV_PAIRS_PER_BLOCK"] == d["FB_GEMV_THREADS"] // 32
        assert cl.TILED_THREADS == d["FB_TILED_THREADS"] == 256  # the kernel assumes 16 x 16 threads
        assert (cl.TILE_M, cl.TILE_PAIRS) == (d["FB_TM"], d["FB_TP"]) == (64, 32)  # 16 threads x 4
        assert d["FB_GEMV_CHUNK"] % 8 == 0 and d["FB_TK"] % 8 == 0  # multiples of every VEC
    for fusion in ("rmsnorm_gemm", "rmsnorm_qkv_rope"):
        d = defines(CU[fusion])
        assert cl.RMS_THREADS == d["FB_RMS_THREADS"] and cl.RMS_ROWS_PER_BLOCK == d["FB_RMS_THREADS"] // 32
    m, d = impl_module("add_rmsnorm"), defines(NEW_CU["add_rmsnorm"])
    assert m.THREADS == d["FB_ADD_THREADS"] and m.STATIC_SMEM == 4 * (d["FB_ADD_THREADS"] // 32)  # red[FB_ADD_WARPS]


# ---- rmsnorm_qkv_rope -----------------------------------------------------------------------
QKV_EMU_CASES = [
    # (M, H, n_heads, n_kv_heads, head_dim, dtype, grid_y_cap)
    (1, 16, 2, 1, 4, "float16", None),      # vec, P = 8: exactly one block
    (2, 12, 4, 2, 6, "float32", None),      # vec f32, odd d/2, P = 24 (3 blocks)
    (3, 13, 3, 3, 2, "bfloat16", 2),        # scalar, d = 2, blockIdx.y loop
    (1, 4096 + 8, 1, 1, 2, "float16", None),  # two shared-memory chunks, vec
    (9, 7, 2, 1, 6, "float32", None),       # smallest prefill, scalar, ragged everything
    (70, 40, 4, 2, 8, "float16", None),     # vec tiles, P = 32 (one pair tile), two M tiles
    (66, 36, 6, 2, 10, "float32", 1),       # vec f32, P = 50 (two pair tiles), M loop
    (65, 24, 3, 1, 6, "bfloat16", None),    # vec bf16, K = 1.5 tile steps
]


@pytest.mark.parametrize("M,H,nh,nkv,hd,dtype,cap", QKV_EMU_CASES)
def test_emulated_qkv_rope_indexing(M, H, nh, nkv, hd, dtype, cap):
    from impls.rmsnorm_qkv_rope import SPEC

    dims = {"M": M, "H": H, "n_heads": nh, "n_kv_heads": nkv, "head_dim": hd}
    inputs = SPEC.make_inputs(dims, dtype, seed=M * 7 + H)
    attrs = {"eps": 1e-5, "theta": 10000.0, "n_heads": nh, "n_kv_heads": nkv, "head_dim": hd}
    outs, vec, plan = emulate_qkv(inputs, dtype, attrs, cap)
    assert len(plan) == (1 if M <= 8 else 2)
    check_written_once(**outs)
    ref = reference("rmsnorm_qkv_rope", inputs, attrs)
    for name in ("q", "k", "v"):
        close(outs[name].v, ref[name])


# ---- gemm_swiglu ----------------------------------------------------------------------------
SWIGLU_EMU_CASES = [
    # (M, H, I, dtype, grid_y_cap)
    (1, 8, 16, "float16", None),
    (3, 12, 17, "float32", None),
    (2, 12, 33, "bfloat16", None),          # scalar 16-bit (12 % 8 != 0)
    (5, 24, 18, "bfloat16", 2),             # vec, blockIdx.y loop
    (1, 4096 + 3, 2, "float32", None),      # two chunks, scalar
    (9, 7, 5, "float32", None),             # smallest prefill
    (70, 37, 67, "float32", None),          # scalar, ragged in M, pairs and K
    (66, 40, 33, "float16", None),          # vec, two pair tiles
    (130, 32, 40, "bfloat16", 1),           # three M tiles through the blockIdx.y loop
]


@pytest.mark.parametrize("M,H,I,dtype,cap", SWIGLU_EMU_CASES)
def test_emulated_gemm_swiglu_indexing(M, H, I, dtype, cap):
    from impls.gemm_swiglu import SPEC

    inputs = SPEC.make_inputs({"M": M, "H": H, "I": I}, dtype, seed=M + H + I)
    y, vec, plan = emulate_gemm_swiglu(inputs, dtype, cap)
    check_written_once(y=y)
    close(y.v, reference("gemm_swiglu", inputs, {})["y"])


# ---- swiglu_ffn -----------------------------------------------------------------------------
FFN_EMU_CASES = [
    # (M, H, I, dtype, grid_y_cap)
    (1, 8, 16, "float16", None),            # vec up and down
    (2, 13, 12, "float32", None),           # scalar up, vec down, odd H (clamped last pair)
    (3, 16, 9, "bfloat16", 2),              # vec up, scalar down, blockIdx.y loop
    (1, 7, 4096 + 8, "float16", None),      # down GEMV over two chunks of the activation
    (9, 7, 5, "float32", None),             # smallest prefill, scalar, odd H
    (66, 24, 40, "float16", None),          # vec 16-bit up and down (2 x 16-byte f32 scratch loads)
    (70, 33, 16, "bfloat16", 1),            # odd H, vec down only, M loop
    (65, 36, 20, "float32", None),          # vec f32 up and down
]


ONCHIP_EMU_CASES = [
    # (H, I, dtype, multiprocessors): decode, M = 1, both halves vectorised
    (16, 48, "bfloat16", 2),                # 3 units over 2 blocks (1 and 2 units)
    (24, 40, "float16", 1),                 # one block, the last unit half full
    (8, 1040, "float32", 1),                # 65 units: 9 blocks of 7-8 units (up to 128 entries)
    (40, 136, "bfloat16", 4),               # 5 of 16 warps have W_down rows; the last unit half full
    (20, 12, "float32", 7),                 # fewer units (1) than multiprocessors
]


@pytest.mark.parametrize("H,I,dtype,sms", ONCHIP_EMU_CASES)
def test_emulated_onchip_decode_indexing(H, I, dtype, sms):
    from impls.gemm_swiglu import SPEC as GS
    from impls.swiglu_ffn import SPEC

    mod = impl_module("swiglu_ffn")
    inputs = SPEC.make_inputs({"M": 1, "H": H, "I": I}, dtype, seed=H + I + sms)
    act, y, vecs, plan = emulate_swiglu_ffn(inputs, dtype, sms=sms)
    assert len(plan) == 1 and plan[0][1] == (mod.onchip_grid(I, sms),)
    check_written_once(act=act, y=y)
    close(act.v, reference("gemm_swiglu", {k: inputs[k] for k in GS.inputs}, {})["y"])
    close(y.v, reference("swiglu_ffn", inputs, {})["y"])


def test_onchip_plan_only_where_it_applies():
    mod = impl_module("swiglu_ffn")
    d = defines(NEW_CU["swiglu_ffn"])
    assert (mod.ONCHIP_THREADS, mod.ONCHIP_UNIT, mod.ONCHIP_MAX_UNITS, mod.ONCHIP_MAX_H) == tuple(
        d[k] for k in ("FB_ONCHIP_THREADS", "FB_ONCHIP_UNIT", "FB_ONCHIP_MAX_UNITS", "FB_ONCHIP_MAX_H"))
    assert 4 * (d["FB_ONCHIP_MAX_H"] + d["FB_ONCHIP_UNIT"] * d["FB_ONCHIP_MAX_UNITS"]) + 4 <= 48 * 1024
    one = lambda *a, **k: mod.launch_plan(*a, **k).kernels
    assert one(1, 4096, 14336, "bfloat16") == ["swiglu_ffn_onchip_bf16"]       # Llama-3-8B decode
    assert one(8, 4096, 14336, "bfloat16")[0] == "swiglu_ffn_gemv_up_bf16"     # M = 8: two kernels
    assert one(1, 4096 + 4, 14336, "bfloat16")[0] == "swiglu_ffn_gemv_up_bf16"  # H % 8 != 0
    assert one(1, 4096, 14336, "float16", aligned=False)[0] == "swiglu_ffn_gemv_up_f16"
    assert one(1, 8192 + 8, 64, "float32")[0] == "swiglu_ffn_gemv_up_f32"      # x beyond shared memory
    for I in (1, 16, 17, 4864, 14336, 28672, 10**6):
        for sms in (1, 7, 132):
            G, units = mod.onchip_grid(I, sms), -(-I // mod.ONCHIP_UNIT)
            assert 1 <= G <= units and -(-units // G) <= mod.ONCHIP_MAX_UNITS
            assert G >= min(units, sms)


@pytest.mark.parametrize("M,H,I,dtype,cap", FFN_EMU_CASES)
def test_emulated_swiglu_ffn_indexing(M, H, I, dtype, cap):
    from impls.gemm_swiglu import SPEC as GS
    from impls.swiglu_ffn import SPEC

    inputs = SPEC.make_inputs({"M": M, "H": H, "I": I}, dtype, seed=M * 3 + H + I)
    act, y, vecs, plan = emulate_swiglu_ffn(inputs, dtype, cap)
    check_written_once(act=act, y=y)
    sub = {k: inputs[k] for k in GS.inputs}
    close(act.v, reference("gemm_swiglu", sub, {})["y"])
    close(y.v, reference("swiglu_ffn", inputs, {})["y"])


# ---- add_rmsnorm ----------------------------------------------------------------------------
ADD_EMU_CASES = [
    # (M, H, dtype, grid cap, h kept in shared memory, on a device with little shared memory)
    (1, 8, "float16", None, True, False),
    (3, 12, "float32", None, True, False),
    (2, 13, "bfloat16", None, True, False),      # scalar
    (5, 24, "bfloat16", 2, True, False),         # vec, blocks loop over rows
    (4, 100, "float32", 3, True, False),
    (1, 12288, "float32", None, True, False),    # 48 KiB of h + 32 static bytes: the opt-in
    (2, 16384, "float16", None, True, False),    # Llama-3.1-405B's hidden size: 64 KiB, the opt-in
    (1, 28920 + 1, "float32", None, False, False),  # two blocks no longer fit an SM: recompute, scalar
    (2, 40, "float32", None, True, True),        # exactly the small device's 192 bytes
    (2, 48, "float16", None, False, True),       # too wide to cache: pass 2 recomputes h, vec
    (3, 41, "float32", 2, False, True),          # too wide, scalar, blocks loop over rows
]


@pytest.mark.parametrize("M,H,dtype,cap,cached,small", ADD_EMU_CASES)
def test_emulated_add_rmsnorm_indexing(M, H, dtype, cap, cached, small):
    from impls.add_rmsnorm import SPEC

    inputs = SPEC.make_inputs({"M": M, "H": H}, dtype, seed=M + H)
    h, y, vec, cache = emulate_add_rmsnorm(inputs, dtype, 1e-5, cap, limits=small_shared_device() if small else None)
    assert cache == cached
    check_written_once(h=h, y=y)
    ref = reference("add_rmsnorm", inputs, {"eps": 1e-5})
    close(h.v, ref["h"])
    close(y.v, ref["y"])


def test_new_unaligned_pointers_use_scalar_loads():
    m = impl_module("gemm_swiglu")
    assert m.launch_plan(2, 16, 8, "float32", aligned=False).switches == {"vec": 0}
    m = impl_module("rmsnorm_qkv_rope")
    assert m.launch_plan(2, 16, 2, 1, 4, "float16", aligned=False).switches == {"vec": 0}
    m = impl_module("swiglu_ffn")
    assert m.launch_plan(2, 16, 8, "float32", aligned=False).switches == {"vec_up": 0, "vec_down": 0}
    m = impl_module("add_rmsnorm")
    assert m.launch_plan(2, 16, "float32", aligned=False).switches["vec"] == 0


def test_emulated_gemv_down_uses_whole_chain():
    """Decode of swiglu_ffn: one launch at M = 1 (the onchip kernel, 896 units of 16 over 132
    blocks), two at M = 8 and no third (no host work between them)."""
    m = impl_module("swiglu_ffn")
    plan = m.launch_plan(1, 4096, 14336, "bfloat16")
    assert plan.kernels == ["swiglu_ffn_onchip_bf16"] and plan.launches[0].grid == (132,)
    plan = m.launch_plan(8, 4096, 14336, "bfloat16")
    assert plan.kernels == ["swiglu_ffn_gemv_up_bf16", "swiglu_ffn_gemv_down_bf16"]
    assert plan.launches[0].grid == (14336 // 8, 8) and plan.launches[1].grid == (4096 // 2 // 8, 8)


# ---- GPU tests for the new fusions (skipped without a usable device) -------------------------
NEW_GPU_CASES = {
    "add_rmsnorm": [{"M": 1, "H": 4096}, {"M": 3, "H": 13}, {"M": 8, "H": 12289}, {"M": 130, "H": 4097},
                    {"M": 5, "H": 12288}, {"M": 3, "H": 16384}, {"M": 2, "H": 28921}, {"M": 2, "H": 28928}],
    "rmsnorm_qkv_rope": [
        {"M": 1, "H": 4096, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128},
        {"M": 3, "H": 130, "n_heads": 4, "n_kv_heads": 2, "head_dim": 6},
        {"M": 8, "H": 33, "n_heads": 3, "n_kv_heads": 3, "head_dim": 2},
        {"M": 9, "H": 257, "n_heads": 6, "n_kv_heads": 2, "head_dim": 80},
        {"M": 130, "H": 896, "n_heads": 14, "n_kv_heads": 2, "head_dim": 64},
    ],
    "gemm_swiglu": [{"M": 1, "H": 1024, "I": 2816}, {"M": 3, "H": 130, "I": 129}, {"M": 8, "H": 4099, "I": 31},
                    {"M": 9, "H": 33, "I": 127}, {"M": 130, "H": 257, "I": 131}],
    "swiglu_ffn": [{"M": 1, "H": 896, "I": 4864}, {"M": 2, "H": 7, "I": 33}, {"M": 1, "H": 129, "I": 4099},
                   {"M": 1, "H": 4096, "I": 14336}, {"M": 1, "H": 24, "I": 40},
                   {"M": 9, "H": 129, "I": 130}, {"M": 130, "H": 256, "I": 300}],
}
NEW_GPU_PARAMS = [(f, p) for f, ps in NEW_GPU_CASES.items() for p in ps]


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("fusion,params", NEW_GPU_PARAMS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(str(x) for x in v.values()))
def test_gpu_new_fused_matches_reference(fusion, params, dtype):
    for value_shape in ("normal", "outliers", "large"):
        v = judge(f"{fusion}/cuda/fused", fusion, params, dtype, value_shape, seed=sum(params.values()))
        assert v.passed, (value_shape, v.reasons)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_onchip_decode_leaves_its_state_zeroed_and_repeats(dtype):
    """The onchip kernel's accumulator and ticket are zero after every run, so a second and
    third run give y again (to float32 rounding: the blocks' partials meet in any order)."""
    import importlib

    spec = importlib.import_module("impls.swiglu_ffn").SPEC
    inputs = spec.make_inputs({"M": 1, "H": 896, "I": 4864}, dtype, 7, "normal")
    p = registry().impls["swiglu_ffn/cuda/fused"].prepare(spec, inputs, {}, dtype)
    assert len(p.launches) == 1 and p.launches[0][2] == (512,)  # the onchip kernel
    outs = []
    for _ in range(3):
        p.poison()
        p.run()
        outs.append(p.outputs()["y"].astype(np.float64))
        assert not p.acc.get().any() and int(p.ticket.get()[0]) == 0
    scale = np.abs(outs[0]).max()
    ulp = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() <= 4 * ulp * scale


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("fusion", NEW_FUSIONS)
def test_gpu_new_chain_matches_reference(fusion, dtype):
    """The cuda/unfused chain (split, reshape, rope included) against the same gate."""
    params = NEW_GPU_CASES[fusion][1]
    v = judge(f"{fusion}/cuda/unfused", fusion, params, dtype, "normal", seed=3)
    assert v.passed, v.reasons


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_chain_split_reshape_rope_match_numpy(dtype):
    from harness.dtypes import np_dtype
    from harness.ops import NumpyOps

    b = cuda_backend()
    ops, ref = b.ops(dtype), NumpyOps(dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3 * 10)).astype(np_dtype(dtype))
    pos = rng.integers(0, 32768, size=5).astype(np.int32)
    dpos = b.upload(pos)
    assert dpos.dtype == np.int32 and (b.download(dpos) == pos).all()
    dx = b.upload(x)
    parts = ops.split(dx, [10, 12, 8])
    for got, want in zip(parts, ref.split(x, [10, 12, 8])):
        assert got.flags.c_contiguous and (b.download(got).view(np.uint8) == want.view(np.uint8)).all()
    r = ops.reshape(dx, (5, 3, 10))
    assert r.shape == (5, 3, 10)
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    for theta in (10000.0, 500000.0):
        got = b.download(ops.rope(r, dpos, theta)).astype(np.float64)
        want = ref.rope(x.reshape(5, 3, 10), pos, theta).astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_splice_expands_shared_fragments_and_refuses_unknown_ones(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("// before\n//@fusebench-splice fb_prelude.cuh\n// after\n")
    text = cc.cuda_source(src)
    assert not re.search(r"^//@fusebench-splice", text, re.M) and "typedef unsigned short fb_u16;" in text
    assert text.startswith("// before\n") and text.endswith("// after\n")
    src.write_text("//@fusebench-splice no_such_fragment.cuh\n")
    with pytest.raises(FileNotFoundError, match="no_such_fragment.cuh"):
        cc.cuda_source(src)
