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
