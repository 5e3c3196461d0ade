"""CUDA launch plans, the device limits they must respect, and the one place that checks them.

Every fused CUDA kernel's `impls/<fusion>/cuda.py` computes its launches with a pure function
`launch_plan(<dims>, dtype, ..., limits=H200) -> Plan` (no CuPy, no device), which its
`Prepared` calls with `device_limits()` and hands to `bind()`. So the plan a CPU test checks
against the H200's limits is the very plan that runs, and a plan that would break a limit
fails in `prepare()` with a message naming the kernel, the limit and the value, instead of
CUDA_ERROR_INVALID_VALUE at launch.

    Launch(kernel, grid, block, smem=0, static_smem=0)   one kernel launch; smem: dynamic shared
                                                         memory (bytes); static_smem: the kernel's
                                                         own __shared__ bytes where the plan
                                                         counts on them (else 0)
    Plan(launches, switches)                             the launches in order (none for an empty
                                                         problem) and the mode arguments the
                                                         kernels take (vec, cache, nsplit, ...)
    DeviceLimits / H200                                  what a launch may ask of the device
    KernelFacts(static_smem, registers, max_threads)     what the compiled kernel needs (from
                                                         the loaded function, or from ptxas)
    check(plan, limits, facts={})                        raises LaunchLimitError on any break
    bind(module, plan, args, limits) -> BoundPlan        check with the compiled kernels' facts,
                                                         opt in to large dynamic shared memory,
                                                         and launch with BoundPlan.run()
    pair_gemm_plan / pair_gemv_launch / pair_tiled_launch
                                                         the launches of the pair GEMM core
                                                         (harness/kernels/fb_pair_gemm.cuh)

The limits checked: grid x <= 2^31 - 1, grid y and z <= 65535, every dimension >= 1; block
x, y <= 1024, z <= 64, threads per block <= 1024 and <= the compiled kernel's own maximum
(__launch_bounds__, registers); registers per block (allocated 256 a warp) <= 65536; static
+ dynamic shared memory <= sharedMemPerBlockOptin (232448 bytes on sm_90), and above
sharedMemPerBlock (48 KiB) only with the opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize,
which bind() sets: CuPy's `kernel.max_dynamic_shared_size_bytes`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

from harness.backends.cuda import DEFAULT_SM_COUNT, cdiv

REGISTER_ALLOCATION_UNIT = 256   # registers are handed to a warp 256 at a time (sm_70 and later)


class LaunchLimitError(ValueError):
    """A launch plan asks more of the device than it allows."""


@dataclass(frozen=True)
class DeviceLimits:
    """What one launch may ask of a device (the cudaDeviceProp names in the comments)."""

    name: str
    sm_count: int                        # multiProcessorCount: plans size their grids by it
    max_threads_per_block: int           # maxThreadsPerBlock
    max_block: tuple[int, int, int]      # maxThreadsDim
    max_grid: tuple[int, int, int]       # maxGridSize
    shared_per_block: int                # sharedMemPerBlock: static + dynamic without the opt-in
    shared_per_block_optin: int          # sharedMemPerBlockOptin: static + dynamic with it
    shared_per_sm: int                   # sharedMemPerMultiprocessor
    reserved_shared_per_block: int       # reservedSharedMemPerBlock: the driver's, per resident block
    registers_per_block: int             # regsPerBlock


H200 = DeviceLimits(
    name="NVIDIA H200 (sm_90 defaults)", sm_count=DEFAULT_SM_COUNT, max_threads_per_block=1024,
    max_block=(1024, 1024, 64), max_grid=(2**31 - 1, 65535, 65535), shared_per_block=48 * 1024,
    shared_per_block_optin=227 * 1024, shared_per_sm=228 * 1024, reserved_shared_per_block=1024,
    registers_per_block=65536)
"""The limits plans are checked against where no device is asked (tests, emulation)."""


class Launch(NamedTuple):
    """One kernel launch: grid and block as CUDA takes them (1 to 3 dimensions), `smem` the
    dynamic shared memory in bytes, `static_smem` the kernel's own __shared__ bytes where the
    plan's choice depends on them (else 0: bind() reads the compiled kernel's figure)."""

    kernel: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    smem: int = 0
    static_smem: int = 0

    @property
    def threads(self) -> int:
        return math.prod(self.block)


@dataclass(frozen=True)
class Plan:
    """A fused kernel's launches for one problem, in order (none when the outputs are empty),
    and `switches`, the mode arguments its kernels take (vec, cache, nsplit, ...)."""

    launches: tuple[Launch, ...]
    switches: Mapping[str, int] = field(default_factory=dict)

    @property
    def kernels(self) -> list[str]:
        return [launch.kernel for launch in self.launches]


class KernelFacts(NamedTuple):
    """What a compiled kernel needs per block: static shared memory (bytes), registers per
    thread, and the most threads it can be launched with (0: not known)."""

    static_smem: int = 0
    registers: int = 0
    max_threads: int = 0


# ---- the pair GEMM core's launches (harness/kernels/fb_pair_gemm.cuh, fb_rms_input.cuh) -------
# Shared by the fusions built on it (rmsnorm_gemm, rmsnorm_qkv_rope, gemm_swiglu, swiglu_ffn);
# must match the #defines there.
GEMV_THREADS, GEMV_PAIRS_PER_BLOCK = 256, 8     # FB_GEMV_THREADS; one pair per warp
TILED_THREADS, TILE_M, TILE_PAIRS = 256, 64, 32  # FB_TILED_THREADS, FB_TM, FB_TP
RMS_THREADS, RMS_ROWS_PER_BLOCK = 256, 8        # FB_RMS_THREADS; one warp per row
GEMV_MAX_M = 8          # up to this many rows the weight-streaming GEMV wins
MAX_GRID_Y = 65535      # the kernels loop over blockIdx.y beyond this


def pair_gemv_launch(kernel: str, M: int, npairs: int) -> Launch:
    """fb_pair_gemv over M input rows and npairs pairs: a block per 8 pairs and row."""
    return Launch(kernel, (cdiv(npairs, GEMV_PAIRS_PER_BLOCK), min(M, MAX_GRID_Y)), (GEMV_THREADS,))


def pair_tiled_launch(kernel: str, M: int, npairs: int) -> Launch:
    """fb_pair_tiled over M input rows and npairs pairs: a block per 64 rows x 32 pairs."""
    return Launch(kernel, (cdiv(npairs, TILE_PAIRS), min(cdiv(M, TILE_M), MAX_GRID_Y)), (TILED_THREADS,))


def pair_gemm_plan(prefix: str, suffix: str, M: int, npairs: int, vec: int, rms: bool = False) -> Plan:
    """The plan of a one-GEMM fusion on the pair core, kernels named `<prefix>_<kind>_<suffix>`:
    decode (M <= GEMV_MAX_M) the GEMV; prefill the tiled kernel, after the inverse-RMS pass
    (`<prefix>_rms_<suffix>`) where `rms`. No launch when M or npairs is 0. Switches {vec}."""
    if M == 0 or npairs == 0:
        launches = ()
    elif M <= GEMV_MAX_M:
        launches = (pair_gemv_launch(f"{prefix}_gemv_{suffix}", M, npairs),)
    else:
        rms_pass = (Launch(f"{prefix}_rms_{suffix}", (cdiv(M, RMS_ROWS_PER_BLOCK),), (RMS_THREADS,)),)
        launches = (*(rms_pass if rms else ()), pair_tiled_launch(f"{prefix}_tiled_{suffix}", M, npairs))
    return Plan(launches, {"vec": vec})


# ---- the checks -----------------------------------------------------------------------------
def registers_per_block(registers: int, threads: int) -> int:
    """Registers a block of `threads` holds at `registers` a thread: each warp gets
    registers·32 rounded up to REGISTER_ALLOCATION_UNIT."""
    per_warp = cdiv(registers * 32, REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    return cdiv(threads, 32) * per_warp


def shared_bytes(launch: Launch, facts: KernelFacts | None = None) -> int:
    """Static + dynamic shared memory of one block: the plan's static figure or the compiled
    kernel's, whichever is larger."""
    static = max(launch.static_smem, facts.static_smem if facts else 0)
    return static + launch.smem


