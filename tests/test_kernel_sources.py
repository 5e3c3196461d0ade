"""harness/kernels/: the shared fragments and the unfused chains' sources (issue 20).

Every file there is used (spliced by a source, or named by the harness's Python); the CUDA
chain (fb_chain.cu) splices the prelude, so the CUDA sources hold one bfloat16 rounding
routine and the WGSL ones one too; the chain compiles without a GPU and once per device with
one; the WGSL chain's sections are each used, and its kernels compile and run on the wgsl
backend's adapter (lavapipe where there is no GPU).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from harness import cuda_compile as cc
from harness import splice

REPO = Path(__file__).resolve().parent.parent
KERNELS = splice.KERNELS_DIR
SPLICE_LINE = re.compile(r"^//@fusebench-splice ([\w.\-]+)[ \t]*$", re.M)
KERNEL_FILE = re.compile(r"\bfb_\w+\.(?:cu|cuh|wgsl)\b")
# bfloat16 rounding, round to nearest even: the 0x7fff bias. CUDA's float16 rounding is the
# cvt.rn.f16.f32 instruction (WGSL's is pack2x16float, a builtin).
BF16_ROUNDING = re.compile(r"0x7fffu?\s*\+|\+\s*0x7fffu?\b")
F16_ROUNDING = re.compile(r"cvt\.rn\.f16\.f32")


def _python_files() -> list[Path]:
    return sorted(p for d in ("harness", "impls") for p in (REPO / d).rglob("*.py"))


def _named_in_python() -> dict[str, list[str]]:
    """Kernel file names in the string literals of the harness's and impls' Python (code, not
    docstrings or comments) -> where."""
    out: dict[str, list[str]] = {}
    for p in _python_files():
        tree = ast.parse(p.read_text(), str(p))
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for name in KERNEL_FILE.findall(node.value):
                    out.setdefault(name, []).append(str(p.relative_to(REPO)))
    return out


def _cuda_texts() -> dict[str, str]:
    """CUDA as written: the kernel files, the fused sources and CUDA inside the Python."""
    files = [*KERNELS.glob("*.cu"), *KERNELS.glob("*.cuh"), *(REPO / "impls").glob("*/*.cu"),
             REPO / "harness" / "backends" / "cuda.py", *(REPO / "impls").glob("*/cuda.py")]
    return {str(p.relative_to(REPO)): p.read_text() for p in sorted(files)}


def _wgsl_texts() -> dict[str, str]:
    files = [*KERNELS.glob("*.wgsl"), *(REPO / "impls").glob("*/*.wgsl"),
             REPO / "harness" / "backends" / "wgsl.py", *(REPO / "impls").glob("*/wgsl.py")]
    return {str(p.relative_to(REPO)): p.read_text() for p in sorted(files)}


# ---- every file in harness/kernels/ is used ------------------------------------------------
def test_every_kernel_file_is_used():
    """Reachable from a root (a fused source impls/*/*.{cu,wgsl}, or a file the Python names
    in a string) through `//@fusebench-splice` lines, or a Python module of numba helpers
    that some module imports: no orphan, and nothing named is missing."""
    named = _named_in_python()
    roots = [*(REPO / "impls").glob("*/*.cu"), *(REPO / "impls").glob("*/*.wgsl"),
             *(KERNELS / n for n in named)]
    missing = sorted(str(p.relative_to(REPO)) for p in roots if not p.is_file())
    assert not missing, f"named by the Python but not there: {missing}"
    seen: set[str] = set()
    todo = [p for p in roots]
    while todo:
        p = todo.pop()
        for frag in SPLICE_LINE.findall(p.read_text()):
            assert (KERNELS / frag).is_file(), f"{p.name} splices {frag}, which is not in harness/kernels/"
            if frag not in seen:
                seen.add(frag)
                todo.append(KERNELS / frag)
    python = "\n".join(q.read_text() for root in ("harness", "impls") for q in (REPO / root).rglob("*.py")
                       if q.parent != KERNELS)
    imported = {q.name for q in KERNELS.glob("*.py") if f"harness.kernels.{q.stem} import" in python
                or f"from harness.kernels import {q.stem}" in python}  # numba helpers, imported
    used = seen | set(named) | imported
    orphans = sorted(p.name for p in KERNELS.iterdir() if p.name not in used and p.name != "__pycache__")
    assert not orphans, f"files in harness/kernels/ that nothing splices or names: {orphans}"


def test_chain_sources_are_kernel_files():
    from harness.backends import cuda, wgsl

    assert cuda.CHAIN_CU.parent == KERNELS and cuda.CHAIN_CU.is_file()
    assert all((KERNELS / f).is_file() for f in wgsl.CHAIN_WGSL)
    assert not hasattr(cuda, "CHAIN_SOURCE"), "the chain's CUDA lives in harness/kernels/fb_chain.cu"


# ---- one rounding routine per language -------------------------------------------------------
def test_cuda_chain_splices_the_prelude():
    from harness.backends.cuda import CHAIN_CU

    raw = CHAIN_CU.read_text()
    assert "fb_prelude.cuh" in SPLICE_LINE.findall(raw)
    assert not re.search(r"fb_f32_to_(bf16|f16)\s*\(\s*float", raw), "the chain defines a conversion itself"
    text = cc.cuda_source(CHAIN_CU)
    assert not SPLICE_LINE.search(text) and not re.search(r"^\s*#\s*include", text, re.M)
    assert len(re.findall(r"\bfb_f32_to_bf16\s*\(\s*float", text)) == 1
    assert len(re.findall(r"\bfb_f32_to_f16\s*\(\s*float", text)) == 1
    assert len(BF16_ROUNDING.findall(text)) == 1, "bfloat16 rounding defined more than once in the chain"
    assert len(F16_ROUNDING.findall(text)) == 1


@pytest.mark.parametrize("src", [KERNELS / "fb_chain.cu", *cc.cuda_sources()], ids=lambda p: p.stem)
def test_spliced_cuda_source_rounds_bfloat16_once(src):
    text = cc.cuda_source(src)
    assert len(BF16_ROUNDING.findall(text)) <= 1
    assert len(re.findall(r"\bfb_f32_to_bf16\s*\(\s*float", text)) <= 1


def test_one_bfloat16_rounding_routine_per_language():
    """As written, CUDA rounds to bfloat16 in fb_prelude.cuh only and WGSL in one place
    (wgsl.py's fb_bf16_bits, which wgsl_buffers adds to every kernel storing bfloat16)."""
    cuda = {k: len(BF16_ROUNDING.findall(t)) for k, t in _cuda_texts().items()}
    assert {k: n for k, n in cuda.items() if n} == {"harness/kernels/fb_prelude.cuh": 1}
    wgsl = {k: len(BF16_ROUNDING.findall(t)) for k, t in _wgsl_texts().items()}
    assert {k: n for k, n in wgsl.items() if n} == {"harness/backends/wgsl.py": 1}


# ---- the CUDA chain compiles -----------------------------------------------------------------
def _need_compiler(which: str) -> None:
    if which not in cc.available_compilers():
        pytest.skip(f"{which} is not available here")


@pytest.mark.parametrize("compiler", cc.COMPILERS)
def test_cuda_chain_compiles_to_exactly_its_kernels(compiler):
    _need_compiler(compiler)
    from harness.backends.cuda import CHAIN_CU, CHAIN_KERNELS

    r = cc.compile_to_ptx(cc.cuda_source(CHAIN_CU), CHAIN_CU.name, compiler)
    assert r.ok, r.log
    assert r.entries() == set(CHAIN_KERNELS)
    threads = cc.ptx_max_threads(r.ptx)
    for s in ("f32", "f16", "bf16"):  # the row kernels are launched with CudaOps.THREADS
        assert threads.get(f"chain_rms_norm_{s}") == threads.get(f"chain_softmax_{s}") == 256


def test_cuda_chain_compiles_once_per_device(monkeypatch):
    cp = pytest.importorskip("cupy")
    from harness.backends import cuda

    device, compiled = [0], []
    monkeypatch.setattr(cp.cuda.runtime, "getDevice", lambda: device[0])
    monkeypatch.setattr(cp, "RawModule", lambda code, options: compiled.append(code) or object())
    monkeypatch.setattr(cuda.CHAIN_MODULE, "_by_device", {})
    first = cuda.CudaBackend().chain_module()
    assert cuda.CudaBackend().chain_module() is first and len(compiled) == 1  # shared by backends
    device[0] = 1
    assert cuda.BACKENDS["cuda"].chain_module() is not first and len(compiled) == 2
    assert compiled[0] == cc.cuda_source(cuda.CHAIN_CU)


# ---- the WGSL chain's sections -----------------------------------------------------------------
def test_sections_split_and_refuse_a_name_given_twice():
    text = "// heading\n//@fusebench-section a\nx\n\n//@fusebench-section b\n  y\n  z\n\n"
    assert splice.sections(text) == {"a": "x\n", "b": "  y\n  z\n"}
    with pytest.raises(ValueError, match="'a' given twice"):
        splice.sections(text + "//@fusebench-section a\n")


def test_wgsl_chain_files_are_read_once():
    from harness.backends import wgsl

    for f in wgsl.CHAIN_WGSL:
        assert splice.kernel_sections(f) is splice.kernel_sections(f)
        for name, text in splice.kernel_sections(f).items():
            assert not SPLICE_LINE.search(text), (f, name)


def test_wgsl_chain_placeholders_filled():
    """The kernels built from sections keep no placeholder but the matvec's workgroup size,
    which WgslBackend.gemv_source sets for the adapter."""
    from harness.backends import wgsl

    kernels = [wgsl._per_element(wgsl._ELEMWISE_PARAMS, op) for op in ("add", "mul", "silu")]
    kernels += [wgsl._fill_source(), wgsl._copy_source(), wgsl._bmm_source("nt"), wgsl._bmm_source("nn")]
    for text in kernels:
        assert "@@" not in text, text
    for kind in ("nt", "nn"):
        assert set(re.findall(r"@@\w+@@", wgsl._bmv_template(kind))) == {"@@GV_WG@@", "@@GV_RED@@"}


def test_wgsl_chain_runs_every_section(monkeypatch):
    """Every chain op once on the adapter, each against NumPy, recording the sections the
    kernels are built from: each section of fb_chain_*.wgsl is used, and each kernel compiles."""
    from harness.backends import get_backend, wgsl
    from harness.ops import NumpyOps

    b = get_backend("wgsl")
    ok, why = b.probe()
    if not ok:
        pytest.skip(f"wgsl backend unavailable: {why}")
    used: set[tuple[str, str]] = set()
    real = wgsl._section

    def record(file, name):
        used.add((file, name))
        return real(file, name)

    for fn in (wgsl._per_element, wgsl._bmm_source, wgsl._bmv_template):
        fn.cache_clear()
    monkeypatch.setattr(wgsl, "_section", record)
    try:
        rng = np.random.default_rng(5)
        ops, ref = b.ops("float32"), NumpyOps("float32")
        x = rng.standard_normal((6, 8)).astype(np.float32)
        g = rng.standard_normal(8).astype(np.float32)
        X, G = b.upload(x), b.upload(g)

        def close(got, want, tol=1e-5):
            np.testing.assert_allclose(b.download(got), want, rtol=tol, atol=tol)

        close(ops.rms_norm(X, G, 1e-5), ref.rms_norm(x, g, 1e-5))
        close(ops.softmax(X), ref.softmax(x))
        close(ops.add(X, G), ref.add(x, g))
        close(ops.mul(X, G), ref.mul(x, g))
        close(ops.silu(X), ref.silu(x))
        close(ops.scale(X, 0.5), ref.scale(x, 0.5))
        for got, want in zip(ops.split(X, [3, 5]), ref.split(x, [3, 5])):
            close(got, want)
        x4 = x.reshape(1, 2, 3, 8)
        np.testing.assert_array_equal(b.download(ops.causal_mask(b.upload(x4))), ref.causal_mask(x4))
        lens = np.array([5], dtype=np.int32)
        np.testing.assert_array_equal(b.download(ops.length_mask(b.upload(x4), lens)), ref.length_mask(x4, lens))
        pos = np.arange(6, dtype=np.int32) * 7
        close(ops.rope(b.upload(x.reshape(6, 2, 4)), pos, 10000.0), ref.rope(x.reshape(6, 2, 4), pos, 10000.0))
        for m in (2, 6):  # matvec (m <= GEMV_MAX_M) and tiled, both layouts of b
            a = x[:m]
            close(ops.matmul_nt(b.upload(a[None]), b.upload(x[None])), ref.matmul_nt(a[None], x[None]), 1e-4)
            close(ops.matmul(b.upload(a[None]), b.upload(x.T.copy()[None])), ref.matmul(a[None], x.T[None]), 1e-4)
        buf = b.empty((5,), "float32")
        b.fill_words(buf, 0x3F800000)
        np.testing.assert_array_equal(b.download(buf), np.ones(5, np.float32))
        src, dst = b.upload(x.reshape(-1)), b.empty((48,), "float32")
        b.dispatch(wgsl._copy_source(), [src, dst], ["in", "out"], wgsl.grid_1d(1), wgsl.pack_params(("u", 12)))
        np.testing.assert_array_equal(b.download(dst), x.reshape(-1))
    finally:
        for fn in (wgsl._per_element, wgsl._bmm_source, wgsl._bmv_template):
            fn.cache_clear()
    every = {(f, name) for f in wgsl.CHAIN_WGSL for name in splice.kernel_sections(f)}
    assert every - used == set(), f"sections no chain kernel uses: {sorted(every - used)}"
