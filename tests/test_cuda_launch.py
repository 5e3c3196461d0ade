"""Launch limits (harness.cuda_launch): the checker names the kernel, the limit and the value
of every break, and bind() opts in to large dynamic shared memory before launching."""

from __future__ import annotations

import pytest

from harness.cuda_launch import (H200, BoundPlan, KernelFacts, Launch, LaunchLimitError, Plan, bind, check,
                                 needs_opt_in, registers_per_block)


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
