"""Storage dtypes by name: NumPy dtypes (bfloat16 through ml_dtypes), rounding and ULPs.

Every array a spec makes is already rounded to its storage dtype, so the reference and
every implementation see the same values.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# Unit roundoff u = 2**-(mantissa bits + 1): the largest relative rounding error.
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

_UINT_OF_WIDTH = {2: np.uint16, 4: np.uint32, 8: np.uint64}


class UnknownDtype(ValueError):
    pass


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a dtype name (`float32`, `float16`, `bfloat16`, `float64`)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise UnknownDtype(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}") from None


def round_to(a: np.ndarray, name: str) -> np.ndarray:
    """`a` rounded (to nearest even) into storage dtype `name`."""
    return np.asarray(a).astype(np_dtype(name))


def to_f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def _ordered_ints(a: np.ndarray) -> np.ndarray:
    """Map IEEE bit patterns to integers that are monotonic in the float value."""
    width = a.dtype.itemsize
    bits = a.view(_UINT_OF_WIDTH[width]).astype(np.int64 if width < 8 else np.uint64)
    if width == 8:
        bits = bits.view(np.int64)
        return np.where(bits < 0, np.int64(-0x8000000000000000) - bits, bits)
    sign = np.int64(1) << (8 * width - 1)
    return np.where(bits & sign, -(bits & (sign - 1)), bits)


def ulp_distance(a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """Elementwise distance in units in the last place of dtype `name` between a and b.

    Both are rounded to `name` first; -0 and +0 are zero apart. NaNs give a huge distance.
    """
    dt = np_dtype(name)
    ia = _ordered_ints(np.ascontiguousarray(np.asarray(a).astype(dt)))
    ib = _ordered_ints(np.ascontiguousarray(np.asarray(b).astype(dt)))
    dist = np.abs(ia.astype(np.float64) - ib.astype(np.float64))
    nan = np.isnan(np.asarray(a, dtype=np.float64)) | np.isnan(np.asarray(b, dtype=np.float64))
    return np.where(nan, np.inf, dist)


def step_ulps(a: np.ndarray, name: str, ulps: int = 1) -> np.ndarray:
    """`a` (rounded to `name`) moved `ulps` representable values towards +inf."""
    out = np.asarray(a).astype(np_dtype(name))
    for _ in range(ulps):
        if out.dtype == DTYPES["bfloat16"]:
            bits = out.view(np.uint16).astype(np.int64)
            neg = bits & 0x8000
            mag = bits & 0x7FFF
            # towards +inf: positive magnitudes grow, negative ones shrink (-0 -> smallest +)
            new = np.where(neg == 0, bits + 1, np.where(mag == 0, 1, bits - 1))
            out = new.astype(np.uint16).view(out.dtype)
        else:
            out = np.nextafter(out, np.array(np.inf, dtype=out.dtype))
    return out
