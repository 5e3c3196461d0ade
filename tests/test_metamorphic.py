"""Metamorphic properties that hold whatever the values, checked on every implementation:

- RMSNorm (rmsnorm_gemm): outputs do not change when x is scaled (by a power of two, so
  the scaled inputs are exact in every dtype); permuting the rows of x permutes the rows
  of y.
- RoPE (rmsnorm_qkv_rope): the rotation preserves each head's norm (compared with the
  same inputs at position 0, where it is the identity), and q·k depends only on the
  difference of positions (shifting every position by a constant leaves all scores alone).
- SwiGLU (gemm_swiglu, swiglu_ffn): W_up = 0 gives exactly 0, whatever the gate.
- Every fusion: permuting the rows (block fusions, with their positions) or the
  sequences of a batch (attention, with their lengths) permutes the outputs alike, to
  rounding (a CPU kernel that takes rows two at a time sums a row differently when it
  moves to the odd tail: NMSE ~1e-14 in float32, against >= 2000x the dtype's bound
  for outputs left in the old order).

Each run poisons the outputs first, so an output left unwritten cannot pass as zero. The
implementations this machine cannot run (no GPU) are one skip per test, naming why
(tests/devices.py); on a machine that runs them they expand as the others.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.accuracy import metrics
from harness.dtypes import UNIT_ROUNDOFF
from harness.registry import discover
from tests.devices import runnable

REGISTRY = discover()
DTYPES = ["float32", "float16", "bfloat16"]
# NMSE between two runs of one implementation that the math says agree: a few roundings
# of the dtype apart at most (the gate's own rule is harness.accuracy's, against the reference)
NMSE_TOL = {"float32": 1e-9, "float16": 1e-5, "bfloat16": 3e-4}


def impls_of(fusion):
    return [i for i in REGISTRY.select(fusions=[fusion], kinds=("fused", "unfused", "peer"))
            if not i.origin.startswith("tests.")]


def each(impls, dtypes=DTYPES):
    """(impl, dtype) parameters, ids "<key>-<dtype>": every implementation this machine can
    run in every dtype it claims, the rest one skip."""
    return runnable([(i, (i,), i.key) for i in impls], dtypes)


def outputs(impl, inputs, attrs, dtype):
    spec = REGISTRY.fusions[impl.fusion]
    p = impl.prepare(spec, inputs, attrs, dtype)
    p.poison()
    p.run()
    return {k: np.asarray(v, dtype=np.float64) for k, v in p.outputs().items()}


def usable(impl, dtype):
    ok, why = impl.available()
    if not ok:
        pytest.skip(why)
    if dtype not in impl.dtypes:
        pytest.skip(f"{impl.key} does not claim {dtype}")
    return REGISTRY.fusions[impl.fusion]


def relative(a, b):
    """Largest difference relative to the largest magnitude of b, per trailing vector."""
    scale = np.maximum(np.max(np.abs(b), axis=-1, keepdims=True), 1e-30)
    return float(np.max(np.abs(a - b) / scale))


@pytest.mark.parametrize("impl,dtype", each(impls_of("rmsnorm_gemm")))
def test_rmsnorm_scale_invariance_and_row_permutation(impl, dtype):
    spec = usable(impl, dtype)
    dims, attrs = {"M": 5, "H": 131, "N": 37}, {"eps": 1e-6}
    inputs = spec.make_inputs(dims, dtype, seed=7)
    y = outputs(impl, inputs, attrs, dtype)["y"]
    bound = NMSE_TOL[dtype]
    scaled = dict(inputs, x=(inputs["x"].astype(np.float32) * 8.0).astype(inputs["x"].dtype))
    assert metrics(outputs(impl, scaled, attrs, dtype)["y"], y, dtype).nmse <= bound
    perm = np.random.default_rng(3).permutation(dims["M"])
    permuted = dict(inputs, x=np.ascontiguousarray(inputs["x"][perm]))
    assert metrics(outputs(impl, permuted, attrs, dtype)["y"], y[perm], dtype).nmse <= bound


@pytest.mark.parametrize("impl,dtype", each(impls_of("add_rmsnorm") + impls_of("rmsnorm_qkv_rope")))
def test_rmsnorm_scale_invariance_in_the_other_norm_fusions(impl, dtype):
    """Scaling the normalised input by 8 (exact) leaves y, and q, k, v, unchanged; for
    add_rmsnorm x and residual are both scaled, so the new residual h scales by 8 too."""
    spec = usable(impl, dtype)
    params = ({"M": 5, "H": 131} if impl.fusion == "add_rmsnorm"
              else {"M": 5, "H": 131, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16})
    dims, attrs = spec.split(params)
    inputs = spec.make_inputs(dims, dtype, seed=9)
    scaled_names = ("x", "residual") if impl.fusion == "add_rmsnorm" else ("x",)
    scaled = dict(inputs, **{n: (inputs[n].astype(np.float64) * 8.0).astype(inputs[n].dtype) for n in scaled_names})
    a = outputs(impl, inputs, attrs, dtype)
    b = outputs(impl, scaled, attrs, dtype)
    for name in a:
        want = a[name] * 8.0 if name == "h" else a[name]
        assert metrics(b[name], want, dtype).nmse <= NMSE_TOL[dtype], name
        assert np.count_nonzero(a[name]) > a[name].size // 2, name  # live values, not zeros


# Grouped-query heads (3 q heads per kv head), head_dim 80, H not a multiple of 4.
ROPE_DIMS = {"M": 7, "H": 131, "n_heads": 6, "n_kv_heads": 2, "head_dim": 80}
ROPE_ATTRS = REGISTRY.fusions["rmsnorm_qkv_rope"].split({"eps": 1e-5, "theta": 10000.0, **ROPE_DIMS})[1]
# Rounding of q and k in the output dtype bounds how well norms and dot products agree.
ROPE_TOL = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}


def rope_inputs(spec, dtype, seed):
    inputs = spec.make_inputs(ROPE_DIMS, dtype, seed=seed)
    rng = np.random.default_rng(seed)
    return dict(inputs, pos=rng.integers(0, 4096, size=ROPE_DIMS["M"]).astype(np.int32))


@pytest.mark.parametrize("impl,dtype", each(impls_of("rmsnorm_qkv_rope")))
def test_rope_preserves_each_heads_norm(impl, dtype):
    spec = usable(impl, dtype)
    inputs = rope_inputs(spec, dtype, seed=11)
    rotated = outputs(impl, inputs, ROPE_ATTRS, dtype)
    at_zero = outputs(impl, dict(inputs, pos=np.zeros_like(inputs["pos"])), ROPE_ATTRS, dtype)
    for name in ("q", "k"):
        n_rot = np.linalg.norm(rotated[name], axis=-1)
        n_zero = np.linalg.norm(at_zero[name], axis=-1)
        assert np.all(np.isfinite(n_rot))
        assert np.max(np.abs(n_rot - n_zero) / n_zero) <= ROPE_TOL[dtype], name
        # Not the identity: the rotation moved the vectors (positions are nonzero).
        assert relative(rotated[name], at_zero[name]) > 10 * ROPE_TOL[dtype], name
    assert np.array_equal(rotated["v"], at_zero["v"])


@pytest.mark.parametrize("impl,dtype", each(impls_of("rmsnorm_qkv_rope")))
def test_rope_scores_depend_only_on_position_difference(impl, dtype):
    spec = usable(impl, dtype)
    inputs = rope_inputs(spec, dtype, seed=12)
    shifted_pos = (inputs["pos"] + 1000).astype(np.int32)
    group = ROPE_DIMS["n_heads"] // ROPE_DIMS["n_kv_heads"]

    def scores(out):
        k = np.repeat(out["k"], group, axis=1)          # (M, n_heads, d)
        return np.einsum("mhd,nhd->hmn", out["q"], k)   # (n_heads, M, M)

    base = outputs(impl, inputs, ROPE_ATTRS, dtype)
    moved = outputs(impl, dict(inputs, pos=shifted_pos), ROPE_ATTRS, dtype)
    s0, s1 = scores(base), scores(moved)
    # Each score is a sum of d products of rounded values: compare against |q|·|k|.
    qn = np.linalg.norm(base["q"], axis=-1).transpose(1, 0)[:, :, None]
    kn = np.repeat(np.linalg.norm(base["k"], axis=-1), group, axis=1).transpose(1, 0)[:, None, :]
    assert np.max(np.abs(s1 - s0) / (qn * kn)) <= 4 * ROPE_TOL[dtype]
    # The outputs themselves did move, so the test is not comparing a thing with itself.
    assert relative(moved["q"], base["q"]) > 10 * ROPE_TOL[dtype]


@pytest.mark.parametrize("impl,dtype", each(impls_of("gemm_swiglu") + impls_of("swiglu_ffn")))
def test_swiglu_with_zero_up_projection_is_zero(impl, dtype):
    spec = usable(impl, dtype)
    dims = {"M": 3, "H": 67, "I": 45}
    inputs = spec.make_inputs(dims, dtype, seed=5)
    y = outputs(impl, inputs, {}, dtype)["y"]
    assert np.count_nonzero(y) > y.size // 2          # the same kernel, live inputs: not zero
    zeroed = dict(inputs, w_up=np.zeros_like(inputs["w_up"]))
    y0 = outputs(impl, zeroed, {}, dtype)["y"]
    assert np.all(y0 == 0.0), f"{np.count_nonzero(y0)} nonzero of {y0.size}"


# ---- attention -------------------------------------------------------------------------
ATTN_DIMS = {
    "attn_score_softmax": {"B": 2, "S": 37, "n_heads": 6, "n_kv_heads": 2, "head_dim": 24},
    "attention_prefill": {"B": 2, "S": 37, "n_heads": 6, "n_kv_heads": 2, "head_dim": 24},
    "decode_attention": {"B": 3, "T": 41, "n_heads": 6, "n_kv_heads": 2, "head_dim": 24},
}
ATTN_IMPLS = [i for f in ATTN_DIMS for i in impls_of(f)]


def attn_case(impl, dtype, seed):
    spec = usable(impl, dtype)
    dims, attrs = spec.split(ATTN_DIMS[impl.fusion])
    return spec, dims, attrs, spec.make_inputs(dims, dtype, seed=seed)


@pytest.mark.parametrize("impl,dtype", each(ATTN_IMPLS))
def test_attention_ignores_a_constant_added_to_each_rows_scores(impl, dtype):
    """k -> k + w for one w shared by every key of a kv head adds q_i·w to every score of
    row i: the weights and outputs must not change. k and w are chosen so that k + w is
    exact in every dtype (multiples of 1/16 in [-4, 4], w in {-0.5, 0, 0.5}), so only the
    kernel's own rounding differs between the two runs."""
    spec, dims, attrs, inputs = attn_case(impl, dtype, seed=21)
    rng = np.random.default_rng(21)
    k0 = np.clip(np.round(rng.standard_normal(inputs["k"].shape) * 16) / 16, -4, 4)
    w = 0.5 * rng.integers(-1, 2, size=inputs["k"].shape[:2] + (1, inputs["k"].shape[-1]))
    # q halved (exact): logits of a few units, where 16-bit rounding of them stays small
    inputs = dict(inputs, q=(inputs["q"].astype(np.float64) * 0.5).astype(inputs["q"].dtype))
    base = dict(inputs, k=k0.astype(inputs["k"].dtype))
    shifted = dict(inputs, k=(k0 + w).astype(inputs["k"].dtype))
    assert np.array_equal(shifted["k"].astype(np.float64), k0 + w)  # the shift itself is exact
    a = outputs(impl, base, attrs, dtype)
    b = outputs(impl, shifted, attrs, dtype)
    # A chain rounds the logits to the dtype: the larger they are, the larger that error
    # (u·|logit|), and the shift makes them larger. Allow 8 unit roundoffs of the largest.
    n_kv, d = k0.shape[1], k0.shape[-1]
    q = inputs["q"].astype(np.float64).reshape(k0.shape[0], n_kv, -1, d)  # grouped by kv head
    largest = attrs["scale"] * np.max(np.abs(q @ np.swapaxes(k0 + w, -1, -2)))
    tol = 8 * UNIT_ROUNDOFF[dtype] * (1.0 + largest)
    assert tol < 0.25, tol  # a tolerance that could still fail
    for name in a:
        assert np.all(np.isfinite(b[name]))
        assert relative(b[name], a[name]) <= tol, name


