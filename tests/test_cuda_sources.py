"""The CUDA sources: they compile (nvcc or NVRTC, no GPU needed), define the kernels their
modules launch, and index memory correctly (a NumPy emulation of every kernel's loops that
checks bounds, 16-byte alignment and that each output is written exactly once). The cuda
backend's probe must fail softly without a GPU. GPU tests run only where the probe passes.

Without nvcc and NVRTC the compile tests skip, or fail when the environment variable CI is
set (CI must be able to compile the sources).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from harness import cuda_compile as cc

REPO = Path(__file__).resolve().parent.parent
RMS_CU = REPO / "impls" / "rmsnorm_gemm" / "rmsnorm_gemm.cu"


# ---- helpers ---------------------------------------------------------------------------
def _need_compiler(which: str | None = None) -> str:
    found = cc.available_compilers()
    if not found:
        if os.environ.get("CI"):
            pytest.fail(cc.NO_COMPILER)
        pytest.skip(cc.NO_COMPILER)
    if which is None:
        return found[0]
    if which not in found:
        pytest.skip(f"{which} is not available here (have: {', '.join(found)})")
    return which


def _impl_module(fusion: str):
    """impls.<fusion>.cuda, imported through discovery (its register() needs it)."""
    from harness.registry import discover

    discover(entry_points=False)
    return sys.modules[f"impls.{fusion}.cuda"]


def _cuda_backend():
    from harness.backends import get_backend

    return get_backend("cuda")


def _gpu_or_skip():
    ok, why = _cuda_backend().probe()
    if not ok:
        pytest.skip(f"no usable CUDA device: {why}")


# ---- sources compile -----------------------------------------------------------------------
def test_sources_are_listed():
    srcs = cc.cuda_sources()
    assert RMS_CU in srcs
    assert all(p.suffix == ".cu" and p.parent.parent.name == "impls" for p in srcs)


@pytest.mark.parametrize("src", cc.cuda_sources(), ids=lambda p: p.parent.name)
def test_sources_are_header_free(src):
    assert not re.search(r"^\s*#\s*include", src.read_text(), re.M), \
        f"{src.name} includes a header; keep it header-free (NVRTC has none built in)"


@pytest.mark.parametrize("compiler", cc.COMPILERS)
@pytest.mark.parametrize("src", cc.cuda_sources(), ids=lambda p: p.parent.name)
def test_source_compiles(src, compiler):
    _need_compiler(compiler)
    r = cc.compile_to_ptx(src.read_text(), src.name, compiler)
    assert r.ok, f"{src.name} failed to compile with {compiler}:\n{r.log}"
    assert r.entries(), f"{src.name}: PTX defines no kernels"


def test_compile_cuda_source_default_compiler():
    _need_compiler()
    ok, log = cc.compile_cuda_source(RMS_CU)
    assert ok, log


@pytest.mark.parametrize("src", cc.cuda_sources(), ids=lambda p: p.parent.name)
def test_expected_kernels_in_ptx(src):
    comp = _need_compiler()
    mod = _impl_module(src.parent.name)
    expected = getattr(mod, "KERNELS", ())
    assert expected, f"impls/{src.parent.name}/cuda.py should list its kernel names in KERNELS"
    ok, msg = cc.check_entries(src, expected, comp)
    assert ok, msg


@pytest.mark.parametrize("compiler", cc.COMPILERS)
def test_chain_source_compiles(compiler):
    _need_compiler(compiler)
    from harness.backends.cuda import CHAIN_KERNELS, CHAIN_SOURCE

    r = cc.compile_to_ptx(CHAIN_SOURCE, "chain.cu", compiler)
    assert r.ok, r.log
    assert set(CHAIN_KERNELS) <= r.entries()


@pytest.mark.parametrize("compiler", cc.COMPILERS)
def test_broken_source_fails_with_log(compiler, tmp_path):
    _need_compiler(compiler)
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


# ---- launch geometry matches the #defines ------------------------------------------------------
def _defines(path: Path) -> dict[str, int]:
    out = {}
    for name, val in re.findall(r"^#define\s+(FB_\w+)\s+(\d+)\b", path.read_text(), re.M):
        out[name] = int(val)
    return out


def test_launch_constants_match_source():
    m = _impl_module("rmsnorm_gemm")
    d = _defines(RMS_CU)
    assert m.GEMV_THREADS == d["FB_GEMV_THREADS"]
    assert m.GEMV_ROWS_PER_BLOCK == (d["FB_GEMV_THREADS"] // 32) * d["FB_GEMV_ROWS"]
    assert m.RMS_THREADS == d["FB_RMS_THREADS"] and m.RMS_ROWS_PER_BLOCK == d["FB_RMS_THREADS"] // 32
    assert m.TILED_THREADS == d["FB_TILED_THREADS"] == 256  # the kernel assumes 16 x 16 threads
    assert (m.TILE_M, m.TILE_N) == (d["FB_TM"], d["FB_TN"]) == (64, 64)  # 16 threads x 4
    assert d["FB_GEMV_CHUNK"] % 8 == 0 and d["FB_TK"] % 8 == 0  # multiples of every VEC


# ---- emulation of the kernels' indexing ------------------------------------------------------
# A line-by-line transcription of rmsnorm_gemm.cu's loops in Python, one thread at a time
# between barriers. Every global load checks its bounds (and, for 16-byte loads, its
# alignment); shared memory starts each phase as NaN so that reading a slot not written in
# that phase shows; every output element must be written exactly once.

D = _defines(RMS_CU)


class Mem:
    """A global buffer of one storage dtype (float32 values or 16-bit patterns)."""

    def __init__(self, a: np.ndarray, dtype: str):
        self.dtype = dtype
        self.raw = a.ravel().view(np.uint16) if dtype != "float32" else a.ravel().astype(np.float32)
        self.vec = 4 if dtype == "float32" else 8

    def _cvt(self, bits: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return bits.astype(np.float64)
        if self.dtype == "float16":
            return bits.astype(np.uint16).view(np.float16).astype(np.float64)
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    def load(self, i: int) -> float:
        assert 0 <= i < self.raw.size, f"out-of-bounds load {i} of {self.raw.size}"
        return float(self._cvt(self.raw[i:i + 1])[0])

    def vload(self, off: int) -> np.ndarray:
        """A 16-byte load at element offset off, unpacked as the kernel's traits do."""
        assert off % self.vec == 0, f"misaligned 16-byte load at element {off}"
        assert 0 <= off and off + self.vec <= self.raw.size, f"out-of-bounds vector load at {off}"
        chunk = self.raw[off:off + self.vec]
        if self.dtype == "float32":
            return chunk.astype(np.float64)
        words = np.ascontiguousarray(chunk).view(np.uint32)  # 4 words, element 0 in the low half
        if self.dtype == "float16":
            halves = np.empty(8, dtype=np.uint16)
            halves[0::2] = words & 0xFFFF
            halves[1::2] = words >> 16
            return halves.view(np.float16).astype(np.float64)
        out = np.empty(8, dtype=np.uint32)
        out[0::2] = words << 16
        out[1::2] = words & 0xFFFF0000
        return out.view(np.float32).astype(np.float64)


