"""The numba kernels' 16-bit decoding, checked on every one of the 65536 bit patterns."""

from __future__ import annotations

import numpy as np
import pytest

from harness.backends import get_backend
from harness.dtypes import np_dtype


@pytest.mark.parametrize("dtype, kind", [("float16", 2), ("bfloat16", 1)])
def test_widen_matches_numpy_on_every_bit_pattern(dtype, kind):
    ok, why = get_backend("cpu").probe()
    if not ok:
        pytest.skip(why)
    from impls.rmsnorm_gemm import rmsnorm_gemm_numba

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np_dtype(dtype)).astype(np.float32)
    got = rmsnorm_gemm_numba.widen_row(bits, kind)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("dtype, kind", [("float16", 2), ("bfloat16", 1)])
def test_register_widening_and_rounding_on_store_match_numpy(dtype, kind):
    """The decode path's in-register widening on every bit pattern, and the rounding on
    store (put) on every value of the 16-bit type, every midpoint between neighbours (ties
    go to even) and a million random float32 bit patterns."""
    ok, why = get_backend("cpu").probe()
    if not ok:
        pytest.skip(why)
    from impls.gemm_swiglu import gemm_swiglu_numba

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np_dtype(dtype)).astype(np.float32)
    got = gemm_swiglu_numba.widen_reg(bits, kind)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))

    finite = np.sort(want[np.isfinite(want)])
    mids = ((finite[1:].astype(np.float64) + finite[:-1]) / 2).astype(np.float32)  # exact in float32
    rand = np.random.default_rng(0).integers(0, 2**32, 1 << 20, dtype=np.uint32).view(np.float32)
    f = np.concatenate([want, mids, np.nextafter(mids, np.float32(np.inf)), rand])
    with np.errstate(over="ignore", invalid="ignore"):  # past the 16-bit range: inf, as put rounds it
        want16 = f.astype(np_dtype(dtype)).view(np.uint16)
    got16 = gemm_swiglu_numba.narrow_row(f, kind)
    nan = np.isnan(f)
    assert np.array_equal(np.isnan(got16.view(np_dtype(dtype))), nan)
    assert np.array_equal(got16[~nan], want16[~nan])


def test_listing_the_registry_never_imports_numba():
    """numba (and llvmlite) load when the first CPU kernel is prepared: cpu.py imports its
    <fusion>_numba.py then, not when the registry is listed."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import harness.registry as r, sys; reg = r.discover(); "
            "print('numba' in sys.modules, sum(k.endswith('/cpu/fused') for k in reg.impls))")
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, check=True, capture_output=True, text=True).stdout
    numba_loaded, fused = out.split()
    assert numba_loaded == "False" and int(fused) >= 8, out


def test_numba_cache_is_renewed_when_a_shared_helper_changes(tmp_path):
    """numba checks a cached kernel against its own file only; the kernels' cache lives in
    a folder named after harness/kernels/fb_numba.py's content, so an edited helper cannot be served stale."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("numba")
    from harness.kernels import fb_numba

    src = Path(fb_numba.__file__).read_bytes()
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "nc")}
    here = fb_numba.helpers_cache_dir(src, env)
    assert here.startswith(str(tmp_path / "nc"))
    assert fb_numba.helpers_cache_dir(src + b"\n# an edited helper\n", env) != here
    assert fb_numba.helpers_cache_dir(src, {"XDG_CACHE_HOME": str(tmp_path)}).startswith(str(tmp_path / "fusebench"))
    # a cached kernel defined after the import, in another file, calling a helper: its
    # cache is written under the content-named folder
    (tmp_path / "kern.py").write_text(
        "import numba as nb\n"
        "from harness.kernels.fb_numba import swiglu\n"
        "@nb.njit(cache=True)\n"
        "def k(g, u):\n"
        "    return swiglu(g, u)\n")
    code = "import kern, numba; print(kern.k(1.5, 2.0)); print(kern.k.stats.cache_path)"
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={**os.environ, **env, "PYTHONPATH": f"{repo}:{tmp_path}"}).stdout.split("\n")
    assert abs(float(out[0]) - 1.5 / (1 + np.exp(-1.5)) * 2.0) < 1e-12
    assert out[1].startswith(here)
    assert any(Path(here).rglob("kern.k-*.nbi"))


def test_every_cached_cpu_kernel_is_cached_under_the_helpers_folder(tmp_path):
    """Each impls/<fusion>/<fusion>_numba.py imports harness.kernels.fb_numba before it
    defines its cached kernels (numba picks a kernel's cache folder when it is decorated),
    so every one of them is cached under the folder named after the helpers' content."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("numba")
    from harness.kernels import fb_numba

    repo = Path(__file__).resolve().parent.parent
    files = sorted(repo.glob("impls/*/*_numba.py"))
    assert {f.parent.name for f in files} == {f.parent.name for f in repo.glob("impls/*/cpu.py")}
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "nc")}
    here = fb_numba.helpers_cache_dir(Path(fb_numba.__file__).read_bytes(), env)
    code = ("import importlib, sys\n"
            "from numba.core.registry import CPUDispatcher\n"
            "for name in sys.argv[1:]:\n"
            "    m = importlib.import_module(name)\n"
            "    for k, d in vars(m).items():\n"
            "        if isinstance(d, CPUDispatcher) and d.__module__ == name and d.stats.cache_path:\n"
            "            print(name, k, d.stats.cache_path)\n")
    names = [f"impls.{f.parent.name}.{f.stem}" for f in files]
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=repo, check=True, capture_output=True, text=True,
                         env={**os.environ, **env}).stdout.splitlines()
    cached = [line.split() for line in out]
    assert {m for m, _, _ in cached} == set(names)  # every file has cached kernels
    assert all(path.startswith(here) for _, _, path in cached), cached
