"""Compile before timing: a run's kernels prepared once, on every core, while nothing is timed.

On a machine that has never run fusebench, compiling takes most of a run's first minutes:
numba's fused CPU kernels, torch.compile's graphs (Inductor), the WGSL shaders (Mesa's
lavapipe). Those go to on-disk caches (numba's next to harness.kernels.fb_numba, Inductor's
in $TORCHINDUCTOR_CACHE_DIR, Mesa's shader cache), so a later process loads them instead.
Timing must run alone, one implementation at a time; compiling need not. `warm()` prepares
and runs once each implementation of the run whose backend says its cache is cold for it
(`Backend.needs_warming(impl)`), one process per backend and up to one per core at a time,
before the first timing.
Nothing it does is recorded: the timed pass prepares, checks and records every
implementation as it would have, and a kernel that fails or hangs here fails there, in
its isolated worker, with its reason.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import wait as wait_any
from typing import Callable

from harness.backends import get_backend

# at most this long for one implementation-case; past it its process is stopped and the
# timed pass (which has its own time limit) compiles the rest of that backend's share
DEFAULT_TIMEOUT_S = 600.0


def warm_groups(jobs) -> list[tuple[str, list[tuple]]]:
    """(backend, [(case, dtype, impl key), ...]) for every implementation of `jobs` whose
    backend's cache is cold for it; the largest share first."""
    groups: dict[str, list[tuple]] = {}
    needs: dict[str, bool] = {}
    for job in jobs:
        for impl in job.impls:
            if impl.key not in needs:
                try:
                    needs[impl.key] = get_backend(impl.backend).needs_warming(impl)
                except Exception:  # a backend that cannot say is left to the timed pass
                    needs[impl.key] = False
            if needs[impl.key]:
                groups.setdefault(impl.backend, []).append((job.case, job.dtype, impl.key))
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def _warm_backend(items, seed: int, value_shape: str, conn) -> None:
    """One process, one backend's share: say which item starts, prepare and run it once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    from harness.registry import discover
    from harness.runner import case_seed

    reg = discover()
    for case, dtype, key in items:
        conn.send(("start", key))
        try:
            impl = reg.impls[key]
            spec = reg.fusions[impl.fusion]
            dims, attrs = spec.split(case.params)
            prepared = impl.prepare(spec, spec.make_inputs(dims, dtype, case_seed(case, dtype, seed), value_shape),
                                    attrs, dtype)
            try:
                prepared.run()
                get_backend(impl.backend).synchronize()
            finally:
                prepared.close()
            conn.send(("done", key))
        except Exception:  # noqa: BLE001 - the timed pass records it with its reason
            conn.send(("failed", key))
    conn.close()


def warm(jobs, *, seed: int = 0, value_shape: str = "normal", processes: int | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S, say: Callable[[str], None] = lambda s: None) -> float:
    """Fill the compile caches for `jobs`, one process per backend and at most one per core
    at a time; returns the seconds it took (0 when every cache was warm). `say` gets a
    line when it starts and one when it ends."""
    groups = warm_groups(jobs)
    if not groups:
        return 0.0
    processes = max(1, min(processes or os.cpu_count() or 1, len(groups)))
    total = sum(len(items) for _, items in groups)
    say(f"compiling first: {total} implementation-cases on {', '.join(b for b, _ in groups)} have nothing in "
        f"their compile cache yet (once per machine); {processes} processes at a time, nothing is timed meanwhile")
    started = time.monotonic()
    ctx = mp.get_context("spawn")
    pending = list(groups)
    running: dict = {}  # connection -> [process, backend, deadline of the item it runs]
    done = 0
    try:
        while pending or running:
            while pending and len(running) < processes:
                backend, items = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_warm_backend, args=(items, seed, value_shape, child),
                                   name=f"fusebench-warm-{backend}", daemon=True)
                proc.start()
                child.close()
                running[parent] = [proc, backend, time.monotonic() + timeout_s]
            for conn in wait_any(list(running), timeout=1.0):
                try:
                    kind, _ = conn.recv()
                except EOFError:  # finished, or crashed: what is left goes to the timed pass
                    running.pop(conn)[0].join(5)
                    conn.close()
                    continue
                done += kind == "done"
                running[conn][2] = time.monotonic() + timeout_s
            for conn, (proc, backend, deadline) in list(running.items()):
                if time.monotonic() > deadline:
                    say(f"compiling first: {backend} stopped after {timeout_s:g} s on one kernel; "
                        f"the timed pass compiles the rest")
                    proc.kill()
                    proc.join(5)
                    conn.close()
                    running.pop(conn)
    finally:
        for conn, (proc, *_rest) in running.items():
            proc.kill()
            proc.join(5)
            conn.close()
    seconds = time.monotonic() - started
    say(f"compiling first: {done} of {total} prepared in {seconds:.0f} s")
    return seconds