def needs_opt_in(launch: Launch, limits: DeviceLimits, facts: KernelFacts | None = None) -> bool:
    """True when the block's shared memory exceeds what a kernel gets without raising
    cudaFuncAttributeMaxDynamicSharedMemorySize (sharedMemPerBlock, 48 KiB)."""
    return launch.smem > 0 and shared_bytes(launch, facts) > limits.shared_per_block


def resident_blocks_by_shared(block_shared: int, limits: DeviceLimits) -> int:
    """Blocks one multiprocessor can hold at `block_shared` bytes of shared memory each (the
    driver reserves reserved_shared_per_block more per block)."""
    return limits.shared_per_sm // (block_shared + limits.reserved_shared_per_block)


def launch_problems(launch: Launch, limits: DeviceLimits, facts: KernelFacts | None = None) -> list[str]:
    """Every limit one launch breaks, each as 'limit: value' (empty when it is fine)."""
    out = []
    grid, block = tuple(launch.grid), tuple(launch.block)
    for what, dims, most in (("grid", grid, limits.max_grid), ("block", block, limits.max_block)):
        if not 1 <= len(dims) <= 3:
            out.append(f"{what} has {len(dims)} dimensions, not 1 to 3: {dims}")
            continue
        for axis, (n, cap) in enumerate(zip(dims, most)):
            if not isinstance(n, numbers.Integral) or n < 1:
                out.append(f"{what}.{'xyz'[axis]} = {n!r}: must be a positive integer")
            elif n > cap:
                out.append(f"{what}.{'xyz'[axis]} = {n} exceeds the device's {cap}")
    if out:
        return out
    threads = launch.threads
    if threads > limits.max_threads_per_block:
        out.append(f"{threads} threads per block exceed the device's {limits.max_threads_per_block}")
    if facts and facts.max_threads and threads > facts.max_threads:
        out.append(f"{threads} threads per block exceed the {facts.max_threads} the compiled kernel allows "
                   f"(__launch_bounds__ or registers)")
    if facts and facts.registers:
        regs = registers_per_block(facts.registers, threads)
        if regs > limits.registers_per_block:
            out.append(f"{regs} registers per block ({facts.registers} a thread x {threads} threads) exceed "
                       f"the device's {limits.registers_per_block}")
    if launch.smem < 0 or launch.static_smem < 0:
        out.append(f"negative shared memory: dynamic {launch.smem}, static {launch.static_smem}")
    total = shared_bytes(launch, facts)
    if total > limits.shared_per_block_optin:
        out.append(f"shared memory {total} bytes (dynamic {launch.smem} + static {total - launch.smem}) exceeds "
                   f"the device's opt-in limit {limits.shared_per_block_optin} bytes (sharedMemPerBlockOptin)")
    return out


