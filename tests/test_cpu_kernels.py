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
    import impls.rmsnorm_gemm.cpu as cpu

    cpu._compile()
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    want = bits.view(np_dtype(dtype)).astype(np.float32)
    got = cpu._widen(bits, kind)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
