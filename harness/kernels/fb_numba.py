"""numba building blocks shared by the fused CPU kernels (impls/<fusion>/<fusion>_numba.py).

Kept here beside the CUDA and WGSL fragments. A fusion's kernel file holds plain
module-level functions and imports numba itself: its cpu.py imports it only when its
kernel is first prepared, so numba and llvmlite load then, never at harness start-up
(listing the registry never loads numba). Everything here is defined at module level
too: the kernels that call these helpers then refer to globals, not closure cells, which
keeps numba's on-disk cache valid from one process to the next.

Storage dtypes are passed as `kind` (harness.backends.cpu.KIND: 0 float32, 1 bfloat16,
2 float16), 16-bit values as uint16 bit patterns (harness.backends.cpu.bits16).

numba's on-disk cache is checked against the file of the cached kernel only, not against
the helpers here that it calls: edit a helper, and every kernel that uses it would load its
old machine code from the cache. Importing this module therefore points numba's cache
(`numba.config.CACHE_DIR`) at a folder named after this file's content, so a changed
helper means a fresh cache (helpers_cache_dir). So a kernel file imports this module
before it defines any kernel (numba picks a kernel's cache folder when it is decorated).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload


def helpers_cache_dir(source: bytes, env=os.environ) -> str:
    """Where numba caches the fused CPU kernels for this content of fb_numba.py: under
    $NUMBA_CACHE_DIR when it is set, else under $XDG_CACHE_HOME (~/.cache)/fusebench/numba."""
    base = env.get("NUMBA_CACHE_DIR") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fusebench", "numba")
    return os.path.join(base, "fb_numba-" + hashlib.sha256(source).hexdigest()[:16])


def _use_helpers_cache_dir() -> None:
    # before any kernel that calls these helpers is decorated (impls/*/*_numba.py import
    # this module first); where the folder cannot be made, numba keeps its default
    # (__pycache__ beside each kernel), as before
    path = helpers_cache_dir(Path(__file__).read_bytes())
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return
    if os.access(path, os.W_OK):
        nb.config.CACHE_DIR = path


_use_helpers_cache_dir()


@intrinsic
def f32_bits(typingctx, v):
    # the IEEE bit pattern of a float32 scalar, as uint32
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def bf16_f32(typingctx, u):
    # bfloat16 bits -> float32 in a register: the bits are the float32's top half
    def codegen(context, builder, signature, args):
        w = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(w, ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def f16_f32(typingctx, u):
    # float16 bits -> float32 in a register (exact; one vcvtph2ps on x86 with F16C)
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@nb.njit
def narrow16(v, kind):
    # float32 -> bfloat16 (kind 1) or float16 (kind 2) bit pattern, round to nearest even
    u = f32_bits(np.float32(v))
    a = u & np.uint32(0x7FFFFFFF)
    if kind == 1:
        if a > np.uint32(0x7F800000):
            return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
        return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    if a > np.uint32(0x7F800000):
        r = np.uint32(0x7E00)
    elif a >= np.uint32(0x477FF000):  # >= 65520 rounds to Inf
        r = np.uint32(0x7C00)
    elif a >= np.uint32(0x38800000):  # normal: rebias the exponent by 112, drop 13 bits
        r = (a - np.uint32(0x38000000) + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
    elif a > np.uint32(0x33000000):  # subnormal: units of 2**-24
        mant = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        sh = np.uint32(126) - (a >> np.uint32(23))
        r = mant >> sh
        rem = mant & ((np.uint32(1) << sh) - np.uint32(1))
        half = np.uint32(1) << (sh - np.uint32(1))
        if rem > half or (rem == half and (r & np.uint32(1))):
            r += np.uint32(1)
    else:
        r = np.uint32(0)
    return np.uint16(sign | r)


@nb.njit
def put(out, m, n, v, kind):
    # out[m, n] = v in the storage dtype (out: float32, or uint16 bit patterns)
    if kind == 0:
        out[m, n] = v
    else:
        out[m, n] = narrow16(v, kind)


@nb.njit(fastmath=True)
def widen(src, dst, kind, pow2):
    # src: (H,) float32 or uint16 bit patterns; dst: (H,) float32
    if kind == 0:
        for h in range(src.shape[0]):
            dst[h] = src[h]
    elif kind == 1:
        bits = dst.view(np.uint32)
        for h in range(src.shape[0]):
            bits[h] = np.uint32(src[h]) << np.uint32(16)
    else:
        bits = dst.view(np.uint32)
        sub = False
        for h in range(src.shape[0]):
            u = np.uint32(src[h])
            e = (u >> np.uint32(10)) & np.uint32(31)
            body = ((e + np.uint32(112)) << np.uint32(23)) | ((u & np.uint32(1023)) << np.uint32(13))
            body = np.uint32(0x7F800000) | ((u & np.uint32(1023)) << np.uint32(13)) if e == 31 else body
            bits[h] = ((u & np.uint32(0x8000)) << np.uint32(16)) | body
            sub |= e == 0
        if sub:
            for h in range(src.shape[0]):
                u = np.uint32(src[h])
                if (u >> np.uint32(10)) & np.uint32(31) == 0:
                    v = np.float32(u & np.uint32(1023)) * pow2[0]
                    dst[h] = -v if (u & np.uint32(0x8000)) else v


@nb.njit
def make_pow2():
    pow2 = np.empty(32, dtype=np.float32)  # float16 exponent e -> 2**(e - 25)
    pow2[0] = np.float32(2.0**-24)
    for e in range(1, 32):
        pow2[e] = np.float32(2.0 ** (e - 25))
    return pow2


@nb.njit(fastmath=True)
def dots(x0, rows, a):
    # a[j] = x0 . rows[j]; four rows per pass share each x load
    J, H = rows.shape
    j = 0
    while j + 4 <= J:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for h in range(H):
            v = x0[h]
            a0 += v * rows[j, h]
            a1 += v * rows[j + 1, h]
            a2 += v * rows[j + 2, h]
            a3 += v * rows[j + 3, h]
        a[j], a[j + 1], a[j + 2], a[j + 3] = a0, a1, a2, a3
        j += 4
    while j < J:
        acc = np.float32(0.0)
        for h in range(H):
            acc += x0[h] * rows[j, h]
        a[j] = acc
        j += 1


@nb.njit(fastmath=True)
def dots2(x0, x1, rows, a, b):
    # two x rows against the block: each W load feeds two sums (prefill)
    J, H = rows.shape
    j = 0
    while j + 4 <= J:
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
        for h in range(H):
            u = x0[h]
            v = x1[h]
            w0 = rows[j, h]
            w1 = rows[j + 1, h]
            w2 = rows[j + 2, h]
            w3 = rows[j + 3, h]
            a0 += u * w0
            a1 += u * w1
            a2 += u * w2
            a3 += u * w3
            b0 += v * w0
            b1 += v * w1
            b2 += v * w2
            b3 += v * w3
        a[j], a[j + 1], a[j + 2], a[j + 3] = a0, a1, a2, a3
        b[j], b[j + 1], b[j + 2], b[j + 3] = b0, b1, b2, b3
        j += 4
    while j < J:
        s = t = np.float32(0.0)
        for h in range(H):
            s += x0[h] * rows[j, h]
            t += x1[h] * rows[j, h]
        a[j] = s
        b[j] = t
        j += 1


@nb.njit(fastmath=True)
def dots_seq(x0, rows, a):
    # a[j] = x0 . rows[j], two rows per pass: the decode path. Two sequential streams per
    # thread measured 10-20% faster than one at a time (and than a block of four) for
    # Llama-3-8B's down projection, (4096, 14336) f32.
    J, H = rows.shape
    j = 0
    while j + 2 <= J:
        s = t = np.float32(0.0)
        for h in range(H):
            v = x0[h]
            s += v * rows[j, h]
            t += v * rows[j + 1, h]
        a[j], a[j + 1] = s, t
        j += 2
    if j < J:
        s = np.float32(0.0)
        for h in range(H):
            s += x0[h] * rows[j, h]
        a[j] = s


@nb.njit(fastmath=True)
def dots_w16(x0, rows, a, kind):
    # dots_seq with rows as 16-bit patterns widened in registers (decode: each W element is
    # used once, so a float32 copy of the block would only cost bandwidth); x0 stays in L1.
    J, H = rows.shape
    j = 0
    while j + 2 <= J:
        s = t = np.float32(0.0)
        if kind == 1:
            for h in range(H):
                v = x0[h]
                s += v * bf16_f32(rows[j, h])
                t += v * bf16_f32(rows[j + 1, h])
        else:
            for h in range(H):
                v = x0[h]
                s += v * f16_f32(rows[j, h])
                t += v * f16_f32(rows[j + 1, h])
        a[j], a[j + 1] = s, t
        j += 2
    if j < J:
        s = np.float32(0.0)
        if kind == 1:
            for h in range(H):
                s += x0[h] * bf16_f32(rows[j, h])
        else:
            for h in range(H):
                s += x0[h] * f16_f32(rows[j, h])
        a[j] = s


@nb.njit(fastmath=True)
def gate_up2(x0, wg, wu, n):
    # decode, float32 W: rows n and n+1 of W_gate and W_up in one pass, four sequential
    # streams sharing each x load. Streaming gate and up side by side, rather than a block
    # of gate rows and then the same block of up rows, measured 8-14% faster at
    # Llama-3-8B sizes (the two-GEMV chain's OpenBLAS sgemv is that fast too).
    a = b = c = d = np.float32(0.0)
    for h in range(x0.shape[0]):
        v = x0[h]
        a += v * wg[n, h]
        b += v * wu[n, h]
        c += v * wg[n + 1, h]
        d += v * wu[n + 1, h]
    return a, b, c, d


@nb.njit(fastmath=True)
def gate_up1(x0, wg, wu, n):
    # the last row when the row count is odd (see gate_up2)
    a = b = np.float32(0.0)
    for h in range(x0.shape[0]):
        v = x0[h]
        a += v * wg[n, h]
        b += v * wu[n, h]
    return a, b


@nb.njit(fastmath=True)
def gate_up2_w16(x0, wg, wu, n, kind):
    # gate_up2 with W as 16-bit patterns widened in registers
    a = b = c = d = np.float32(0.0)
    if kind == 1:
        for h in range(x0.shape[0]):
            v = x0[h]
            a += v * bf16_f32(wg[n, h])
            b += v * bf16_f32(wu[n, h])
            c += v * bf16_f32(wg[n + 1, h])
            d += v * bf16_f32(wu[n + 1, h])
    else:
        for h in range(x0.shape[0]):
            v = x0[h]
            a += v * f16_f32(wg[n, h])
            b += v * f16_f32(wu[n, h])
            c += v * f16_f32(wg[n + 1, h])
            d += v * f16_f32(wu[n + 1, h])
    return a, b, c, d


@nb.njit(fastmath=True)
def gate_up1_w16(x0, wg, wu, n, kind):
    a = b = np.float32(0.0)
    if kind == 1:
        for h in range(x0.shape[0]):
            v = x0[h]
            a += v * bf16_f32(wg[n, h])
            b += v * bf16_f32(wu[n, h])
    else:
        for h in range(x0.shape[0]):
            v = x0[h]
            a += v * f16_f32(wg[n, h])
            b += v * f16_f32(wu[n, h])
    return a, b


@nb.njit(fastmath=True)
def swiglu(g, u):
    # silu(g) * u in float64; exp's argument is clamped so it never overflows
    gd = np.float64(g)
    return gd / (1.0 + np.exp(min(-gd, 700.0))) * np.float64(u)


# ---- decode over float32 or 16-bit weights -------------------------------------------
# Each function below is compiled, by the dtype of the weights it is called with, to the
# float32 helper or to its _w16 twin (which widens 16-bit patterns in registers): a kernel
# written once serves both, with no branch at run time.

def stream_dots(x0, rows, a, kind):
    """a[j] = x0 . rows[j], rows streamed two at a time: dots_seq or dots_w16."""
    raise NotImplementedError("called from numba kernels only")


def gate_up_pair(x0, wg, wu, n, kind):
    """Gate and up rows n and n+1: gate_up2 or gate_up2_w16."""
    raise NotImplementedError("called from numba kernels only")


def gate_up_last(x0, wg, wu, n, kind):
    """Gate and up row n alone: gate_up1 or gate_up1_w16."""
    raise NotImplementedError("called from numba kernels only")


@overload(stream_dots)
def _stream_dots(x0, rows, a, kind):
    if rows.dtype == types.float32:
        return lambda x0, rows, a, kind: dots_seq(x0, rows, a)
    return lambda x0, rows, a, kind: dots_w16(x0, rows, a, kind)


@overload(gate_up_pair)
def _gate_up_pair(x0, wg, wu, n, kind):
    if wg.dtype == types.float32:
        return lambda x0, wg, wu, n, kind: gate_up2(x0, wg, wu, n)
    return lambda x0, wg, wu, n, kind: gate_up2_w16(x0, wg, wu, n, kind)


@overload(gate_up_last)
def _gate_up_last(x0, wg, wu, n, kind):
    if wg.dtype == types.float32:
        return lambda x0, wg, wu, n, kind: gate_up1(x0, wg, wu, n)
    return lambda x0, wg, wu, n, kind: gate_up1_w16(x0, wg, wu, n, kind)


def weight_rows(w, n0, n1, kind, pow2):
    """Rows n0 .. n1-1 of W as a (n1 - n0, H) float32 block: a view of float32 W, a
    thread-local widened copy of 16-bit W."""
    raise NotImplementedError("called from numba kernels only")


@overload(weight_rows)
def _weight_rows(w, n0, n1, kind, pow2):
    if w.dtype == types.float32:
        return lambda w, n0, n1, kind, pow2: w[n0:n1]

    def widened(w, n0, n1, kind, pow2):
        tile = np.empty((n1 - n0, w.shape[1]), dtype=np.float32)
        widen_rows(w, n0, n1 - n0, kind, pow2, tile)
        return tile
    return widened


@nb.njit(fastmath=True, inline="always")
def swiglu_decode(x0, wg, wu, kind, out, out_kind):
    # decode (one row x0, float32): out[0, n] = silu(x0 . wg[n]) * (x0 . wu[n]) in
    # `out_kind`, gate and up rows streamed side by side, two of each (gate_up2). Inlined
    # into the calling kernel, so that its prange is that kernel's parallel loop.
    N = wg.shape[0]
    for p in nb.prange(N // 2):
        g0, u0, g1, u1 = gate_up_pair(x0, wg, wu, 2 * p, kind)
        put(out, 0, 2 * p, swiglu(g0, u0), out_kind)
        put(out, 0, 2 * p + 1, swiglu(g1, u1), out_kind)
    if N % 2:
        g0, u0 = gate_up_last(x0, wg, wu, N - 1, kind)
        put(out, 0, N - 1, swiglu(g0, u0), out_kind)


@nb.njit(fastmath=True)
def swiglu_rows(x, tg, tu, n0, kind, pow2, out, out_kind):
    # every row of x (storage `kind`, widened two at a time into thread-local buffers)
    # against one block of W_gate / W_up rows tg, tu: (J, H) float32; silu(gate) * up of
    # row m, gate/up row j goes to out[m, n0 + j] in `out_kind` (gemm_swiglu's y in the
    # storage dtype, or swiglu_ffn's float32 activation: out_kind 0)
    M, H = x.shape
    J = tg.shape[0]
    x0 = np.empty(H, dtype=np.float32)
    x1 = np.empty(H, dtype=np.float32)
    g0 = np.empty(J, dtype=np.float32)
    g1 = np.empty(J, dtype=np.float32)
    u0 = np.empty(J, dtype=np.float32)
    u1 = np.empty(J, dtype=np.float32)
    m = 0
    while m + 2 <= M:
        widen(x[m], x0, kind, pow2)
        widen(x[m + 1], x1, kind, pow2)
        dots2(x0, x1, tg, g0, g1)
        dots2(x0, x1, tu, u0, u1)
        for j in range(J):
            put(out, m, n0 + j, swiglu(g0[j], u0[j]), out_kind)
            put(out, m + 1, n0 + j, swiglu(g1[j], u1[j]), out_kind)
        m += 2
    if m < M:
        widen(x[m], x0, kind, pow2)
        dots(x0, tg, g0)
        dots(x0, tu, u0)
        for j in range(J):
            put(out, m, n0 + j, swiglu(g0[j], u0[j]), out_kind)


@nb.njit(fastmath=True)
def swiglu_rows_w16(x, wg, wu, n0, n1, kind, pow2, out, out_kind):
    # swiglu_rows for 16-bit weights: rows n0 .. n1-1 of W_gate and W_up (uint16 bit
    # patterns) are first widened into thread-local float32 blocks
    H = wg.shape[1]
    tg = np.empty((n1 - n0, H), dtype=np.float32)
    tu = np.empty((n1 - n0, H), dtype=np.float32)
    widen_rows(wg, n0, n1 - n0, kind, pow2, tg)
    widen_rows(wu, n0, n1 - n0, kind, pow2, tu)
    swiglu_rows(x, tg, tu, n0, kind, pow2, out, out_kind)


@nb.njit(fastmath=True)
def normalise(x_row, g, s, kind, pow2, out):
    widen(x_row, out, kind, pow2)
    for h in range(out.shape[0]):
        out[h] = out[h] * s * g[h]


@nb.njit(fastmath=True)
def normed_block(x, g, inv_rms, tile, n0, kind, pow2, y):
    # y[m, n0 + j] = (x[m] * inv_rms[m] * g) . tile[j] for every row m of x (storage
    # `kind`), two rows at a time normalised into thread-local buffers; tile: (J, H) float32
    M, H = x.shape
    cols = slice(n0, n0 + tile.shape[0])
    x0 = np.empty(H, dtype=np.float32)
    x1 = np.empty(H, dtype=np.float32)
    for m in range(0, M - 1, 2):
        normalise(x[m], g, inv_rms[m], kind, pow2, x0)
        normalise(x[m + 1], g, inv_rms[m + 1], kind, pow2, x1)
        dots2(x0, x1, tile, y[m, cols], y[m + 1, cols])
    if M % 2:
        normalise(x[M - 1], g, inv_rms[M - 1], kind, pow2, x0)
        dots(x0, tile, y[M - 1, cols])


# ---- attention (impls/attention_prefill, attn_score_softmax) ---------------------------
# A task owns R consecutive query positions i0 … i0+R−1 of all g q heads that read one kv
# head: its g·R query rows (row j·R + r is head kh·g + j at position i0 + r) share every
# key and value row loaded, g·R dot products per K row instead of one.

@nb.njit(fastmath=True)
def causal_task(q, Hkv, task, nblk, rows, scale, kind, pow2):
    # task -> (b, kh, i0, R, qs): its sequence, kv head, first query position (its block
    # of `rows`, in balanced_block order) and number of positions, and its g·R query rows
    # (group_queries)
    S, d = q.shape[2], q.shape[3]
    g = q.shape[1] // Hkv
    bk = task // nblk
    b, kh = bk // Hkv, bk % Hkv
    i0 = balanced_block(task % nblk, nblk) * rows
    R = min(S, i0 + rows) - i0
    qs = np.empty((g * R, d), dtype=np.float32)
    group_queries(q, b, kh, g, i0, R, scale, kind, pow2, qs)
    return b, kh, i0, R, qs


@nb.njit(fastmath=True)
def group_queries(q, b, kh, g, i0, R, scale, kind, pow2, qs):
    # q: (B, Hq, S, d) -> qs[j·R + r] = scale · q[b, kh·g + j, i0 + r] in float32
    d = qs.shape[1]
    for j in range(g):
        for r in range(R):
            row = qs[j * R + r]
            widen(q[b, kh * g + j, i0 + r], row, kind, pow2)
            for h in range(d):
                row[h] *= scale


@nb.njit(fastmath=True)
def widen_rows(src, j0, n, kind, pow2, dst):
    # dst[jj] = src[j0 + jj] as float32, jj < n (src: (S, d) stored, dst: (≥ n, d))
    for jj in range(n):
        widen(src[j0 + jj], dst[jj], kind, pow2)


@nb.njit(fastmath=True)
def causal_logits(qs, R, i0, kb, j0, n, sct):
    # sct[jj, row] = qs[row] · kb[jj] for key j0 + jj (keys along the first axis, so that
    # each K row feeds all the task's rows: head_dots); −inf where the key is in the row's
    # future (j0 + jj > i0 + r, r = row mod R)
    for jj in range(n):
        head_dots(qs, kb[jj], sct[jj])
        key = j0 + jj
        if key > i0:
            for row in range(qs.shape[0]):
                if key > i0 + row % R:
                    sct[jj, row] = -np.inf


@nb.njit
def balanced_block(t, n):
    # task t of n causal row blocks -> block 0, n−1, 1, n−2, …: numba hands each thread a
    # contiguous run of tasks, and this order gives every run as many cheap early blocks
    # as expensive late ones
    half = t // 2
    return half if t % 2 == 0 else n - 1 - half


@nb.njit(fastmath=True)
def head_dots(qs, row, out):
    # out[j] = qs[j] · row for the g query heads of a group; four heads per pass, so each
    # element of the cache row feeds four sums (four vector accumulators over d)
    g, d = qs.shape
    j = 0
    while j + 4 <= g:
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for h in range(d):
            w = row[h]
            s0 += qs[j, h] * w
            s1 += qs[j + 1, h] * w
            s2 += qs[j + 2, h] * w
            s3 += qs[j + 3, h] * w
        out[j], out[j + 1], out[j + 2], out[j + 3] = s0, s1, s2, s3
        j += 4
    while j < g:
        s0 = np.float32(0.0)
        for h in range(d):
            s0 += qs[j, h] * row[h]
        out[j] = s0
        j += 1


@nb.njit(fastmath=True)
def head_axpy(p, row, acc):
    # acc[j] += p[j] · row for the g heads of a group, four heads per pass over the row
    g, d = acc.shape
    j = 0
    while j + 4 <= g:
        p0, p1, p2, p3 = p[j], p[j + 1], p[j + 2], p[j + 3]
        for h in range(d):
            w = row[h]
            acc[j, h] += p0 * w
            acc[j + 1, h] += p1 * w
            acc[j + 2, h] += p2 * w
            acc[j + 3, h] += p3 * w
        j += 4
    while j < g:
        p0 = p[j]
        for h in range(d):
            acc[j, h] += p0 * row[h]
        j += 1
