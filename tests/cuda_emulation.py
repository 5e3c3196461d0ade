"""NumPy emulations of the CUDA kernels' indexing, shared by the tests of every fused CUDA
kernel (tests/test_cuda_sources.py: the block fusions; tests/test_cuda_attention.py: the
attention fusions).

Each emulation is a line-by-line transcription of a .cu file's loops in Python, one thread
(or, for the attention kernels, one vector of threads) at a time between barriers. Every
global load checks its bounds (and, for 16-byte loads, its alignment); shared memory starts
each phase as NaN so that reading a slot not written in that phase shows; every output
element must be written exactly once. The launch plans emulated are the ones the kernels'
prepare() launches (each impls/<fusion>/cuda.py's launch_plan), and the constants are read
from the sources' #defines. The emulations compute in float64 and must match the float64
reference.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np

from harness import cuda_compile as cc

REPO = Path(__file__).resolve().parent.parent
FUSIONS = ("rmsnorm_gemm", "add_rmsnorm", "rmsnorm_qkv_rope", "gemm_swiglu", "swiglu_ffn",
           "attn_score_softmax", "attention_prefill", "decode_attention")
CU = {f: REPO / "impls" / f / f"{f}.cu" for f in FUSIONS}
NEG_INF = -np.inf


# ---- the kernels' modules, #defines and references ----------------------------------------------
def impl_module(fusion: str):
    """impls.<fusion>.cuda, imported through discovery (its register() needs it)."""
    from harness.registry import discover

    discover(entry_points=False)
    return sys.modules[f"impls.{fusion}.cuda"]


def defines(path: Path) -> dict[str, int]:
    """The FB_* #defines of a .cu file (fragments spliced in), as integers."""
    out = {}
    for name, val in re.findall(r"^#define\s+(FB_\w+)\s+(\d+)\b", cc.cuda_source(path), re.M):
        out[name] = int(val)
    return out


def reference(fusion, inputs, attrs):
    """The fusion's decomposition in float64: what every emulation must match."""
    from harness.ops import NumpyOps

    pkg = importlib.import_module(f"impls.{fusion}")
    return pkg.SPEC.decompose(NumpyOps("float64"), **inputs, **attrs)


def inputs_and_attrs(fusion, dims, dtype, seed, value_shape="normal"):
    """The spec's inputs for `dims` (a case's parameters) and its attributes."""
    spec = importlib.import_module(f"impls.{fusion}").SPEC
    dims_, attrs = spec.split(dims)
    return spec.make_inputs(dims_, dtype, seed, value_shape), attrs


def close(got, want):
    """An emulated output against the reference, to float64 rounding."""
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-9,
                               atol=1e-9 * max(1.0, float(np.abs(want).max())))


def check_written_once(**outs):
    for name, o in outs.items():
        assert (o.writes == 1).all(), f"{name}: {(o.writes != 1).sum()} elements written 0 or 2+ times"


def capped(grid, cap):
    return (grid[0], min(grid[1], cap)) if cap and len(grid) == 2 else grid