@pytest.mark.parametrize("impl,dtype", each([i for i in ATTN_IMPLS if i.fusion != "decode_attention"]))
def test_causal_rows_do_not_see_the_future(impl, dtype):
    """New K (and V) at positions > i leave every row ≤ i exactly as it was."""
    spec, dims, attrs, inputs = attn_case(impl, dtype, seed=22)
    i = dims["S"] // 2
    rng = np.random.default_rng(22)
    changed = dict(inputs)
    for name in ("k", "v"):
        if name in inputs:
            a = inputs[name].copy()
            a[:, :, i + 1:] = rng.standard_normal(a[:, :, i + 1:].shape).astype(a.dtype) * 3
            changed[name] = a
    before = outputs(impl, inputs, attrs, dtype)
    after = outputs(impl, changed, attrs, dtype)
    for name in before:
        assert np.array_equal(before[name][:, :, : i + 1], after[name][:, :, : i + 1]), name
        assert not np.array_equal(before[name][:, :, i + 1:], after[name][:, :, i + 1:]), name


@pytest.mark.parametrize("impl,dtype", each(impls_of("decode_attention")))
def test_decode_never_reads_past_lens(impl, dtype):
    """Garbage in the cache past each sequence's length leaves the output unchanged. Fused
    kernels get NaN there (any read of it shows); chains and peers, which mask logits
    and multiply by zero weights, get large finite garbage."""
    spec, dims, attrs, inputs = attn_case(impl, dtype, seed=23)
    lens = np.array([dims["T"] - 5, 0, 1], dtype=np.int32)
    inputs = dict(inputs, lens=lens)
    garbage = np.nan if impl.kind == "fused" else 1000.0
    dirty = dict(inputs)
    for name in ("k", "v"):
        a = inputs[name].copy()
        for b, n in enumerate(lens):
            a[b, :, n:] = garbage
        dirty[name] = a
    clean = outputs(impl, inputs, attrs, dtype)["o"]
    assert np.all(clean[1] == 0.0)  # lens = 0: zeros, not NaN
    assert np.array_equal(outputs(impl, dirty, attrs, dtype)["o"], clean)


