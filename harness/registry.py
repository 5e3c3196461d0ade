"""The registry: fusions (specs) and implementations keyed by (fusion, backend, variant).

Built-in fusions live in `impls/<fusion>/`: `__init__.py` defines `SPEC`, and each
`<backend>.py` beside it registers fused kernels with `register()` when imported.
Third-party packages add fusions or implementations through the entry-point group
`fusebench.impls`: the entry point names a module (imported) or a callable (called), which
calls `register_fusion()` / `register()` the same way the built-ins do. The environment
variable FUSEBENCH_PLUGINS names more such modules without any packaging.

Derived implementations are added for every fusion without any per-fusion code:
`reference/float64` (the decomposition in float64 NumPy), `<backend>/unfused` for each
backend with primitive ops (the chain the fused kernels replace), and the torch peers
`torch/eager`, `torch/compile` (and `torch_cuda/...` where a GPU is), plus any peer the
spec writes directly in torch (`spec.torch_peers`, e.g. `torch/sdpa`). Their keys are
fusebench's own: an implementation registered under one (by a plugin or a kernel file) is
refused and reported, since the verdicts and speedups are measured against them.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import signal
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

from harness.backends import BACKEND_MODULES, ChainPrepared, get_backend
from harness.spec import FusionSpec

ENTRY_POINT_GROUP = "fusebench.impls"
# Extra plugin modules without packaging: "pkg.module" or "pkg.module:function", comma-separated.
PLUGINS_ENV = "FUSEBENCH_PLUGINS"
KINDS = ("reference", "fused", "unfused", "peer")
# The origin of the implementations _add_derived makes; no plugin or kernel file may take their keys.
DERIVED = "derived"
DERIVED_ROLES = {"reference": "float64 reference every verdict is measured against",
                 "unfused": "unfused chain the fused kernels' speedups are measured against",
                 "peer": "torch peer the fused kernels are compared with"}


@dataclass
class Implementation:
    """One runnable implementation of a fusion on one backend.

    `factory(backend, spec, inputs, attrs, dtype) -> Prepared`. `dtypes` are the storage
    dtypes it claims; the accuracy gate holds it to every one of them."""

    fusion: str
    backend: str
    variant: str
    kind: str
    factory: Callable
    dtypes: tuple[str, ...]
    origin: str = ""
    doc: str = ""

    @property
    def key(self) -> str:
        return f"{self.fusion}/{self.backend}/{self.variant}"

    def available(self) -> tuple[bool, str]:
        try:
            backend = get_backend(self.backend)
        except Exception as e:  # a backend module that cannot load is unavailable, not fatal
            return False, f"backend {self.backend!r} failed to load: {type(e).__name__}: {e}"
        return backend.probe()

    def prepare(self, spec: FusionSpec, inputs, attrs, dtype: str):
        if dtype not in self.dtypes:
            raise ValueError(f"{self.key} does not claim {dtype} (it claims {', '.join(self.dtypes)})")
        backend = get_backend(self.backend)
        backend.require()
        return self.factory(backend, spec, inputs, attrs, dtype)


@dataclass
class Registry:
    fusions: dict[str, FusionSpec] = field(default_factory=dict)
    impls: dict[str, Implementation] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # plugins that failed to load

    def add_fusion(self, spec: FusionSpec) -> None:
        if spec.name in self.fusions and self.fusions[spec.name] is not spec:
            raise ValueError(f"fusion {spec.name!r} registered twice")
        self.fusions[spec.name] = spec

    def add(self, impl: Implementation) -> None:
        if impl.kind not in KINDS:
            raise ValueError(f"{impl.key}: kind must be one of {KINDS}, not {impl.kind!r}")
        if impl.backend not in BACKEND_MODULES:
            raise ValueError(f"{impl.key}: unknown backend {impl.backend!r}")
        if impl.key in self.impls:
            raise ValueError(f"implementation {impl.key} registered twice "
                             f"({self.impls[impl.key].origin} and {impl.origin})")
        self.impls[impl.key] = impl

    def select(self, fusions=None, backends=None, variants=None, kinds=None) -> list[Implementation]:
        """Implementations matching every filter given (None means all), in a stable order."""
        out = []
        for impl in self.impls.values():
            if fusions and impl.fusion not in fusions:
                continue
            if backends and impl.backend not in backends:
                continue
            if variants and impl.variant not in variants:
                continue
            if kinds and impl.kind not in kinds:
                continue
            out.append(impl)
        order = {b: i for i, b in enumerate(BACKEND_MODULES)}
        return sorted(out, key=lambda i: (i.fusion, KINDS.index(i.kind), order[i.backend], i.variant))


# Everything declared by imported modules; each discover() builds a Registry from it.
_declared_fusions: dict[str, FusionSpec] = {}
_declared_impls: dict[str, Implementation] = {}


def register_fusion(spec: FusionSpec) -> None:
    """Declare a fusion (third-party plugins; built-ins are found by their SPEC)."""
    old = _declared_fusions.get(spec.name)
    if old is not None and old is not spec and old.doc != spec.doc:
        raise ValueError(f"fusion {spec.name!r} declared twice")
    _declared_fusions[spec.name] = spec


def register(impl: Implementation) -> None:
    """Declare an implementation; declaring the same key again from the same module is a no-op."""
    old = _declared_impls.get(impl.key)
    if old is not None and old.origin != impl.origin:
        raise ValueError(f"implementation {impl.key} declared twice ({old.origin} and {impl.origin})")
    _declared_impls[impl.key] = impl


def _chain_factory(backend, spec, inputs, attrs, dtype):
    return ChainPrepared(backend, spec, inputs, attrs, dtype)


def _add_derived(reg: Registry, spec: FusionSpec) -> None:
    derived = [
        ("reference", "float64", "reference", ("float32", "float16", "bfloat16"), _chain_factory),
        ("cpu", "unfused", "unfused", spec.dtypes, _chain_factory),
        ("wgsl", "unfused", "unfused", spec.dtypes, _chain_factory),
        ("cuda", "unfused", "unfused", spec.dtypes, _chain_factory),
    ]
    for peer in ("torch", "torch_cuda"):
        derived.append((peer, "eager", "peer", spec.dtypes, _chain_factory))
        derived.append((peer, "compile", "peer", spec.dtypes, _compile_factory))
        for variant, fn in spec.torch_peers.items():
            derived.append((peer, variant, "peer", spec.dtypes, _function_factory(fn)))
    for backend, variant, kind, dtypes, factory in derived:
        key = f"{spec.name}/{backend}/{variant}"
        taken = reg.impls.pop(key, None)
        if taken is not None and taken.origin != DERIVED:
            reg.problems.append(f"{key} ({taken.origin}): refused: {backend}/{variant} is derived from the spec by "
                                f"fusebench (the {DERIVED_ROLES[kind]}) and cannot be replaced; register the kernel "
                                f"under a variant name of its own")
        reg.add(Implementation(spec.name, backend, variant, kind, factory,
                               tuple(d for d in dtypes if d in spec.dtypes), origin=DERIVED))


def _function_factory(peer):
    """A peer written directly in torch (harness.spec.TorchPeer), planned once, then run
    the way a chain is run; the record names the path it took."""
    def factory(backend, spec, inputs, attrs, dtype):
        planned = dict(peer.plan(inputs, attrs, backend)) if peer.plan else {}
        path = planned.pop("path", peer.path)
        prepared = ChainPrepared(backend, spec, inputs, attrs, dtype, decompose=functools.partial(peer.run, **planned))
        prepared.path = path
        return prepared
    return factory


def _compile_factory(backend, spec, inputs, attrs, dtype):
    return backend.compiled_chain(spec, inputs, attrs, dtype)


def _load_object(spec: str):
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


class _CtrlC:
    """Tells a real Ctrl-C from a KeyboardInterrupt that plugin code raises itself: while
    active (in the main thread, where Python delivers signals), a SIGINT sets `pressed`
    before it interrupts as usual; an ignored SIGINT stays ignored."""

    def __init__(self):
        self.pressed = False
        self._old = None
        self._installed = False

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            if self._old is not None and self._old is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, self._on_sigint)
                self._installed = True
        return self

    def _on_sigint(self, signum, frame):
        self.pressed = True
        if callable(self._old):
            self._old(signum, frame)
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._old)
        return False


def discover(entry_points: bool = True) -> Registry:
    """Build the registry: built-in fusions, then plugins, then the derived implementations.

    A plugin that fails to load (an exception, a sys.exit() or a KeyboardInterrupt of its
    own while it loads), declares something inconsistent, or takes the key of a derived
    implementation, is recorded in `problems` and skipped; the rest of the registry still
    loads, and the accuracy gate (`fusebench check`, `run`) cannot pass while it has problems."""
    import impls

    problems: list[str] = []
    for info in sorted(pkgutil.iter_modules(impls.__path__), key=lambda m: m.name):
        if not info.ispkg:
            continue
        pkg = importlib.import_module(f"impls.{info.name}")
        spec = getattr(pkg, "SPEC", None)
        if not isinstance(spec, FusionSpec):
            problems.append(f"impls/{info.name}: no SPEC FusionSpec in __init__.py")
            continue
        register_fusion(spec)
        for backend in BACKEND_MODULES:
            try:
                importlib.import_module(f"impls.{info.name}.{backend}")
            except ModuleNotFoundError as e:
                if e.name != f"impls.{info.name}.{backend}":
                    raise
    plugins = []
    if entry_points:
        plugins += [(f"plugin {ep.name} ({ep.value})", ep.load) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    for name in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        plugins.append((f"plugin {name} (from ${PLUGINS_ENV})", lambda name=name: _load_object(name)))
    for label, load in plugins:
        with _CtrlC() as ctrl_c:
            try:
                obj = load()
                if callable(obj):
                    obj()
            except Exception as e:  # a broken plugin must not take the registry down
                problems.append(f"{label}: {type(e).__name__}: {e}")
            except SystemExit as e:  # nor end the program, least of all with a status of its choosing
                problems.append(f"{label}: called sys.exit({e.code!r}) while loading; a plugin may not end the "
                                f"program")
            except KeyboardInterrupt:
                if ctrl_c.pressed:  # a real Ctrl-C (or SIGINT) stops the program as anywhere else
                    raise
                problems.append(f"{label}: raised KeyboardInterrupt while loading, with no Ctrl-C pressed")
    reg = Registry(problems=problems)
    for spec in _declared_fusions.values():
        reg.add_fusion(spec)
    for impl in _declared_impls.values():
        if impl.fusion not in reg.fusions:
            problems.append(f"{impl.key} ({impl.origin}): unknown fusion {impl.fusion!r}; skipped")
            continue
        try:
            reg.add(impl)
        except ValueError as e:
            problems.append(str(e))
    for spec in reg.fusions.values():
        _add_derived(reg, spec)
    return reg
