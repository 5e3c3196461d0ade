"""Launch limits (harness.cuda_launch): the checker itself, then every fused CUDA kernel's
launch plan over sizes up to Llama-3.1-405B and beyond, against the H200's limits, without
a GPU. The plans checked are the ones the kernels' prepare() launches (each impls/<fusion>/
cuda.py's launch_plan). Where a compiler is present, each kernel's own thread limit
(__launch_bounds__, from the PTX) and, for add_rmsnorm, ptxas's static shared memory count
too. On a GPU the same plans are checked against the device's own limits and the loaded
kernels' registers and static shared memory."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest

from harness import cuda_compile as cc
from harness.cuda_launch import (H200, BoundPlan, KernelFacts, Launch, LaunchLimitError, Plan, bind, check,
                                 needs_opt_in, registers_per_block)
from tests.cuda_emulation import impl_module
from tests.devices import needs_cuda

DTYPES = ("float32", "float16", "bfloat16")
FUSIONS = ("add_rmsnorm", "rmsnorm_gemm", "rmsnorm_qkv_rope", "gemm_swiglu", "swiglu_ffn",
           "attn_score_softmax", "attention_prefill", "decode_attention")


# ---- the checker ------------------------------------------------------------------------------
def _plan(*launches):
    return Plan(tuple(launches))


def _problems(launch, facts=None):
    with pytest.raises(LaunchLimitError) as e:
        check(_plan(launch), H200, {launch.kernel: facts} if facts else None, "demo/cuda")
    return str(e.value)


def test_check_accepts_the_largest_allowed_launch():
    check(_plan(Launch("k", (2**31 - 1, 65535, 65535), (1024,), 232448 - 32, 32)), H200)
    check(_plan(Launch("k", (1,), (16, 16, 4))), H200, {"k": KernelFacts(0, 64, 1024)})
    check(Plan(()), H200)                                        # an empty problem: nothing to launch


@pytest.mark.parametrize("launch,facts,words", [
    (Launch("k_f32", (1,), (32, 33)), None, ["k_f32", "1056 threads per block", "1024"]),
    (Launch("k_f32", (1,), (1025,)), None, ["block.x = 1025", "1024"]),
    (Launch("k_f32", (1, 65536), (256,)), None, ["grid.y = 65536", "65535"]),
    (Launch("k_f32", (1, 1, 65536), (256,)), None, ["grid.z = 65536"]),
    (Launch("k_f32", (2**31,), (256,)), None, ["grid.x = 2147483648", "2147483647"]),
    (Launch("k_f32", (0, 4), (256,)), None, ["grid.x = 0", "positive"]),
    (Launch("k_f32", (1,), (2, 2, 65)), None, ["block.z = 65", "64"]),
    (Launch("k_f32", (1,), ()), None, ["block has 0 dimensions"]),
    (Launch("add_rmsnorm_f32", (5,), (256,), 232448 - 31, 32), None,
     ["add_rmsnorm_f32", "shared memory 232449 bytes", "232448", "sharedMemPerBlockOptin"]),
    (Launch("k_f32", (5,), (256,), 200000), KernelFacts(static_smem=40000),   # the compiled kernel's own static bytes
     ["shared memory 240000 bytes", "static 40000"]),
    (Launch("k_f32", (1,), (512,)), KernelFacts(registers=255), ["131072 registers per block", "255 a thread", "65536"]),
    (Launch("k_f32", (1,), (512,)), KernelFacts(max_threads=256), ["512 threads", "256 the compiled kernel allows"]),
])
def test_check_names_the_kernel_the_limit_and_the_value(launch, facts, words):
    message = _problems(launch, facts)
    assert message.startswith("demo/cuda: launch plan breaks the limits of NVIDIA H200")
    for w in words:
        assert w in message, (w, message)


def test_opt_in_exactly_past_48_kib_of_static_and_dynamic():
    at = 48 * 1024 - 32
    assert not needs_opt_in(Launch("k", (1,), (256,), at, 32), H200)
    assert needs_opt_in(Launch("k", (1,), (256,), at + 1, 32), H200)
    assert needs_opt_in(Launch("k", (1,), (256,), at + 1), H200, KernelFacts(static_smem=32))
    assert not needs_opt_in(Launch("k", (1,), (256,), 0, 60000), H200)   # static alone: the compiler's business


def test_registers_are_allocated_256_a_warp():
    assert registers_per_block(255, 128) == 4 * 8192
    assert registers_per_block(93, 128) == 4 * 12 * 256     # 93·32 = 2976 -> 3072 a warp
    assert registers_per_block(32, 1024) == 32 * 1024
    assert registers_per_block(40, 33) == 2 * 1280           # a partial warp holds a whole warp's registers


class _Function:
    """Stands in for a cupy.RawKernel: its attributes, its opt-in and its launches."""

    def __init__(self, static_smem=32, registers=40, max_threads=256):
        self.shared_size_bytes, self.num_regs, self.max_threads_per_block = static_smem, registers, max_threads
        self.max_dynamic_shared_size_bytes = 48 * 1024 - static_smem
        self.calls = []

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


class _Module:
    def __init__(self, **functions):
        self.functions = functions

    def get_function(self, name):
        return self.functions[name]


def test_bind_opts_in_to_what_the_largest_launch_needs_and_runs_in_order():
    big, small = _Function(), _Function(static_smem=0)
    plan = _plan(Launch("big", (3,), (256,), 64 * 1024, 32), Launch("small", (2, 2), (128,)),
                 Launch("big", (1,), (256,), 1024, 32))
    bound = bind(_Module(big=big, small=small), plan, [("a",), ("b",), ("c",), ("unused",)], H200)
    assert isinstance(bound, BoundPlan) and len(bound) == 3
    assert big.max_dynamic_shared_size_bytes == 64 * 1024         # opted in, for the larger launch
    assert small.max_dynamic_shared_size_bytes == 48 * 1024        # untouched
    bound.run()
    assert big.calls == [((3,), (256,), ("a",), 64 * 1024), ((1,), (256,), ("c",), 1024)]
    assert small.calls == [((2, 2), (128,), ("b",), 0)]


def test_bind_refuses_a_plan_before_anything_is_launched():
    fn = _Function(static_smem=1000)                              # more static bytes than the plan counted on
    plan = _plan(Launch("add_rmsnorm_f32", (1,), (256,), 232448 - 32, 32))
    with pytest.raises(LaunchLimitError, match=r"add_rmsnorm/cuda: .*add_rmsnorm_f32.*shared memory 233416 bytes"):
        bind(_Module(add_rmsnorm_f32=fn), plan, [()], H200, "add_rmsnorm/cuda")
    assert fn.calls == [] and fn.max_dynamic_shared_size_bytes == 48 * 1024 - 1000
    with pytest.raises(LaunchLimitError, match="256 the compiled kernel allows"):
        bind(_Module(k=_Function()), _plan(Launch("k", (1,), (512,))), [()], H200)
    with pytest.raises(ValueError, match="2 launches but 1 argument tuples"):
        bind(_Module(k=_Function()), _plan(Launch("k", (1,), (256,)), Launch("k", (1,), (256,))), [()], H200)


def test_device_limits_read_from_the_runtime_and_h200_where_it_says_nothing(monkeypatch):
    """device_limits() asks cudaDeviceGetAttribute for each limit (here a fake runtime that
    knows an sm_80-like device but not the reserved shared memory) and keeps H200's figure
    for any it does not get."""
    import sys
    import types

    from harness import cuda_launch

    said = {"cudaDevAttrMultiProcessorCount": 108, "cudaDevAttrMaxThreadsPerBlock": 1024,
            "cudaDevAttrMaxBlockDimX": 1024, "cudaDevAttrMaxBlockDimY": 1024, "cudaDevAttrMaxBlockDimZ": 64,
            "cudaDevAttrMaxGridDimX": 2**31 - 1, "cudaDevAttrMaxGridDimY": 65535, "cudaDevAttrMaxGridDimZ": 65535,
            "cudaDevAttrMaxSharedMemoryPerBlock": 49152, "cudaDevAttrMaxSharedMemoryPerBlockOptin": 166912,
            "cudaDevAttrMaxSharedMemoryPerMultiprocessor": 167936, "cudaDevAttrMaxRegistersPerBlock": 65536}
    names = {k: k for k in [*said, "cudaDevAttrReservedSharedMemoryPerBlock"]}   # the last one: an error
    runtime = types.SimpleNamespace(getDevice=lambda: 3, getDeviceProperties=lambda dev: {"name": b"Fake A100"},
                                    deviceGetAttribute=lambda code, dev: said[code], **names)
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_launch, "_LIMITS_BY_DEVICE", {})
    limits = cuda_launch.device_limits()
    assert limits == replace(H200, name="Fake A100", sm_count=108, shared_per_block_optin=166912,
                             shared_per_sm=167936)
    assert cuda_launch.device_limits() is limits                 # asked once per device


# ---- every plan, at every size ------------------------------------------------------------------
def span(upper: int, *models: int) -> list[int]:
    """Awkward and round sizes from 1 to `upper`: small ones, every power of two and its
    neighbours, upper itself and the models' sizes."""
    out = {1, 2, 3, 5, 7, upper, *models}
    k = 1
    while k <= upper:
        out |= {k - 1, k, k + 1, 3 * k}
        k *= 2
    return sorted(n for n in out if 1 <= n <= upper)