# ---- row and batch permutation -----------------------------------------------------------
# The inputs that carry the row (block fusions: M) or batch (attention: B) axis first; the
# others (weights, gamma) are shared by every row. Every output carries that axis first.
PERMUTED_INPUTS = {
    "rmsnorm_gemm": ("x",),
    "add_rmsnorm": ("x", "residual"),
    "rmsnorm_qkv_rope": ("x", "pos"),
    "gemm_swiglu": ("x",),
    "swiglu_ffn": ("x",),
    "attn_score_softmax": ("q", "k"),
    "attention_prefill": ("q", "k", "v"),
    "decode_attention": ("q", "k", "v", "lens"),
}
# M = 3 takes the GEMV (decode) kernels, M = 11 the tiled ones on wgsl and cuda and the
# two-rows-at-a-time loops with an odd row left over on the CPU. H, I, N not multiples of 4.
ROW_PARAMS = {
    "rmsnorm_gemm": {"H": 131, "N": 37},
    "add_rmsnorm": {"H": 131},
    "rmsnorm_qkv_rope": {"H": 131, "n_heads": 6, "n_kv_heads": 2, "head_dim": 80},
    "gemm_swiglu": {"H": 131, "I": 45},
    "swiglu_ffn": {"H": 131, "I": 45},
}
BATCH_PARAMS = {
    "attn_score_softmax": {"B": 4, "S": 37, "n_heads": 6, "n_kv_heads": 2, "head_dim": 24},
    "attention_prefill": {"B": 4, "S": 37, "n_heads": 6, "n_kv_heads": 2, "head_dim": 24},
    "decode_attention": {"B": 4, "T": 41, "n_heads": 6, "n_kv_heads": 2, "head_dim": 24},
}
# torch.compile is left out: the same decomposition as torch eager, which is checked here
PERMUTATION_CASES = [(i, p) for i, p in
                     [(i, dict(p, M=M)) for f, p in ROW_PARAMS.items() for i in impls_of(f) for M in (3, 11)]
                     + [(i, p) for f, p in BATCH_PARAMS.items() for i in impls_of(f)]
                     if i.variant != "compile"]


