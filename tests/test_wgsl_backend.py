"""The wgsl backend on a real adapter (lavapipe on a CPU-only machine): device timing,
poisoning, the primitive ops of the unfused chain and the fused rmsnorm_gemm kernel.

Skipped, with the probe's reason, only where the backend cannot run."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from harness.backends import ChainPrepared, get_backend
from harness.dtypes import np_dtype
from harness.ops import NumpyOps

BACKEND = get_backend("wgsl")
_ok, _why = BACKEND.probe()
pytestmark = pytest.mark.skipif(not _ok, reason=f"wgsl backend unavailable: {_why}")

NMSE_BOUND = {"float32": 1e-9, "float16": 1e-5, "bfloat16": 3e-4}
# Elementwise tolerance of one op against NumPy computing in f32 and rounding to dtype:
# a couple of units in the last place of the storage dtype.
ULP_TOL = {"float32": 2.0**-21, "float16": 2.0**-9, "bfloat16": 2.0**-6}


def _nmse(a, ref) -> float:
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.sum((a - ref) ** 2) / max(np.sum(ref**2), 1e-300))


@pytest.fixture(scope="module")
def reg():
    from harness.registry import discover

    return discover(entry_points=False)


@pytest.fixture(scope="module")
def spec(reg):
    return reg.fusions["rmsnorm_gemm"]


# --- timer ----------------------------------------------------------------------------


def test_timestamps_give_positive_device_time(reg, spec):
    assert BACKEND.has_timestamps, "lavapipe offers timestamp-query; the backend must request it"
    inp = spec.make_inputs({"M": 2, "H": 512, "N": 300}, "float32", seed=1)
    for variant in ("fused", "unfused"):
        p = reg.impls[f"rmsnorm_gemm/wgsl/{variant}"].prepare(spec, inp, {"eps": 1e-5}, "float32")
        BACKEND.time_run(p)  # warm-up
        t0 = time.perf_counter()
        dev = BACKEND.time_run(p)
        host = time.perf_counter() - t0
        assert 0 < dev <= host * 1.05 + 1e-4, (variant, dev, host)
        # the work is complete when time_run returns: the outputs are there without NaN
        assert not np.isnan(p.outputs()["y"]).any()


def test_flush_cache_and_synchronize_run():
    BACKEND.flush_cache()
    BACKEND.synchronize()


# --- upload, download, poison -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1,), (3,), (7, 5), (2, 129)])
def test_upload_download_roundtrip_and_poison(dtype, shape):
    a = np.random.default_rng(3).standard_normal(shape).astype(np_dtype(dtype))
    buf = BACKEND.upload(a)
    assert buf.shape == shape and buf.dtype == dtype
    np.testing.assert_array_equal(BACKEND.download(buf).view(np.uint8), a.view(np.uint8))
    BACKEND.poison(buf)
    assert np.isnan(BACKEND.download(buf).astype(np.float64)).all()


def test_poison_shows_unwritten_outputs(reg, spec):
    """Poisoned outputs stay NaN until a run writes them, and a run writes every element."""
    inp = spec.make_inputs({"M": 3, "H": 33, "N": 17}, "float16", seed=2)
    p = reg.impls["rmsnorm_gemm/wgsl/fused"].prepare(spec, inp, {"eps": 1e-5}, "float16")
    p.poison()
    assert np.isnan(p.outputs()["y"].astype(np.float64)).all()
    p.run()
    assert not np.isnan(p.outputs()["y"].astype(np.float64)).any()


# --- primitive ops of the unfused chain ----------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_ops_match_numpy(dtype):
    rng = np.random.default_rng(11)
    dt = np_dtype(dtype)
    ops, ref = BACKEND.ops(dtype), NumpyOps(dtype)
    tol = ULP_TOL[dtype]
    for M, H in [(1, 1), (3, 5), (7, 129), (70, 257)]:
        x = rng.standard_normal((M, H)).astype(dt)
        g = (1 + 0.1 * rng.standard_normal(H)).astype(dt)
        X, G = BACKEND.upload(x), BACKEND.upload(g)

        def check(got, want, what, rtol=tol):
            got = BACKEND.download(got).astype(np.float64)
            want = np.asarray(want).astype(np.float64)
            assert got.shape == want.shape, what
            scale = np.max(np.abs(want)) or 1.0
            assert np.max(np.abs(got - want)) <= rtol * scale * 4, (what, dtype, M, H)

        check(ops.rms_norm(X, G, 1e-5), ref.rms_norm(x, g, 1e-5), "rms_norm")
        check(ops.add(X, X), ref.add(x, x), "add")
        check(ops.add(X, G), ref.add(x, g), "add broadcast")
        check(ops.mul(X, G), ref.mul(x, g), "mul broadcast")
        check(ops.silu(X), ref.silu(x), "silu")
        check(ops.softmax(X), ref.softmax(x), "softmax")
        for N in (1, 33, 130):
            w = (rng.standard_normal((N, H)) / np.sqrt(H)).astype(dt)
            # dot products: the summation order differs from BLAS; bound by NMSE instead
            got = BACKEND.download(ops.linear(X, BACKEND.upload(w))).astype(np.float64)
            want = NumpyOps("float64").linear(x, w)
            assert _nmse(got, want) <= NMSE_BOUND[dtype] / 10, ("linear", dtype, M, H, N)


# --- the fused kernel ---------------------------------------------------------------------

SIZES = list(itertools.product([1, 3, 7], [1, 5, 129, 257], [1, 33, 130]))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_fused_matches_float64_reference(reg, spec, dtype):
    impl = reg.impls["rmsnorm_gemm/wgsl/fused"]
    assert dtype in impl.dtypes
    ref_ops = NumpyOps("float64")
    worst = 0.0
    for i, (M, H, N) in enumerate(SIZES):
        dims = {"M": M, "H": H, "N": N}
        inp = spec.make_inputs(dims, dtype, seed=100 + i)
        assert np.std(inp["x"].astype(np.float64)) > 0 or H == 1
        ref = spec.decompose(ref_ops, **inp, eps=1e-5)["y"]
        p = impl.prepare(spec, inp, {"eps": 1e-5}, dtype)
        p.poison()
        p.run()
        y = p.outputs()["y"]
        assert y.dtype == np_dtype(dtype) and y.shape == (M, N)
        assert not np.isnan(y.astype(np.float64)).any(), dims
        e = _nmse(y, ref)
        assert e <= NMSE_BOUND[dtype], (dims, e)
        worst = max(worst, e)
    assert worst > 0  # random data really went through


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_unfused_chain_matches_reference(reg, spec, dtype):
    impl = reg.impls["rmsnorm_gemm/wgsl/unfused"]
    for i, (M, H, N) in enumerate([(1, 129, 33), (7, 257, 130), (3, 5, 1)]):
        inp = spec.make_inputs({"M": M, "H": H, "N": N}, dtype, seed=200 + i)
        p = impl.prepare(spec, inp, {"eps": 1e-5}, dtype)
        assert isinstance(p, ChainPrepared)
        p.poison()
        p.run()
        y = p.outputs()["y"]
        ref = spec.decompose(NumpyOps("float64"), **inp, eps=1e-5)["y"]
        assert _nmse(y, ref) <= NMSE_BOUND[dtype]


def test_packed_float16_path_without_shader_f16(spec):
    """Adapters without shader-f16 hold float16 packed in u32; force that path here."""
    from harness.backends.wgsl import WgslBackend
    from impls.rmsnorm_gemm.wgsl import RmsNormGemmWgsl

    b = WgslBackend(native_f16=False)
    assert b.mode("float16") == "f16p"
    for i, (M, H, N) in enumerate([(1, 257, 33), (7, 129, 130), (3, 5, 1)]):
        inp = spec.make_inputs({"M": M, "H": H, "N": N}, "float16", seed=300 + i)
        ref = spec.decompose(NumpyOps("float64"), **inp, eps=1e-5)["y"]
        for cls in (RmsNormGemmWgsl, ChainPrepared):
            p = cls(b, spec, inp, {"eps": 1e-5}, "float16")
            p.poison()
            p.run()
            y = p.outputs()["y"]
            assert not np.isnan(y.astype(np.float64)).any()
            assert _nmse(y, ref) <= NMSE_BOUND["float16"], (cls.__name__, M, H, N)


def test_prefill_tiles_cover_edges(reg, spec):
    """M and N past one 64 x 64 tile, neither a multiple of 64."""
    inp = spec.make_inputs({"M": 67, "H": 130, "N": 129}, "float32", seed=5, value_shape="outliers")
    p = reg.impls["rmsnorm_gemm/wgsl/fused"].prepare(spec, inp, {"eps": 1e-5}, "float32")
    p.poison()
    p.run()
    y = p.outputs()["y"]
    ref = spec.decompose(NumpyOps("float64"), **inp, eps=1e-5)["y"]
    assert not np.isnan(y).any()
    assert _nmse(y, ref) <= NMSE_BOUND["float32"]


# --- split, reshape, rope and the fused transformer-block kernels ---------------------------


def test_int32_upload_roundtrip():
    a = np.array([0, 1, -5, 32767, 2**31 - 1], dtype=np.int32)
    buf = BACKEND.upload(a)
    assert buf.dtype == "int32" and buf.shape == a.shape
    np.testing.assert_array_equal(BACKEND.download(buf), a)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_split_reshape_rope_match_numpy(dtype):
    rng = np.random.default_rng(12)
    dt = np_dtype(dtype)
    ops, ref, r64 = BACKEND.ops(dtype), NumpyOps(dtype), NumpyOps("float64")
    x = rng.standard_normal((5, 31)).astype(dt)
    parts = ops.split(BACKEND.upload(x), [10, 1, 20])
    for got, want in zip(parts, ref.split(x, [10, 1, 20])):
        np.testing.assert_array_equal(BACKEND.download(got), want)
    r = ops.reshape(parts[2], (5, 2, 10))
    assert r.shape == (5, 2, 10) and r.buffer is parts[2].buffer
    for M, heads, d in [(1, 1, 2), (3, 6, 10), (2, 3, 80), (4, 2, 128)]:
        xr = rng.standard_normal((M, heads, d)).astype(dt)
        pos = np.array([0, 32767, 7, 2**24 + 3][:M], dtype=np.int32)
        for theta in (10000.0, 1e6):
            got = BACKEND.download(ops.rope(BACKEND.upload(xr), BACKEND.upload(pos), theta)).astype(np.float64)
            want = r64.rope(xr.astype(np.float64), pos, theta)
            chain = ref.rope(xr, pos, theta).astype(np.float64)
            # as accurate as NumPy's float64 angles rounded once: within 2x its error
            assert np.sqrt(_nmse(got, want)) <= 2 * np.sqrt(_nmse(chain, want)) + ULP_TOL[dtype], \
                (dtype, M, heads, d, theta)


BLOCK_CASES = {
    "add_rmsnorm": [{"M": 1, "H": 1}, {"M": 13, "H": 257}, {"M": 2, "H": 17000}],  # 17000: entry `wide`
    "gemm_swiglu": [{"M": 1, "H": 1, "I": 1}, {"M": 4, "H": 257, "I": 33}, {"M": 67, "H": 300, "I": 129}],
    "swiglu_ffn": [{"M": 1, "H": 1, "I": 1}, {"M": 2, "H": 33, "I": 257}, {"M": 67, "H": 130, "I": 67}],
    "rmsnorm_qkv_rope": [{"M": 1, "H": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 2},
                         {"M": 3, "H": 67, "n_heads": 6, "n_kv_heads": 2, "head_dim": 10},
                         {"M": 70, "H": 130, "n_heads": 4, "n_kv_heads": 1, "head_dim": 80},
                         {"M": 13, "H": 31, "n_heads": 3, "n_kv_heads": 3, "head_dim": 6}],
}


@pytest.mark.parametrize("fusion", sorted(BLOCK_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_block_fusions_pass_the_gate(reg, fusion, dtype):
    """Decode and prefill (tiled) paths, awkward sizes, outlier channels; float16 also
    through the packed path (no shader-f16). Every element written (outputs poisoned)."""
    from harness.accuracy import Yardstick
    from harness.backends.wgsl import WgslBackend

    spec = reg.fusions[fusion]
    impl = reg.impls[f"{fusion}/wgsl/fused"]
    backends = [BACKEND] + ([WgslBackend(native_f16=False)] if dtype == "float16" else [])
    for i, dims in enumerate(BLOCK_CASES[fusion]):
        inp = spec.make_inputs(dims, dtype, seed=400 + i, value_shape="outliers")
        _, attrs = spec.split(dims)
        yard = Yardstick.for_inputs(spec, inp, attrs, dtype)
        for b in backends:
            p = impl.factory(b, spec, inp, attrs, dtype)
            p.poison()
            p.run()
            out = p.outputs()
            v = yard.judge(out)
            assert v.passed, (fusion, dims, dtype, b.mode(dtype), v.reasons)


# --- fingerprint ----------------------------------------------------------------------


def test_fingerprint_names_the_api():
    """Without a Vulkan driver wgpu falls back to OpenGL on llvmpipe: the record must say
    which API ran (harness.compare does not pair the two)."""
    from harness.backends.wgsl import adapter_api

    fp = BACKEND.fingerprint()
    assert fp["api"] == fp["backend_type"] and fp["api"] in ("Vulkan", "OpenGL", "OpenGLES", "Metal", "D3D12")
    assert adapter_api({"backend_type": "OpenGL"}) == "OpenGL" and adapter_api({"backend_type": 6}) == "Vulkan"
    assert adapter_api({}) == "unknown"
