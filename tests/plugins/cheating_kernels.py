"""Kernels that give the right answer but cheat the timer, each in one way the harness
must catch (tests/test_honest_timing.py). They wrap the real fused rmsnorm_gemm kernels.

Loaded only by importing this module in a test (never shipped).

- cpu/caches_result: computes once, then copies the saved result on every call (fast
  and right as long as the inputs never change).
- wgsl/side_submission: submits the real dispatches in a submission of its own, outside
  the timed compute pass, and leaves one tiny fill for the timer to see.
- wgsl/edits_input: right outputs, then overwrites its input x on the device.
- cpu/edits_host_input: right outputs, then changes one element of the host array x it reads
  in place (which is the harness's own input array).
- cuda/side_stream: launches the real kernels on a non-blocking stream, which neither the
  current stream's events nor the legacy default stream wait for.
- cpu/caches_by_content: keeps every result it computed, keyed on the first bytes of x,
  and serves a timed run from it when it has seen those bytes (any number of input sets).
- cpu/lazy_outputs: run() only notes that it was called; outputs() does the work.
- cpu/thread_after_run: run() starts a thread that does the work; outputs() joins it.
- cpu/work_in_refresh: refresh() (between timed runs) computes the result; run() copies it.
"""

from __future__ import annotations

import time

import numpy as np

from harness.registry import Implementation, register
from impls.rmsnorm_gemm.cpu import RmsNormGemmCpu
from impls.rmsnorm_gemm.cuda import RmsNormGemmCuda
from impls.rmsnorm_gemm.wgsl import RmsNormGemmWgsl


class CachesResult(RmsNormGemmCpu):
    def run(self):
        if not hasattr(self, "saved"):
            super().run()
            self.saved = self.out["y"].copy()
        np.copyto(self.out["y"], self.saved)


class SideSubmission(RmsNormGemmWgsl):
    def __init__(self, backend, spec, inputs, attrs, dtype):
        super().__init__(backend, spec, inputs, attrs, dtype)
        self.decoy = backend.empty((4,), "float32")

    def run(self):
        super().run()
        self.backend.flush()  # the real work, in a submission without timestamps
        self.backend.fill_words(self.decoy, 0)  # all the timed pass holds


class EditsInput(RmsNormGemmWgsl):
    def run(self):
        super().run()
        self.backend.fill_words(self.inputs["x"], 0)


class EditsInputHost(RmsNormGemmCpu):
    def run(self):
        super().run()
        self.inputs["x"][0, 0] += 1


class SideStream(RmsNormGemmCuda):
    def run(self):
        import cupy as cp

        if not hasattr(self, "side"):
            self.side = cp.cuda.Stream(non_blocking=True)
        with self.side:
            super().run()


class CachesByContent(RmsNormGemmCpu):
    def run(self):
        self.kept = getattr(self, "kept", {})
        key = self.inputs["x"].tobytes()[:64]
        if key not in self.kept:
            super().run()
            self.kept[key] = self.out["y"].copy()
        np.copyto(self.out["y"], self.kept[key])


class LazyOutputs(RmsNormGemmCpu):
    def run(self):
        self.owed = True

    def outputs(self):
        if getattr(self, "owed", False):
            super().run()
            self.owed = False
        return super().outputs()


class ThreadAfterRun(RmsNormGemmCpu):
    def run(self):
        import threading

        self.worker = threading.Thread(target=lambda: (time.sleep(0.002), super(ThreadAfterRun, self).run()))
        self.worker.start()

    def outputs(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.join()
        return super().outputs()


class WorkInRefresh(RmsNormGemmCpu):
    def refresh(self, values):
        super().refresh(values)
        super().run()
        self.ready = self.out["y"].copy()

    def run(self):
        if not hasattr(self, "ready"):
            super().run()
            self.ready = self.out["y"].copy()
        np.copyto(self.out["y"], self.ready)


for cls, backend, variant in [(CachesByContent, "cpu", "caches_by_content"), (LazyOutputs, "cpu", "lazy_outputs"),
                              (ThreadAfterRun, "cpu", "thread_after_run"), (WorkInRefresh, "cpu", "work_in_refresh"),
                              (CachesResult, "cpu", "caches_result"), (SideSubmission, "wgsl", "side_submission"),
                              (EditsInput, "wgsl", "edits_input"), (EditsInputHost, "cpu", "edits_host_input"),
                              (SideStream, "cuda", "side_stream")]:
    register(Implementation("rmsnorm_gemm", backend, variant, "fused", cls, ("float32",), origin=__name__,
                            doc=cls.__doc__ or ""))