@pytest.mark.parametrize("impl,params,dtype", runnable(
    [(i, (i, p), f"{i.key}-{p.get('M', p.get('B'))}") for i, p in PERMUTATION_CASES], DTYPES))
def test_permuting_rows_permutes_the_outputs(impl, params, dtype):
    """Rows of a block fusion (and sequences of an attention batch) are independent:
    permuting them among themselves permutes the outputs the same way. A kernel that
    reads another row's statistics, pairs the wrong rows or mis-indexes a partial tile
    fails. Decode sequences get different lengths, so a permuted `lens` matters."""
    spec = usable(impl, dtype)
    dims, attrs = spec.split(params)
    inputs = spec.make_inputs(dims, dtype, seed=31)
    if impl.fusion == "rmsnorm_qkv_rope":
        inputs = dict(inputs, pos=np.random.default_rng(31).integers(0, 4096, dims["M"]).astype(np.int32))
    if impl.fusion == "decode_attention":
        inputs = dict(inputs, lens=np.array([dims["T"], 1, 17, dims["T"] - 5], dtype=np.int32))
    rows = inputs[PERMUTED_INPUTS[impl.fusion][0]].shape[0]
    perm = np.random.default_rng(32).permutation(rows)
    while np.array_equal(perm, np.arange(rows)):
        perm = np.random.default_rng(int(perm[0]) + 33).permutation(rows)
    permuted = dict(inputs, **{n: np.ascontiguousarray(inputs[n][perm]) for n in PERMUTED_INPUTS[impl.fusion]})
    a = outputs(impl, inputs, attrs, dtype)
    b = outputs(impl, permuted, attrs, dtype)
    assert set(a) == set(spec.outputs)
    for name in a:
        assert np.count_nonzero(a[name]) > a[name].size // 4, name  # live values, not zeros
        # the rows differ from each other, so a permutation that was ignored shows
        assert not np.array_equal(a[name], a[name][perm]), name
        assert metrics(b[name], a[name][perm], dtype).nmse <= NMSE_TOL[dtype] / 16, name
