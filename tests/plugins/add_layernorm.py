"""A third-party fusion, the way a plugin adds one: residual add -> LayerNorm, declared with
register_fusion and no kernels of its own. Its chain needs `layer_norm`, a primitive the
WGSL and CUDA backends' Ops lack, so `<backend>/unfused` there is unavailable for that
reason (tests/test_cli.py). Loaded only through FUSEBENCH_PLUGINS=tests.plugins.add_layernorm.

    h = x + residual
    y = (h - mean(h)) * rsqrt(var(h) + eps) * gamma + beta
"""

from __future__ import annotations

from hypothesis import strategies as st

from harness.registry import register_fusion
from harness.spec import BATCH_SIZES, FusionSpec, activations, awkward_size


def decompose(ops, x, residual, gamma, beta, *, eps):
    h = ops.add(x, residual)
    return {"h": h, "y": ops.layer_norm(h, gamma, beta, eps)}


def make_inputs(dims, rng, value_shape):
    M, H = dims["M"], dims["H"]
    return {"x": activations(rng, (M, H), value_shape), "residual": activations(rng, (M, H), value_shape),
            "gamma": 1.0 + 0.1 * rng.standard_normal(H), "beta": 0.1 * rng.standard_normal(H)}


SPEC = FusionSpec(
    name="add_layernorm", doc=__doc__, dims=("M", "H"), attrs={"eps": 1e-5},
    inputs=("x", "residual", "gamma", "beta"), outputs=("h", "y"), decompose=decompose, make_inputs_f64=make_inputs,
    shapes={"x": ("M", "H"), "residual": ("M", "H"), "gamma": ("H",), "beta": ("H",), "h": ("M", "H"),
            "y": ("M", "H")},
    flops=lambda d: 9 * d["M"] * d["H"],
    strategy=lambda: st.fixed_dictionaries({"M": st.sampled_from(BATCH_SIZES), "H": awkward_size(512)}))

register_fusion(SPEC)