# ---- global memory of the block fusions: one element (or one 16-byte vector) at a time ---------
class Mem:
    """A global buffer of one storage dtype (float32 values or 16-bit patterns)."""

    def __init__(self, a: np.ndarray, dtype: str):
        self.dtype = dtype
        self.raw = a.ravel().view(np.uint16) if dtype != "float32" else a.ravel().astype(np.float32)
        self.vec = 4 if dtype == "float32" else 8

    def _cvt(self, bits: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return bits.astype(np.float64)
        if self.dtype == "float16":
            return bits.astype(np.uint16).view(np.float16).astype(np.float64)
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    def load(self, i: int) -> float:
        assert 0 <= i < self.raw.size, f"out-of-bounds load {i} of {self.raw.size}"
        return float(self._cvt(self.raw[i:i + 1])[0])

    def vload(self, off: int) -> np.ndarray:
        """A 16-byte load at element offset off, unpacked as the kernel's traits do."""
        assert off % self.vec == 0, f"misaligned 16-byte load at element {off}"
        assert 0 <= off and off + self.vec <= self.raw.size, f"out-of-bounds vector load at {off}"
        chunk = self.raw[off:off + self.vec]
        if self.dtype == "float32":
            return chunk.astype(np.float64)
        words = np.ascontiguousarray(chunk).view(np.uint32)  # 4 words, element 0 in the low half
        if self.dtype == "float16":
            halves = np.empty(8, dtype=np.uint16)
            halves[0::2] = words & 0xFFFF
            halves[1::2] = words >> 16
            return halves.view(np.float16).astype(np.float64)
        out = np.empty(8, dtype=np.uint32)
        out[0::2] = words << 16
        out[1::2] = words & 0xFFFF0000
        return out.view(np.float32).astype(np.float64)


class Out:
    def __init__(self, size: int):
        self.v = np.full(size, np.nan)
        self.writes = np.zeros(size, dtype=np.int64)

    def store(self, i: int, v: float):
        assert 0 <= i < self.v.size, f"out-of-bounds store {i} of {self.v.size}"
        self.v[i] = v
        self.writes[i] += 1


class VOut(Out):
    """An output that also takes 16-byte vector stores."""

    def vstore(self, off: int, vals: np.ndarray, vec: int):
        assert off % vec == 0, f"misaligned 16-byte store at element {off}"
        for e, v in enumerate(vals):
            self.store(off + e, v)


def scratch_mem(out: Out) -> Mem:
    """A float32 device scratch written by an emulated kernel, read by the next (values kept
    in float64 so that the emulation checks indexing, not float32 rounding)."""
    assert (out.writes == 1).all(), "scratch element written 0 or 2+ times"
    m = Mem.__new__(Mem)
    m.dtype, m.raw, m.vec = "float32", out.v.copy(), 4
    return m


# ---- rmsnorm_gemm ---------------------------------------------------------------------------
# The transcription of rmsnorm_gemm.cu's GEMV (decode) and of the row statistics (prefill pass 1,
# harness/kernels/fb_rms_input.cuh, also rmsnorm_qkv_rope's); its tiled GEMM (prefill pass 2) is
# the pair core's, emulated below (emulate_pair_tiled over NormA and RowPairs).
D = defines(CU["rmsnorm_gemm"])


def emulate_gemv(x, g, w, y, M, H, N, eps, vec, grid):
    THREADS, ROWS, CHUNK = D["FB_GEMV_THREADS"], D["FB_GEMV_ROWS"], D["FB_GEMV_CHUNK"]
    WARPS, VEC = THREADS // 32, x.vec
    for bx in range(grid[0]):
        for by in range(grid[1]):
            m = by
            while m < M:
                ss = 0.0
                for tid in range(THREADS):
                    for h in range(tid, H, THREADS):
                        v = x.load(m * H + h)
                        ss += v * v
                s = 1.0 / np.sqrt(ss / H + eps)
                acc = np.zeros((WARPS, 32, ROWS))
                c0 = 0
                while c0 < H:
                    L = min(CHUNK, H - c0)
                    assert 1 <= L <= CHUNK
                    xs = np.full(CHUNK, np.nan)
                    for tid in range(THREADS):
                        for i in range(tid, L, THREADS):
                            xs[i] = x.load(m * H + c0 + i) * s * g.load(c0 + i)
                    for warp in range(WARPS):
                        n_base = bx * WARPS * ROWS + warp * ROWS
                        for lane in range(32):
                            if vec:
                                assert L % VEC == 0
                                for j in range(lane, L // VEC, 32):
                                    xv = xs[j * VEC:(j + 1) * VEC]
                                    assert not np.isnan(xv).any(), "read of unwritten shared memory"
                                    for r in range(ROWS):
                                        n = n_base + r
                                        if n < N:
                                            acc[warp, lane, r] += w.vload(n * H + c0 + j * VEC) @ xv
                            else:
                                for j in range(lane, L, 32):
                                    assert not np.isnan(xs[j])
                                    for r in range(ROWS):
                                        n = n_base + r
                                        if n < N:
                                            acc[warp, lane, r] += w.load(n * H + c0 + j) * xs[j]
                    c0 += CHUNK
                for warp in range(WARPS):
                    n_base = bx * WARPS * ROWS + warp * ROWS
                    for r in range(ROWS):
                        a = acc[warp, :, r].sum()  # shuffle reduction: every lane's share
                        if n_base + r < N:
                            y.store(m * N + n_base + r, a)
                m += grid[1]


def emulate_rms(x, inv, M, H, eps, grid):
    THREADS = D["FB_RMS_THREADS"]
    for bx in range(grid[0]):
        for tid in range(0, THREADS, 32):  # lane 0 of each warp; the warp sums all lanes
            m = bx * (THREADS // 32) + (tid >> 5)
            if m >= M:
                continue
            ss = 0.0
            for lane in range(32):
                for h in range(lane, H, 32):
                    v = x.load(m * H + h)
                    ss += v * v
            inv.store(m, 1.0 / np.sqrt(ss / H + eps))


def emulate_rmsnorm_gemm(inputs, dtype, eps, grid_y_cap=None, aligned=True):
    """Run the launch plan of impls/rmsnorm_gemm/cuda.py through the emulated kernels."""
    mod = impl_module("rmsnorm_gemm")
    M, H = inputs["x"].shape
    N = inputs["w"].shape[0]
    chosen = mod.launch_plan(M, H, N, dtype, aligned)
    vec, plan = chosen.switches["vec"], chosen.launches
    x, g, w = (Mem(inputs[k], dtype) for k in ("x", "gamma", "w"))
    y = Out(M * N)
    for name, grid, block, smem, _ in plan:
        assert smem == 0
        if grid_y_cap and len(grid) == 2:
            grid = (grid[0], min(grid[1], grid_y_cap))
        if "_gemv_" in name:
            emulate_gemv(x, g, w, y, M, H, N, eps, vec, grid)
        elif "_rms_" in name:
            inv = Out(M)
            emulate_rms(x, inv, M, H, eps, grid)
            assert (inv.writes == 1).all()
        else:
            emulate_pair_tiled(D, NormA(x, g, inv, H), RowPairs(w, y, H, N), M, H, -(-N // 2), vec, x.vec, grid)
    return y, vec, plan


def bf16_round_like_kernel(f: np.ndarray) -> np.ndarray:
    """fb_f32_to_bf16 from the sources, in NumPy."""
    u = np.asarray(f, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    q = ((u >> 16) & 0x8000) | 0x7FC0
    return np.where(nan, q, r).astype(np.uint16)


# ==== the fusions written on the shared pair-GEMV / pair-tiled core ============================
# add_rmsnorm, rmsnorm_qkv_rope, gemm_swiglu, swiglu_ffn. Their .cu files share one prelude
# (traits, reductions) and one GEMM core: fb_pair_gemv (decode: one warp per pair of W rows)
# and fb_pair_tiled (prefill: 64 rows x 32 pairs per block, tile column c = W row c & 1 of
# pair c / 2), specialised by operand functors (where the input row comes from) and pair
# functors (which W rows make a pair, and the epilogue that combines the two accumulators).
# The emulation below transcribes the core and every functor, one thread at a time.

# ---- operand functors (FbNormRow, FbPlainRow, FbNormA, FbPlainA) -----------------------------
class NormRow:
    def __init__(self, x, g, H, eps):
        self.x, self.g, self.H, self.eps = x, g, H, eps

    def scale(self, m, threads):
        ss = 0.0
        for tid in range(threads):
            for h in range(tid, self.H, threads):
                v = self.x.load(m * self.H + h)
                ss += v * v
        return 1.0 / np.sqrt(ss / self.H + self.eps)

    def fill(self, xs, m, c0, L, s, threads):
        for tid in range(threads):
            for i in range(tid, L, threads):
                xs[i] = self.x.load(m * self.H + c0 + i) * s * self.g.load(c0 + i)


class PlainRow:
    def __init__(self, x, K):
        self.x, self.K = x, K

    def scale(self, m, threads):
        return 1.0

    def fill(self, xs, m, c0, L, s, threads):
        for tid in range(threads):
            for i in range(tid, L, threads):
                xs[i] = self.x.load(m * self.K + c0 + i)


class NormA:
    def __init__(self, x, g, inv, H):
        self.x, self.g, self.inv, self.H = x, g, inv, H

    def load(self, gm, gk):
        return self.x.load(gm * self.H + gk) * self.inv.v[gm] * self.g.load(gk)

    def load_vec(self, gm, gk, n):
        assert n == self.x.vec
        return self.x.vload(gm * self.H + gk) * self.inv.v[gm] * np.array([self.g.load(gk + e) for e in range(n)])


class PlainA:
    def __init__(self, x, K):
        self.x, self.K = x, K

    def load(self, gm, gk):
        return self.x.load(gm * self.K + gk)

    def load_vec(self, gm, gk, n):  # n / x.vec 16-byte loads
        assert n % self.x.vec == 0
        return np.concatenate([self.x.vload(gm * self.K + gk + q * self.x.vec) for q in range(n // self.x.vec)])


# ---- pair functors (FbQkvPairs, FbSwigluPairs, FbRowPairs) -----------------------------------
def rope_cs(pos, i, d, theta):
    a = float(pos) * float(theta) ** (-(i * 2.0) / d)
    return np.cos(a), np.sin(a)


class QkvPairs:
    def __init__(self, w, pos, q, k, v, H, nh, nkv, d, theta):
        self.w, self.pos, self.q, self.k, self.v = w, pos, q, k, v
        self.H, self.nh, self.nkv, self.d, self.theta = H, nh, nkv, d, theta

    def row(self, p, which):
        half = self.d >> 1
        head, i = p // half, p % half
        return self.w, (head * self.d + i + which * half) * self.H

    def store(self, m, p, a0, a1):
        half = self.d >> 1
        head, i = p // half, p % half
        nh, nkv = self.nh, self.nkv
        if head < nh:
            out, hh, heads = self.q, head, nh
        elif head < nh + nkv:
            out, hh, heads = self.k, head - nh, nkv
        else:
            out, hh, heads = self.v, head - nh - nkv, nkv
        if head < nh + nkv:
            c, s = rope_cs(self.pos[m], i, self.d, self.theta)
            a0, a1 = a0 * c - a1 * s, a1 * c + a0 * s
        o = (m * heads + hh) * self.d + i
        out.store(o, a0)
        out.store(o + half, a1)


class SwigluPairs:
    def __init__(self, wg, wu, y, H, I):
        self.wg, self.wu, self.y, self.H, self.I = wg, wu, y, H, I

    def row(self, p, which):
        return (self.wu if which else self.wg), p * self.H

    def store(self, m, p, g, u):
        self.y.store(m * self.I + p, g / (1.0 + np.exp(-g)) * u)


class RowPairs:
    def __init__(self, w, y, K, N):
        self.w, self.y, self.K, self.N = w, y, K, N

    def row(self, p, which):
        return self.w, min(2 * p + which, self.N - 1) * self.K

    def store(self, m, p, a0, a1):
        n = 2 * p
        self.y.store(m * self.N + n, a0)
        if n + 1 < self.N:
            self.y.store(m * self.N + n + 1, a1)


# ---- the core: fb_pair_gemv and fb_pair_tiled ------------------------------------------------
def emulate_pair_gemv(d, xsrc, pr, M, K, npairs, vec, VEC, grid):
    THREADS, CHUNK, PPB = d["FB_GEMV_THREADS"], d["FB_GEMV_CHUNK"], d["FB_GEMV_PAIRS_PER_BLOCK"]
    WARPS = THREADS // 32
    assert PPB == WARPS
    for bx in range(grid[0]):
        for by in range(grid[1]):
            m = by
            while m < M:
                s = xsrc.scale(m, THREADS)
                acc = np.zeros((WARPS, 32, 2))
                c0 = 0
                while c0 < K:
                    L = min(CHUNK, K - c0)
                    assert 1 <= L <= CHUNK
                    xs = np.full(CHUNK, np.nan)
                    xsrc.fill(xs, m, c0, L, s, THREADS)
                    for warp in range(WARPS):
                        p = bx * PPB + warp
                        if p >= npairs:
                            continue
                        (m0, o0), (m1, o1) = pr.row(p, 0), pr.row(p, 1)
                        for lane in range(32):
                            if vec:
                                assert L % VEC == 0
                                for j in range(lane, L // VEC, 32):
                                    xv = xs[j * VEC:(j + 1) * VEC]
                                    assert not np.isnan(xv).any(), "read of unwritten shared memory"
                                    acc[warp, lane, 0] += m0.vload(o0 + c0 + j * VEC) @ xv
                                    acc[warp, lane, 1] += m1.vload(o1 + c0 + j * VEC) @ xv
                            else:
                                for j in range(lane, L, 32):
                                    assert not np.isnan(xs[j])
                                    acc[warp, lane, 0] += m0.load(o0 + c0 + j) * xs[j]
                                    acc[warp, lane, 1] += m1.load(o1 + c0 + j) * xs[j]
                    c0 += CHUNK
                for warp in range(WARPS):
                    p = bx * PPB + warp
                    if p < npairs:
                        pr.store(m, p, acc[warp, :, 0].sum(), acc[warp, :, 1].sum())
                m += grid[1]


def emulate_pair_tiled(d, asrc, pr, M, K, npairs, vec, VEC, grid):
    TM, TP, TK, PAD, THREADS = d["FB_TM"], d["FB_TP"], d["FB_TK"], d["FB_TPAD"], d["FB_TILED_THREADS"]
    assert TM == 2 * TP == 64 and THREADS == 256
    KV = TK // VEC
    for bx in range(grid[0]):
        p0 = bx * TP
        for by in range(grid[1]):
            mt = by
            while mt * TM < M:
                m0 = mt * TM
                acc = np.zeros((THREADS, 4, 4))
                k0 = 0
                while k0 < K:
                    As = np.full((TK, TM + PAD), np.nan)
                    Ws = np.full((TK, 2 * TP + PAD), np.nan)
                    wa = np.zeros((TK, TM), dtype=int)
                    ww = np.zeros((TK, 2 * TP), dtype=int)
                    for tid in range(THREADS):
                        if vec:
                            for v in range(tid, TM * KV, THREADS):
                                r, kk = v // KV, (v % KV) * VEC
                                gk, gm, gp = k0 + kk, m0 + r, p0 + (r >> 1)
                                As[kk:kk + VEC, r] = asrc.load_vec(gm, gk, VEC) if (gm < M and gk < K) else 0.0
                                wa[kk:kk + VEC, r] += 1
                                if gp < npairs and gk < K:
                                    mem, off = pr.row(gp, r & 1)
                                    Ws[kk:kk + VEC, r] = mem.vload(off + gk)
                                else:
                                    Ws[kk:kk + VEC, r] = 0.0
                                ww[kk:kk + VEC, r] += 1
                        else:
                            for e in range(tid, TM * TK, THREADS):
                                r, kk = e // TK, e % TK
                                gk, gm, gp = k0 + kk, m0 + r, p0 + (r >> 1)
                                As[kk, r] = asrc.load(gm, gk) if gm < M and gk < K else 0.0
                                if gp < npairs and gk < K:
                                    mem, off = pr.row(gp, r & 1)
                                    Ws[kk, r] = mem.load(off + gk)
                                else:
                                    Ws[kk, r] = 0.0
                                wa[kk, r] += 1
                                ww[kk, r] += 1
                    assert (wa == 1).all() and (ww == 1).all(), "shared tile slot written 0 or 2+ times"
                    for tid in range(THREADS):
                        tx, ty = tid & 15, tid >> 4
                        a, b = As[:, ty * 4:ty * 4 + 4], Ws[:, tx * 4:tx * 4 + 4]
                        assert not (np.isnan(a).any() or np.isnan(b).any())
                        acc[tid] += a.T @ b
                    k0 += TK
                for tid in range(THREADS):
                    tx, ty = tid & 15, tid >> 4
                    for i in range(4):
                        gm = m0 + ty * 4 + i
                        if gm < M:
                            for jp in range(2):
                                gp = p0 + tx * 2 + jp
                                if gp < npairs:
                                    pr.store(gm, gp, acc[tid, i, 2 * jp], acc[tid, i, 2 * jp + 1])
                mt += grid[1]


# ---- rmsnorm_qkv_rope -----------------------------------------------------------------------
def emulate_qkv(inputs, dtype, attrs, cap=None, aligned=True):
    mod = impl_module("rmsnorm_qkv_rope")
    d = defines(CU["rmsnorm_qkv_rope"])
    nh, nkv, hd = attrs["n_heads"], attrs["n_kv_heads"], attrs["head_dim"]
    M, H = inputs["x"].shape
    chosen = mod.launch_plan(M, H, nh, nkv, hd, dtype, aligned)
    vec, plan = chosen.switches["vec"], chosen.launches
    x, g, w = (Mem(inputs[k], dtype) for k in ("x", "gamma", "w"))
    pos = np.asarray(inputs["pos"], dtype=np.int32)
    q, k, v = Out(M * nh * hd), Out(M * nkv * hd), Out(M * nkv * hd)
    pr = QkvPairs(w, pos, q, k, v, H, nh, nkv, hd, attrs["theta"])
    P = (nh + 2 * nkv) * (hd // 2)
    inv = None
    for name, grid, block, smem, _ in plan:
        assert smem == 0
        grid = capped(grid, cap)
        if "_gemv_" in name:
            emulate_pair_gemv(d, NormRow(x, g, H, attrs["eps"]), pr, M, H, P, vec, x.vec, grid)
        elif "_rms_" in name:
            inv = Out(M)
            emulate_rms(x, inv, M, H, attrs["eps"], grid)
            assert (inv.writes == 1).all()
        else:
            emulate_pair_tiled(d, NormA(x, g, inv, H), pr, M, H, P, vec, x.vec, grid)
    return {"q": q, "k": k, "v": v}, vec, plan


# ---- gemm_swiglu ----------------------------------------------------------------------------
def emulate_gemm_swiglu(inputs, dtype, cap=None, aligned=True):
    mod = impl_module("gemm_swiglu")
    d = defines(CU["gemm_swiglu"])
    M, H = inputs["x"].shape
    I = inputs["w_gate"].shape[0]
    chosen = mod.launch_plan(M, H, I, dtype, aligned)
    vec, plan = chosen.switches["vec"], chosen.launches
    x, wg, wu = (Mem(inputs[k], dtype) for k in ("x", "w_gate", "w_up"))
    y = Out(M * I)
    (name, grid, _, _, _), = plan
    grid = capped(grid, cap)
    pr = SwigluPairs(wg, wu, y, H, I)
    if "_gemv_" in name:
        emulate_pair_gemv(d, PlainRow(x, H), pr, M, H, I, vec, x.vec, grid)
    else:
        emulate_pair_tiled(d, PlainA(x, H), pr, M, H, I, vec, x.vec, grid)
    return y, vec, plan


# ---- swiglu_ffn -----------------------------------------------------------------------------
def emulate_onchip(d, x, wg, wu, wd, act, y, H, I, G):
    """swiglu_ffn_onchip, one thread at a time between barriers. `act` records the entries
    phase 1 computes (each exactly once over all blocks: in the kernel they live only in
    shared memory); every block must add to every row of the accumulator exactly once, and
    the last block alone writes y."""
    THREADS, UNIT, MAX_UNITS, ROWS = (d[k] for k in ("FB_ONCHIP_THREADS", "FB_ONCHIP_UNIT", "FB_ONCHIP_MAX_UNITS",
                                                     "FB_ONCHIP_ROWS"))
    WARPS, VEC = THREADS // 32, x.vec
    LPR = 16 if VEC == 8 else 32
    RPW = 32 // LPR
    assert H <= d["FB_ONCHIP_MAX_H"] and H % VEC == 0 and I % VEC == 0
    acc = np.zeros(H)
    adds = np.zeros((G, H), dtype=np.int64)
    U = -(-I // UNIT)
    for b in range(G):
        u0, u1 = b * U // G, (b + 1) * U // G
        i0 = u0 * UNIT
        n = min(u1 * UNIT, I) - i0
        assert 1 <= n <= UNIT * MAX_UNITS and n % VEC == 0, (b, n)
        xs = np.full(d["FB_ONCHIP_MAX_H"], np.nan)
        for tid in range(THREADS):
            for h in range(tid, H, THREADS):
                xs[h] = x.load(h)
        act_s = np.full(UNIT * MAX_UNITS, np.nan)
        for warp in range(WARPS):
            for j in range(warp, n, WARPS):
                g = u = 0.0
                for lane in range(32):
                    for jv in range(lane, H // VEC, 32):
                        xv = xs[jv * VEC:(jv + 1) * VEC]
                        assert not np.isnan(xv).any(), "read of unwritten shared memory"
                        g += wg.vload((i0 + j) * H + jv * VEC) @ xv
                        u += wu.vload((i0 + j) * H + jv * VEC) @ xv
                act_s[j] = g / (1.0 + np.exp(-g)) * u
                act.store(i0 + j, act_s[j])
        for warp in range(WARPS):
            hb = warp * RPW * ROWS
            while hb < H:
                for r in range(ROWS):
                    part = {}
                    for lane in range(32):
                        sub, grp = lane % LPR, lane // LPR
                        h = hb + r * RPW + grp
                        if sub < n // VEC and h < H:
                            a = act_s[sub * VEC:(sub + 1) * VEC]
                            assert not np.isnan(a).any(), "read of unwritten shared memory"
                            part[grp] = part.get(grp, 0.0) + wd.vload(h * I + i0 + sub * VEC) @ a
                    for grp in range(RPW):
                        h = hb + r * RPW + grp
                        if h < H:
                            acc[h] += part.get(grp, 0.0)
                            adds[b, h] += 1
                hb += WARPS * RPW * ROWS
    assert (adds == 1).all(), "an accumulator row added 0 or 2+ times by one block"
    for tid in range(THREADS):  # the last block's rounding pass
        for h in range(tid, H, THREADS):
            y.store(h, acc[h])


def emulate_swiglu_ffn(inputs, dtype, cap=None, aligned=True, sms=132):
    from dataclasses import replace

    from harness.cuda_launch import H200

    mod = impl_module("swiglu_ffn")
    d = defines(CU["swiglu_ffn"])
    M, H = inputs["x"].shape
    I = inputs["w_gate"].shape[0]
    chosen = mod.launch_plan(M, H, I, dtype, aligned, replace(H200, sm_count=sms))
    (vec_up, vec_down), plan = (chosen.switches["vec_up"], chosen.switches["vec_down"]), chosen.launches
    x, wg, wu, wd = (Mem(inputs[k], dtype) for k in ("x", "w_gate", "w_up", "w_down"))
    act, y = Out(M * I), Out(M * H)
    if len(plan) == 1:
        (name, grid, block, _, _), = plan
        assert "_onchip_" in name and block == (d["FB_ONCHIP_THREADS"],)
        emulate_onchip(d, x, wg, wu, wd, act, y, H, I, grid[0])
        return act, y, (vec_up, vec_down), plan
    (up, g_up, *_), (down, g_down, *_) = plan
    pr_up = SwigluPairs(wg, wu, act, H, I)
    if "_gemv_" in up:
        emulate_pair_gemv(d, PlainRow(x, H), pr_up, M, H, I, vec_up, x.vec, capped(g_up, cap))
    else:
        emulate_pair_tiled(d, PlainA(x, H), pr_up, M, H, I, vec_up, x.vec, capped(g_up, cap))
    a = scratch_mem(act)
    pr_down = RowPairs(wd, y, I, H)
    if "_gemv_" in down:
        emulate_pair_gemv(d, PlainRow(a, I), pr_down, M, I, (H + 1) // 2, vec_down, wd.vec, capped(g_down, cap))
    else:
        emulate_pair_tiled(d, PlainA(a, I), pr_down, M, I, (H + 1) // 2, vec_down, wd.vec, capped(g_down, cap))
    return act, y, (vec_up, vec_down), plan


# ---- add_rmsnorm ----------------------------------------------------------------------------
def emulate_add_rmsnorm(inputs, dtype, eps, cap=None, aligned=True, limits=None):
    from harness.cuda_launch import H200, check

    limits = limits or H200
    mod = impl_module("add_rmsnorm")
    d = defines(CU["add_rmsnorm"])
    THREADS = d["FB_ADD_THREADS"]
    M, H = inputs["x"].shape
    chosen = mod.launch_plan(M, H, dtype, aligned, limits)
    check(chosen, limits)
    vec, cache = chosen.switches["vec"], chosen.switches["cache"]
    (name, grid, block, smem, _), = chosen.launches
    if cap:
        grid = (min(grid[0], cap),)
    x, r, g = (Mem(inputs[k], dtype) for k in ("x", "residual", "gamma"))
    VEC = x.vec
    h, y = VOut(M * H), VOut(M * H)
    assert smem == (4 * H if cache else 0)
    for bx in range(grid[0]):
        hs = np.full(smem // 4, np.nan)
        owner = np.full(smem // 4, -1)

        def hs_write(slot, tid, val):
            assert 0 <= slot < hs.size, f"shared slot {slot} beyond the dynamic allocation"
            hs[slot], owner[slot] = val, tid

        def hs_read(slot, tid):
            assert 0 <= slot < hs.size and owner[slot] == tid, "shared slot read by another thread"
            return hs[slot]

        m = bx
        while m < M:
            base = m * H
            ss = 0.0
            if vec:
                nv = H // VEC
                keep = {}
                for tid in range(THREADS):
                    for j in range(tid, nv, THREADS):
                        a = x.vload(base + j * VEC) + r.vload(base + j * VEC)
                        ss += float(a @ a)
                        h.vstore(base + j * VEC, a, VEC)
                        if cache:
                            for e in range(VEC):
                                hs_write(e * nv + j, tid, a[e])
                s = 1.0 / np.sqrt(ss / H + eps)
                for tid in range(THREADS):
                    for j in range(tid, nv, THREADS):
                        if cache:
                            a = np.array([hs_read(e * nv + j, tid) for e in range(VEC)])
                        else:
                            a = x.vload(base + j * VEC) + r.vload(base + j * VEC)
                        y.vstore(base + j * VEC, a * s * g.vload(j * VEC), VEC)
            else:
                for tid in range(THREADS):
                    for k in range(tid, H, THREADS):
                        a = x.load(base + k) + r.load(base + k)
                        ss += a * a
                        h.store(base + k, a)
                        if cache:
                            hs_write(k, tid, a)
                s = 1.0 / np.sqrt(ss / H + eps)
                for tid in range(THREADS):
                    for k in range(tid, H, THREADS):
                        a = hs_read(k, tid) if cache else x.load(base + k) + r.load(base + k)
                        y.store(base + k, a * s * g.load(k))
            m += grid[0]
    return h, y, vec, cache


def small_shared_device():
    """H200's limits with 192 bytes of shared memory per block: add_rmsnorm caches rows up to
    H = 40 there, so the recompute path can be emulated on small rows."""
    from dataclasses import replace

    from harness.cuda_launch import H200

    return replace(H200, name="a device with 192 bytes of shared memory a block", shared_per_block=192,
                   shared_per_block_optin=192)


# ==== the attention fusions: attn_score_softmax, attention_prefill, decode_attention ==========
# Loads are vectorised over the threads of a block (NumPy index arrays), each element's loads
# counted: the causal tiles above the diagonal are never loaded, the KV cache never read at
# positions >= lens[b] and read exactly once below, and the split-K partials combined.
class In:
    """A global input buffer of one storage dtype: values as float64, every load bounds-checked
    (16-byte loads: aligned too) and counted per element."""

    def __init__(self, a: np.ndarray, dtype: str):
        self.v = np.asarray(a).astype(np.float64).ravel()
        self.reads = np.zeros(self.v.size, dtype=np.int64)
        self.vec = 4 if dtype == "float32" else 8

    def load(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        assert ((idx >= 0) & (idx < self.v.size)).all(), f"out-of-bounds load of {self.v.size} elements"
        np.add.at(self.reads, idx.ravel(), 1)
        return self.v[idx]

    def vload(self, off) -> np.ndarray:
        """16-byte loads at element offsets off (any shape) -> off.shape + (vec,)."""
        off = np.asarray(off, dtype=np.int64)
        assert (off % self.vec == 0).all(), "misaligned 16-byte load"
        return self.load(off[..., None] + np.arange(self.vec))


class Dst:
    """An output buffer: each element's value and its number of writes."""

    def __init__(self, size: int):
        self.v = np.full(size, np.nan)
        self.writes = np.zeros(size, dtype=np.int64)

    def store(self, idx, vals):
        idx = np.asarray(idx, dtype=np.int64)
        assert ((idx >= 0) & (idx < self.v.size)).all(), f"out-of-bounds store of {self.v.size} elements"
        np.add.at(self.writes, idx.ravel(), 1)
        self.v[idx] = vals

    def once(self, name: str):
        bad = int((self.writes != 1).sum())
        assert bad == 0, f"{name}: {bad} elements written 0 or 2+ times"


def exp_from(a, mx):
    """fb_exp_from: e^(a - mx), 0 where a = -inf."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(a == NEG_INF, 0.0, np.exp(np.where(a == NEG_INF, 0.0, a - mx)))


def strided(tid: np.ndarray, n: int, threads: int) -> np.ndarray:
    """Every index the loop `for (e = tid; e < n; e += threads)` visits, over all threads."""
    e = (tid[None, :] + threads * np.arange(-(-n // threads))[:, None]).ravel()
    return e[e < n]


def butterfly(x: np.ndarray, lanes: int, op, start: int = 1, stop: int | None = None) -> np.ndarray:
    """__shfl_xor_sync over the last axis (lanes), offsets start, 2·start, … < stop."""
    stop = stop or lanes
    off = start
    while off < stop:
        x = op(x, x[..., np.arange(lanes) ^ off])
        off <<= 1
    return x


# ---- the logit tile shared by attn_score_softmax and attention_prefill -------------------------
class Tiles:
    """fb_logit_tile of a .cu file: 64x64 logits, q and k staged 16 dims at a time."""

    def __init__(self, defs: dict, prefix: str):
        self.THREADS, self.BM, self.TK, self.PAD = (defs[f"{prefix}_{n}"] for n in ("THREADS", "BM", "TK", "PAD"))
        self.tid = np.arange(self.THREADS)

    def logits(self, q: In, k: In, qoff, koff, S, d, q0, k0, scale) -> np.ndarray:
        BM, TK, PAD = self.BM, self.TK, self.PAD
        acc = np.zeros((BM, BM))
        for d0 in range(0, d, TK):
            Qs, Ks = np.full((TK, BM + PAD), np.nan), np.full((TK, BM + PAD), np.nan)
            wq, wk = np.zeros((TK, BM + PAD), int), np.zeros((TK, BM + PAD), int)
            e = strided(self.tid, BM * TK, self.THREADS)
            r, kk = e // TK, e % TK
            gd = d0 + kk
            for tile, written, mem, off, r0 in ((Qs, wq, q, qoff, q0), (Ks, wk, k, koff, k0)):
                ok = (r0 + r < S) & (gd < d)
                tile[kk, r] = 0.0
                tile[kk[ok], r[ok]] = mem.load(off + (r0 + r[ok]) * d + gd[ok])
                np.add.at(written, (kk, r), 1)
            for written in (wq, wk):
                assert (written[:, :BM] == 1).all() and (written[:, BM:] == 0).all(), "shared slot written 0/2+ times"
            a, b = Qs[:, :BM], Ks[:, :BM]  # thread (ty, tx) reads [kk][ty*4 .. +4] and [kk][tx*4 .. +4]
            assert not (np.isnan(a).any() or np.isnan(b).any()), "read of unwritten shared memory"
            acc += a.T @ b
        gi = q0 + np.arange(BM)[:, None]
        gj = k0 + np.arange(BM)[None, :]
        return np.where((gj > gi) | (gj >= S), NEG_INF, acc * scale)

    def blocks(self, grid, B, Hq, Hkv, S, d):
        """fb_att_block and fb_kv_head_offset over a launch's blocks: (qt, q0, bh, q head
        offset, kv head offset) for each (batch, head) bh each block owns, in block order."""
        ntiles, g = -(-S // self.BM), Hq // Hkv
        for bx in range(grid[0]):
            qt = ntiles - 1 - bx                    # the x index reversed: longest rows first
            for by in range(grid[1]):
                for bh in range(by, B * Hq, grid[1]):
                    b, h = divmod(bh, Hq)
                    yield qt, qt * self.BM, bh, bh * S * d, (b * Hkv + h // g) * S * d


def causal_key_reads(B, Hq, Hkv, S, d, tile, passes):
    """How often each k element is read when every query tile qt loads key tiles 0..qt."""
    ntiles = -(-S // tile)
    per_row = passes * (Hq // Hkv) * (ntiles - np.arange(S) // tile)         # (S,)
    return np.broadcast_to(per_row[None, None, :, None], (B, Hkv, S, d)).ravel()


# ---- attn_score_softmax ------------------------------------------------------------------------
def emulate_score_softmax(inputs, dtype, attrs, cap=None):
    mod = impl_module("attn_score_softmax")
    t = Tiles(defines(CU["attn_score_softmax"]), "FB_ATT")
    BM = t.BM
    B, Hq, S, d = inputs["q"].shape
    Hkv, scale = inputs["k"].shape[1], attrs["scale"]
    (name, grid, block, _, _), = mod.launch_plan(B, Hq, S, dtype).launches
    assert block == (t.THREADS,)
    q, k = In(inputs["q"], dtype), In(inputs["k"], dtype)
    p = Dst(B * Hq * S * S)
    ntiles = -(-S // BM)
    lanes = np.arange(16)
    rr, cc_ = np.arange(BM)[:, None], np.arange(BM)[None, :]   # tile row ty*4 + i, column tx*4 + j
    for qt, q0, bh, qoff, koff in t.blocks(capped(grid, cap), B, Hq, Hkv, S, d):
        # pass 1: per thread (row r, tx) a running max and sum over its 4 keys
        m, l = np.full((BM, 16), NEG_INF), np.zeros((BM, 16))
        for kt in range(qt + 1):
            s3 = t.logits(q, k, qoff, koff, S, d, q0, kt * BM, scale).reshape(BM, 16, 4)
            mn = np.maximum(m, s3.max(-1))
            upd = mn != NEG_INF
            l = np.where(upd, l * exp_from(m, mn) + exp_from(s3, mn[..., None]).sum(-1), l)
            m = np.where(upd, mn, m)
        # merge the 16 threads of each row
        off = 1
        while off < 16:
            mo, lo = m[:, lanes ^ off], l[:, lanes ^ off]
            mn = np.maximum(m, mo)
            l, m = l * exp_from(m, mn) + lo * exp_from(mo, mn), mn
            off <<= 1
        # pass 2
        for kt in range(ntiles):
            if kt <= qt:
                s3 = t.logits(q, k, qoff, koff, S, d, q0, kt * BM, scale).reshape(BM, 16, 4)
                with np.errstate(invalid="ignore", divide="ignore"):
                    w = np.where(l[..., None] != 0, exp_from(s3, m[..., None]) / l[..., None], 0.0)
            else:
                w = np.zeros((BM, 16, 4))
            gi, gj = q0 + rr, kt * BM + cc_
            ok = (gi < S) & (gj < S)
            p.store(((bh * S + gi) * S + gj)[ok], w.reshape(BM, BM)[ok])
    return p, q, k


# ---- attention_prefill -----------------------------------------------------------------------
def emulate_prefill(inputs, dtype, attrs, cap=None):
    mod = impl_module("attention_prefill")
    t = Tiles(defines(CU["attention_prefill"]), "FB_ATT")
    BM, TK, PAD, THREADS = t.BM, t.TK, t.PAD, t.THREADS
    B, Hq, S, d = inputs["q"].shape
    Hkv, scale = inputs["k"].shape[1], attrs["scale"]
    (name, grid, block, _, _), = mod.launch_plan(B, Hq, S, d, dtype).launches
    DMAX = int(name.split("_d")[1].split("_")[0])
    assert DMAX >= d and DMAX % 16 == 0
    q, k, v = (In(inputs[n], dtype) for n in ("q", "k", "v"))
    o = Dst(B * Hq * S * d)
    col_tx = np.arange(DMAX) % 16          # O column col belongs to thread tx = col % 16 (col = tx + 16c)
    for qt, q0, bh, qoff, kvoff in t.blocks(capped(grid, cap), B, Hq, Hkv, S, d):
        m, l = np.full((BM, 16), NEG_INF), np.zeros((BM, 16))
        acc = np.zeros((BM, DMAX))
        for kt in range(qt + 1):
            k0 = kt * BM
            s3 = t.logits(q, k, qoff, kvoff, S, d, q0, k0, scale).reshape(BM, 16, 4)
            mx = butterfly(s3.max(-1), 16, np.maximum)
            mn = np.maximum(m, mx)
            base = np.where(mn == NEG_INF, 0.0, mn)
            corr = exp_from(m, base)
            w = exp_from(s3, base[..., None])
            Ps = np.full((BM, BM + PAD), np.nan)
            Ps[:, :BM] = w.reshape(BM, BM)    # thread (ty, tx) writes [ty*4 + i][tx*4 + j]: a bijection
            l, m = l * corr + w.sum(-1), mn
            acc *= corr[:, col_tx]
            kc = 0
            while kc < BM and k0 + kc < S:
                Vs = np.full((TK, DMAX), np.nan)
                written = np.zeros((TK, DMAX), int)
                e = strided(np.arange(THREADS), TK * DMAX, THREADS)
                kk, col = e // DMAX, e % DMAX
                key = k0 + kc + kk
                ok = (key < S) & (col < d)
                Vs[kk, col] = 0.0
                Vs[kk[ok], col[ok]] = v.load(kvoff + key[ok] * d + col[ok])
                np.add.at(written, (kk, col), 1)
                assert (written == 1).all(), "V slot written 0 or 2+ times"
                pw = Ps[:, kc:kc + TK]
                assert not np.isnan(pw).any()
                acc += pw @ Vs
                kc += TK
        total = butterfly(l, 16, np.add)
        gi = q0 + np.arange(BM)[:, None]
        cols = np.arange(DMAX)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            val = np.where(total[:, col_tx] == 0, 0.0, acc / total[:, col_tx])
        ok = (gi < S) & (cols < d)
        o.store(((bh * S + gi) * d + cols)[ok], val[ok])
    return o, q, k, v


# ---- decode_attention ------------------------------------------------------------------------
def emulate_decode(inputs, dtype, attrs, nsplit=None, aligned=True, cap=None):
    """Both kernels of the plan; returns (o, k, v, scratch or None, plan)."""
    mod = impl_module("decode_attention")
    defs = defines(CU["decode_attention"])
    THREADS, DMAX = defs["FB_DA_THREADS"], defs["FB_DA_DMAX"]
    WARPS = THREADS // 32
    B, Hq, d = inputs["q"].shape
    Hkv, T = inputs["k"].shape[1:3]
    lens = np.asarray(inputs["lens"], dtype=np.int64)
    scale = attrs["scale"]
    chosen = mod.launch_plan(B, T, Hq, Hkv, d, dtype, aligned, nsplit=nsplit)
    vec, nsplit, G = (chosen.switches[k] for k in ("vec", "nsplit", "G"))
    plan = chosen.launches
    q, k, v = (In(inputs[n], dtype) for n in ("q", "k", "v"))
    VEC = q.vec
    NCH = DMAX // (32 * VEC)
    U = 4 // NCH
    per = -(-(-(-d // VEC)) // NCH)
    lpk = 1
    while lpk < per:
        lpk <<= 1
    assert lpk <= 32 and lpk * NCH * VEC >= d
    kpw = 32 // lpk
    lane = np.arange(32)
    slot, sub = lane // lpk, lane % lpk
    g = Hq // Hkv
    nchunks = -(-g // G)
    rows = B * Hkv * nchunks
    o = Dst(B * Hq * d)
    pm, pl, pacc = (Dst(B * Hq * nsplit), Dst(B * Hq * nsplit), Dst(B * Hq * nsplit * d)) if nsplit > 1 else (None,) * 3

    def chunk(mem: In, row_off: np.ndarray, e0: np.ndarray, live: np.ndarray) -> np.ndarray:
        """fb_row_chunk for the lanes where live: (32, VEC) floats, zeros elsewhere."""
        out = np.zeros((32, VEC))
        sel = live & (e0 < d)
        if vec:
            assert d % VEC == 0
            out[sel] = mem.vload(row_off[sel] + e0[sel])
        else:
            idx = row_off[:, None] + e0[:, None] + np.arange(VEC)[None, :]
            ok = sel[:, None] & (e0[:, None] + np.arange(VEC)[None, :] < d)
            out[ok] = mem.load(idx[ok])
        return out

    name, grid, block = plan[0][:3]
    assert block == (THREADS,) and name.startswith(f"decode_attention_split_g{G}_")
    if cap:
        grid = (grid[0], min(grid[1], cap))
    for split in range(grid[0]):
        for by in range(grid[1]):
            for row in range(by, rows, grid[1]):
                hc, bk = row % nchunks, row // nchunks
                b, kh = divmod(bk, Hkv)
                h0, gh = kh * g + hc * G, min(G, g - hc * G)
                L = min(max(int(lens[b]), 0), T)
                ps = -(-L // nsplit)
                ts = min(L, split * ps)
                te = min(L, ts + ps)
                kvb = (b * Hkv + kh) * T * d
                qf = np.zeros((32, G, NCH, VEC))
                for hh in range(gh):
                    for c in range(NCH):
                        qf[:, hh, c] = chunk(q, np.full(32, (b * Hq + h0 + hh) * d), (c * lpk + sub) * VEC,
                                             np.ones(32, bool))
                m = np.full((WARPS, 32, G), NEG_INF)
                l = np.zeros((WARPS, 32, G))
                acc = np.zeros((WARPS, 32, G, NCH, VEC))
                ngroups = -(-(te - ts) // kpw)
                for w in range(WARPS):
                    for gi0 in range(w, ngroups, WARPS * U):
                        kr, vr = np.zeros((U, 32, NCH, VEC)), np.zeros((U, 32, NCH, VEC))
                        valid = np.zeros((U, 32), bool)
                        for u in range(U):
                            t = ts + (gi0 + u * WARPS) * kpw + slot
                            valid[u] = t < te
                            for c in range(NCH):
                                e0 = (c * lpk + sub) * VEC
                                kr[u, :, c] = chunk(k, kvb + t * d, e0, valid[u])
                                vr[u, :, c] = chunk(v, kvb + t * d, e0, valid[u])
                        dot = np.einsum("lhce,ulce->ulh", qf, kr)
                        dot = butterfly(dot.transpose(0, 2, 1), 32, np.add, 1, lpk).transpose(0, 2, 1)
                        s = np.where(valid[..., None], dot * scale, NEG_INF)              # (U, 32, G)
                        mn = np.maximum(m[w], s.max(0))
                        base = np.where(mn == NEG_INF, 0.0, mn)
                        corr = exp_from(m[w], base)
                        pw = exp_from(s, base[None])
                        l[w] = l[w] * corr + pw.sum(0)
                        m[w] = mn
                        acc[w] = acc[w] * corr[..., None, None] + np.einsum("ulh,ulce->lhce", pw, vr)
                    # merge the lane groups of the warp
                    off = lpk
                    while off < 32:
                        partner = lane ^ off
                        mo, lo, ao = m[w][partner], l[w][partner], acc[w][partner]
                        mn = np.maximum(m[w], mo)
                        fa, fb = exp_from(m[w], mn), exp_from(mo, mn)
                        l[w] = l[w] * fa + lo * fb
                        acc[w] = acc[w] * fa[..., None, None] + ao * fb[..., None, None]
                        m[w] = mn
                        off <<= 1
                # merge the warps: lane 0's (m, l), then acc rescaled and added in warp order
                sm_m, sm_l = m[:, 0, :], l[:, 0, :]                                   # (WARPS, G)
                blk_m = sm_m.max(0)
                blk_l = (sm_l * exp_from(sm_m, blk_m[None])).sum(0)
                sacc = np.full((G, DMAX), np.nan)
                written = np.zeros((G, DMAX), int)
                for w in range(WARPS):
                    for ln in np.nonzero(slot == 0)[0]:
                        f = exp_from(m[w, ln], blk_m)                                  # (G,)
                        for c in range(NCH):
                            for e in range(VEC):
                                col = (c * lpk + sub[ln]) * VEC + e
                                if col >= d:
                                    continue
                                for hh in range(gh):
                                    prev = 0.0 if w == 0 else sacc[hh, col]
                                    assert not np.isnan(prev), "shared accumulator read before written"
                                    sacc[hh, col] = prev + acc[w, ln, hh, c, e] * f[hh]
                                    written[hh, col] += 1
                assert (written[:gh, :d] == WARPS).all() and written.sum() == WARPS * gh * d
                i = strided(np.arange(THREADS), gh * d, THREADS)
                hh, col = i // d, i % d
                bh = b * Hq + h0 + hh
                if nsplit == 1:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        val = np.where(blk_l[hh] == 0, 0.0, sacc[hh, col] / blk_l[hh])
                    o.store(bh * d + col, val)
                else:
                    pacc.store((bh * nsplit + split) * d + col, sacc[hh, col])
                    heads = b * Hq + h0 + np.arange(gh)
                    pm.store(heads * nsplit + split, blk_m[:gh])
                    pl.store(heads * nsplit + split, blk_l[:gh])

    if nsplit > 1:
        for name_, scr in (("pm", pm), ("pl", pl), ("pacc", pacc)):
            scr.once(name_)
        name, grid, block = plan[1][:3]
        CT = defs["FB_DA_COMBINE_THREADS"]
        assert block == (CT,) and name.startswith("decode_attention_combine_")
        if cap:
            grid = (min(grid[0], cap),)
        sm, sl, sa = (In(np.asarray(x.v), "float32") for x in (pm, pl, pacc))
        for bx in range(grid[0]):
            for r in range(bx, B * Hq, grid[0]):
                rm = sm.load(r * nsplit + np.arange(nsplit))
                rl = sl.load(r * nsplit + np.arange(nsplit))
                M = rm.max()
                Lt = (rl * exp_from(rm, M)).sum()
                col = strided(np.arange(CT), d, CT)
                a = (sa.load((r * nsplit + np.arange(nsplit))[None, :] * d + col[:, None]) * exp_from(rm, M)).sum(1)
                o.store(r * d + col, a / Lt if Lt != 0 else np.zeros_like(a))
        for x in (sm, sl, sa):
            assert (x.reads >= 1).all(), "a partial was never combined"
    return o, k, v, (pm, pl, pacc), plan


def decode_inputs(B, T, Hq, Hkv, d, dtype, seed, value_shape="ragged"):
    dims = {"B": B, "T": T, "n_heads": Hq, "n_kv_heads": Hkv, "head_dim": d}
    inputs, attrs = inputs_and_attrs("decode_attention", dims, dtype, seed, value_shape)
    poisoned = dict(inputs)
    dead = np.arange(T)[None, :] >= np.asarray(inputs["lens"])[:, None]          # (B, T)
    for n in ("k", "v"):
        a = inputs[n].copy()
        a[np.broadcast_to(dead[:, None, :], a.shape[:3])] = np.nan               # never to be read
        poisoned[n] = a
    return inputs, poisoned, attrs, dead
