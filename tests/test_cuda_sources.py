"""The CUDA sources: they compile (nvcc or NVRTC, no GPU needed), define the kernels their
modules launch, and index memory correctly (a NumPy emulation of every kernel's loops that
checks bounds, 16-byte alignment and that each output is written exactly once). The cuda
backend's probe must fail softly without a GPU. GPU tests run only where the probe passes
(elsewhere each is one skip, tests/devices.py).

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
from tests.devices import needs_cuda

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
    _need_compiler(compiler)
    r = cc.compile_to_ptx(cc.cuda_source(src), src.name, compiler)
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
def _defines(path: Path) -> dict[str, int]:
    out = {}
    for name, val in re.findall(r"^#define\s+(FB_\w+)\s+(\d+)\b", cc.cuda_source(path), re.M):
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
    chosen = mod.launch_plan(M, H, N, dtype, aligned)
    vec, plan = chosen.switches["vec"], chosen.launches
    x, g, w = (Mem(inputs[k], dtype) for k in ("x", "gamma", "w"))
    y = Out(M * N)
    for name, grid, block, smem, _ in plan:
        assert smem == 0
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

    b = _cuda_backend()
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


@needs_cuda
def test_gpu_upload_download_poison_roundtrip():
    b = _cuda_backend()
    for dt in (np.float32, np.float16, ml_dtypes.bfloat16):
        a = np.arange(12, dtype=np.float32).reshape(3, 4).astype(dt)
        buf = b.upload(a)
        back = b.download(buf)
        assert back.dtype == np.dtype(dt) and (back == a).all()
        b.poison(buf)
        assert np.isnan(b.download(buf).astype(np.float32)).all()


@needs_cuda
def test_gpu_measure_peak():
    peak = _cuda_backend().measure_peak()
    assert peak["copy_gbps"] > 0 and peak["matmul_gflops"] > 0


# ==== the fusions written on the shared pair-GEMV / pair-tiled core ============================
# add_rmsnorm, rmsnorm_qkv_rope, gemm_swiglu, swiglu_ffn. Their .cu files share one prelude
# (traits, reductions) and one GEMM core: fb_pair_gemv (decode: one warp per pair of W rows)
# and fb_pair_tiled (prefill: 64 rows x 32 pairs per block, tile column c = W row c & 1 of
# pair c / 2), specialised by operand functors (where the input row comes from) and pair
# functors (which W rows make a pair, and the epilogue that combines the two accumulators).
# The emulation below transcribes the core and every functor, one thread at a time.

NEW_FUSIONS = ("add_rmsnorm", "rmsnorm_qkv_rope", "gemm_swiglu", "swiglu_ffn")
NEW_CU = {f: REPO / "impls" / f / f"{f}.cu" for f in NEW_FUSIONS}


@pytest.mark.parametrize("fusion", NEW_FUSIONS)
def test_new_sources_listed_with_entries(fusion):
    assert NEW_CU[fusion] in cc.cuda_sources()
    mod = _impl_module(fusion)
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
    for fusion in ("rmsnorm_qkv_rope", "gemm_swiglu", "swiglu_ffn"):
        m, d = _impl_module(fusion), _defines(NEW_CU[fusion])
        assert m.GEMV_THREADS == d["FB_GEMV_THREADS"] == 256
        assert m.GEMV_PAIRS_PER_BLOCK == d["FB_GEMV_PAIRS_PER_BLOCK"] == d["FB_GEMV_THREADS"] // 32
        assert m.TILED_THREADS == d["FB_TILED_THREADS"] == 256
        assert (m.TILE_M, m.TILE_PAIRS) == (d["FB_TM"], d["FB_TP"]) == (64, 32)
        assert d["FB_GEMV_CHUNK"] % 8 == 0 and d["FB_TK"] % 8 == 0
    m, d = _impl_module("rmsnorm_qkv_rope"), _defines(NEW_CU["rmsnorm_qkv_rope"])
    assert m.RMS_THREADS == d["FB_RMS_THREADS"] and m.RMS_ROWS_PER_BLOCK == d["FB_RMS_THREADS"] // 32
    m, d = _impl_module("add_rmsnorm"), _defines(NEW_CU["add_rmsnorm"])
    assert m.THREADS == d["FB_ADD_THREADS"] and m.STATIC_SMEM == 4 * (d["FB_ADD_THREADS"] // 32)  # red[FB_ADD_WARPS]


class VOut(Out):
    """An output that also takes 16-byte vector stores."""

    def vstore(self, off: int, vals: np.ndarray, vec: int):
        assert off % vec == 0, f"misaligned 16-byte store at element {off}"
        for e, v in enumerate(vals):
            self.store(off + e, v)


def scratch_mem(out: Out) -> Mem:
    """A float32 device scratch written by an emulated kernel, read by the next (values kept
    in float64 so that the emulation checks indexing, not float32 rounding)."""
    assert (out.writes == 1).all(), "scratch element written 0 or 2+ times"
    m = Mem.__new__(Mem)
    m.dtype, m.raw, m.vec = "float32", out.v.copy(), 4
    return m


# ---- operand functors (FbNormRow, FbPlainRow, FbNormA, FbPlainA) -----------------------------
class NormRow:
    def __init__(self, x, g, H, eps):
        self.x, self.g, self.H, self.eps = x, g, H, eps

    def scale(self, m, threads):
        ss = 0.0
        for tid in range(threads):
            for h in range(tid, self.H, threads):
                v = self.x.load(m * self.H + h)
                ss += v * v
        return 1.0 / np.sqrt(ss / self.H + self.eps)

    def fill(self, xs, m, c0, L, s, threads):
        for tid in range(threads):
            for i in range(tid, L, threads):
                xs[i] = self.x.load(m * self.H + c0 + i) * s * self.g.load(c0 + i)


class PlainRow:
    def __init__(self, x, K):
        self.x, self.K = x, K

    def scale(self, m, threads):
        return 1.0

    def fill(self, xs, m, c0, L, s, threads):
        for tid in range(threads):
            for i in range(tid, L, threads):
                xs[i] = self.x.load(m * self.K + c0 + i)


class NormA:
    def __init__(self, x, g, inv, H):
        self.x, self.g, self.inv, self.H = x, g, inv, H

    def load(self, gm, gk):
        return self.x.load(gm * self.H + gk) * self.inv.v[gm] * self.g.load(gk)

    def load_vec(self, gm, gk, n):
        assert n == self.x.vec
        return self.x.vload(gm * self.H + gk) * self.inv.v[gm] * np.array([self.g.load(gk + e) for e in range(n)])


class PlainA:
    def __init__(self, x, K):
        self.x, self.K = x, K

    def load(self, gm, gk):
        return self.x.load(gm * self.K + gk)

    def load_vec(self, gm, gk, n):  # n / x.vec 16-byte loads
        assert n % self.x.vec == 0
        return np.concatenate([self.x.vload(gm * self.K + gk + q * self.x.vec) for q in range(n // self.x.vec)])


# ---- pair functors (FbQkvPairs, FbSwigluPairs, FbRowPairs) -----------------------------------
def rope_cs(pos, i, d, theta):
    a = float(pos) * float(theta) ** (-(i * 2.0) / d)
    return np.cos(a), np.sin(a)


class QkvPairs:
    def __init__(self, w, pos, q, k, v, H, nh, nkv, d, theta):
        self.w, self.pos, self.q, self.k, self.v = w, pos, q, k, v
        self.H, self.nh, self.nkv, self.d, self.theta = H, nh, nkv, d, theta

    def row(self, p, which):
        half = self.d >> 1
        head, i = p // half, p % half
        return self.w, (head * self.d + i + which * half) * self.H

    def store(self, m, p, a0, a1):
        half = self.d >> 1
        head, i = p // half, p % half
        nh, nkv = self.nh, self.nkv
        if head < nh:
            out, hh, heads = self.q, head, nh
        elif head < nh + nkv:
            out, hh, heads = self.k, head - nh, nkv
        else:
            out, hh, heads = self.v, head - nh - nkv, nkv
        if head < nh + nkv:
            c, s = rope_cs(self.pos[m], i, self.d, self.theta)
            a0, a1 = a0 * c - a1 * s, a1 * c + a0 * s
        o = (m * heads + hh) * self.d + i
        out.store(o, a0)
        out.store(o + half, a1)


class SwigluPairs:
    def __init__(self, wg, wu, y, H, I):
        self.wg, self.wu, self.y, self.H, self.I = wg, wu, y, H, I

    def row(self, p, which):
        return (self.wu if which else self.wg), p * self.H

    def store(self, m, p, g, u):
        self.y.store(m * self.I + p, g / (1.0 + np.exp(-g)) * u)


class RowPairs:
    def __init__(self, w, y, K, N):
        self.w, self.y, self.K, self.N = w, y, K, N

    def row(self, p, which):
        return self.w, min(2 * p + which, self.N - 1) * self.K

    def store(self, m, p, a0, a1):
        n = 2 * p
        self.y.store(m * self.N + n, a0)
        if n + 1 < self.N:
            self.y.store(m * self.N + n + 1, a1)


# ---- the core: fb_pair_gemv and fb_pair_tiled ------------------------------------------------
def emulate_pair_gemv(d, xsrc, pr, M, K, npairs, vec, VEC, grid):
    THREADS, CHUNK, PPB = d["FB_GEMV_THREADS"], d["FB_GEMV_CHUNK"], d["FB_GEMV_PAIRS_PER_BLOCK"]
    WARPS = THREADS // 32
    assert PPB == WARPS
    for bx in range(grid[0]):
        for by in range(grid[1]):
            m = by
            while m < M:
                s = xsrc.scale(m, THREADS)
                acc = np.zeros((WARPS, 32, 2))
                c0 = 0
                while c0 < K:
                    L = min(CHUNK, K - c0)
                    assert 1 <= L <= CHUNK
                    xs = np.full(CHUNK, np.nan)
                    xsrc.fill(xs, m, c0, L, s, THREADS)
                    for warp in range(WARPS):
                        p = bx * PPB + warp
                        if p >= npairs:
                            continue
                        (m0, o0), (m1, o1) = pr.row(p, 0), pr.row(p, 1)
                        for lane in range(32):
                            if vec:
                                assert L % VEC == 0
                                for j in range(lane, L // VEC, 32):
                                    xv = xs[j * VEC:(j + 1) * VEC]
                                    assert not np.isnan(xv).any(), "read of unwritten shared memory"
                                    acc[warp, lane, 0] += m0.vload(o0 + c0 + j * VEC) @ xv
                                    acc[warp, lane, 1] += m1.vload(o1 + c0 + j * VEC) @ xv
                            else:
                                for j in range(lane, L, 32):
                                    assert not np.isnan(xs[j])
                                    acc[warp, lane, 0] += m0.load(o0 + c0 + j) * xs[j]
                                    acc[warp, lane, 1] += m1.load(o1 + c0 + j) * xs[j]
                    c0 += CHUNK
                for warp in range(WARPS):
                    p = bx * PPB + warp
                    if p < npairs:
                        pr.store(m, p, acc[warp, :, 0].sum(), acc[warp, :, 1].sum())
                m += grid[1]


def emulate_pair_tiled(d, asrc, pr, M, K, npairs, vec, VEC, grid):
    TM, TP, TK, PAD, THREADS = d["FB_TM"], d["FB_TP"], d["FB_TK"], d["FB_TPAD"], d["FB_TILED_THREADS"]
    assert TM == 2 * TP == 64 and THREADS == 256
    KV = TK // VEC
    for bx in range(grid[0]):
        p0 = bx * TP
        for by in range(grid[1]):
            mt = by
            while mt * TM < M:
                m0 = mt * TM
                acc = np.zeros((THREADS, 4, 4))
                k0 = 0
                while k0 < K:
                    As = np.full((TK, TM + PAD), np.nan)
                    Ws = np.full((TK, 2 * TP + PAD), np.nan)
                    wa = np.zeros((TK, TM), dtype=int)
                    ww = np.zeros((TK, 2 * TP), dtype=int)
                    for tid in range(THREADS):
                        if vec:
                            for v in range(tid, TM * KV, THREADS):
                                r, kk = v // KV, (v % KV) * VEC
                                gk, gm, gp = k0 + kk, m0 + r, p0 + (r >> 1)
                                As[kk:kk + VEC, r] = asrc.load_vec(gm, gk, VEC) if (gm < M and gk < K) else 0.0
                                wa[kk:kk + VEC, r] += 1
                                if gp < npairs and gk < K:
                                    mem, off = pr.row(gp, r & 1)
                                    Ws[kk:kk + VEC, r] = mem.vload(off + gk)
                                else:
                                    Ws[kk:kk + VEC, r] = 0.0
                                ww[kk:kk + VEC, r] += 1
                        else:
                            for e in range(tid, TM * TK, THREADS):
                                r, kk = e // TK, e % TK
                                gk, gm, gp = k0 + kk, m0 + r, p0 + (r >> 1)
                                As[kk, r] = asrc.load(gm, gk) if gm < M and gk < K else 0.0
                                if gp < npairs and gk < K:
                                    mem, off = pr.row(gp, r & 1)
                                    Ws[kk, r] = mem.load(off + gk)
                                else:
                                    Ws[kk, r] = 0.0
                                wa[kk, r] += 1
                                ww[kk, r] += 1
                    assert (wa == 1).all() and (ww == 1).all(), "shared tile slot written 0 or 2+ times"
                    for tid in range(THREADS):
                        tx, ty = tid & 15, tid >> 4
                        a, b = As[:, ty * 4:ty * 4 + 4], Ws[:, tx * 4:tx * 4 + 4]
                        assert not (np.isnan(a).any() or np.isnan(b).any())
                        acc[tid] += a.T @ b
                    k0 += TK
                for tid in range(THREADS):
                    tx, ty = tid & 15, tid >> 4
                    for i in range(4):
                        gm = m0 + ty * 4 + i
                        if gm < M:
                            for jp in range(2):
                                gp = p0 + tx * 2 + jp
                                if gp < npairs:
                                    pr.store(gm, gp, acc[tid, i, 2 * jp], acc[tid, i, 2 * jp + 1])
                mt += grid[1]


def _cap(grid, cap):
    return (grid[0], min(grid[1], cap)) if cap and len(grid) == 2 else grid


def _check_written_once(**outs):
    for name, o in outs.items():
        assert (o.writes == 1).all(), f"{name}: {(o.writes != 1).sum()} elements written 0 or 2+ times"


def _close(got, want):
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-9,
                               atol=1e-9 * max(1.0, float(np.abs(want).max())))


def _ref(fusion, inputs, attrs):
    import importlib

    from harness.ops import NumpyOps

    pkg = importlib.import_module(f"impls.{fusion}")
    return pkg.SPEC.decompose(NumpyOps("float64"), **inputs, **attrs)


# ---- rmsnorm_qkv_rope -----------------------------------------------------------------------
def emulate_qkv(inputs, dtype, attrs, cap=None, aligned=True):
    mod = _impl_module("rmsnorm_qkv_rope")
    d = _defines(NEW_CU["rmsnorm_qkv_rope"])
    nh, nkv, hd = attrs["n_heads"], attrs["n_kv_heads"], attrs["head_dim"]
    M, H = inputs["x"].shape
    chosen = mod.launch_plan(M, H, nh, nkv, hd, dtype, aligned)
    vec, plan = chosen.switches["vec"], chosen.launches
    x, g, w = (Mem(inputs[k], dtype) for k in ("x", "gamma", "w"))
    pos = np.asarray(inputs["pos"], dtype=np.int32)
    q, k, v = Out(M * nh * hd), Out(M * nkv * hd), Out(M * nkv * hd)
    pr = QkvPairs(w, pos, q, k, v, H, nh, nkv, hd, attrs["theta"])
    P = (nh + 2 * nkv) * (hd // 2)
    inv = None
    for name, grid, block, smem, _ in plan:
        assert smem == 0
        grid = _cap(grid, cap)
        if "_gemv_" in name:
            emulate_pair_gemv(d, NormRow(x, g, H, attrs["eps"]), pr, M, H, P, vec, x.vec, grid)
        elif "_rms_" in name:
            inv = Out(M)
            emulate_rms(x, inv, M, H, attrs["eps"], grid)
            assert (inv.writes == 1).all()
        else:
            emulate_pair_tiled(d, NormA(x, g, inv, H), pr, M, H, P, vec, x.vec, grid)
    return {"q": q, "k": k, "v": v}, vec, plan


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
    _check_written_once(**outs)
    ref = _ref("rmsnorm_qkv_rope", inputs, attrs)
    for name in ("q", "k", "v"):
        _close(outs[name].v, ref[name])


# ---- gemm_swiglu ----------------------------------------------------------------------------
def emulate_gemm_swiglu(inputs, dtype, cap=None, aligned=True):
    mod = _impl_module("gemm_swiglu")
    d = _defines(NEW_CU["gemm_swiglu"])
    M, H = inputs["x"].shape
    I = inputs["w_gate"].shape[0]
    chosen = mod.launch_plan(M, H, I, dtype, aligned)
    vec, plan = chosen.switches["vec"], chosen.launches
    x, wg, wu = (Mem(inputs[k], dtype) for k in ("x", "w_gate", "w_up"))
    y = Out(M * I)
    (name, grid, _, _, _), = plan
    grid = _cap(grid, cap)
    pr = SwigluPairs(wg, wu, y, H, I)
    if "_gemv_" in name:
        emulate_pair_gemv(d, PlainRow(x, H), pr, M, H, I, vec, x.vec, grid)
    else:
        emulate_pair_tiled(d, PlainA(x, H), pr, M, H, I, vec, x.vec, grid)
    return y, vec, plan


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
    _check_written_once(y=y)
    _close(y.v, _ref("gemm_swiglu", inputs, {})["y"])


# ---- swiglu_ffn -----------------------------------------------------------------------------
def emulate_onchip(d, x, wg, wu, wd, act, y, H, I, G):
    """swiglu_ffn_onchip, one thread at a time between barriers. `act` records the entries
    phase 1 computes (each exactly once over all blocks: in the kernel they live only in
    shared memory); every block must add to every row of the accumulator exactly once, and
    the last block alone writes y."""
    THREADS, UNIT, MAX_UNITS, ROWS = (d[k] for k in ("FB_ONCHIP_THREADS", "FB_ONCHIP_UNIT", "FB_ONCHIP_MAX_UNITS",
                                                     "FB_ONCHIP_ROWS"))
    WARPS, VEC = THREADS // 32, x.vec
    LPR = 16 if VEC == 8 else 32
    RPW = 32 // LPR
    assert H <= d["FB_ONCHIP_MAX_H"] and H % VEC == 0 and I % VEC == 0
    acc = np.zeros(H)
    adds = np.zeros((G, H), dtype=np.int64)
    U = -(-I // UNIT)
    for b in range(G):
        u0, u1 = b * U // G, (b + 1) * U // G
        i0 = u0 * UNIT
        n = min(u1 * UNIT, I) - i0
        assert 1 <= n <= UNIT * MAX_UNITS and n % VEC == 0, (b, n)
        xs = np.full(d["FB_ONCHIP_MAX_H"], np.nan)
        for tid in range(THREADS):
            for h in range(tid, H, THREADS):
                xs[h] = x.load(h)
        act_s = np.full(UNIT * MAX_UNITS, np.nan)
        for warp in range(WARPS):
            for j in range(warp, n, WARPS):
                g = u = 0.0
                for lane in range(32):
                    for jv in range(lane, H // VEC, 32):
                        xv = xs[jv * VEC:(jv + 1) * VEC]
                        assert not np.isnan(xv).any(), "read of unwritten shared memory"
                        g += wg.vload((i0 + j) * H + jv * VEC) @ xv
                        u += wu.vload((i0 + j) * H + jv * VEC) @ xv
                act_s[j] = g / (1.0 + np.exp(-g)) * u
                act.store(i0 + j, act_s[j])
        for warp in range(WARPS):
            hb = warp * RPW * ROWS
            while hb < H:
                for r in range(ROWS):
                    part = {}
                    for lane in range(32):
                        sub, grp = lane % LPR, lane // LPR
                        h = hb + r * RPW + grp
                        if sub < n // VEC and h < H:
                            a = act_s[sub * VEC:(sub + 1) * VEC]
                            assert not np.isnan(a).any(), "read of unwritten shared memory"
                            part[grp] = part.get(grp, 0.0) + wd.vload(h * I + i0 + sub * VEC) @ a
                    for grp in range(RPW):
                        h = hb + r * RPW + grp
                        if h < H:
                            acc[h] += part.get(grp, 0.0)
                            adds[b, h] += 1
                hb += WARPS * RPW * ROWS
    assert (adds == 1).all(), "an accumulator row added 0 or 2+ times by one block"
    for tid in range(THREADS):  # the last block's rounding pass
        for h in range(tid, H, THREADS):
            y.store(h, acc[h])


def emulate_swiglu_ffn(inputs, dtype, cap=None, aligned=True, sms=132):
    from dataclasses import replace

    from harness.cuda_launch import H200

    mod = _impl_module("swiglu_ffn")
    d = _defines(NEW_CU["swiglu_ffn"])
    M, H = inputs["x"].shape
    I = inputs["w_gate"].shape[0]
    chosen = mod.launch_plan(M, H, I, dtype, aligned, replace(H200, sm_count=sms))
    (vec_up, vec_down), plan = (chosen.switches["vec_up"], chosen.switches["vec_down"]), chosen.launches
    x, wg, wu, wd = (Mem(inputs[k], dtype) for k in ("x", "w_gate", "w_up", "w_down"))
    act, y = Out(M * I), Out(M * H)
    if len(plan) == 1:
        (name, grid, block, _, _), = plan
        assert "_onchip_" in name and block == (d["FB_ONCHIP_THREADS"],)
        emulate_onchip(d, x, wg, wu, wd, act, y, H, I, grid[0])
        return act, y, (vec_up, vec_down), plan
    (up, g_up, *_), (down, g_down, *_) = plan
    pr_up = SwigluPairs(wg, wu, act, H, I)
    if "_gemv_" in up:
        emulate_pair_gemv(d, PlainRow(x, H), pr_up, M, H, I, vec_up, x.vec, _cap(g_up, cap))
    else:
        emulate_pair_tiled(d, PlainA(x, H), pr_up, M, H, I, vec_up, x.vec, _cap(g_up, cap))
    a = scratch_mem(act)
    pr_down = RowPairs(wd, y, I, H)
    if "_gemv_" in down:
        emulate_pair_gemv(d, PlainRow(a, I), pr_down, M, I, (H + 1) // 2, vec_down, wd.vec, _cap(g_down, cap))
    else:
        emulate_pair_tiled(d, PlainA(a, I), pr_down, M, I, (H + 1) // 2, vec_down, wd.vec, _cap(g_down, cap))
    return act, y, (vec_up, vec_down), plan


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

    mod = _impl_module("swiglu_ffn")
    inputs = SPEC.make_inputs({"M": 1, "H": H, "I": I}, dtype, seed=H + I + sms)
    act, y, vecs, plan = emulate_swiglu_ffn(inputs, dtype, sms=sms)
    assert len(plan) == 1 and plan[0][1] == (mod.onchip_grid(I, sms),)
    _check_written_once(act=act, y=y)
    _close(act.v, _ref("gemm_swiglu", {k: inputs[k] for k in GS.inputs}, {})["y"])
    _close(y.v, _ref("swiglu_ffn", inputs, {})["y"])


def test_onchip_plan_only_where_it_applies():
    mod = _impl_module("swiglu_ffn")
    d = _defines(NEW_CU["swiglu_ffn"])
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
    _check_written_once(act=act, y=y)
    sub = {k: inputs[k] for k in GS.inputs}
    _close(act.v, _ref("gemm_swiglu", sub, {})["y"])
    _close(y.v, _ref("swiglu_ffn", inputs, {})["y"])


# ---- add_rmsnorm ----------------------------------------------------------------------------
def emulate_add_rmsnorm(inputs, dtype, eps, cap=None, aligned=True, limits=None):
    from harness.cuda_launch import H200, check

    limits = limits or H200
    mod = _impl_module("add_rmsnorm")
    d = _defines(NEW_CU["add_rmsnorm"])
    THREADS = d["FB_ADD_THREADS"]
    M, H = inputs["x"].shape
    chosen = mod.launch_plan(M, H, dtype, aligned, limits)
    check(chosen, limits)
    vec, cache = chosen.switches["vec"], chosen.switches["cache"]
    (name, grid, block, smem, _), = chosen.launches
    if cap:
        grid = (min(grid[0], cap),)
    x, r, g = (Mem(inputs[k], dtype) for k in ("x", "residual", "gamma"))
    VEC = x.vec
    h, y = VOut(M * H), VOut(M * H)
    assert smem == (4 * H if cache else 0)
    for bx in range(grid[0]):
        hs = np.full(smem // 4, np.nan)
        owner = np.full(smem // 4, -1)

        def hs_write(slot, tid, val):
            assert 0 <= slot < hs.size, f"shared slot {slot} beyond the dynamic allocation"
            hs[slot], owner[slot] = val, tid

        def hs_read(slot, tid):
            assert 0 <= slot < hs.size and owner[slot] == tid, "shared slot read by another thread"
            return hs[slot]

        m = bx
        while m < M:
            base = m * H
            ss = 0.0
            if vec:
                nv = H // VEC
                keep = {}
                for tid in range(THREADS):
                    for j in range(tid, nv, THREADS):
                        a = x.vload(base + j * VEC) + r.vload(base + j * VEC)
                        ss += float(a @ a)
                        h.vstore(base + j * VEC, a, VEC)
                        if cache:
                            for e in range(VEC):
                                hs_write(e * nv + j, tid, a[e])
                s = 1.0 / np.sqrt(ss / H + eps)
                for tid in range(THREADS):
                    for j in range(tid, nv, THREADS):
                        if cache:
                            a = np.array([hs_read(e * nv + j, tid) for e in range(VEC)])
                        else:
                            a = x.vload(base + j * VEC) + r.vload(base + j * VEC)
                        y.vstore(base + j * VEC, a * s * g.vload(j * VEC), VEC)
            else:
                for tid in range(THREADS):
                    for k in range(tid, H, THREADS):
                        a = x.load(base + k) + r.load(base + k)
                        ss += a * a
                        h.store(base + k, a)
                        if cache:
                            hs_write(k, tid, a)
                s = 1.0 / np.sqrt(ss / H + eps)
                for tid in range(THREADS):
                    for k in range(tid, H, THREADS):
                        a = hs_read(k, tid) if cache else x.load(base + k) + r.load(base + k)
                        y.store(base + k, a * s * g.load(k))
            m += grid[0]
    return h, y, vec, cache


def _small_shared_device():
    """H200's limits with 192 bytes of shared memory per block: add_rmsnorm caches rows up to
    H = 40 there, so the recompute path can be emulated on small rows."""
    from dataclasses import replace

    from harness.cuda_launch import H200

    return replace(H200, name="a device with 192 bytes of shared memory a block", shared_per_block=192,
                   shared_per_block_optin=192)


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
    h, y, vec, cache = emulate_add_rmsnorm(inputs, dtype, 1e-5, cap, limits=_small_shared_device() if small else None)
    assert cache == cached
    _check_written_once(h=h, y=y)
    ref = _ref("add_rmsnorm", inputs, {"eps": 1e-5})
    _close(h.v, ref["h"])
    _close(y.v, ref["y"])


def test_new_unaligned_pointers_use_scalar_loads():
    m = _impl_module("gemm_swiglu")
    assert m.launch_plan(2, 16, 8, "float32", aligned=False).switches == {"vec": 0}
    m = _impl_module("rmsnorm_qkv_rope")
    assert m.launch_plan(2, 16, 2, 1, 4, "float16", aligned=False).switches == {"vec": 0}
    m = _impl_module("swiglu_ffn")
    assert m.launch_plan(2, 16, 8, "float32", aligned=False).switches == {"vec_up": 0, "vec_down": 0}
    m = _impl_module("add_rmsnorm")
    assert m.launch_plan(2, 16, "float32", aligned=False).switches["vec"] == 0


def test_emulated_gemv_down_uses_whole_chain():
    """Decode of swiglu_ffn: one launch at M = 1 (the onchip kernel, 896 units of 16 over 132
    blocks), two at M = 8 and no third (no host work between them)."""
    m = _impl_module("swiglu_ffn")
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


def _judge_impl(impl_key, fusion, params, dtype, value_shape, seed):
    import importlib

    from harness.accuracy import Yardstick

    if not _REGISTRY:
        from harness.registry import discover

        _REGISTRY.append(discover(entry_points=False))
    spec = importlib.import_module(f"impls.{fusion}").SPEC
    dims, attrs = spec.split(params)
    inputs = spec.make_inputs(dims, dtype, seed, value_shape)
    p = _REGISTRY[0].impls[impl_key].prepare(spec, inputs, attrs, dtype)
    p.poison()
    p.run()
    out = p.outputs()
    for name, shape in spec.output_shapes(dims).items():
        assert out[name].shape == shape, (name, out[name].shape, shape)
        assert not np.isnan(out[name].astype(np.float32)).any(), f"{name}: NaN (an element never written?)"
    return Yardstick.for_inputs(spec, inputs, attrs, dtype).judge(out)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("fusion,params", NEW_GPU_PARAMS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(str(x) for x in v.values()))
def test_gpu_new_fused_matches_reference(fusion, params, dtype):
    for value_shape in ("normal", "outliers", "large"):
        v = _judge_impl(f"{fusion}/cuda/fused", fusion, params, dtype, value_shape, seed=sum(params.values()))
        assert v.passed, (value_shape, v.reasons)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_onchip_decode_leaves_its_state_zeroed_and_repeats(dtype):
    """The onchip kernel's accumulator and ticket are zero after every run, so a second and
    third run give y again (to float32 rounding: the blocks' partials meet in any order)."""
    import importlib

    if not _REGISTRY:
        from harness.registry import discover

        _REGISTRY.append(discover(entry_points=False))
    spec = importlib.import_module("impls.swiglu_ffn").SPEC
    inputs = spec.make_inputs({"M": 1, "H": 896, "I": 4864}, dtype, 7, "normal")
    p = _REGISTRY[0].impls["swiglu_ffn/cuda/fused"].prepare(spec, inputs, {}, dtype)
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
    v = _judge_impl(f"{fusion}/cuda/unfused", fusion, params, dtype, "normal", seed=3)
    assert v.passed, v.reasons


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_chain_split_reshape_rope_match_numpy(dtype):
    from harness.dtypes import np_dtype
    from harness.ops import NumpyOps

    b = _cuda_backend()
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
