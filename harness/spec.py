"""FusionSpec: what a fusion is, written once.

A spec names the fusion's dimensions and scalar attributes, makes its inputs, holds its
decomposition over `harness.ops` primitives, its cost model (fewest bytes moved, flops),
its accuracy bounds and the hypothesis strategies its property tests draw from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from harness.dtypes import np_dtype

# Value shapes every spec's activations can be drawn with (DESIGN.md, property tests).
VALUE_SHAPES = ("normal", "large", "outliers", "near_constant")


# Sizes that break naive tiling: 1, primes, and non-multiples of 4 / 32 / 128.
AWKWARD_SIZES = (1, 2, 3, 5, 7, 17, 31, 33, 127, 129, 130, 257)
BATCH_SIZES = (1, 2, 3, 5, 8, 13)


def awkward_size(upper: int = 300):
    """A hypothesis strategy of sizes that break naive tiling."""
    from hypothesis import strategies as st

    return st.one_of(st.sampled_from(AWKWARD_SIZES), st.integers(1, upper))


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


@dataclass
class FusionSpec:
    """One fusion. `decompose(ops, **inputs, **attrs) -> {output: array}`;
    `make_inputs(dims, rng, value_shape) -> {input: float64 array}` (the spec rounds);
    `cost(dims, itemsize) -> Cost`; `strategy()` -> hypothesis strategy of dims dicts."""

    name: str
    doc: str
    dims: tuple[str, ...]
    attrs: dict[str, float]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    decompose: Callable[..., dict[str, Any]]
    make_inputs_f64: Callable[[dict[str, int], np.random.Generator, str], dict[str, np.ndarray]]
    cost_model: Callable[[dict[str, int], int], Cost]
    output_shapes: Callable[[dict[str, int]], dict[str, tuple[int, ...]]]
    strategy: Callable[[], Any]
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
        raw = self.make_inputs_f64(dims, rng, value_shape)
        dt = np_dtype(dtype)
        return {k: np.ascontiguousarray(raw[k].astype(np.int32 if k in self.index_inputs else dt))
                for k in self.inputs}

    def cost(self, dims: dict[str, int], dtype: str) -> Cost:
        return self.cost_model(dims, np_dtype(dtype).itemsize)


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
