"""Shapes as data (harness.spec): a spec declares the shape of every input and output
over its dimensions, and the harness derives the rest.

1. Every built-in spec declares every input and output; the derived output shapes and
   the default byte count agree with the arrays make_inputs draws, on every case.
2. dims_of reads the dimensions back from the inputs and refuses inputs that disagree,
   with one message naming the array, its shape, what was expected and where the
   conflicting dimension came from.
3. Prepared gets self.dims and alloc_outputs() without any code of its own: a new
   fusion's kernel needs no shape check and no output allocation.
4. A spec with a missing or unknown shape, or an axis expression beyond + - * //, is
   refused when it is written.
5. What `shapes` and `values` say is not repeated: the dims, inputs and outputs follow
   from them, and a flop count may be an expression over the dims.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from harness.backends import Prepared, get_backend
from harness.cases import load_cases
from harness.spec import BATCH_SIZES, FusionSpec, ShapeError, axis_size, batched_sizes


def _spec(**over):
    base = dict(name="toy", doc="", dims=("M", "H", "N"), attrs={}, inputs=("x", "w"), outputs=("y",),
                decompose=lambda ops, x, w: {"y": ops.linear(x, w)},
                make_inputs_f64=lambda dims, rng, vs: {"x": rng.standard_normal((dims["M"], dims["H"])),
                                                       "w": rng.standard_normal((dims["N"], dims["H"]))},
                strategy=lambda: None, shapes={"x": ("M", "H"), "w": ("N", "H"), "y": ("M", "N")},
                flops=lambda d: 2 * d["M"] * d["N"] * d["H"])
    base.update(over)
    return FusionSpec(**base)


def test_every_spec_derives_what_its_inputs_are(registry):
    cases = load_cases(registry)
    seen = set()
    for case in cases:
        spec = registry.fusions[case.fusion]
        dims, attrs = spec.split(case.params)
        if sum(math.prod(spec.shape(n, dims)) for n in spec.shapes) > 2e6 or case.fusion in seen:
            continue  # one small case per fusion is enough to check the declarations
        seen.add(case.fusion)
        inputs = spec.make_inputs(dims, "float32", seed=1)
        assert {n: a.shape for n, a in inputs.items()} == {n: spec.shape(n, dims) for n in spec.inputs}
        assert spec.dims_of(inputs, attrs) == dims
        ref = spec.decompose(get_backend("reference").ops("float64"), **inputs, **attrs)
        assert {n: np.shape(a) for n, a in ref.items()} == spec.output_shapes(dims)
    assert seen == set(registry.fusions)


def test_inputs_drawn_by_kind_at_their_declared_shapes():
    spec = _spec(make_inputs_f64=None, values={"x": "activation", "w": "weight"})
    inputs = spec.make_inputs({"M": 3, "H": 400, "N": 500}, "float32", seed=6, value_shape="large")
    assert inputs["x"].shape == (3, 400) and inputs["w"].shape == (500, 400)
    assert 200 < inputs["x"].std() < 400  # "large" activations: N(0, 1) x 300
    assert abs(inputs["w"].std() * 400**0.5 - 1) < 0.05  # a weight: N(0, 1) / sqrt(fan-in)


def test_default_bytes_read_each_input_and_write_each_output_once():
    spec = _spec()
    dims = {"M": 3, "H": 5, "N": 7}
    assert spec.cost(dims, "bfloat16").bytes == (3 * 5 + 7 * 5 + 3 * 7) * 2
    assert spec.cost(dims, "float32").flops == 2 * 3 * 7 * 5
    ragged = _spec(moved_bytes=lambda d, itemsize: 11 * itemsize)
    assert ragged.cost(dims, "float16").bytes == 22


def test_axis_expressions():
    dims = {"n_heads": 8, "n_kv_heads": 2, "head_dim": 64}
    assert axis_size("(n_heads + 2 * n_kv_heads) * head_dim", dims) == 768
    assert axis_size("head_dim // 2", dims) == 32 and axis_size(3, dims) == 3


@pytest.mark.parametrize("shapes,words", [
    ({"x": (1, 2, 3), "w": (7, 5)}, "x has shape (1, 2, 3), expected 2 axes (M, H)"),
    ({"x": (3, 5), "w": (7, 6)}, "w has shape (7, 6), expected (N, H): its axis 1 is 6, but H = 5 from x.shape[1]"),
    ({"x": (3, 5)}, "input w missing"),
])
def test_dims_of_names_the_array_that_disagrees(shapes, words):
    spec = _spec()
    with pytest.raises(ShapeError) as e:
        spec.dims_of({n: np.zeros(s) for n, s in shapes.items()})
    assert words in str(e.value) and str(e.value).startswith("toy: ")


def test_dims_of_checks_expression_axes_and_given_dims(registry):
    spec = registry.fusions["rmsnorm_qkv_rope"]
    dims, attrs = spec.split({"M": 2, "H": 16, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8})
    good = spec.make_inputs(dims, "float32", seed=2)
    assert spec.dims_of(good, attrs)["H"] == 16
    bad = dict(good, w=np.zeros((63, 16), np.float32))  # (4 + 2*2) * 8 = 64 rows expected
    with pytest.raises(ShapeError, match=r"w has shape \(63, 16\), expected \(\(n_heads \+ 2 \* n_kv_heads\) "
                                         r"\* head_dim, H\) = \(64, 16\)"):
        spec.dims_of(bad, attrs)
    attn = registry.fusions["decode_attention"]
    dims, attrs = attn.split({"B": 2, "T": 5, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8})
    inputs = attn.make_inputs(dims, "float32", seed=3)
    with pytest.raises(ShapeError, match="n_heads = 6 as given, but 4 from q.shape"):
        attn.dims_of(inputs, dict(attrs, n_heads=6))
    with pytest.raises(ShapeError, match="must divide"):  # the spec's own validate_dims
        attn.dims_of(dict(inputs, k=inputs["k"][:, :1].repeat(3, 1), v=inputs["v"][:, :1].repeat(3, 1)),
                     dict(attrs, n_kv_heads=3))


class _NoChecks(Prepared):
    """A kernel written the short way: no shape check, no output allocation of its own."""

    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.x, self.w = self.bind_inputs(inputs, spec.inputs)
        self.y = self.alloc_outputs()["y"]

    def run(self):
        self.y[...] = self.x.astype(np.float32) @ self.w.astype(np.float32).T


def test_a_kernel_needs_no_shape_code_of_its_own():
    spec, cpu = _spec(), get_backend("cpu")
    inputs = spec.make_inputs({"M": 2, "H": 3, "N": 4}, "float32", seed=4)
    k = _NoChecks(cpu, spec, inputs, {}, "float32")
    assert k.dims == {"M": 2, "H": 3, "N": 4} and k.out["y"].shape == (2, 4) and k.out["y"].dtype == np.float32
    k.poison()
    k.run()
    np.testing.assert_allclose(k.outputs()["y"], inputs["x"] @ inputs["w"].T, rtol=1e-5)
    with pytest.raises(ShapeError, match="H = 3 from x.shape"):
        _NoChecks(cpu, spec, dict(inputs, w=np.zeros((4, 5), np.float32)), {}, "float32")


def test_a_backend_limit_on_buffer_size_is_checked_for_every_kernel(monkeypatch):
    spec, cpu = _spec(), get_backend("cpu")
    monkeypatch.setattr(cpu, "max_elements", 10)
    inputs = spec.make_inputs({"M": 2, "H": 3, "N": 4}, "float32", seed=5)
    with pytest.raises(ShapeError, match=r"w \(4, 3\) hold more than 10 elements"):
        _NoChecks(cpu, spec, inputs, {}, "float32")


@pytest.mark.parametrize("over,words", [
    ({"shapes": {"x": ("M", "H"), "y": ("M", "N")}}, "no shape declared for w"),
    ({"shapes": {"x": ("M", "K"), "w": ("N", "H"), "y": ("M", "N")}}, "shape of x uses K, not among the dims"),
    ({"shapes": {"x": ("M", "H"), "w": ("N", "H"), "y": ("M", "N"), "z": ("M",)}}, "neither inputs nor outputs"),
    ({"shapes": {"x": ("M", "H ** 2"), "w": ("N", "H"), "y": ("M", "N")}}, "only dimension names, integers"),
    ({"flops": None}, "give `flops(dims)`"),
    ({"flops": "2 * M * K"}, "flops uses K, not among the dims"),
    ({"flops": "M ** 2"}, "flops: axis 'M ** 2': only dimension names"),
    ({"make_inputs_f64": None, "values": {"x": "activation"}}, "no way to draw w"),
    ({"make_inputs_f64": None, "values": {"x": "activation", "w": "weights"}}, "unknown input kind(s) weights"),
])
def test_a_spec_with_bad_declarations_is_refused(over, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        _spec(**over)


def test_dims_inputs_and_outputs_follow_from_shapes_and_values():
    short = FusionSpec(name="toy", doc="", decompose=lambda ops, x, w: {"y": ops.linear(x, w)}, strategy=lambda: None,
                       shapes={"x": ("M", "H"), "w": ("(N + 1) * 2", "H"), "y": ("M", "N")},
                       values={"x": "activation", "w": "weight"}, flops="2 * M * N * H")
    assert (short.dims, short.inputs, short.outputs, short.attrs) == (("M", "H", "N"), ("x", "w"), ("y",), {})
    assert short.cost({"M": 3, "H": 5, "N": 7}, "float32").flops == 2 * 3 * 7 * 5
    drawn_by_hand = _spec(dims=("N", "H", "M"), inputs=(), outputs=("y",))  # make_inputs_f64, no values
    assert (drawn_by_hand.dims, drawn_by_hand.inputs) == (("N", "H", "M"), ("x", "w"))
    with pytest.raises(ValueError, match="no outputs"):
        _spec(inputs=(), outputs=(), values={"x": "activation", "w": "weight", "y": "activation"})


def test_batched_sizes_draws_rows_and_awkward_sizes():
    from hypothesis import given, settings

    @settings(max_examples=20, database=None)
    @given(batched_sizes("H", "N", upper=40)())
    def check(dims):
        assert set(dims) == {"M", "H", "N"} and dims["M"] in BATCH_SIZES
        assert 1 <= dims["H"] <= 257 and 1 <= dims["N"] <= 257

    check()
