"""Implementations run isolated: one worker process per backend, a time limit per case.

A kernel that hangs, or crashes its process (a segfault in native code, a device fault,
the OOM killer), must not take the run down. `IsolatedRunner.run_job` hands each
backend's share of a (case, dtype) job to that backend's worker (a `spawn`ed process that
builds its own registry and calls harness.runner.run_job), and relays the worker's
records as they come. The worker says which implementation it starts; if it then falls
silent past the time limit, or its process dies, the worker is killed, that
implementation gets an "error" record with the reason (timed out after N s; crashed with
SIGSEGV / exit status), and a fresh worker carries on with the rest of the job.

Workers run one at a time (never two timings at once) and live for the whole run, so a
backend's imports and kernel compilations are paid once. Each worker computes its own
float64 reference and same-dtype chain for a job it gets (cheap next to the kernels at
the sizes the quick suite runs; a few seconds per worker at prefill sizes).
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing as mp
import signal
import threading
import time
from typing import Callable

from harness.registry import Implementation, Registry
from harness.runner import Job, Options, impl_fields

DEFAULT_TIMEOUT_S = 600.0


def _serve(conn) -> None:
    """The worker's loop: (case, dtype, impl keys, options) in; impl/record/done messages out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    from harness.registry import discover
    from harness.runner import run_job

    reg = discover()
    while True:
        msg = conn.recv()
        if msg is None:
            return
        case, dtype, keys, opts, timed = msg
        job = Job(case, dtype, [reg.impls[k] for k in keys], timed)
        run_job(reg, job, opts, lambda rec: conn.send(("record", rec)), lambda impl: conn.send(("impl", impl.key)))
        conn.send(("done", None))


class _Worker:
    def __init__(self, backend: str):
        self.backend = backend
        self.proc = None
        self.conn = None

    def ensure_started(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), name=f"fusebench-{self.backend}", daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except (OSError, EOFError):
                pass
        self.kill()

    def death(self) -> str:
        self.proc.join(5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            try:
                return f"worker process killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"worker process killed by signal {-code}"
        return f"worker process exited with status {code}"


def _by_backend(job: Job) -> dict[str, list[Implementation]]:
    out: dict[str, list[Implementation]] = {}
    for impl in job.impls:
        out.setdefault(impl.backend, []).append(impl)
    return out


class IsolatedRunner:
    """Runs jobs like harness.runner.run_job, each backend's implementations in its worker."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.workers: dict[str, _Worker] = {}
        self._stopping = False

    def run_job(self, reg: Registry, job: Job, opts: Options, on_record: Callable[[dict], None],
                on_impl: Callable[[Implementation], None] = lambda i: None) -> None:
        """Each backend's share of the job in its worker, one backend after the other."""
        for backend, impls in _by_backend(job).items():
            self._share(backend, job, impls, opts, on_record, on_impl)

    def run_untimed(self, reg: Registry, jobs: list[Job], opts: Options, on_record: Callable[[Job, dict], None],
                    on_impl: Callable[[Job, Implementation], None] = lambda j, i: None) -> None:
        """Jobs that nothing times (checks, warm-ups), every backend's worker at once, each
        working through its shares of the jobs in order: one backend compiles its kernels
        while another checks its own. The callbacks (which take the job first) are called
        from one thread per backend, one call at a time."""
        assert not any(j.timed and opts.bench for j in jobs), "timed jobs run one backend at a time"
        from harness.backends import get_backend

        # a lane: (worker key, backend, which of the jobs); a backend's extra lanes
        # (Backend.check_lanes) take its 16-bit jobs in workers of their own
        lanes = []
        for backend in dict.fromkeys(b for j in jobs for b in _by_backend(j)):
            if get_backend(backend).check_lanes > 1:
                lanes += [(backend, backend, lambda j: j.dtype == "float32"),
                          (f"{backend}/16-bit", backend, lambda j: j.dtype != "float32")]
            else:
                lanes.append((backend, backend, lambda j: True))
        lock = threading.Lock()

        def one_at_a_time(fn):
            def call(arg):
                with lock:
                    fn(arg)
            return call

        def lane(key: str, backend: str, takes) -> None:
            for job in jobs:
                impls = _by_backend(job).get(backend)
                if impls and takes(job) and not self._stopping:
                    self._share(key, job, impls, opts, one_at_a_time(functools.partial(on_record, job)),
                                one_at_a_time(functools.partial(on_impl, job)))

        for key, backend, _ in lanes:  # made here, not in the threads
            self.workers.setdefault(key, _Worker(backend))
        with concurrent.futures.ThreadPoolExecutor(max(1, len(lanes))) as pool:
            running = [pool.submit(lane, *spec) for spec in lanes]
            try:
                for done in running:
                    done.result()
            except BaseException:  # an interruption, --fail-fast: the other lanes stop too
                self._stopping = True
                for worker in self.workers.values():
                    worker.kill()
                raise
        for key, backend, _ in lanes:  # the extra lanes' workers are done: their compiles are on disk
            if key != backend:
                self.workers.pop(key).stop()

    def _share(self, key: str, job: Job, impls: list[Implementation], opts: Options, on_record, on_impl):
        """Job's `impls` in the worker `key` (a backend's name, or one of its extra lanes)."""
        worker = self.workers.setdefault(key, _Worker(key))
        pending = list(impls)
        while pending and not self._stopping:
            pending = self._run_part(worker, job, pending, opts, on_record, on_impl)

    def _run_part(self, worker: _Worker, job: Job, impls: list[Implementation], opts: Options,
                  on_record, on_impl) -> list[Implementation]:
        """Send the implementations to the worker; return those still to run after a fault."""
        by_key = {i.key: i for i in impls}
        pending = dict(by_key)
        worker.ensure_started()
        worker.conn.send((job.case, job.dtype, list(by_key), opts, job.timed))
        current: Implementation | None = None
        deadline = time.monotonic() + self.timeout_s
        while True:
            fault = None
            if time.monotonic() > deadline:
                fault = f"timed out after {self.timeout_s:g} s (the worker was killed)"
            else:
                try:
                    if worker.conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                        kind, payload = worker.conn.recv()
                    elif not worker.proc.is_alive():
                        raise EOFError
                    else:
                        continue
                except (EOFError, OSError, AttributeError):  # AttributeError: killed by a stop meanwhile
                    if self._stopping:
                        return []
                    fault = worker.death()
            if fault is None:
                if kind == "impl":
                    current = by_key[payload]
                    deadline = time.monotonic() + self.timeout_s
                    on_impl(current)
                elif kind == "record":
                    pending.pop(payload["impl"], None)
                    on_record(payload)
                else:  # done
                    return []
                continue
            worker.kill()
            if self._stopping:  # killed because the run stops: nobody to blame
                return []
            # The implementation that was running is blamed; if none had started yet (the
            # worker died while making inputs or the reference), every pending one is.
            blamed = [current] if current is not None and current.key in pending else list(pending.values())
            for impl in blamed:
                pending.pop(impl.key)
                on_record({**impl_fields(impl), "case": job.case.id, "model": job.case.model,
                           "params": job.case.params, "dtype": job.dtype,
                           "case_file": job.case.where, "status": "error", "verdict": "fail",
                           "reason": fault})
            return list(pending.values())

    def close(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.workers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
