"""Wrong kernels for every fusion, each wrong in one way the accuracy gate must catch, and
two honest ones it must pass (tests/test_mutants.py). All run on the cpu backend.

Mutants (variant `mutant_<name>`) that rewrite the outputs: zeros; a constant (each
output's RMS); the reference of the neighbouring row; one row negated; the last eighth
of the elements zeroed; the output one rounding coarser than the dtype (float32 kept as
TF32, 10 mantissa bits; float16 as 7 bits, bfloat16's precision; bfloat16 as 3 bits,
float8 e4m3's). Mutants that change one primitive of the decomposition and so apply where
the fusion uses it: GELU for SiLU; the residual left out of the add; RMSNorm's gamma
ignored; a causal mask one key late, or lengths one short; RoPE at position + 1, or on
interleaved pairs instead of halves; and grouped-query attention reading kv head h % Hkv
instead of h // g. A mutant that does not apply to a case is unavailable there.

Honest (variant `honest_<name>`): the float64 reference rounded once to the dtype; the
decomposition computed in float32 throughout and rounded once (a fused kernel that keeps
its intermediates on chip).

Loaded through FUSEBENCH_PLUGINS=tests.plugins.mutants (never shipped).
"""

from __future__ import annotations

import importlib
import math
import pkgutil

import numpy as np

from harness.backends import BackendUnavailable, Prepared
from harness.dtypes import np_dtype
from harness.ops import NumpyOps
from harness.registry import Implementation, register

MUTANTS: dict = {}
HONEST: dict = {}
# explicit mantissa bits of the format one step coarser than each dtype
COARSER_BITS = {"float32": 10, "float16": 7, "bfloat16": 3}


class DoesNotApply(BackendUnavailable):
    """The fusion or case has nothing this mutant can change."""


_last_exact: list = [None, None]  # (key, outputs) of the last float64 reference computed


def _exact(spec, inputs, attrs, ops=None):
    """The decomposition on `ops` (float64 NumPy by default). The plain float64 result is
    kept for the inputs it was computed on: a job's mutants all start from it."""
    if ops is not None:
        return spec.decompose(ops, **inputs, **attrs)
    key = (spec.name, tuple(sorted(attrs.items())),
           tuple((k, id(v), np.shape(v), np.asarray(v).reshape(-1)[:16].tobytes()) for k, v in sorted(inputs.items())))
    if _last_exact[0] != key:
        _last_exact[:] = [key, spec.decompose(NumpyOps("float64"), **inputs, **attrs)]
    return _last_exact[1]


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def outputs_mutant(fn):
    """A mutant that rewrites each output of the exact result: fn(output, dtype) -> array."""
    def mutant(spec, inputs, attrs, dtype):
        return {k: fn(np.array(v, dtype=np.float64), dtype) for k, v in _exact(spec, inputs, attrs).items()}
    MUTANTS[fn.__name__] = mutant
    return fn


@outputs_mutant
def zeros(y, dtype):
    return np.zeros_like(y)


@outputs_mutant
def constant(y, dtype):
    return np.full_like(y, math.sqrt(float(np.mean(y * y))))


@outputs_mutant
def neighbour_row(y, dtype):
    """Row r holds row r + 1's values (the neighbouring element where there is one row)."""
    rows = _rows(y)
    return np.roll(rows, -1, axis=0 if rows.shape[0] > 1 else 1).reshape(y.shape)


