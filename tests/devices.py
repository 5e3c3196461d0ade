"""What this machine can run, asked once at collection (the backends' probes are cached and
never raise), so that a test needing a device the machine lacks is one skip with the
reason instead of one skip per parameter. Where the device is there, the tests expand
exactly as they are written: these helpers only remove what could never run here.

- `needs_cuda`: a test (parametrised or not) that runs only on a usable CUDA device.
- `runnable`: parameters over implementations, the ones this machine cannot run folded
  into a single skipping parameter that names their backends and why.
- `need_compiler`, `cuda_backend`, `registry`, `judge`: what the CUDA tests share.
"""

from __future__ import annotations

import functools
import importlib
import os

import numpy as np
import pytest

from harness import cuda_compile as cc

UNAVAILABLE_ID = "not-runnable-here"


def probe(backend: str) -> tuple[bool, str]:
    """(ok, why) of `backend`'s probe; a backend whose module cannot load is unavailable."""
    try:
        from harness.backends import get_backend

        return get_backend(backend).probe()
    except Exception as e:  # never take collection down
        return False, f"backend {backend!r} failed to load: {type(e).__name__}: {e}"


def _argnames(mark) -> list[str]:
    names = mark.args[0] if mark.args else mark.kwargs["argnames"]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return list(names)


def collapse(fn, reason: str):
    """fn skipped with `reason` as one test: its parametrisations (pytest.mark.parametrize
    applied below this) replaced by a single parameter, `no-device`."""
    marks = list(getattr(fn, "pytestmark", []))
    names = [n for m in marks if m.name == "parametrize" for n in _argnames(m)]
    fn.pytestmark = [m for m in marks if m.name != "parametrize"]
    fn = pytest.mark.skip(reason=reason)(fn)
    if names:
        fn = pytest.mark.parametrize(names, [pytest.param(*[None] * len(names), id="no-device")])(fn)
    return fn


def needs_cuda(fn):
    """Decorator, above any parametrize: fn as written where the cuda backend's probe passes;
    elsewhere one skip with the probe's reason."""
    ok, why = probe("cuda")
    return fn if ok else collapse(fn, f"no usable CUDA device: {why}")


def runnable(cases, dtypes=None) -> list:
    """pytest params for `cases`, (implementation, values, id) each: the values (and, when
    `dtypes` is given, each dtype the implementation claims, last, id "<id>-<dtype>") for
    every implementation this machine can run; those it cannot run become one parameter,
    `not-runnable-here`, that skips naming each backend and why."""
    params, missing, width = [], {}, None
    for impl, values, id_ in cases:
        width = len(values) + (dtypes is not None)
        ok, why = impl.available()
        if not ok:
            missing.setdefault(impl.backend, why)
            continue
        if dtypes is None:
            params.append(pytest.param(*values, id=id_))
        else:
            params += [pytest.param(*values, d, id=f"{id_}-{d}") for d in dtypes if d in impl.dtypes]
    if missing:
        reason = "not runnable here: " + "; ".join(f"{b}: {why}" for b, why in missing.items())
        params.append(pytest.param(*[None] * width, id=UNAVAILABLE_ID, marks=pytest.mark.skip(reason=reason)))
    return params


# ---- shared by the CUDA tests -----------------------------------------------------------------
def need_compiler(which: str | None = None) -> str:
    """A CUDA compiler (`which`, or the first available); skip without one, or fail where
    the environment variable CI is set (CI must be able to compile the sources)."""
    found = cc.available_compilers()
    if not found:
        if os.environ.get("CI"):
            pytest.fail(cc.NO_COMPILER)
        pytest.skip(cc.NO_COMPILER)
    if which is None:
        return found[0]
    if which not in found:
        pytest.skip(f"{which} is not available here (have: {', '.join(found)})")
    return which


def cuda_backend():
    from harness.backends import get_backend

    return get_backend("cuda")


@functools.lru_cache(maxsize=None)
def registry():
    """The built-in implementations (no entry-point plugins), discovered once."""
    from harness.registry import discover

    return discover(entry_points=False)


def judge(impl_key, fusion, params, dtype, value_shape, seed):
    """Run implementation `impl_key` once on poisoned outputs and judge it with the gate."""
    from harness.accuracy import Yardstick

    spec = importlib.import_module(f"impls.{fusion}").SPEC
    dims, attrs = spec.split(params)
    inputs = spec.make_inputs(dims, dtype, seed, value_shape)
    p = registry().impls[impl_key].prepare(spec, inputs, attrs, dtype)
    p.poison()
    p.run()
    out = p.outputs()
    for name, shape in spec.output_shapes(dims).items():
        assert out[name].shape == shape, (name, out[name].shape, shape)
        assert not np.isnan(out[name].astype(np.float32)).any(), f"{name}: NaN (an element never written?)"
    return Yardstick.for_inputs(spec, inputs, attrs, dtype).judge(out)
