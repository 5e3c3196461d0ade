"""wgsl: WebGPU compute shaders (WGSL) run with wgpu-py, on whatever adapter wgpu finds.

On a machine without a GPU, Mesa's lavapipe ("llvmpipe") gives a real Vulkan adapter on
the CPU cores: fine for correctness and relative figures, not for speed.

How work flows. Every kernel launch (a fused kernel's or one primitive op of the unfused
chain) is recorded by `dispatch()` into a pending list: (pipeline, bind group, workgroup
counts). Nothing reaches the device until `flush()`: `synchronize()`, `download()` and
`time_run()` flush, which records all pending dispatches in one command encoder and one
compute pass (wgpu puts the barriers between dependent dispatches) and submits it.
`Prepared.run()` therefore never synchronises the host; it only records.

`time_run(prepared)`: synchronise, run, then flush the recorded dispatches in one compute
pass whose beginning and end write timestamps (adapter feature `timestamp-query`), resolve
the two timestamps, map them back (which also waits for the work) and return
(end - begin) * timestamp period in seconds. Without the feature: host clock around the
flush and the wait.

Storage dtypes. float32 is `array<f32>`. float16 is `array<f16>` (`enable f16;`) when the
adapter has `shader-f16`, else packed two per `u32` and converted with
`unpack2x16float`/`pack2x16float`. bfloat16 (WGSL has no such type) is always packed two
per `u32`, widened by a 16-bit shift and rounded to nearest even on store. Packed outputs
are written race-free with two atomics per element on the element's own half-word
(`atomicAnd` to clear it, `atomicOr` to set it), so neighbours written by other
invocations are never clobbered. All arithmetic is in f32.

`wgsl_buffers()` builds the declarations and the `ld_<name>(i) -> f32` /
`st_<name>(i, v)` helpers for any list of buffers in any of these storage dtypes; the
fused kernels in impls/*/wgsl.py use it too.

Index arrays: int32 / uint32 host arrays upload too (positions, the rotary table) and bind
as plain `array<i32>` / `array<u32>` (modes "i32" / "u32"). `split` copies each piece
(one dispatch each), `reshape` is metadata only (same buffer), `rope` takes its angles
from ROPE_WGSL: an exact fixed-point angle in turns from a per-(d, theta) table cached on
the backend (rope_table), then Cephes polynomials, all in f32 and integer arithmetic.

The primitives' shaders are files beside the fused kernels' fragments,
harness/kernels/fb_chain_elementwise.wgsl, fb_chain_rows.wgsl and fb_chain_matmul.wgsl, one
section per kernel or piece of one (harness.splice.kernel_sections), read once per process.

Attention primitives: `matmul_nt` / `matmul` are one dispatch over all leading (batch)
dimensions (grid z), a 64 x 64 tiling or, for at most GEMV_MAX_M rows (decode), a
matrix-vector scheme; `linear` is the "nt" matmul with one batch. `causal_mask` and `length_mask` (lens an int32 array)
write -inf, passed in as a bit pattern (WGSL has no infinite literal); `softmax` gives
zeros for a row that is all -inf. `scale` multiplies by an f32 uniform.

Loop budget. Mesa's llvmpipe (the driver under lavapipe) counts the loop iterations of
each shader invocation (each SIMD group of 8), all its loops together, each loop's trips
plus the pass that leaves it; once LLVMPIPE_LOOP_LIMIT have run, every loop is left after
its first pass. No error is raised: outputs come out wrong or are never written (issue
19: decode attention at head_dim 256 over a 4096-token cache left its heads unwritten).
Its compiler unrolls by itself only loops of at most 32 constant trips (head_dim up to
128 in the attention kernels). So a kernel whose loops grow with a sequence keeps one
invocation within LOOP_BUDGET iterations as counted from its source: it writes long
inner loops out (`//@unroll` lines, `unroll_loops`), splits the work (decode), or, where
it cannot split, refuses a shape past the budget on such an adapter
(`require_loop_budget`).

wgpu is imported inside the methods only; XDG_RUNTIME_DIR is set (to a private 0700
directory) before the import when it is missing, which stops Vulkan loaders from
complaining on stderr.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import tempfile
import time
from typing import Any, NamedTuple, Sequence

import numpy as np

from harness.backends import Backend, BackendUnavailable, BinaryKernelOps, Prepared
from harness.dtypes import np_dtype
from harness.ops import Ops
from harness.splice import kernel_sections

WG = 256  # invocations per workgroup of the primitive kernels
MAX_GROUPS = 65535  # per grid dimension (WebGPU's default limit)
WORKGROUP_FLOATS = 16384 // 4  # workgroup storage, in f32 (WebGPU's default limit: 16 KiB)
FEATURES_WANTED = ("timestamp-query", "shader-f16")

# llvmpipe ends the loops of an invocation after this many iterations in all (gallivm's
# LP_MAX_TGSI_LOOP_ITERATIONS); kernels stay within half of it as counted from their source,
# which leaves room for what a count from the source cannot see (the compiler's own loops).
LLVMPIPE_LOOP_LIMIT = 65535
LOOP_BUDGET = LLVMPIPE_LOOP_LIMIT // 2
# `//@unroll` loops write out this many statements per iteration: the most Mesa's compiler
# unrolls itself (max_unroll_iterations), so head sizes up to 128 get the code they had.
UNROLL_CHUNK = 32
_UNROLL = re.compile(r"^([ \t]*)//@unroll (\w+) < (\w+): (.*)$", re.M)

# Word of NaN patterns per storage dtype (both halves for 16-bit types).
NAN_WORD = {"float32": 0x7FC00000, "float16": 0x7E007E00, "bfloat16": 0x7FC07FC0}

# Integer arrays (positions, index tables) a WgslArray may hold besides the float dtypes.
INDEX_DTYPES = {"int32": np.dtype(np.int32), "uint32": np.dtype(np.uint32)}


def _np(dtype: str) -> np.dtype:
    """NumPy dtype of a WgslArray dtype name (float storage dtypes and int32 / uint32)."""
    return INDEX_DTYPES[dtype] if dtype in INDEX_DTYPES else np_dtype(dtype)


def _import_wgpu():
    """Import wgpu, after making sure XDG_RUNTIME_DIR names a usable 0700 directory."""
    d = os.environ.get("XDG_RUNTIME_DIR")
    if not d or not os.path.isdir(d):
        d = os.path.join(tempfile.gettempdir(), f"fusebench-xdg-{os.getuid()}")
        os.makedirs(d, mode=0o700, exist_ok=True)
        try:
            os.chmod(d, 0o700)
        except OSError:
            pass
        os.environ["XDG_RUNTIME_DIR"] = d
    import wgpu

    return wgpu


# ----------------------------------------------------------------------------------
# WGSL helpers shared by the primitive ops and the fused kernels
# ----------------------------------------------------------------------------------

_BF16_FROM_F32 = """
fn fb_bf16_bits(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x40u; }
  return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}