@outputs_mutant
def one_row_negated(y, dtype):
    rows = _rows(y).copy()
    live = np.flatnonzero(np.any(rows != 0, axis=1))
    if not live.size:
        raise DoesNotApply("every row is zero")
    rows[live[len(live) // 2]] *= -1
    return rows.reshape(y.shape)


@outputs_mutant
def tail_zeroed(y, dtype):
    flat = y.reshape(-1).copy()
    flat[flat.size - max(1, flat.size // 8):] = 0
    return flat.reshape(y.shape)


@outputs_mutant
def coarser(y, dtype):
    scale = 2.0 ** (COARSER_BITS[dtype] + 1)
    m, e = np.frexp(y)
    return np.ldexp(np.round(m * scale) / scale, e)


class _OneOpChanged(NumpyOps):
    """float64 NumPy ops with one primitive changed; `hit` says whether it ran."""

    def __init__(self):
        super().__init__("float64")
        self.hit = False


def ops_mutant(cls):
    """A mutant that runs the decomposition with one primitive changed."""
    def mutant(spec, inputs, attrs, dtype):
        ops = cls()
        out = _exact(spec, inputs, attrs, ops)
        if not ops.hit:
            raise DoesNotApply(f"{spec.name} does not use the primitive {cls.__name__} changes")
        return out
    MUTANTS[cls.__name__] = mutant
    return cls


@ops_mutant
class wrong_activation(_OneOpChanged):
    def silu(self, x):
        self.hit = True
        x = self._in(x)
        return x * 0.5 * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))  # GELU


@ops_mutant
class missing_residual(_OneOpChanged):
    def add(self, a, b):
        self.hit = True
        return self._in(a)


@ops_mutant
class gamma_ignored(_OneOpChanged):
    def rms_norm(self, x, gamma, eps):
        self.hit = True
        return super().rms_norm(x, np.ones_like(self._in(gamma)), eps)


@ops_mutant
class mask_off_by_one(_OneOpChanged):
    def causal_mask(self, x):
        self.hit = True
        S, T = x.shape[-2:]
        future = np.arange(T)[None, :] > np.arange(S)[:, None] + (T - S) + 1
        return np.where(future, -np.inf, x)

    def length_mask(self, x, lens):
        self.hit = True
        return super().length_mask(x, np.maximum(np.asarray(lens) - 1, 0))


@ops_mutant
class rope_position_off_by_one(_OneOpChanged):
    def rope(self, x, pos, theta):
        self.hit = True
        return super().rope(x, np.asarray(pos) + 1, theta)


@ops_mutant
class rope_interleaved(_OneOpChanged):
    def rope(self, x, pos, theta):
        """Rotates pairs (2i, 2i + 1) (GPT-J) where the spec rotates (i, i + d/2) (NeoX)."""
        self.hit = True
        d = np.shape(x)[-1]
        order = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
        rotated = super().rope(np.asarray(x)[..., order], pos, theta)
        return rotated[..., np.argsort(order)]


def wrong_head_mapping(spec, inputs, attrs, dtype):
    """Grouped-query attention with q head h reading kv head h % Hkv, not h // g."""
    hq, hkv = attrs.get("n_heads"), attrs.get("n_kv_heads")
    if "k" not in inputs or not hq or hkv in (1, hq):
        raise DoesNotApply(f"{spec.name}: no grouped kv heads to map wrongly")
    wrong = np.arange(hq) % hkv
    moved = {k: (v[:, wrong] if k in ("k", "v") else v) for k, v in inputs.items()}
    return _exact(spec, moved, {**attrs, "n_kv_heads": hq})


MUTANTS["wrong_head_mapping"] = wrong_head_mapping


def rounded_reference(spec, inputs, attrs, dtype):
    return _exact(spec, inputs, attrs)


def float32_throughout(spec, inputs, attrs, dtype):
    return _exact(spec, inputs, attrs, NumpyOps("float32"))


HONEST.update(rounded_reference=rounded_reference, float32_throughout=float32_throughout)


class Precomputed(Prepared):
    """Outputs computed at prepare time by `produce`, rounded to the dtype; run() copies
    them into the (poisoned) output buffers."""

    produce = None

    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.bind_inputs(inputs, list(inputs), np.ascontiguousarray)
        with np.errstate(over="ignore", invalid="ignore"):
            self.values = {k: np.asarray(v, dtype=np.float64).astype(np_dtype(dtype))
                           for k, v in type(self).produce(spec, self.inputs, attrs, dtype).items()}
        self.out = {k: np.empty_like(v) for k, v in self.values.items()}

    def run(self):
        for k, v in self.values.items():
            self.out[k][...] = v


def _register_all():
    import impls

    for info in pkgutil.iter_modules(impls.__path__):
        spec = getattr(importlib.import_module(f"impls.{info.name}"), "SPEC", None)
        if spec is None:
            continue
        for prefix, table in (("mutant", MUTANTS), ("honest", HONEST)):
            for name, fn in table.items():
                cls = type(f"{prefix}_{name}", (Precomputed,), {"produce": staticmethod(fn)})
                register(Implementation(spec.name, "cpu", f"{prefix}_{name}", "fused", cls, spec.dtypes,
                                        origin=__name__, doc=(fn.__doc__ or "").strip()))


_register_all()