HIDDEN = (896, 2048, 3072, 4096, 5120, 8192, 12288, 12289, 16384)      # Qwen2.5-0.5B .. Llama-3.1-405B
INTERMEDIATE = (4864, 8192, 11008, 14336, 28672, 53248)
QKV_N = (1152, 6144, 10240, 18432, 128256)                             # ... and Llama-3's vocabulary (an LM head)
HEADS = [(1, 1), (2, 1), (3, 1), (5, 5), (14, 2), (16, 16), (32, 8), (32, 32), (64, 8), (128, 8), (128, 1)]
HEAD_DIMS = (1, 2, 17, 64, 80, 96, 128, 129, 256)
M_SIZES = span(8192) + [65535 * 64 + 1, 2**24]                          # and two beyond every grid clamp


def plans_add_rmsnorm(m):
    for dtype in DTYPES:
        for aligned in (True, False):
            for H in range(1, 16385):                                   # every row width up to 405B's
                yield f"M=1 H={H} {dtype} aligned={aligned}", m.launch_plan(1, H, dtype, aligned)
        for M in M_SIZES:
            for H in span(16384, *HIDDEN) + [28920, 28921, 2**17]:
                yield f"M={M} H={H} {dtype}", m.launch_plan(M, H, dtype)


def plans_rmsnorm_gemm(m):
    for dtype in DTYPES:
        for M in M_SIZES:
            for N in span(2**18, *QKV_N):
                for H in (1, 7, 16384):
                    yield f"M={M} H={H} N={N} {dtype}", m.launch_plan(M, H, N, dtype)