def check(plan: Plan, limits: DeviceLimits, facts: Mapping[str, KernelFacts] | None = None,
          what: str = "") -> None:
    """Raise LaunchLimitError naming the kernel, the limit and the value for every launch of
    `plan` that `limits` do not allow. `facts`: kernel name -> its compiled needs, where known."""
    facts = facts or {}
    problems = [f"{launch.kernel} (grid {tuple(launch.grid)}, block {tuple(launch.block)}): {p}"
                for launch in plan.launches for p in launch_problems(launch, limits, facts.get(launch.kernel))]
    if problems:
        head = f"{what}: " if what else ""
        raise LaunchLimitError(f"{head}launch plan breaks the limits of {limits.name}: " + "; ".join(problems))


# ---- the device -----------------------------------------------------------------------------
_LIMITS_BY_DEVICE: dict[int, DeviceLimits] = {}


def device_limits() -> DeviceLimits:
    """The current CUDA device's limits (asked once per device); H200's figure for any the
    device does not report."""
    import cupy as cp

    rt = cp.cuda.runtime
    dev = rt.getDevice()
    if dev not in _LIMITS_BY_DEVICE:
        def attr(name: str, default: int) -> int:
            code = getattr(rt, name, None)
            try:
                value = int(rt.deviceGetAttribute(code, dev)) if code is not None else 0
            except Exception:  # an attribute this runtime does not know
                value = 0
            return value or default

        name = rt.getDeviceProperties(dev).get("name", b"")
        name = name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
        d = H200
        _LIMITS_BY_DEVICE[dev] = DeviceLimits(
            name=name or d.name,
            sm_count=attr("cudaDevAttrMultiProcessorCount", d.sm_count),
            max_threads_per_block=attr("cudaDevAttrMaxThreadsPerBlock", d.max_threads_per_block),
            max_block=tuple(attr(f"cudaDevAttrMaxBlockDim{a}", n) for a, n in zip("XYZ", d.max_block)),
            max_grid=tuple(attr(f"cudaDevAttrMaxGridDim{a}", n) for a, n in zip("XYZ", d.max_grid)),
            shared_per_block=attr("cudaDevAttrMaxSharedMemoryPerBlock", d.shared_per_block),
            shared_per_block_optin=attr("cudaDevAttrMaxSharedMemoryPerBlockOptin", d.shared_per_block_optin),
            shared_per_sm=attr("cudaDevAttrMaxSharedMemoryPerMultiprocessor", d.shared_per_sm),
            reserved_shared_per_block=attr("cudaDevAttrReservedSharedMemoryPerBlock", d.reserved_shared_per_block),
            registers_per_block=attr("cudaDevAttrMaxRegistersPerBlock", d.registers_per_block),
        )
    return _LIMITS_BY_DEVICE[dev]


