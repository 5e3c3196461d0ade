"""Device time without launch gaps, checked without a GPU: the held-stream sampling
(harness.backends.gpu_timing), the graph node count, which timing method each backend
picks and says in its records, the fallback with its reason, and the runner timing and
checking what was captured. (On a GPU, tests/test_cuda_sources.py and the device
script compare the figures with an independent timer.)"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from harness.backends import Replay, get_backend
from harness.backends.gpu_timing import HOLD_MAX_CYCLES, HOLD_START_CYCLES, Hold, graph_launches, method_name
from harness.cases import Case
from harness.runner import Job, Options, run_job


class _FakeStream:
    """A GPU stream as the hold sees it: the start event fires early when the host took
    longer to queue the work than the hold lasted."""

    def __init__(self, host_cycles):
        self.host_cycles = host_cycles
        self.holds = []

    def hold(self, cycles):
        self.holds.append(cycles)

    def started_early(self):
        return self.holds[-1] < self.host_cycles


def test_a_short_hold_is_doubled_and_its_samples_dropped():
    stream = _FakeStream(host_cycles=3 * HOLD_START_CYCLES)
    hold = Hold()
    seconds = hold.sample(stream.hold, lambda: None, stream.started_early, lambda: 1.5e-5)
    assert seconds == 1.5e-5
    assert stream.holds == [HOLD_START_CYCLES, 2 * HOLD_START_CYCLES, 4 * HOLD_START_CYCLES]
    assert hold.dropped == 2 and hold.cycles == 4 * HOLD_START_CYCLES
    hold.sample(stream.hold, lambda: None, stream.started_early, lambda: 1.5e-5)  # the grown hold stays
    assert stream.holds[-1] == 4 * HOLD_START_CYCLES and hold.dropped == 2


def test_a_run_no_hold_can_cover_is_counted_not_looped_forever():
    stream = _FakeStream(host_cycles=10 * HOLD_MAX_CYCLES)
    hold = Hold()
    hold.sample(stream.hold, lambda: None, stream.started_early, lambda: 1.0)
    assert hold.cycles == HOLD_MAX_CYCLES and hold.ungated == 1


class _FakeDriver:
    """cuGraphGetNodes / cuGraphNodeGetType / cuGraphChildGraphNodeGetGraph over graphs
    given as {handle: [node type or ("child", handle)]}."""

    def __init__(self, graphs):
        self.graphs, self.nodes = graphs, {}

    def cuGraphGetNodes(self, graph, nodes, count):
        items = self.graphs[graph.value]
        count._obj.value = len(items)
        if nodes is not None:
            for i, item in enumerate(items):
                handle = 1000 * graph.value + i + 1
                self.nodes[handle] = item
                nodes[i] = handle
        return 0

    def cuGraphNodeGetType(self, node, kind):
        item = self.nodes[node.value]
        kind._obj.value = 4 if isinstance(item, tuple) else item
        return 0

    def cuGraphChildGraphNodeGetGraph(self, node, child):
        child._obj.value = self.nodes[node.value][1]
        return 0


def test_graph_launches_count_kernels_memsets_and_copies_through_child_graphs():
    # 0 kernel, 1 memcpy, 2 memset, 5 empty, 7 event record, 4 child graph
    driver = _FakeDriver({1: [0, 0, 2, 5, ("child", 2), 7], 2: [0, 1, 0]})
    assert graph_launches(1, driver) == {"kernel": 4, "memcpy": 1, "memset": 1}
    assert ctypes.sizeof(ctypes.c_size_t) == 8


def test_each_backend_names_its_timing_method():
    assert get_backend("cpu").timing_method.startswith("host clock")
    assert get_backend("reference").timing_method.startswith("host clock")
    assert get_backend("torch").timing_method.startswith("host clock")
    assert get_backend("cuda").timing_method == method_name(True)
    assert get_backend("torch_cuda").timing_method == method_name(True)
    wgsl = get_backend("wgsl")
    if wgsl.probe()[0] and wgsl.has_timestamps:
        assert "timestamp queries" in wgsl.timing_method
    assert "no graph: why" in method_name(False, "why")


def test_cuda_falls_back_to_held_direct_launches_and_says_why(monkeypatch):
    cuda = get_backend("cuda")

    def no_capture(prepared):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda, "_capture", no_capture)
    monkeypatch.setattr(cuda, "synchronize", lambda: None)
    monkeypatch.setattr("cupy.cuda.runtime.deviceSynchronize", lambda: None)
    marker = object()
    timed, method = cuda.timing_target(marker)
    assert timed is marker
    assert method.startswith("direct launches between events, stream held (no graph: RuntimeError: cudaErrorStream")


def _case():
    return Case("rmsnorm_gemm", "t.small", "test", {"M": 2, "H": 67, "N": 31}, ("float32",), ("smoke",), "t.toml", 1)


def _bench_fused_cpu() -> dict:
    from harness.registry import discover

    reg = discover()
    records = []
    run_job(reg, Job(_case(), "float32", [reg.impls["rmsnorm_gemm/cpu/fused"]]),
            Options(bench=True, budget_s=0.05, warmup_s=0.0, min_samples=4, settle_s=0.0), records.append)
    (rec,) = records
    return rec


def test_records_carry_the_method_launches_and_latency():
    from harness.registry import discover

    reg = discover()
    impls = [reg.impls["rmsnorm_gemm/cpu/fused"], reg.impls["rmsnorm_gemm/cpu/unfused"]]
    records = []
    run_job(reg, Job(_case(), "float32", impls), Options(bench=True, budget_s=0.05, warmup_s=0.0, settle_s=0.0),
            records.append)
    fused, chain = records
    for r in records:
        assert r["timing_method"] == "host clock around one run and a synchronisation", r
        assert r["latency_s"] == r["median_s"]  # the host clock already includes the launches
    assert chain["launches"] == 2 and fused["launches"] is None  # rms_norm + linear; numba is not counted


def test_the_runner_times_and_checks_the_captured_run(monkeypatch):
    """A backend that captures (here the cpu backend made to wrap runs in a Replay, the way
    the CUDA backends wrap a graph): the samples run the replay, the checks after the loop
    judge the replay's outputs, and the record takes the graph's launch count and method."""
    cpu = get_backend("cpu")
    replays = []

    def capture(prepared):
        calls = []

        def replay():
            calls.append(1)
            prepared.run()

        r = Replay(prepared, replay, prepared.out, {"kernel": 3, "memcpy": 0, "memset": 1})
        replays.append(calls)
        return r, "test graph"

    monkeypatch.setattr(cpu, "timing_target", capture)
    rec = _bench_fused_cpu()
    assert rec["status"] == "ok", rec["reason"]
    assert rec["timing_method"] == "test graph" and rec["launches"] == 4
    assert len(replays[0]) >= rec["n"] + 2  # every sample and both checks after the loop ran the replay


def test_a_replay_that_goes_wrong_after_capture_fails_the_check(monkeypatch):
    """The captured run is judged, not only the direct one: a replay writing garbage fails."""
    cpu = get_backend("cpu")

    def capture(prepared):
        def replay():
            for v in prepared.out.values():
                v[...] = 0.0
        return Replay(prepared, replay, prepared.out, {"kernel": 1}), "test graph"

    monkeypatch.setattr(cpu, "timing_target", capture)
    rec = _bench_fused_cpu()
    assert rec["status"] == "fail" and "after the timing loop" in rec["reason"]


@pytest.mark.parametrize("full", [True, False])
def test_the_decode_sdpa_peer_takes_the_path_a_caller_would(full):
    """Every key valid: SDPA with no mask. Ragged: a mask built once at prepare time (on a
    GPU, FlexAttention with its block mask); never rebuilt inside the timed run."""
    from harness.registry import discover

    reg = discover()
    impl = reg.impls["decode_attention/torch/sdpa"]
    if not impl.available()[0]:
        pytest.skip(impl.available()[1])
    case = Case("decode_attention", "t.sdpa", "test", {"B": 1 if full else 3, "T": 64, "n_heads": 4,
                                                       "n_kv_heads": 2, "head_dim": 16}, ("float32",), ("smoke",),
                "t.toml", 1)
    records = []
    run_job(reg, Job(case, "float32", [impl]), Options(value_shape="normal" if full else "ragged"), records.append)
    (rec,) = records
    assert rec["status"] == "ok", rec["reason"]
    assert rec["path"] == ("sdpa, no mask (every key valid)" if full else "sdpa, boolean key mask built once")


def test_torch_rope_tables_are_built_once_and_looked_up_by_position():
    torch = pytest.importorskip("torch")
    from harness.backends.torch_peer import TorchOps
    from harness.ops import NumpyOps

    ops = TorchOps("cpu")
    x = np.random.default_rng(0).standard_normal((5, 2, 8)).astype(np.float32)
    pos = np.array([0, 1, 7, 300, 32767], dtype=np.int32)
    got = ops.rope(torch.from_numpy(x), torch.from_numpy(pos), 10000.0).numpy()
    np.testing.assert_allclose(got, NumpyOps("float32").rope(x, pos, 10000.0), rtol=1e-6, atol=1e-6)
    table = TorchOps.rope_table("cpu", 8, 10000.0)
    ops.rope(torch.from_numpy(x), torch.from_numpy(pos), 10000.0)
    assert TorchOps.rope_table("cpu", 8, 10000.0)[0] is table[0]  # the same tensor: built once