def plans_rmsnorm_qkv_rope(m):
    for dtype in DTYPES:
        for M in M_SIZES:
            for nh, nkv in HEADS:
                for d in (2, 64, 96, 128, 256):
                    yield f"M={M} heads={nh}/{nkv} d={d} {dtype}", m.launch_plan(M, 16384, nh, nkv, d, dtype)


def plans_gemm_swiglu(m):
    for dtype in DTYPES:
        for M in M_SIZES:
            for I in span(2**17, *INTERMEDIATE):
                yield f"M={M} I={I} {dtype}", m.launch_plan(M, 16384, I, dtype)


def plans_swiglu_ffn(m):
    for dtype in DTYPES:
        for M in M_SIZES:
            for H in (8, 896, 4096, 8192, 8200, 16384):
                for I in span(2**17, *INTERMEDIATE):
                    yield f"M={M} H={H} I={I} {dtype}", m.launch_plan(M, H, I, dtype)
        for sms in (1, 78, 144):                                        # the onchip grid follows the SM count
            for I in span(2**17, *INTERMEDIATE):
                yield f"M=1 H=4096 I={I} {dtype} sms={sms}", m.launch_plan(1, 4096, I, dtype, True,
                                                                           replace(H200, sm_count=sms))


def _attention_plans(m, with_d):
    for dtype in DTYPES:
        for B in (1, 2, 16, 64, 4096):
            for nh, _ in HEADS:
                for S in span(8192):
                    for d in HEAD_DIMS if with_d else (None,):
                        args = (B, nh, S, d, dtype) if with_d else (B, nh, S, dtype)
                        yield f"B={B} heads={nh} S={S} d={d} {dtype}", m.launch_plan(*args)