class Out:
    def __init__(self, size: int):
        self.v = np.full(size, np.nan)
        self.writes = np.zeros(size, dtype=np.int64)

    def store(self, i: int, v: float):
        assert 0 <= i < self.v.size, f"out-of-bounds store {i} of {self.v.size}"
        self.v[i] = v
        self.writes[i] += 1


def emulate_gemv(x, g, w, y, M, H, N, eps, vec, grid):
    THREADS, ROWS, CHUNK = D["FB_GEMV_THREADS"], D["FB_GEMV_ROWS"], D["FB_GEMV_CHUNK"]
    WARPS, VEC = THREADS // 32, x.vec
    for bx in range(grid[0]):
        for by in range(grid[1]):
            m = by
            while m < M:
                ss = 0.0
                for tid in range(THREADS):
                    for h in range(tid, H, THREADS):
                        v = x.load(m * H + h)
                        ss += v * v
                s = 1.0 / np.sqrt(ss / H + eps)
                acc = np.zeros((WARPS, 32, ROWS))
                c0 = 0
                while c0 < H:
                    L = min(CHUNK, H - c0)
                    assert 1 <= L <= CHUNK
                    xs = np.full(CHUNK, np.nan)
                    for tid in range(THREADS):
                        for i in range(tid, L, THREADS):
                            xs[i] = x.load(m * H + c0 + i) * s * g.load(c0 + i)
                    for warp in range(WARPS):
                        n_base = bx * WARPS * ROWS + warp * ROWS
                        for lane in range(32):
                            if vec:
                                assert L % VEC == 0
                                for j in range(lane, L // VEC, 32):
                                    xv = xs[j * VEC:(j + 1) * VEC]
                                    assert not np.isnan(xv).any(), "read of unwritten shared memory"
                                    for r in range(ROWS):
                                        n = n_base + r
                                        if n < N:
                                            acc[warp, lane, r] += w.vload(n * H + c0 + j * VEC) @ xv
                            else:
                                for j in range(lane, L, 32):
                                    assert not np.isnan(xs[j])
                                    for r in range(ROWS):
                                        n = n_base + r
                                        if n < N:
                                            acc[warp, lane, r] += w.load(n * H + c0 + j) * xs[j]
                    c0 += CHUNK
                for warp in range(WARPS):
                    n_base = bx * WARPS * ROWS + warp * ROWS
                    for r in range(ROWS):
                        a = acc[warp, :, r].sum()  # shuffle reduction: every lane's share
                        if n_base + r < N:
                            y.store(m * N + n_base + r, a)
                m += grid[1]


def emulate_rms(x, inv, M, H, eps, grid):
    THREADS = D["FB_RMS_THREADS"]
    for bx in range(grid[0]):
        for tid in range(0, THREADS, 32):  # lane 0 of each warp; the warp sums all lanes
            m = bx * (THREADS // 32) + (tid >> 5)
            if m >= M:
                continue
            ss = 0.0
            for lane in range(32):
                for h in range(lane, H, 32):
                    v = x.load(m * H + h)
                    ss += v * v
            inv.store(m, 1.0 / np.sqrt(ss / H + eps))


def emulate_tiled(x, g, w, inv, y, M, H, N, vec, grid):
    TM, TN, TK, PAD, THREADS = D["FB_TM"], D["FB_TN"], D["FB_TK"], D["FB_TPAD"], D["FB_TILED_THREADS"]
    VEC = x.vec
    KV = TK // VEC
    for bx in range(grid[0]):
        n0 = bx * TN
        for by in range(grid[1]):
            mt = by
            while mt * TM < M:
                m0 = mt * TM
                acc = np.zeros((THREADS, 4, 4))
                k0 = 0
                while k0 < H:
                    As = np.full((TK, TM + PAD), np.nan)
                    Ws = np.full((TK, TN + PAD), np.nan)
                    wa = np.zeros((TK, TM), dtype=int)
                    ww = np.zeros((TK, TN), dtype=int)
                    for tid in range(THREADS):
                        if vec:
                            for v in range(tid, TM * KV, THREADS):
                                row, kk = v // KV, (v % KV) * VEC
                                gk, gm, gn = k0 + kk, m0 + row, n0 + row
                                if gm < M and gk < H:
                                    f = x.vload(gm * H + gk) * inv.v[gm] * np.array(
                                        [g.load(gk + e) for e in range(VEC)])
                                else:
                                    f = np.zeros(VEC)
                                As[kk:kk + VEC, row] = f
                                wa[kk:kk + VEC, row] += 1
                                f = w.vload(gn * H + gk) if (gn < N and gk < H) else np.zeros(VEC)
                                Ws[kk:kk + VEC, row] = f
                                ww[kk:kk + VEC, row] += 1
                        else:
                            for e in range(tid, TM * TK, THREADS):
                                row, kk = e // TK, e % TK
                                gk, gm, gn = k0 + kk, m0 + row, n0 + row
                                As[kk, row] = (x.load(gm * H + gk) * inv.v[gm] * g.load(gk)
                                               if gm < M and gk < H else 0.0)
                                Ws[kk, row] = w.load(gn * H + gk) if gn < N and gk < H else 0.0
                                wa[kk, row] += 1
                                ww[kk, row] += 1
                    assert (wa == 1).all() and (ww == 1).all(), "shared tile slot written 0 or 2+ times"
                    for tid in range(THREADS):
                        tx, ty = tid & 15, tid >> 4
                        a = As[:, ty * 4:ty * 4 + 4]
                        b = Ws[:, tx * 4:tx * 4 + 4]
                        assert not (np.isnan(a).any() or np.isnan(b).any())
                        acc[tid] += a.T @ b
                    k0 += TK
                for tid in range(THREADS):
                    tx, ty = tid & 15, tid >> 4
                    for i in range(4):
                        gm = m0 + ty * 4 + i
                        if gm < M:
                            for j in range(4):
                                gn = n0 + tx * 4 + j
                                if gn < N:
                                    y.store(gm * N + gn, acc[tid, i, j])
                mt += grid[1]


def emulate(inputs, dtype, eps, grid_y_cap=None, aligned=True):
    """Run the launch plan of impls/rmsnorm_gemm/cuda.py through the emulated kernels."""
    mod = _impl_module("rmsnorm_gemm")
    M, H = inputs["x"].shape
    N = inputs["w"].shape[0]
    vec, plan = mod.launch_plan(M, H, N, dtype, aligned)
    x, g, w = (Mem(inputs[k], dtype) for k in ("x", "gamma", "w"))
    y = Out(M * N)
    for name, grid, block in plan:
        if grid_y_cap and len(grid) == 2:
            grid = (grid[0], min(grid[1], grid_y_cap))
        if "_gemv_" in name:
            emulate_gemv(x, g, w, y, M, H, N, eps, vec, grid)
        elif "_rms_" in name:
            inv = Out(M)
            emulate_rms(x, inv, M, H, eps, grid)
            assert (inv.writes == 1).all()
        else:
            emulate_tiled(x, g, w, inv, y, M, H, N, vec, grid)
    return y, vec, plan


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
    y, vec, plan = emulate(inputs, dtype, 1e-5, cap)
    assert (y.writes == 1).all(), f"{(y.writes != 1).sum()} outputs written 0 or 2+ times"
    x = inputs["x"].astype(np.float64)
    ref = (x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * inputs["gamma"].astype(np.float64)) \
        @ inputs["w"].astype(np.float64).T
    np.testing.assert_allclose(y.v.reshape(M, N), ref, rtol=1e-9, atol=1e-9)


def test_emulated_unaligned_pointers_use_scalar_loads():
    from impls.rmsnorm_gemm import SPEC

    inputs = SPEC.make_inputs({"M": 2, "H": 16, "N": 20}, "float32", seed=1)
    y, vec, _ = emulate(inputs, "float32", 1e-5, aligned=False)
    assert vec == 0 and (y.writes == 1).all()


def bf16_round_like_kernel(f: np.ndarray) -> np.ndarray:
    """fb_f32_to_bf16 from the sources, in NumPy."""
    u = np.asarray(f, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    q = ((u >> 16) & 0x8000) | 0x7FC0
    return np.where(nan, q, r).astype(np.uint16)


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


_REGISTRY = []


def _run(impl_key, inputs, dtype, eps=1e-5, poison=True):
    from harness.registry import discover
    from impls.rmsnorm_gemm import SPEC

    if not _REGISTRY:
        _REGISTRY.append(discover(entry_points=False))
    p = _REGISTRY[0].impls[impl_key].prepare(SPEC, inputs, {"eps": eps}, dtype)
    if poison:
        p.poison()
    p.run()
    return p, p.outputs()["y"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("M,H,N", AWKWARD_SHAPES)
def test_gpu_fused_matches_reference(M, H, N, dtype):
    _gpu_or_skip()
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


def test_gpu_time_run_and_flush():
    _gpu_or_skip()
    from impls.rmsnorm_gemm import SPEC

    b = _cuda_backend()
    inputs = SPEC.make_inputs({"M": 1, "H": 4096, "N": 6144}, "float16", seed=0)
    p, _ = _run("rmsnorm_gemm/cuda/fused", inputs, "float16")
    b.flush_cache()
    t = b.time_run(p)
    assert 0 < t < 1.0
    fp = b.fingerprint()
    assert fp["gpu"] and fp["sm_count"] > 0 and fp["l2_bytes"] > 0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_chain_ops_match_numpy(dtype):
    _gpu_or_skip()
    from harness.dtypes import np_dtype
    from harness.ops import NumpyOps

    b = _cuda_backend()
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


def test_gpu_upload_download_poison_roundtrip():
    _gpu_or_skip()
    b = _cuda_backend()
    for dt in (np.float32, np.float16, ml_dtypes.bfloat16):
        a = np.arange(12, dtype=np.float32).reshape(3, 4).astype(dt)
        buf = b.upload(a)
        back = b.download(buf)
        assert back.dtype == np.dtype(dt) and (back == a).all()
        b.poison(buf)
        assert np.isnan(b.download(buf).astype(np.float32)).all()


def test_gpu_measure_peak():
    _gpu_or_skip()
    peak = _cuda_backend().measure_peak()
    assert peak["copy_gbps"] > 0 and peak["matmul_gflops"] > 0
