"""Metamorphic properties that hold whatever the values: RMSNorm outputs do not change
when x is scaled (by a power of two, so the scaled inputs are exact in every dtype), and
permuting the rows of x permutes the rows of y."""

from __future__ import annotations

import numpy as np
import pytest

from harness.accuracy import metrics
from harness.registry import discover

REGISTRY = discover()
IMPLS = [i for i in REGISTRY.select(fusions=["rmsnorm_gemm"], kinds=("fused", "unfused", "peer"))
         if not i.origin.startswith("tests.")]
DIMS = {"M": 5, "H": 131, "N": 37}


def outputs(impl, inputs, dtype):
    spec = REGISTRY.fusions[impl.fusion]
    p = impl.prepare(spec, inputs, {"eps": 1e-6}, dtype)
    p.poison()
    p.run()
    return p.outputs()["y"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.key)
def test_rmsnorm_scale_invariance_and_row_permutation(impl, dtype):
    ok, why = impl.available()
    if not ok:
        pytest.skip(why)
    if dtype not in impl.dtypes:
        pytest.skip(f"{impl.key} does not claim {dtype}")
    spec = REGISTRY.fusions[impl.fusion]
    inputs = spec.make_inputs(DIMS, dtype, seed=7)
    y = outputs(impl, inputs, dtype)
    bound = spec.nmse_bound[dtype]
    scaled = dict(inputs, x=(inputs["x"].astype(np.float32) * 8.0).astype(inputs["x"].dtype))
    assert metrics(outputs(impl, scaled, dtype), y, dtype).nmse <= bound
    perm = np.random.default_rng(3).permutation(DIMS["M"])
    permuted = dict(inputs, x=np.ascontiguousarray(inputs["x"][perm]))
    assert metrics(outputs(impl, permuted, dtype), y[perm], dtype).nmse <= bound