def plans_attn_score_softmax(m):
    yield from _attention_plans(m, with_d=False)


def plans_attention_prefill(m):
    yield from _attention_plans(m, with_d=True)


def plans_decode_attention(m):
    for B in (1, 2, 3, 16, 64, 256, 4096):
        for nh, nkv in HEADS:
            for T in span(131072):
                for bps in (1, 2, 3, 5, 16):
                    yield (f"B={B} heads={nh}/{nkv} T={T} blocks/SM={bps}",
                           m.launch_plan(B, T, nh, nkv, 128, "float16", blocks_per_sm=bps))
    for dtype in DTYPES:
        for nh, nkv in HEADS:
            for d in HEAD_DIMS:
                for nsplit in (None, 1, 2, 128):
                    yield (f"B=1 heads={nh}/{nkv} T=131072 d={d} {dtype} nsplit={nsplit}",
                           m.launch_plan(1, 131072, nh, nkv, d, dtype, nsplit=nsplit))


PLANS = {name: globals()[f"plans_{name}"] for name in FUSIONS}


@functools.lru_cache(maxsize=None)
def _max_threads(fusion: str) -> dict[str, int]:
    """Each kernel's __launch_bounds__ (from the PTX), or {} where no compiler is here."""
    compilers = cc.available_compilers()
    if not compilers:
        return {}
    src = cc.REPO_ROOT / "impls" / fusion / f"{fusion}.cu"
    r = cc.compile_to_ptx(cc.cuda_source(src), src.name, compilers[0])
    assert r.ok, r.log
    return cc.ptx_max_threads(r.ptx)


def _largest_dynamic_smem(fusion: str, limits=H200, facts=None) -> dict[str, int]:
    """Check every enumerated plan of `fusion`; kernel -> the largest dynamic shared memory asked."""
    m = impl_module(fusion)
    largest: dict[str, int] = {}
    n = 0
    for what, plan in PLANS[fusion](m):
        n += 1
        assert set(plan.kernels) <= set(m.KERNELS), (what, plan.kernels)
        check(plan, limits, facts, f"{fusion} {what}")
        for launch in plan.launches:
            largest[launch.kernel] = max(largest.get(launch.kernel, 0), launch.smem)
    assert n > 1000 and set(largest) == set(m.KERNELS), (n, sorted(set(m.KERNELS) - set(largest)))
    return largest


# the largest dynamic shared memory any enumerated plan asks of each kernel
LARGEST_DYNAMIC_SMEM = {"add_rmsnorm": 28920 * 4}     # every other fusion: static shared memory only


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_plan_within_h200_limits(fusion):
    bounds = _max_threads(fusion)
    facts = {k: KernelFacts(max_threads=t) for k, t in bounds.items()}
    assert not cc.available_compilers() or set(bounds) >= set(impl_module(fusion).KERNELS)
    largest = _largest_dynamic_smem(fusion, H200, facts)
    assert max(largest.values()) == LARGEST_DYNAMIC_SMEM.get(fusion, 0), largest


def plan_of_case(fusion: str, p: dict, dtype: str) -> Plan:
    """The launch plan prepare() makes for a case's parameters (16-byte aligned buffers)."""
    m = impl_module(fusion)
    heads = (p.get("n_heads"), p.get("n_kv_heads"), p.get("head_dim"))
    args = {
        "add_rmsnorm": (p.get("M"), p.get("H")),
        "rmsnorm_gemm": (p.get("M"), p.get("H"), p.get("N")),
        "rmsnorm_qkv_rope": (p.get("M"), p.get("H"), *heads),
        "gemm_swiglu": (p.get("M"), p.get("H"), p.get("I")),
        "swiglu_ffn": (p.get("M"), p.get("H"), p.get("I")),
        "attn_score_softmax": (p.get("B"), p.get("n_heads"), p.get("S")),
        "attention_prefill": (p.get("B"), p.get("n_heads"), p.get("S"), p.get("head_dim")),
        "decode_attention": (p.get("B"), p.get("T"), p.get("n_heads"), p.get("n_kv_heads"), p.get("head_dim")),
    }[fusion]
    return m.launch_plan(*args, dtype)


