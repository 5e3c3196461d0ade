"""Device time on CUDA without the host's launch latency inside it, shared by the cuda
(CuPy) and torch_cuda backends. No CUDA library is imported here; each backend passes its
own stream, events and kernels.

The method, per sample:
1. the cache flush (cold mode) and a *hold*: a one-thread kernel that spins for a number
   of clock cycles, queued on the timing stream;
2. the start event, the work (one graph launch where the run could be captured, else
   the run's own launches), the end event, queued behind the hold while it spins;
3. if the start event has already fired when the host has queued everything, the GPU
   ran out of queued work before the host finished launching, so the sample may contain
   a launch gap: it is dropped and the hold doubled (nvbench's blocking kernel, with a
   timed spin instead of a host flag, so that it can never deadlock).
So the events bracket work that was entirely queued before the first of it ran: device
time, not the host's time to issue it. The launch-inclusive figure is measured apart
(the host clock around one run and a synchronisation: `latency`).

A captured run is replayed as a CUDA graph; its nodes (kernels, memsets, copies) are the
record's launch count, read through the driver API (libcuda's cuGraphGetNodes), which
every machine with an NVIDIA driver has.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

HOLD_START_CYCLES = 20_000  # about 10 µs at 2 GHz: ample for one graph launch
HOLD_MAX_CYCLES = 4_000_000_000  # about 2 s: beyond this, a run cannot be held at all

# The spin kernel, for NVRTC / CuPy (torch has its own: torch.cuda._sleep).
HOLD_SOURCE = r"""
extern "C" __global__ void fb_hold(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@dataclass
class Hold:
    """The hold of one timing stream: its length in cycles, grown when a sample shows
    that the host needed longer to queue the work; how many samples were dropped."""

    cycles: int = HOLD_START_CYCLES
    dropped: int = 0
    ungated: int = 0  # samples kept although even the longest hold was too short
    history: list[int] = field(default_factory=list)

    def sample(self, hold, enqueue, started_early, elapsed) -> float:
        """One sample: hold(cycles); enqueue() (start event, work, end event);
        started_early() -> whether the start event had fired when enqueue() returned;
        elapsed() -> seconds between the events, after waiting for the end."""
        while True:
            hold(self.cycles)
            enqueue()
            early = started_early()
            seconds = elapsed()
            if not early:
                return seconds
            if self.cycles >= HOLD_MAX_CYCLES:
                self.ungated += 1
                return seconds
            self.dropped += 1
            self.cycles = min(2 * self.cycles, HOLD_MAX_CYCLES)
            self.history.append(self.cycles)


# CUgraphNodeType values that are device work launched by the graph
_LAUNCH_NODE_TYPES = {0: "kernel", 1: "memcpy", 2: "memset"}
_CHILD_GRAPH = 4


def _driver():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuGraphGetNodes.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.cuGraphNodeGetType.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    lib.cuGraphChildGraphNodeGetGraph.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    return lib


def graph_launches(graph_handle: int, driver=None) -> dict[str, int]:
    """{"kernel": n, "memcpy": n, "memset": n} in a cudaGraph_t / CUgraph (child graphs
    counted through)."""
    lib = driver or _driver()
    count = ctypes.c_size_t(0)
    _check(lib.cuGraphGetNodes(ctypes.c_void_p(graph_handle), None, ctypes.byref(count)), "cuGraphGetNodes")
    nodes = (ctypes.c_void_p * max(count.value, 1))()
    _check(lib.cuGraphGetNodes(ctypes.c_void_p(graph_handle), nodes, ctypes.byref(count)), "cuGraphGetNodes")
    out = {name: 0 for name in _LAUNCH_NODE_TYPES.values()}
    for i in range(count.value):
        kind = ctypes.c_int(-1)
        _check(lib.cuGraphNodeGetType(ctypes.c_void_p(nodes[i]), ctypes.byref(kind)), "cuGraphNodeGetType")
        if kind.value in _LAUNCH_NODE_TYPES:
            out[_LAUNCH_NODE_TYPES[kind.value]] += 1
        elif kind.value == _CHILD_GRAPH:
            child = ctypes.c_void_p()
            _check(lib.cuGraphChildGraphNodeGetGraph(ctypes.c_void_p(nodes[i]), ctypes.byref(child)),
                   "cuGraphChildGraphNodeGetGraph")
            for k, v in graph_launches(child.value, lib).items():
                out[k] += v
    return out


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with CUresult {status}")


def method_name(captured: bool, why_not: str = "") -> str:
    """The record's words for how a CUDA figure was timed."""
    if captured:
        return "cuda-graph replay between events, stream held"
    return f"direct launches between events, stream held (no graph: {why_not})"