"""


def storage_mode(dtype: str, native_f16: bool) -> str:
    """How a storage dtype is held in WGSL: f32, f16 (native), f16p / bf16 (packed u32)."""
    if dtype == "float32":
        return "f32"
    if dtype == "float16":
        return "f16" if native_f16 else "f16p"
    if dtype == "bfloat16":
        return "bf16"
    if dtype in ("int32", "uint32"):
        return "i32" if dtype == "int32" else "u32"
    raise BackendUnavailable(f"wgsl: no storage for dtype {dtype!r}")


def unroll_loops(text: str, bounds: dict[str, int], chunk: int = UNROLL_CHUNK) -> str:
    """`text` with each line `<indent>//@unroll c < N: BODY` turned into a loop over c in
    chunks of `chunk`, BODY written out once per c of a chunk (the word `c` replaced by
    `c0 + 3u`, guarded where bounds[N] is no multiple of the chunk): bounds[N] / chunk + 1
    loop iterations instead of bounds[N] + 1, whatever the compiler unrolls (see the module
    docstring: llvmpipe's loop limit). One chunk: no loop at all."""

    def written_out(m: re.Match) -> str:
        indent, var, bound, body = m.groups()
        if bound not in bounds:
            raise KeyError(f"//@unroll bound {bound!r} not given (have {sorted(bounds)})")
        n = bounds[bound]
        word = re.compile(rf"\b{var}\b")
        if n <= chunk:
            return "\n".join(indent + word.sub(f"{i}u", body) for i in range(n))
        start = f"{var}_0"
        lines = [f"{indent}for (var {start} = 0u; {start} < {n}u; {start} += {chunk}u) {{"]
        for i in range(chunk):
            stmt = word.sub(f"({start} + {i}u)", body)
            if n % chunk:
                stmt = f"if ({start} + {i}u < {n}u) {{ {stmt} }}"
            lines.append(f"{indent}  {stmt}")
        return "\n".join(lines + [indent + "}"])

    return _UNROLL.sub(written_out, text)


def unrolled_loop_iterations(n: int, chunk: int = UNROLL_CHUNK) -> int:
    """Loop iterations of one `//@unroll c < N` line with bounds[N] = n (see unroll_loops)."""
    return 0 if n <= chunk else -(-n // chunk) + 1


def wgsl_buffers(buffers: Sequence[tuple[str, str, str]], params_struct: str | None = None) -> str:
    """WGSL declarations for `buffers` [(name, mode, role)], role "in" or "out", bound at
    @binding(0..) in that order, plus `var<uniform> P: <params_struct>` at the next
    binding when given. Emits `ld_<name>(i: u32) -> f32` for inputs and
    `st_<name>(i: u32, value: f32)` for outputs; `enable f16;` comes first when needed.
    Modes "i32" / "u32" declare plain integer arrays (indexed directly, no helper)."""
    head, body = [], []
    need_bf16 = False
    for b, (name, mode, role) in enumerate(buffers):
        ro = role == "in"
        acc = "read" if ro else "read_write"
        if mode == "f32":
            body.append(f"@group(0) @binding({b}) var<storage, {acc}> {name}: array<f32>;")
            body.append(f"fn ld_{name}(i: u32) -> f32 {{ return {name}[i]; }}" if ro else
                        f"fn st_{name}(i: u32, value: f32) {{ {name}[i] = value; }}")
        elif mode == "f16":
            if "enable f16;" not in head:
                head.append("enable f16;")
            body.append(f"@group(0) @binding({b}) var<storage, {acc}> {name}: array<f16>;")
            body.append(f"fn ld_{name}(i: u32) -> f32 {{ return f32({name}[i]); }}" if ro else
                        f"fn st_{name}(i: u32, value: f32) {{ {name}[i] = f16(value); }}")
        elif mode in ("i32", "u32"):
            # index arrays (positions, tables): read directly, no helper
            body.append(f"@group(0) @binding({b}) var<storage, {acc}> {name}: array<{mode}>;")
        elif mode in ("f16p", "bf16"):
            if ro:
                body.append(f"@group(0) @binding({b}) var<storage, read> {name}: array<u32>;")
                if mode == "f16p":
                    body.append(f"fn ld_{name}(i: u32) -> f32 {{ "
                                f"return unpack2x16float({name}[i >> 1u])[i & 1u]; }}")
                else:
                    body.append(f"fn ld_{name}(i: u32) -> f32 {{ "
                                f"return bitcast<f32>((({name}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu) << 16u); }}")
            else:
                need_bf16 |= mode == "bf16"
                conv = ("(pack2x16float(vec2<f32>(value, 0.0)) & 0xffffu)" if mode == "f16p"
                        else "fb_bf16_bits(value)")
                body.append(f"@group(0) @binding({b}) var<storage, read_write> {name}: array<atomic<u32>>;")
                body.append(
                    f"fn st_{name}(i: u32, value: f32) {{\n"
                    f"  let sh = (i & 1u) * 16u;\n"
                    f"  atomicAnd(&{name}[i >> 1u], ~(0xffffu << sh));\n"
                    f"  atomicOr(&{name}[i >> 1u], {conv} << sh);\n}}")
        else:
            raise ValueError(f"unknown storage mode {mode!r}")
    if params_struct:
        body.append(f"@group(0) @binding({len(buffers)}) var<uniform> P: {params_struct};")
    if need_bf16:
        body.append(_BF16_FROM_F32)
    return "\n".join(head + body) + "\n"


def _enable_first(declarations: str) -> tuple[str, str]:
    """wgsl_buffers' text as (its `enable f16;` line or "", the declarations): the enable
    directive must open the shader, the declarations may stand anywhere."""
    if declarations.startswith("enable f16;"):
        return "enable f16;\n", declarations[len("enable f16;"):]
    return "", declarations


def with_buffers(body: str, buffers: Sequence[tuple[str, str, str]], params_struct: str | None = "Params") -> str:
    """`body` with the declarations of `buffers` [(name, mode, role)] (wgsl_buffers) after it."""
    enable, decl = _enable_first(wgsl_buffers(buffers, params_struct))
    return enable + body + "\n" + decl.lstrip("\n")


# Rotary embedding: cos and sin of pos * inv_freq[i], accurate to about 1e-7 however large
# pos is. The angle is kept in turns as a 64-bit fixed-point fraction: the host table
# (WgslBackend.rope_table, built once per (d, theta)) holds inv_freq[i] / 2pi * 2^64 as
# two u32 words (hi, lo); |pos| * that, modulo 2^64, is formed exactly with 16-bit partial
# products (WGSL has no 32 x 32 -> 64 multiply) and its top 32 bits are the angle's
# fraction of a turn. Its two top bits (rounded) pick the quadrant, the signed rest
# (|r| <= 1/8 turn) becomes radians in [-pi/4, pi/4], where the Cephes sinf/cosf
# polynomials are good to about an ulp. No f32 product pos * inv_freq is ever formed: in
# f32 that alone loses ~1e-3 rad at pos ~ 30000. Plain integer and float arithmetic only,
# so it does not depend on the adapter's sin/cos (WGSL allows 2^-11 absolute error there).
ROPE_WGSL = """
fn fb_mul32(a: u32, b: u32) -> vec2<u32> {  // (lo, hi) of the 64-bit product
  let a0 = a & 0xffffu; let a1 = a >> 16u;
  let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0; let p11 = a1 * b1;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2<u32>((mid << 16u) | (p00 & 0xffffu), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}
// (cos, sin) of pos * inv_freq, the frequency given as (hi, lo) of inv_freq / 2pi * 2^64
fn fb_rope_cs(pos: i32, fh: u32, fl: u32) -> vec2<f32> {
  let a = u32(abs(pos));
  let pl = fb_mul32(a, fl);
  var u = a * fh + pl.y + (pl.x >> 31u);  // the angle in turns, 32-bit fraction, rounded
  if (pos < 0) { u = 0u - u; }
  let q = (u + 0x20000000u) >> 30u;       // nearest quarter turn (mod 4)
  let x = f32(bitcast<i32>(u - (q << 30u))) * 1.4629180792671596e-9;  // 2pi / 2^32
  let z = x * x;
  let sn = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * x + x;
  let cs = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
           - 0.5 * z + 1.0;
  switch (q & 3u) {
    case 0u: { return vec2<f32>(cs, sn); }
    case 1u: { return vec2<f32>(-sn, cs); }
    case 2u: { return vec2<f32>(-cs, -sn); }
    default: { return vec2<f32>(sn, -cs); }
  }
}
"""


class ShaderFile:
    """A fused kernel's .wgsl file (beside its wgsl.py), spliced once per process and
    rendered per storage mode and tile shape; the backend's pipeline cache then compiles
    each rendered text once per device. The WGSL counterpart of CUDA's KernelModule.

    `buffers` [(name, role)]: the storage buffers its entry points bind, at 0.. in that
    order, role "in" (read-only) or "out"; each is declared under its name (ld_<name> /
    st_<name>) and a Dispatch binds the kernel's buffer of that name (Prepared.buffers)."""

    def __init__(self, path, buffers: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.buffers = tuple(buffers)
        self._text: str | None = None

    def text(self) -> str:
        if self._text is None:
            from harness.splice import spliced_source

            self._text = spliced_source(self.path)
        return self._text

    def render(self, mode: str, subs: dict[str, Any] | None = None, unroll: dict[str, int] | None = None,
               after_buffers: str = "", modes: dict[str, str] | None = None) -> str:
        """The shader with its buffers declared in storage mode `mode` (`modes` names the
        buffers held otherwise, e.g. {"pos": "i32"}; wgsl_buffers, with a `Params`
        uniform) at its `// @@BUFFERS@@` line, followed by `after_buffers`; each key of
        `subs` replaced by its value; `//@unroll` lines written out for the `unroll` bounds
        (unroll_loops). `enable f16;` goes first where a buffer needs it."""
        modes = modes or {}
        enable, decl = _enable_first(wgsl_buffers([(n, modes.get(n, mode), r) for n, r in self.buffers], "Params"))
        text = self.text().replace("// @@BUFFERS@@", decl + after_buffers)
        for key, value in (subs or {}).items():
            text = text.replace(key, str(value))
        return enable + (unroll_loops(text, unroll) if unroll else text)

    def dispatch(self, source: str, entry: str, groups: tuple[int, int, int], params: bytes,
                 **bind: str) -> "Dispatch":
        """`entry` of `source` (a render() of this file) over `groups`, its buffers bound by
        their names, or to the buffer `bind` names instead (e.g. y="act")."""
        return Dispatch(source, entry, groups, tuple((bind.get(n, n), r) for n, r in self.buffers), params)


class Dispatch(NamedTuple):
    """One dispatch of a launch plan: `entry` of `source` over `groups` workgroups, the
    buffers named in `buffers` [(name, role)] bound at 0.. in that order (role "in"
    read-only, "out" read-write, as the shader declares them), `params` the uniform block
    after them (pack_params)."""

    source: str
    entry: str
    groups: tuple[int, int, int]
    buffers: tuple[tuple[str, str], ...]
    params: bytes | None = None


class BoundPlan:
    """Dispatches bound to their buffers once (WgslBackend.bind); run() records them for
    the next flush, as CUDA's bound launches run theirs. Inputs refreshed in place keep
    their buffers, so the bind groups stay valid."""

    def __init__(self, backend, bound: list) -> None:
        self.backend, self.bound = backend, bound

    def __len__(self) -> int:
        return len(self.bound)

    def run(self) -> None:
        for b in self.bound:
            self.backend._record(*b)


def rope_table_words(d: int, theta: float) -> np.ndarray:
    """(d/2, 2) uint32: inv_freq[i] / 2pi * 2^64 as (hi, lo) words, inv_freq as in
    harness.ops.rope_angles (float64)."""
    inv = theta ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
    out = np.zeros((d // 2, 2), dtype=np.uint32)
    for i, f in enumerate(inv):
        F = int(round(float(f) / (2.0 * math.pi) * 2.0**64)) % 2**64
        out[i] = (F >> 32, F & 0xFFFFFFFF)
    return out


def pack_params(*fields: tuple[str, float]) -> bytes:
    """A uniform block from ("u", int) / ("f", float) fields, padded to 16 bytes."""
    raw = b"".join(struct.pack("<I" if k == "u" else "<f", int(v) if k == "u" else float(v)) for k, v in fields)
    return raw + b"\0" * (-len(raw) % 16)


def grid_1d(groups: int) -> tuple[int, int, int]:
    """`groups` workgroups as a 2-D grid within the per-dimension limit; shaders take
    their linear index as wid.x + wid.y * nwg.x and return when it is past the end."""
    groups = max(1, groups)
    gx = min(groups, MAX_GROUPS)
    return gx, -(-groups // gx), 1


# ----------------------------------------------------------------------------------
# device arrays
# ----------------------------------------------------------------------------------


class WgslArray:
    """A device array: one GPUBuffer (size padded to a multiple of 4 bytes) with the
    logical shape and storage dtype name. `nbytes` is the logical size."""

    __slots__ = ("buffer", "shape", "dtype", "__weakref__")

    def __init__(self, buffer, shape: tuple[int, ...], dtype: str):
        self.buffer = buffer
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * _np(self.dtype).itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"WgslArray(shape={self.shape}, dtype={self.dtype})"


def _padded(nbytes: int) -> int:
    return max(16, (nbytes + 3) // 4 * 4)


# ----------------------------------------------------------------------------------
# primitive kernels (one dispatch per op)
# ----------------------------------------------------------------------------------

# The WGSL of the primitives lives in harness/kernels/fb_chain_*.wgsl, one section per kernel
# or piece of one (harness.splice.kernel_sections: each file read once per process, its
# fragments spliced in); each kernel's text is built once (functools.cache) and compiled
# once per (source, bindings) by WgslBackend.pipeline. Uniform Params layouts are declared
# beside the pack_params calls that fill them.
_ELEMENTWISE = "fb_chain_elementwise.wgsl"
_ROWS = "fb_chain_rows.wgsl"
_MATMUL = "fb_chain_matmul.wgsl"
CHAIN_WGSL = (_ELEMENTWISE, _ROWS, _MATMUL)


def _section(file: str, name: str) -> str:
    return kernel_sections(file)[name]


def _fill_line(text: str, placeholder: str, code: str) -> str:
    """`text` with its line `placeholder` (a line of its own) replaced by `code`."""
    line = placeholder + "\n"
    if text.count(line) != 1:
        raise ValueError(f"wgsl: a chain kernel should have one {placeholder} line")
    return text.replace(line, code.rstrip("\n") + "\n")


@functools.cache
def _per_element(params: str, body: str, index: str = "i", decls: str = "") -> str:
    """A shader with one invocation per element (section `main` of fb_chain_elementwise.wgsl):
    `index` runs over 0 .. P.n - 1, 256 to a workgroup (grid_1d lays the workgroups out in
    2-D past 65535), and section `body` is its work. `params`: the fields of the uniform
    Params (n first); `decls`: bindings declared here rather than by wgsl_buffers."""
    text = _section(_ELEMENTWISE, "main").replace("@@PARAMS@@", params).replace("@@DECLS@@", decls)
    return _fill_line(text.replace("@@INDEX@@", index), "@@BODY@@", _section(_ELEMENTWISE, body))


_ELEMWISE_PARAMS = "n: u32, na: u32, nb: u32, _p: u32"  # add, mul, silu: a and b read at i % size


def _fill_source() -> str:
    return _per_element("n: u32, word: u32, _p0: u32, _p1: u32", "fill",
                        decls="@group(0) @binding(0) var<storage, read_write> buf: array<u32>;\n"
                              "@group(0) @binding(1) var<uniform> P: Params;\n")


def _copy_source() -> str:
    return _per_element("n: u32, _p0: u32, _p1: u32, _p2: u32", "copy",
                        decls="@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;\n"
                              "@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;\n"
                              "@group(0) @binding(2) var<uniform> P: Params;\n")


GEMV_R = 16  # output columns per workgroup of the matvec kernel (R in fb_chain_matmul.wgsl)
GEMV_MAX_M = 4  # rows up to which matmuls take the matvec kernel rather than the tiled one
TILE = 64  # output rows and columns per workgroup of the tiled kernels (TM, TN in fb_tile.wgsl)


def matmul_launch(M: int, N: int, rows: int = GEMV_R, batch: int = 1) -> tuple[str, tuple[int, int, int]]:
    """How a matrix product with M x N outputs (per batch) is laid out: ("gemv", grid) for
    M <= GEMV_MAX_M, a workgroup per `rows` output columns of one row; else ("tiled", grid),
    a workgroup per TILE x TILE output tile. The chain's matmul and the fused GEMMs alike."""
    if M <= GEMV_MAX_M:
        return "gemv", (-(-N // rows), M, batch)
    return "tiled", (-(-N // TILE), -(-M // TILE), batch)


@functools.cache
def _bmm_source(kind: str) -> str:
    """The tiled matmul (section `tiled`) for b's layout `kind` ("nt": b (N, K); "nn": b (K, N))."""
    return _fill_line(_section(_MATMUL, "tiled"), "@@LOAD_B@@", _section(_MATMUL, f"tiled_b_{kind}"))


@functools.cache
def _bmv_template(kind: str) -> str:
    """The matvec (section `matvec`) for b's layout `kind`, its workgroup size still to be set
    by WgslBackend.gemv_source."""
    text = _fill_line(_section(_MATMUL, "matvec"), "@@MV_B@@", _section(_MATMUL, f"matvec_b_{kind}"))
    return text.replace("@@COL_STRIDE@@", "K" if kind == "nt" else "1u")


NEG_INF_BITS = 0xFF800000  # -inf for the masks, as a bit pattern: WGSL has no infinite literal


# ----------------------------------------------------------------------------------
# the backend
# ----------------------------------------------------------------------------------


class _Minimal(Prepared):
    """The timer's overhead probe: one workgroup filling four words."""

    def __init__(self, backend):
        super().__init__(backend, None, {}, {}, "float32")
        self.buf = backend.empty((4,), "float32")

    def run(self):
        self.backend.fill_words(self.buf, 0x3F800000)


# wgpu-native's WGPUBackendType, for an adapter info that gives the number, not the name
BACKEND_TYPES = {1: "Null", 2: "WebGPU", 3: "D3D11", 4: "D3D12", 5: "Metal", 6: "Vulkan", 7: "OpenGL", 8: "OpenGLES"}


def adapter_api(info: dict) -> str:
    """The graphics API of a wgpu adapter, from its info's backend_type: "Vulkan", "OpenGL",
    "Metal", "D3D12"..., or "unknown" where the info does not say."""
    api = info.get("backend_type")
    if isinstance(api, int) and not isinstance(api, bool):
        return BACKEND_TYPES.get(api, "unknown")
    return str(api) if api else "unknown"


class WgslBackend(Backend):
    name = "wgsl"
    device_kind = "gpu"
    dtypes = ("float32", "float16", "bfloat16")

    def __init__(self, native_f16: bool | None = None):
        """`native_f16=False` forces the packed float16 path even where the adapter has
        shader-f16 (tests use it); None uses `array<f16>` when the feature is there."""
        super().__init__()
        self._want_native_f16 = native_f16
        self._adapter = None
        self._device = None
        self._features: tuple[str, ...] = ()
        self._pending: list[tuple[Any, Any, tuple[int, int, int]]] = []
        self._keepalive: list[Any] = []
        self._pipelines: dict[tuple, Any] = {}
        self._layouts: dict[tuple, tuple[Any, Any]] = {}
        self._uniforms: dict[bytes, Any] = {}
        self._ts: tuple[Any, Any, Any] | None = None
        self._sync_bufs: tuple[Any, Any] | None = None
        self._flush_scratch: WgslArray | None = None
        self._rope_tables: dict[tuple[int, float], WgslArray] = {}
        self.timestamp_period_ns = 1.0
        self.dispatches = 0  # recorded so far, all runs

    # 1. probe and fingerprint --------------------------------------------------------
    def _probe_impl(self):
        try:
            wgpu = _import_wgpu()
        except ImportError as e:
            return False, f"wgpu is not installed ({e}); pip install 'fusebench[wgsl]'"
        adapter = self._get_adapter(wgpu)
        if adapter is None:
            return False, ("wgpu found no adapter (no GPU driver; for a CPU adapter install "
                           "Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)")
        return True, ""

    def _get_adapter(self, wgpu=None):
        if self._adapter is None:
            wgpu = wgpu or _import_wgpu()
            self._adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        return self._adapter

    def fingerprint(self):
        """The adapter and the API wgpu drives it through (`api`): llvmpipe under Vulkan
        (lavapipe) and under OpenGL (wgpu's fallback without a Vulkan driver) are not the
        same machine for the figures (harness.compare does not pair them)."""
        self.require()
        wgpu = _import_wgpu()
        info = dict(self._get_adapter().info)
        self.device  # noqa: B018  (creates it: features used are the device's)
        return {
            "wgpu": wgpu.__version__,
            "api": adapter_api(info),
            "adapter_vendor": info.get("vendor", ""),
            "adapter_device": info.get("device", ""),
            "adapter_description": info.get("description", ""),
            "adapter_type": info.get("adapter_type", ""),
            "backend_type": info.get("backend_type", ""),
            "features": list(self._features),
            "float16_storage": storage_mode("float16", self.native_f16),
            "timestamp_period_ns": self.timestamp_period_ns,
            "max_storage_binding": int(self._device.limits["max-storage-buffer-binding-size"]),
        }

    @property
    def device(self):
        """The GPUDevice, created on first use with the wanted features the adapter has
        and the adapter's largest buffer limits."""
        if self._device is None:
            self.require()
            adapter = self._get_adapter()
            feats = [f for f in FEATURES_WANTED if f in adapter.features]
            lim = adapter.limits
            limits = {k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                          "max-compute-workgroup-storage-size",
                                          "max-compute-invocations-per-workgroup") if k in lim}
            self._device = adapter.request_device_sync(required_features=feats, required_limits=limits)
            self._features = tuple(feats)
            self.timestamp_period_ns = self._query_timestamp_period()
        return self._device

    def _query_timestamp_period(self) -> float:
        # wgpu-py 0.32 does not wrap wgpuQueueGetTimestampPeriod; call wgpu-native directly.
        try:
            from wgpu.backends.wgpu_native._ffi import lib

            p = float(lib.wgpuQueueGetTimestampPeriod(self._device.queue._internal))
            return p if p > 0 and math.isfinite(p) else 1.0
        except Exception:
            return 1.0  # WebGPU defines timestamps in nanoseconds

    @property
    def native_f16(self) -> bool:
        self.device  # noqa: B018
        has = "shader-f16" in self._features
        return has if self._want_native_f16 is None else (has and self._want_native_f16)

    @property
    def has_timestamps(self) -> bool:
        self.device  # noqa: B018
        return "timestamp-query" in self._features

    def mode(self, dtype: str) -> str:
        """Storage mode of `dtype` on this device (see storage_mode)."""
        return storage_mode(dtype, self.native_f16)

    def gemv_workgroup(self) -> int:
        """Invocations per workgroup of the matrix-vector kernels: 16 on a CPU adapter
        (lavapipe: one SIMD lane per invocation, a workgroup per core; measured faster
        than 64 or 256), 256 on a GPU."""
        return 16 if self.cpu_adapter else 256

    @property
    def cpu_adapter(self) -> bool:
        """Whether the adapter runs on the CPU (lavapipe: a workgroup per core at a time)."""
        return str(self._get_adapter().info.get("adapter_type", "")).lower() == "cpu"

    @property
    def loop_limit(self) -> int | None:
        """LLVMPIPE_LOOP_LIMIT on llvmpipe (lavapipe), which ends longer loops silently; None
        on adapters with no such limit."""
        return LLVMPIPE_LOOP_LIMIT if "llvmpipe" in str(self._get_adapter().info.get("device", "")).lower() else None

    def require_loop_budget(self, what: str, iterations: int) -> None:
        """ValueError when one invocation of `what` would run more than LOOP_BUDGET loop
        iterations (as counted from its source) on an adapter with a loop limit."""
        if self.loop_limit is not None and iterations > LOOP_BUDGET:
            raise ValueError(f"{what}: about {iterations} loop iterations in one invocation, past the budget of "
                             f"{LOOP_BUDGET} on llvmpipe, which ends every loop after {self.loop_limit} "
                             f"(results would be left unwritten)")

    def gemv_source(self, text: str, rows: int = 16) -> str:
        """`text` with @@GV_WG@@ / @@GV_RED@@ set for this adapter."""
        wg = self.gemv_workgroup()
        return text.replace("@@GV_WG@@", str(wg)).replace("@@GV_RED@@", str(wg * rows))

    def matmul_dispatch(self, kind: str, modes: Sequence[str], M: int, K: int, N: int,
                        buffers: Sequence[tuple[str, str]], batch: int = 1) -> Dispatch:
        """The chain's matmul (fb_chain_matmul.wgsl) as one Dispatch: a: (batch, M, K) times b:
        (batch, N, K) transposed ("nt") or (batch, K, N) ("nn") -> y: (batch, M, N), with a, b
        and y in storage `modes` and bound to `buffers` [(name, role)]; the matvec kernel or
        the tiled one as matmul_launch says. A fused kernel's plain GEMM step uses it too."""
        layout, groups = matmul_launch(M, N, GEMV_R, batch)
        body = self.gemv_source(_bmv_template(kind)) if layout == "gemv" else _bmm_source(kind)
        source = with_buffers(body, [(n, m, r) for n, m, r in zip(("a", "b", "y"), modes, ("in", "in", "out"))])
        return Dispatch(source, "main", groups, tuple(buffers), pack_params(("u", M), ("u", K), ("u", N)))

    def rope_table(self, d: int, theta: float) -> WgslArray:
        """The rotary frequency table for head size `d` and base `theta` (uint32, see
        ROPE_WGSL / rope_table_words), uploaded on first use and cached: it depends on
        neither the inputs nor the positions."""
        key = (int(d), float(theta))
        t = self._rope_tables.get(key)
        if t is None:
            t = self._rope_tables[key] = self.upload(rope_table_words(int(d), float(theta)).reshape(-1))
        return t

    @property
    def max_binding(self) -> int:
        return int(self.device.limits["max-storage-buffer-binding-size"])

    # 2. upload and download --------------------------------------------------------
    def empty(self, shape, dtype: str) -> WgslArray:
        wgpu = _import_wgpu()
        nbytes = int(math.prod(shape)) * _np(dtype).itemsize
        if _padded(nbytes) > self.max_binding:
            raise BackendUnavailable(f"wgsl: array of {nbytes} bytes exceeds the adapter's storage "
                                     f"binding limit ({self.max_binding} bytes)")
        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        return WgslArray(self.device.create_buffer(size=_padded(nbytes), usage=usage), shape, dtype)

    def upload(self, a):
        a = np.ascontiguousarray(a)
        name = next((k for k in ("float32", "float16", "bfloat16", "int32", "uint32") if a.dtype == _np(k)), None)
        if name is None:
            raise TypeError(f"wgsl: cannot upload {a.dtype} (float32, float16, bfloat16, int32 or uint32)")
        out = self.empty(a.shape, name)
        # queue writes happen before the next submission, so before any pending dispatch
        # that could read this (new) buffer
        self._write_bytes(out, a)
        return out

    def _write_bytes(self, buf: WgslArray, a: np.ndarray) -> None:
        raw = a.view(np.uint8).reshape(-1)
        if raw.size:
            data = np.zeros(_padded(raw.size), dtype=np.uint8)
            data[:raw.size] = raw
            self.device.queue.write_buffer(buf.buffer, 0, data)

    def write(self, buf, a):
        a = np.ascontiguousarray(a)
        if a.shape != tuple(buf.shape) or a.dtype != _np(buf.dtype):
            raise ValueError(f"wgsl: cannot write {a.dtype}{a.shape} into a buffer of {buf.dtype}{tuple(buf.shape)}")
        self.flush()  # recorded work that reads the old values runs first
        self._write_bytes(buf, a)

    def download(self, buf):
        if isinstance(buf, np.ndarray):
            return buf.copy()
        self.flush()
        n = buf.nbytes
        raw = self.device.queue.read_buffer(buf.buffer, 0, _padded(n))  # waits for the work
        arr = np.frombuffer(bytes(raw), dtype=np.uint8)[:n]
        return arr.view(_np(buf.dtype)).reshape(buf.shape).copy()

    def poison(self, buf):
        """NaN in every element (quiet-NaN bit patterns), recorded as a fill dispatch so
        that it stays in order with the pending work."""
        if isinstance(buf, np.ndarray):
            buf[...] = np.nan
            return
        self.fill_words(buf, NAN_WORD.get(buf.dtype, 0xFFFFFFFF))

    def fill_words(self, buf: WgslArray, word: int) -> None:
        n = buf.buffer.size // 4
        self.dispatch(_fill_source(), [buf], ["out"], grid_1d(-(-n // WG)), pack_params(("u", n), ("u", word)))

    # kernel launch machinery ---------------------------------------------------------
    def _layout(self, roles: tuple[str, ...], has_params: bool):
        key = (roles, has_params)
        if key not in self._layouts:
            wgpu = _import_wgpu()
            kinds = {"in": wgpu.BufferBindingType.read_only_storage, "out": wgpu.BufferBindingType.storage}
            entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": kinds[r]}}
                       for i, r in enumerate(roles)]
            if has_params:
                entries.append({"binding": len(roles), "visibility": wgpu.ShaderStage.COMPUTE,
                                "buffer": {"type": wgpu.BufferBindingType.uniform}})
            bgl = self.device.create_bind_group_layout(entries=entries)
            self._layouts[key] = (bgl, self.device.create_pipeline_layout(bind_group_layouts=[bgl]))
        return self._layouts[key]

    def pipeline(self, source: str, roles: Sequence[str], has_params: bool = True, entry: str = "main"):
        """Compiled compute pipeline for (source, entry point, binding roles), cached."""
        key = (source, entry, tuple(roles), has_params)
        p = self._pipelines.get(key)
        if p is None:
            _, layout = self._layout(tuple(roles), has_params)
            module = self.device.create_shader_module(code=source)
            p = self.device.create_compute_pipeline(layout=layout, compute={"module": module, "entry_point": entry})
            self._pipelines[key] = p
        return p

    def _uniform(self, data: bytes):
        u = self._uniforms.get(data)
        if u is None:
            wgpu = _import_wgpu()
            if len(self._uniforms) > 4096:
                self._uniforms.clear()
            u = self.device.create_buffer_with_data(data=data, usage=wgpu.BufferUsage.UNIFORM)
            self._uniforms[data] = u
        return u

    def dispatch(self, source: str, arrays: Sequence[WgslArray], roles: Sequence[str],
                 groups: tuple[int, int, int], params: bytes | None = None, entry: str = "main") -> None:
        """Record one dispatch of `entry` in `source` over `groups` workgroups, with
        `arrays` bound at 0.. (roles "in" read-only, "out" read-write) and `params` as a
        uniform block at the next binding. Runs at the next flush()."""
        self._record(*self._bound(source, arrays, roles, groups, params, entry))

    def _bound(self, source, arrays, roles, groups, params, entry):
        """(pipeline, bind group, groups, buffers kept alive) of one dispatch."""
        if any(g > MAX_GROUPS for g in groups):
            raise ValueError(f"wgsl: grid {groups} exceeds {MAX_GROUPS} workgroups per dimension")
        pipe = self.pipeline(source, roles, params is not None, entry)
        bgl, _ = self._layout(tuple(roles), params is not None)
        entries = [{"binding": i, "resource": {"buffer": a.buffer, "offset": 0, "size": a.buffer.size}}
                   for i, a in enumerate(arrays)]
        if params is not None:
            u = self._uniform(params)
            entries.append({"binding": len(arrays), "resource": {"buffer": u, "offset": 0, "size": u.size}})
        bg = self.device.create_bind_group(layout=bgl, entries=entries)
        return pipe, bg, tuple(int(g) for g in groups), tuple(a.buffer for a in arrays)

    def _record(self, pipe, bg, groups, buffers) -> None:
        self._pending.append((pipe, bg, groups))
        self.dispatches += 1
        self._keepalive.extend(buffers)

    def bind(self, plan: Sequence["Dispatch"], buffers: dict[str, WgslArray], what: str = "") -> "BoundPlan":
        """A launch plan with its buffers bound by name: compiled and its bind groups made
        now (never timed); BoundPlan.run() records the dispatches."""
        missing = sorted({n for d in plan for n, _ in d.buffers} - set(buffers))
        if missing:
            raise KeyError(f"{what or 'wgsl plan'}: no buffer named {', '.join(missing)}")
        return BoundPlan(self, [self._bound(d.source, [buffers[n] for n, _ in d.buffers], [r for _, r in d.buffers],
                                            d.groups, d.params, d.entry) for d in plan])

    def flush(self, timestamps: bool = False) -> bool:
        """Submit the pending dispatches in one compute pass (no wait). With
        `timestamps`, the pass writes begin/end timestamps and their resolve and copy to
        the readback buffer are in the same submission. Returns whether it timestamped."""
        if not self._pending:
            return False
        dev = self.device
        encoding = time.perf_counter()
        enc = dev.create_command_encoder()
        stamped = timestamps and self.has_timestamps
        if stamped:
            qs, resolve, readback = self._timestamp_objects()
            cp = enc.begin_compute_pass(timestamp_writes={
                "query_set": qs, "beginning_of_pass_write_index": 0, "end_of_pass_write_index": 1})
        else:
            cp = enc.begin_compute_pass()
        pending, self._pending, self._keepalive = self._pending, [], []  # dropped even on error
        for pipe, bg, groups in pending:
            cp.set_pipeline(pipe)
            cp.set_bind_group(0, bg)
            cp.dispatch_workgroups(*groups)
        cp.end()
        if stamped:
            enc.resolve_query_set(qs, 0, 2, resolve, 0)
            enc.copy_buffer_to_buffer(resolve, 0, readback, 0, 16)
        commands = enc.finish()
        self.last_encode_s = time.perf_counter() - encoding  # the launches' host cost (see measure())
        dev.queue.submit([commands])
        return stamped

    def _timestamp_objects(self):
        if self._ts is None:
            wgpu = _import_wgpu()
            dev = self.device
            qs = dev.create_query_set(type=wgpu.QueryType.timestamp, count=2)
            resolve = dev.create_buffer(size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
            readback = dev.create_buffer(size=16, usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
            self._ts = (qs, resolve, readback)
        return self._ts

    # 3. synchronise ----------------------------------------------------------------
    def synchronize(self):
        """Flush, then wait for the device by mapping a small readback buffer
        (queue.on_submitted_work_done_sync() is broken in wgpu 0.32)."""
        if self._device is None:
            return
        wgpu = _import_wgpu()
        self.flush()
        dev = self._device
        if self._sync_bufs is None:
            src = dev.create_buffer(size=16, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
            dst = dev.create_buffer(size=16, usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
            self._sync_bufs = (src, dst)
        src, dst = self._sync_bufs
        enc = dev.create_command_encoder()
        enc.copy_buffer_to_buffer(src, 0, dst, 0, 16)
        dev.queue.submit([enc.finish()])
        dst.map_sync(wgpu.MapMode.READ)
        dst.unmap()

    # 4. timer ----------------------------------------------------------------------
    def time_run(self, prepared) -> float:
        """One run of `prepared`, in seconds of device time: the dispatches it records
        run in one compute pass bracketed by timestamps (host clock around the submit and
        the wait when the adapter has no timestamp queries). Work is complete on return."""
        self.synchronize()
        self.last_encode_s = 0.0
        if not self.has_timestamps:
            t0 = time.perf_counter()
            prepared.run()
            self.synchronize()
            return time.perf_counter() - t0
        prepared.run()
        t0 = time.perf_counter()
        if not self.flush(timestamps=True):  # recorded nothing on this backend
            self.synchronize()
            return time.perf_counter() - t0
        wgpu = _import_wgpu()
        readback = self._ts[2]
        readback.map_sync(wgpu.MapMode.READ)  # waits for the pass, the resolve and the copy
        try:
            t = np.frombuffer(bytes(readback.read_mapped(0, 16)), dtype=np.uint64)
        finally:
            readback.unmap()
        begin, end = int(t[0]), int(t[1])
        return max(end - begin, 0) * self.timestamp_period_ns * 1e-9

    @property
    def device_timed(self) -> bool:
        return self.has_timestamps

    @property
    def timing_method(self) -> str:
        if self.has_timestamps:
            return "WebGPU timestamp queries around one compute pass holding every dispatch of the run"
        return Backend.timing_method

    def launches(self, timed) -> int | None:
        """Dispatches one run of `timed` records (counted over one untimed run)."""
        self.synchronize()
        before = self.dispatches
        timed.run()
        self.synchronize()
        return self.dispatches - before

    def minimal_prepared(self):
        return _Minimal(self)

    def flush_cache(self):
        """Overwrite a scratch buffer larger than the device's caches (2x the CPU's last
        level cache on a CPU adapter such as lavapipe, 256 MiB, capped by the binding
        limit, on a GPU), so the next timed run starts cold. Not timed itself."""
        if self._flush_scratch is None:
            if str(self._get_adapter().info.get("adapter_type", "")).lower() == "cpu":
                from harness.backends.cpu import last_level_cache_bytes

                size = 2 * last_level_cache_bytes()
            else:
                size = 256 * 1024**2
            size = min(size, self.max_binding) // 4 * 4
            self._flush_scratch = self.empty((size // 4,), "float32")
        self.fill_words(self._flush_scratch, 0)
        self.synchronize()

    # 5. primitive ops --------------------------------------------------------------
    def ops(self, dtype):
        if dtype not in self.dtypes:
            return None
        self.require()
        return WgslOps(self, dtype)

    # 6. peak probe -----------------------------------------------------------------
    def measure_peak(self, copy_bytes: int = 64 * 1024**2, n: int = 256, seconds: float = 1.0):
        """Best-of-repeats device time of a vec4 buffer copy (GB/s, read + write) and of
        the tiled f32 matmul kernel that `linear` uses (n x n x n, GFLOP/s), n doubled from
        256 while one product takes under 20 ms, up to 2048 (on lavapipe, 0.42 GFLOP/s at
        n = 256, 512 and 1024 alike: the small size says as much in 1.6 s as 1024 in 16 s;
        a GPU gets the sizes it needs to fill)."""
        self.require()
        copy_bytes = min(copy_bytes, self.max_binding) // 16 * 16
        n4 = copy_bytes // 16
        src, dst = self.empty((copy_bytes // 4,), "float32"), self.empty((copy_bytes // 4,), "float32")
        self.fill_words(src, 0x3F800000)

        class _Run:
            def __init__(self, fn):
                self.run = fn

        copy = _Run(lambda: self.dispatch(_copy_source(), [src, dst], ["in", "out"], grid_1d(-(-n4 // WG)),
                                          pack_params(("u", n4))))
        best_copy = self._best(copy, seconds)
        rng = np.random.default_rng(0)
        ops = WgslOps(self, "float32")
        gflops = 0.0
        while True:
            a = self.upload(rng.standard_normal((n, n)).astype(np.float32))
            b = self.upload(rng.standard_normal((n, n)).astype(np.float32))
            best_mm = self._best(_Run(lambda: ops.linear(a, b)), seconds)
            gflops = max(gflops, 2 * n**3 / best_mm / 1e9)
            if best_mm >= 0.02 or n >= 2048:
                break
            n *= 2
        return {"copy_gbps": 2 * copy_bytes / best_copy / 1e9, "matmul_gflops": gflops}

    def _best(self, prepared, seconds: float, min_runs: int = 3) -> float:
        self.time_run(prepared)  # warm-up (compile)
        best, runs = float("inf"), 0
        t_end = time.perf_counter() + seconds
        while runs < min_runs or time.perf_counter() < t_end:
            best = min(best, self.time_run(prepared))
            runs += 1
        return best


class WgslOps(BinaryKernelOps, Ops):
    """Primitive ops, one WGSL dispatch each, results in new device arrays of the storage
    dtype (computed in f32). Inputs may be in any storage dtype the backend holds."""

    def __init__(self, backend: WgslBackend, dtype: str):
        self.b = backend
        self.dtype = dtype
        self.name = f"wgsl-{dtype}"

    def _dev(self, a) -> WgslArray:
        return a if isinstance(a, WgslArray) else self.b.upload(np.asarray(a))

    def _src(self, body: str, buffers: list[tuple[str, WgslArray | None, str]], params: str = "Params") -> str:
        return with_buffers(body, [(name, self.b.mode(arr.dtype if arr is not None else self.dtype), role)
                                   for name, arr, role in buffers], params)

    def _rowwise(self, kernel: str, x, extra, params: bytes):
        x = self._dev(x)
        rows = x.size // x.shape[-1]
        y = self.b.empty(x.shape, self.dtype)
        bufs = [("x", x, "in")] + [(n, a, "in") for n, a in extra] + [("y", None, "out")]
        src = self._src(kernel, bufs)
        self.b.dispatch(src, [x] + [a for _, a in extra] + [y], [r for _, _, r in bufs], grid_1d(rows), params)
        return y

    def rms_norm(self, x, gamma, eps):
        x, gamma = self._dev(x), self._dev(gamma)
        rows = x.size // x.shape[-1]
        return self._rowwise(_section(_ROWS, "rms_norm"), x, [("g", gamma)],
                             pack_params(("u", rows), ("u", x.shape[-1]), ("f", eps), ("f", 1.0)))

    def softmax(self, x):
        x = self._dev(x)
        rows = x.size // x.shape[-1]
        return self._rowwise(_section(_ROWS, "softmax"), x, [], pack_params(("u", rows), ("u", x.shape[-1])))

    def linear(self, x, w):
        """x: (..., K), w: (N, K) -> x @ wᵀ: the "nt" matmul with the rows of x as one batch."""
        x, w = self._dev(x), self._dev(w)
        K = x.shape[-1]
        if w.ndim != 2 or w.shape[1] != K:
            raise ValueError(f"wgsl linear: x {x.shape} and w {w.shape} do not match")
        y = self._batched("nt", self.reshape(x, (x.size // K, K)), w)
        return self.reshape(y, x.shape[:-1] + (w.shape[0],))

    def _binary(self, op: str, a, b):
        a, b = self._dev(a), self._dev(b)
        shape = np.broadcast_shapes(a.shape, b.shape)
        n = int(math.prod(shape))
        for arr in (a, b):
            # supported: the operand is the whole result, or (leading 1s aside) its trailing
            # dimensions, so that element i of the result reads element i % size
            s = tuple(arr.shape)
            while s and s[0] == 1:
                s = s[1:]
            if arr.size != n and tuple(shape[len(shape) - len(s):]) != s:
                raise NotImplementedError(f"wgsl {op}: broadcast of {arr.shape} to {shape}")
        y = self.b.empty(shape, self.dtype)
        bufs = [("a", a, "in"), ("b", b, "in"), ("y", None, "out")]
        self.b.dispatch(self._src(_per_element(_ELEMWISE_PARAMS, op), bufs), [a, b, y],
                        ["in", "in", "out"], grid_1d(-(-n // WG)),
                        pack_params(("u", n), ("u", a.size), ("u", b.size)))
        return y

    def silu(self, x):
        x = self._dev(x)
        n = x.size
        y = self.b.empty(x.shape, self.dtype)
        bufs = [("a", x, "in"), ("y", None, "out")]
        self.b.dispatch(self._src(_per_element(_ELEMWISE_PARAMS, "silu"), bufs), [x, y],
                        ["in", "out"], grid_1d(-(-n // WG)), pack_params(("u", n), ("u", n), ("u", n)))
        return y

    def split(self, x, sizes):
        """Along the last axis, one copy dispatch per piece (each a new contiguous array)."""
        x = self._dev(x)
        W = x.shape[-1]
        if sum(sizes) != W:
            raise ValueError(f"wgsl split: sizes {sizes} do not add up to {W}")
        rows = x.size // W if W else 0
        out, off = [], 0
        for w in sizes:
            y = self.b.empty(x.shape[:-1] + (w,), self.dtype)
            n = rows * w
            if n:
                bufs = [("x", x, "in"), ("y", None, "out")]
                src = _per_element("n: u32, W: u32, w: u32, off: u32", "split")
                self.b.dispatch(self._src(src, bufs), [x, y], ["in", "out"], grid_1d(-(-n // WG)),
                                pack_params(("u", n), ("u", W), ("u", w), ("u", off)))
            out.append(y)
            off += w
        return out

    def reshape(self, x, shape):
        """Metadata only: the same buffer under a new shape."""
        x = self._dev(x)
        shape = tuple(int(s) for s in shape)
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(x.size // known if s == -1 else s for s in shape)
        if math.prod(shape) != x.size:
            raise ValueError(f"wgsl reshape: {x.shape} -> {shape}")
        return WgslArray(x.buffer, shape, x.dtype)

    def rope(self, x, pos, theta):
        """x: (M, heads, d), pos: (M,) int32; one invocation per rotated pair, angles
        from the cached frequency table (ROPE_WGSL), arithmetic in f32."""
        x = self._dev(x)
        pos = self._dev(np.asarray(pos, dtype=np.int32)) if not isinstance(pos, WgslArray) else pos
        M, heads, d = x.shape
        if d % 2 or pos.size != M:
            raise ValueError(f"wgsl rope: x {x.shape}, pos {pos.shape}")
        y = self.b.empty(x.shape, self.dtype)
        n = M * heads * (d // 2)
        if n:
            table = self.b.rope_table(d, theta)
            bufs = [("x", x, "in"), ("pos", pos, "in"), ("freq", table, "in"), ("y", None, "out")]
            src = _per_element("n: u32, heads: u32, half: u32, _p: u32", "rope", index="p") + ROPE_WGSL
            self.b.dispatch(self._src(src, bufs), [x, pos, table, y], ["in", "in", "in", "out"],
                            grid_1d(-(-n // WG)), pack_params(("u", n), ("u", heads), ("u", d // 2)))
        return y

    # attention --------------------------------------------------------------------
    def _batched(self, kind: str, a, b):
        """a: (..., M, K) times b: (..., N, K) transposed ("nt") or (..., K, N) ("nn"),
        equal leading dims -> (..., M, N); one dispatch, the batch on the grid's z."""
        a, b = self._dev(a), self._dev(b)
        if a.ndim < 2 or b.ndim != a.ndim or a.shape[:-2] != b.shape[:-2]:
            raise ValueError(f"wgsl matmul_{kind}: a {a.shape} and b {b.shape} do not match")
        M, K = a.shape[-2:]
        N, Kb = b.shape[-2:] if kind == "nt" else b.shape[-1:-3:-1]
        if Kb != K:
            raise ValueError(f"wgsl matmul_{kind}: a {a.shape} and b {b.shape} do not match")
        batch = int(math.prod(a.shape[:-2]))
        y = self.b.empty(a.shape[:-2] + (M, N), self.dtype)
        if y.size == 0:
            return y
        modes = [self.b.mode(arr.dtype) for arr in (a, b, y)]
        plan = self.b.matmul_dispatch(kind, modes, M, K, N, (("a", "in"), ("b", "in"), ("y", "out")), batch)
        self.b.bind([plan], {"a": a, "b": b, "y": y}, f"wgsl matmul_{kind}").run()
        return y

    def matmul_nt(self, a, b):
        """a: (..., S, d), b: (..., T, d) -> a @ bᵀ, (..., S, T)."""
        return self._batched("nt", a, b)

    def matmul(self, a, b):
        """a: (..., S, T), b: (..., T, d) -> a @ b, (..., S, d)."""
        return self._batched("nn", a, b)

    def _elementwise(self, kernel: str, x, extra, params: bytes):
        """One invocation per element of x; `extra` [(name, array)] bound after x."""
        y = self.b.empty(x.shape, self.dtype)
        if x.size:
            bufs = [("x", x, "in")] + [(n, a, "in") for n, a in extra] + [("y", None, "out")]
            self.b.dispatch(self._src(kernel, bufs), [x] + [a for _, a in extra] + [y],
                            [r for _, _, r in bufs], grid_1d(-(-x.size // WG)), params)
        return y

    def scale(self, x, s):
        x = self._dev(x)
        return self._elementwise(_per_element("n: u32, s: f32, _p0: u32, _p1: u32", "scale"), x, [],
                                 pack_params(("u", x.size), ("f", s)))

    def causal_mask(self, x):
        """x: (..., S, T): entry (i, j) -> -inf where j > i + T - S."""
        x = self._dev(x)
        S, T = x.shape[-2:]
        return self._elementwise(_per_element("n: u32, S: u32, T: u32, ninf: u32", "causal_mask"), x, [],
                                 pack_params(("u", x.size), ("u", S), ("u", T), ("u", NEG_INF_BITS)))

    def length_mask(self, x, lens):
        """x: (B, H, S, T), lens: (B,) int32: entries j >= lens[b] -> -inf."""
        x = self._dev(x)
        lens = lens if isinstance(lens, WgslArray) else self.b.upload(np.asarray(lens, dtype=np.int32))
        B, T = x.shape[0], x.shape[-1]
        if x.ndim != 4 or lens.shape != (B,) or lens.dtype != "int32":
            raise ValueError(f"wgsl length_mask: x {x.shape}, lens {lens.shape} {lens.dtype}")
        return self._elementwise(_per_element("n: u32, T: u32, per_b: u32, ninf: u32", "length_mask"),
                                 x, [("lens", lens)], pack_params(("u", x.size), ("u", T), ("u", x.size // max(B, 1)),
                                                                  ("u", NEG_INF_BITS)))


BACKENDS = {"wgsl": WgslBackend()}