def kernel_facts(function: Any) -> KernelFacts:
    """A loaded kernel's (cupy.RawKernel from RawModule.get_function) own needs."""
    return KernelFacts(static_smem=int(getattr(function, "shared_size_bytes", 0) or 0),
                       registers=int(getattr(function, "num_regs", 0) or 0),
                       max_threads=int(getattr(function, "max_threads_per_block", 0) or 0))


class BoundLaunch(NamedTuple):
    function: Any            # cupy.RawKernel
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple
    smem: int


class BoundPlan(tuple):
    """The launches of a plan with their kernels and arguments, checked and ready."""

    def run(self) -> None:
        """Launch every kernel in order on the current stream, no synchronisation."""
        for b in self:
            b.function(b.grid, b.block, b.args, shared_mem=b.smem)


def bind(module: Any, plan: Plan, args: Sequence[tuple], limits: DeviceLimits, what: str = "") -> BoundPlan:
    """Fetch each launch's kernel from `module` (a cupy.RawModule), check the plan against
    `limits` with the compiled kernels' own static shared memory, registers and thread limit,
    opt in to the dynamic shared memory a launch needs beyond 48 KiB, and pair each launch
    with its arguments. `args`: one tuple per launch of the plan (extra ones are ignored, so
    a fixed list can serve plans of one or two launches)."""
    functions = {name: module.get_function(name) for name in dict.fromkeys(plan.kernels)}
    facts = {name: kernel_facts(fn) for name, fn in functions.items()}
    check(plan, limits, facts, what)
    if len(args) < len(plan.launches):
        raise ValueError(f"{what}: {len(plan.launches)} launches but {len(args)} argument tuples")
    for name, fn in functions.items():
        largest = max((launch for launch in plan.launches if launch.kernel == name), key=lambda launch: launch.smem)
        if needs_opt_in(largest, limits, facts[name]):
            fn.max_dynamic_shared_size_bytes = largest.smem
    return BoundPlan(BoundLaunch(functions[launch.kernel], tuple(launch.grid), tuple(launch.block), tuple(a),
                                 launch.smem) for launch, a in zip(plan.launches, args))