def test_every_shipped_case_within_h200_limits(registry):
    from harness.cases import load_cases

    cases = [c for c in load_cases(registry) if c.fusion in FUSIONS]
    assert {c.fusion for c in cases} == set(FUSIONS)
    for c in cases:
        for dtype in c.dtypes:
            plan = plan_of_case(c.fusion, c.params, dtype)
            assert plan.launches, (c.id, dtype)
            check(plan, H200, None, f"{c.fusion} {c.id} {dtype}")
    for dtype in DTYPES:   # Llama-3.1-405B's residual add and norm: a 64 KiB row, with the opt-in
        add = next(c for c in cases if c.id == "llama3_1_405b.decode" and c.fusion == "add_rmsnorm")
        (launch,) = plan_of_case("add_rmsnorm", add.params, dtype).launches
        assert launch.smem == 65536 and needs_opt_in(launch, H200)


def test_add_rmsnorm_keeps_405b_rows_on_chip_with_the_opt_in():
    m = impl_module("add_rmsnorm")
    for dtype in DTYPES:
        for M, H, opt_in in ((5, 12280, False), (5, 12281, True), (5, 12288, True), (1, 16384, True)):
            plan = m.launch_plan(M, H, dtype)
            (launch,) = plan.launches
            assert plan.switches["cache"] == 1 and launch.smem == 4 * H and launch.static_smem == m.STATIC_SMEM
            assert needs_opt_in(launch, H200) == opt_in, (M, H, dtype)
        assert m.launch_plan(8, 28920, dtype).switches["cache"] == 1          # 2 blocks of 113 KiB fit an SM
        assert m.launch_plan(8, 28921, dtype).launches[0].smem == 0           # recompute: no shared row
        assert m.launch_plan(0, 4096, dtype).launches == () == m.launch_plan(4, 0, dtype).launches


def test_add_rmsnorm_static_shared_memory_from_ptxas():
    """ptxas's static shared memory for each add_rmsnorm kernel is the STATIC_SMEM the plan
    counts on, and static + the largest dynamic request fits the H200's opt-in limit; the
    registers fit 256 threads."""
    compilers = cc.available_compilers()
    if not compilers:
        pytest.skip(cc.NO_COMPILER)
    m = impl_module("add_rmsnorm")
    r, usage = cc.ptxas_usage(cc.REPO_ROOT / "impls" / "add_rmsnorm" / "add_rmsnorm.cu", compilers[0])
    assert r.ok, r.log
    assert set(usage) == set(m.KERNELS), r.log
    facts = {}
    for kernel, u in usage.items():
        assert u.static_smem == m.STATIC_SMEM, (kernel, u)
        facts[kernel] = KernelFacts(u.static_smem, u.registers, m.THREADS)
    largest = _largest_dynamic_smem("add_rmsnorm", H200, facts)
    for kernel, smem in largest.items():
        assert usage[kernel].static_smem + smem <= H200.shared_per_block_optin
        assert registers_per_block(usage[kernel].registers, m.THREADS) <= H200.registers_per_block


# ---- on a GPU: its own limits and the loaded kernels ----------------------------------------------
@needs_cuda
@pytest.mark.parametrize("fusion", FUSIONS)
def test_gpu_every_plan_within_the_device_limits(fusion):
    from harness.cuda_launch import device_limits, kernel_facts

    limits = device_limits()
    assert limits.shared_per_block_optin >= limits.shared_per_block >= 48 * 1024 and limits.sm_count >= 1
    m = impl_module(fusion)
    module = m.load_module()
    facts = {k: kernel_facts(module.get_function(k)) for k in m.KERNELS}
    assert all(f.registers and f.max_threads for f in facts.values()), facts
    _largest_dynamic_smem(fusion, limits, facts)
