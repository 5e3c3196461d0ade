"""FusionSpec: what a fusion is, written once.

A spec names the fusion's dimensions and scalar attributes, declares the shape of every
input and output over those dimensions (`shapes`), makes its inputs, holds its
decomposition over `harness.ops` primitives, its cost model (fewest bytes moved, flops),
its accuracy bounds and the hypothesis strategies its property tests draw from.

Shapes as data: `shapes={"x": ("M", "H"), "w": ("N", "H"), "y": ("M", "N")}`. An axis is
a dimension's name, an integer, or an expression over the dimensions with + - * // and
parentheses ("(n_heads + 2 * n_kv_heads) * head_dim"). From them the harness derives the
output shapes, the default byte count (each input read once, each output written once),
the dimensions of a set of arrays with one clear message when they disagree
(`dims_of`), and the output buffers every implementation gets (Prepared.alloc_outputs).

What `shapes` and `values` already say a spec need not repeat: the dimensions default to
the names its axes use (in the order they first appear), the inputs to the names in
`values`, the outputs to the rest of `shapes`. A flop count may be an expression over the
dimensions, like an axis ("2 * M * N * H + 4 * M * H"), and `batched_sizes` gives the
strategy of a fusion over rows of activations.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from harness.dtypes import np_dtype

# Value shapes every spec's activations can be drawn with (DESIGN.md, property tests).
VALUE_SHAPES = ("normal", "large", "outliers", "near_constant")
# ... of a spec whose activations come out of an RMSNorm: no "large" rows (x300 would
# overflow float16 products)
NORMALISED_VALUE_SHAPES = ("normal", "outliers", "near_constant")


# Sizes that break naive tiling: 1, primes, and non-multiples of 4 / 32 / 128.
AWKWARD_SIZES = (1, 2, 3, 5, 7, 17, 31, 33, 127, 129, 130, 257)
BATCH_SIZES = (1, 2, 3, 5, 8, 13)


def awkward_size(upper: int = 300):
    """A hypothesis strategy of sizes that break naive tiling."""
    from hypothesis import strategies as st

    return st.one_of(st.sampled_from(AWKWARD_SIZES), st.integers(1, upper))


def batched_sizes(*sizes: str, upper: int = 300) -> Callable[[], Any]:
    """A spec's `strategy` for a fusion over rows of activations: M, the rows, one of
    BATCH_SIZES, and each dimension in `sizes` an awkward size up to `upper`."""
    def strategy():
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"M": st.sampled_from(BATCH_SIZES), **{d: awkward_size(upper) for d in sizes}})
    return strategy


@dataclass(frozen=True)
class TorchPeer:
    """A peer written directly in torch, the way an engine calls it.

    `run(ops, **inputs, **attrs, **planned)` is the timed work; `plan(inputs, attrs,
    backend) -> dict`, optional, runs once at prepare time with the host inputs and
    returns what a caller decides once per batch rather than per call (a mask built
    from the lengths, the kernel path to take) as keyword arguments for `run`, and under
    "path" the words the record gives for the path taken."""

    run: Callable[..., dict[str, Any]]
    plan: Callable[..., dict[str, Any]] | None = None
    path: str = ""


@dataclass(frozen=True)
class Cost:
    """The least work any implementation must do: each input read once, each output
    written once (bytes), and the arithmetic of the math itself (flops)."""

    bytes: int
    flops: int

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0


_AXIS_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _axis_expr(text: str) -> ast.expr:
    """The parsed axis expression; ValueError for anything beyond names, integers, + - * //."""
    tree = ast.parse(text, mode="eval").body
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Name, ast.Load, ast.BinOp, *_AXIS_OPS)) or (
            isinstance(node, ast.Constant) and isinstance(node.value, int))
        if not ok:
            raise ValueError(f"axis {text!r}: only dimension names, integers and + - * // are allowed")
    return tree


def _eval_axis(node: ast.expr, dims: dict[str, int]) -> int:
    if isinstance(node, ast.Name):
        return dims[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    return _AXIS_OPS[type(node.op)](_eval_axis(node.left, dims), _eval_axis(node.right, dims))


def axis_names(axis) -> set[str]:
    """The dimension names an axis uses."""
    return set(_names_in_order(axis))


def _names_in_order(axis) -> list[str]:
    # the dimension names of an axis as they stand in its text, left to right
    if isinstance(axis, int):
        return []
    names = [n for n in ast.walk(_axis_expr(axis)) if isinstance(n, ast.Name)]
    return [n.id for n in sorted(names, key=lambda n: n.col_offset)]


def axis_size(axis, dims: dict[str, int]) -> int:
    """An axis's length under `dims`."""
    if isinstance(axis, int):
        return axis
    if axis in dims:
        return dims[axis]
    return _eval_axis(_axis_expr(axis), dims)


class ShapeError(ValueError):
    """Arrays whose shapes do not fit a spec's declared shapes."""


@dataclass(kw_only=True)
class FusionSpec:
    """One fusion. `decompose(ops, **inputs, **attrs) -> {output: array}`;
    `make_inputs(dims, rng, value_shape) -> {input: float64 array}` (the spec rounds);
    `shapes`: {input or output: axes} (see the module docstring); `flops(dims) -> int`, or
    an expression over the dims; `strategy()` -> hypothesis strategy of dims dicts.

    `dims`, `inputs` and `outputs` may be left out where `shapes` and `values` say them
    (see the module docstring); a spec gives `dims` to order them otherwise, `inputs` or
    `outputs` where it draws its inputs itself (`make_inputs_f64`).

    The byte count defaults to every input read once and every output written once (index
    inputs at 4 bytes an element); `moved_bytes(dims, itemsize)` replaces it where the work
    is less (ragged decode reads only the valid cache rows)."""

    name: str
    doc: str
    decompose: Callable[..., dict[str, Any]]
    strategy: Callable[[], Any]
    dims: tuple[str, ...] = ()
    attrs: dict[str, float] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    # how each input is drawn, by kind (INPUT_KINDS), in the order of `inputs`, at its
    # declared shape; or, for inputs no kind describes, a generator of the spec's own
    # `make_inputs_f64(dims, rng, value_shape) -> {input: float64 array}`
    values: dict[str, str] = field(default_factory=dict)
    make_inputs_f64: Callable[[dict[str, int], np.random.Generator, str], dict[str, np.ndarray]] | None = None
    shapes: dict[str, Sequence[Any]] = field(default_factory=dict)
    flops: Callable[[dict[str, int]], int] | str | None = None
    moved_bytes: Callable[[dict[str, int], int], int] | None = None
    # the whole cost written by hand (before shapes were data; a plugin may still give it)
    cost_model: Callable[[dict[str, int], int], Cost] | None = None
    # output shapes written by hand (likewise); derived from `shapes` when absent
    output_shapes_f: Callable[[dict[str, int]], dict[str, tuple[int, ...]]] | None = None
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    # the accuracy verdict allows k x the error of the same-dtype unfused chain (harness.accuracy)
    k_vs_chain: float = 2.0
    validate_dims: Callable[[dict[str, int]], list[str]] = lambda dims: []
    # the value shapes property tests draw activations with (harness.spec.VALUE_SHAPES)
    value_shapes: tuple[str, ...] = VALUE_SHAPES
    # dimensions the decomposition needs as keyword arguments (head counts for reshapes)
    decompose_dims: tuple[str, ...] = ()
    # inputs that are integer indices (positions, lengths): int32, never rounded to the dtype
    index_inputs: tuple[str, ...] = ()
    # (dims, attrs) -> attrs with derived values filled in (attention: scale 0 -> 1/sqrt(d))
    derive_attrs: Callable[[dict[str, int], dict[str, Any]], dict[str, Any]] | None = None
    # more peers written directly in torch, registered on the torch backends beside eager
    # and compile (e.g. "sdpa")
    torch_peers: dict[str, TorchPeer] = field(default_factory=dict)
    # the inputs drawn afresh between timed runs (the runner alternates two input sets, so
    # that a kernel caching its result is caught); None: every input. Weight-heavy
    # fusions rotate their activations only, which is enough to change every output and
    # keeps the writes between samples small.
    rotate: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problems = self._fill_in_from_shapes()
        if self.shapes:
            missing = [n for n in (*self.inputs, *self.outputs) if n not in self.shapes]
            extra = [n for n in self.shapes if n not in (*self.inputs, *self.outputs)]
            if missing:
                problems.append(f"no shape declared for {', '.join(missing)}")
            if extra:
                problems.append(f"shapes declared for {', '.join(extra)}, which are neither inputs nor outputs")
            for name, axes in self.shapes.items():
                problems.extend(self._names_problems(f"shape of {name}", axes))
        elif self.output_shapes_f is None:
            problems.append("give `shapes` (the shape of every input and output over the dims)")
        if self.make_inputs_f64 is None:
            undrawn = [n for n in self.inputs if n not in self.values]
            unknown = sorted({k for k in self.values.values() if k not in INPUT_KINDS})
            if undrawn:
                problems.append(f"no way to draw {', '.join(undrawn)}: give `values` (kinds: "
                                f"{', '.join(INPUT_KINDS)}) or `make_inputs_f64`")
            if unknown:
                problems.append(f"unknown input kind(s) {', '.join(unknown)}; expected one of {', '.join(INPUT_KINDS)}")
        if self.cost_model is None and self.flops is None:
            problems.append("give `flops(dims)` (or a whole `cost_model`)")
        if isinstance(self.flops, str):
            problems.extend(self._names_problems("flops", (self.flops,)))
        if self.cost_model is None and self.moved_bytes is None and not self.shapes:
            problems.append("the default byte count needs `shapes`")
        if problems:
            raise ValueError(f"FusionSpec {self.name!r}: " + "; ".join(problems))

    def _names_problems(self, what: str, axes) -> list[str]:
        # axes (or a flop count) beyond + - * //, or using a name that is not a dimension
        try:
            unknown = set().union(*(axis_names(a) for a in axes)) - set(self.dims)
        except (SyntaxError, ValueError) as e:
            return [f"{what}: {e}"]
        return [f"{what} uses {', '.join(sorted(unknown))}, not among the dims {', '.join(self.dims)}"] if unknown else []

    def _fill_in_from_shapes(self) -> list[str]:
        """dims, inputs and outputs, where the spec leaves them out, from `shapes` and
        `values` (the module docstring); the problems found on the way."""
        if not self.inputs:
            self.inputs = tuple(self.values) or tuple(n for n in self.shapes if n not in self.outputs)
        if not self.outputs:
            self.outputs = tuple(n for n in self.shapes if n not in self.inputs)
        if not self.dims:
            try:
                names = [d for axes in self.shapes.values() for a in axes for d in _names_in_order(a)]
            except (SyntaxError, ValueError):
                names = []  # the shape check names the axis
            self.dims = tuple(dict.fromkeys(names))
        return [] if self.outputs or not self.shapes else ["no outputs: every name in `shapes` is an input"]

    # shapes ------------------------------------------------------------------------
    def shape(self, name: str, dims: dict[str, int]) -> tuple[int, ...]:
        """The shape of input or output `name` under `dims`."""
        return tuple(axis_size(a, dims) for a in self.shapes[name])

    def output_shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        if self.output_shapes_f is not None:
            return self.output_shapes_f(dims)
        return {n: self.shape(n, dims) for n in self.outputs}

    def dims_of(self, arrays: dict[str, Any], attrs: dict[str, Any] | None = None) -> dict[str, int]:
        """The dimensions a set of inputs (anything with .shape) has under the declared
        shapes, checked: every named axis agrees wherever it appears, every expression
        axis matches, the dimensions given in `attrs` (head counts) agree, and the spec's
        own validate_dims holds. ShapeError names the array, its shape, what was expected
        and where each dimension was read from."""
        dims: dict[str, int] = {}
        source: dict[str, str] = {}
        problems = []
        for name in self.inputs:
            if name not in arrays:
                problems.append(f"input {name} missing")
                continue
            shape, axes = tuple(arrays[name].shape), tuple(self.shapes[name])
            if len(shape) != len(axes):
                problems.append(f"{name} has shape {shape}, expected {len(axes)} axes {self._axes(axes)}")
                continue
            for i, (axis, n) in enumerate(zip(axes, shape)):
                if isinstance(axis, str) and axis in self.dims:
                    if axis not in dims:
                        dims[axis], source[axis] = int(n), f"{name}.shape[{i}]"
                    elif dims[axis] != n:
                        problems.append(f"{name} has shape {shape}, expected {self._axes(axes)}: its axis {i} "
                                        f"is {n}, but {axis} = {dims[axis]} from {source[axis]}")
        for d, v in (attrs or {}).items():
            if d in self.dims and isinstance(v, (int, np.integer)):
                if d in dims and dims[d] != v:
                    problems.append(f"{d} = {v} as given, but {dims[d]} from {source[d]}")
                dims.setdefault(d, int(v))
        if not problems:
            unbound = [d for d in self.dims if d not in dims]
            if unbound:
                problems.append(f"dimension(s) {', '.join(unbound)} appear in no input axis of their own: "
                                f"pass them in attrs (decompose_dims)")
        if not problems:
            for name in self.inputs:
                expected = self.shape(name, dims)
                if tuple(arrays[name].shape) != expected:
                    problems.append(f"{name} has shape {tuple(arrays[name].shape)}, expected "
                                    f"{self._axes(self.shapes[name])} = {expected}")
            problems.extend(self.validate_dims(dims))
        if problems:
            raise ShapeError(f"{self.name}: " + "; ".join(problems))
        return {d: dims[d] for d in self.dims}

    @staticmethod
    def _axes(axes) -> str:
        return "(" + ", ".join(str(a) for a in axes) + ("," if len(axes) == 1 else "") + ")"

    def rotated_inputs(self) -> tuple[str, ...]:
        return self.inputs if self.rotate is None else self.rotate

    def check_params(self, params: dict[str, Any]) -> list[str]:
        """Problems with a case's parameters, as readable sentences (empty when fine)."""
        problems = []
        for d in self.dims:
            if d not in params:
                problems.append(f"missing dimension {d!r} (a positive integer)")
            elif isinstance(params[d], bool) or not isinstance(params[d], int) or params[d] < 1:
                problems.append(f"dimension {d!r} must be a positive integer, got {params[d]!r}")
        for a in self.attrs:
            if a in params and (isinstance(params[a], bool) or not isinstance(params[a], (int, float))):
                problems.append(f"attribute {a!r} must be a number, got {params[a]!r}")
        known = set(self.dims) | set(self.attrs)
        for k in params:
            if k not in known:
                problems.append(f"unknown parameter {k!r}; {self.name} takes {', '.join(sorted(known))}")
        if not problems:
            problems.extend(self.validate_dims(self.split(params)[0]))
        return problems

    def split(self, params: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
        """params -> (dims, attrs): the attributes with defaults filled in, plus the
        dimensions named in `decompose_dims`; attrs are what decompose() and every
        implementation receive besides the inputs."""
        dims = {d: int(params[d]) for d in self.dims}
        attrs: dict[str, Any] = {a: float(params.get(a, default)) for a, default in self.attrs.items()}
        attrs.update({d: dims[d] for d in self.decompose_dims})
        if self.derive_attrs is not None:
            attrs = self.derive_attrs(dims, attrs)
        return dims, attrs

    def make_inputs(self, dims: dict[str, int], dtype: str, seed: int,
                    value_shape: str = "normal") -> dict[str, np.ndarray]:
        """Fresh random inputs, already rounded to `dtype` (host NumPy arrays)."""
        rng = np.random.default_rng(seed)
        if self.make_inputs_f64 is not None:
            raw = self.make_inputs_f64(dims, rng, value_shape)
        else:
            raw = {n: INPUT_KINDS[self.values[n]](rng, self.shape(n, dims), value_shape) for n in self.inputs}
        dt = np_dtype(dtype)
        return {k: np.ascontiguousarray(raw[k].astype(np.int32 if k in self.index_inputs else dt))
                for k in self.inputs}

    def cost(self, dims: dict[str, int], dtype: str) -> Cost:
        itemsize = np_dtype(dtype).itemsize
        if self.cost_model is not None:
            return self.cost_model(dims, itemsize)
        if self.moved_bytes is not None:
            moved = self.moved_bytes(dims, itemsize)
        else:
            moved = sum(math.prod(self.shape(n, dims)) * (4 if n in self.index_inputs else itemsize)
                        for n in (*self.inputs, *self.outputs))
        flops = axis_size(self.flops, dims) if isinstance(self.flops, str) else self.flops(dims)
        return Cost(bytes=int(moved), flops=int(flops))


def activations(rng: np.random.Generator, shape: tuple[int, ...], value_shape: str) -> np.ndarray:
    """Activation-like float64 values, rows along the last axis.

    normal: N(0, 1). large: N(0, 1) * 300 (sums of squares overflow float16).
    outliers: N(0, 1) with a few channels 100x larger, as real LLM activations have.
    near_constant: each row a constant plus 1e-3 relative noise.
    """
    x = rng.standard_normal(shape)
    if value_shape == "normal":
        return x
    if value_shape == "large":
        return x * 300.0
    if value_shape == "outliers":
        h = shape[-1]
        cols = rng.choice(h, size=max(1, h // 64), replace=False)
        x[..., cols] *= 100.0
        return x
    if value_shape == "near_constant":
        c = rng.uniform(0.5, 2.0, size=shape[:-1] + (1,)) * rng.choice([-1.0, 1.0], size=shape[:-1] + (1,))
        return c * (1.0 + 1e-3 * x)
    raise ValueError(f"unknown value shape {value_shape!r}; expected one of {VALUE_SHAPES}")


def _positions(rng: np.random.Generator, shape: tuple[int, ...], value_shape: str) -> np.ndarray:
    from harness.ops import MAX_POSITION

    return rng.integers(0, MAX_POSITION, size=shape)


# How an input is drawn (float64, before rounding to the dtype), by kind: activations
# follow the value shape; a weight matrix is N(0, 1) / sqrt(fan-in) (its last axis), so
# that outputs stay O(1); a norm's weight is 1 + N(0, 0.1); positions are token indices
# below harness.ops.MAX_POSITION.
INPUT_KINDS: dict[str, Callable[[np.random.Generator, tuple[int, ...], str], np.ndarray]] = {
    "activation": activations,
    "weight": lambda rng, shape, value_shape: rng.standard_normal(shape) / shape[-1] ** 0.5,
    "norm_weight": lambda rng, shape, value_shape: 1.0 + 0.1 * rng.standard_normal(shape),
    "position": _positions,
}
