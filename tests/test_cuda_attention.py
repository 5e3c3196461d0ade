"""The CUDA attention kernels: attn_score_softmax, attention_prefill, decode_attention.

Without a GPU: the sources compile (nvcc and NVRTC, each source once per compiler, every
storage dtype in it), define every kernel their modules launch, and a NumPy emulation of
every kernel's loops checks the indexing: loads in bounds (16-byte loads aligned), every
shared-memory slot written once before it is read, every output element written exactly
once, the causal tiles above the diagonal never loaded, the KV cache never read at
positions >= lens[b] and read exactly once below, and the split-K partials and their
combination. The emulations compute in float64 and must match the float64 reference.
The GPU tests (cuda probe passes; elsewhere one skip each) run the kernels against the
accuracy gate.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import numpy as np
import pytest

from harness import cuda_compile as cc
from tests.devices import needs_cuda
from tests.test_cuda_sources import _close, _cuda_backend, _defines, _impl_module, _judge_impl, _need_compiler

REPO = Path(__file__).resolve().parent.parent
FUSIONS = ("attn_score_softmax", "attention_prefill", "decode_attention")
CU = {f: REPO / "impls" / f / f"{f}.cu" for f in FUSIONS}
DTYPES = ("float32", "float16", "bfloat16")
NEG_INF = -np.inf


@functools.lru_cache(maxsize=None)
def _compiled(fusion: str, compiler: str) -> cc.CompileResult:
    return cc.compile_to_ptx(cc.cuda_source(CU[fusion]), CU[fusion].name, compiler)


# ---- sources, kernels, registration ------------------------------------------------------------
@pytest.mark.parametrize("compiler", cc.COMPILERS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_source_compiles_with_every_kernel(fusion, compiler):
    _need_compiler(compiler)
    r = _compiled(fusion, compiler)
    assert r.ok, f"{CU[fusion].name} failed to compile with {compiler}:\n{r.log}"
    mod = _impl_module(fusion)
    assert len(mod.KERNELS) == len(set(mod.KERNELS))
    missing = sorted(set(mod.KERNELS) - r.entries())
    assert not missing, f"{compiler}: kernels missing from the PTX: {missing}"
    for dtype in DTYPES:  # every storage dtype the implementation claims has its kernels
        sfx = mod.SUFFIX[dtype]
        assert any(n.endswith(f"_{sfx}") for n in r.entries()), (dtype, sorted(r.entries()))


def test_sources_listed_and_registered():
    from harness.registry import discover

    reg = discover(entry_points=False)
    for fusion in FUSIONS:
        assert CU[fusion] in cc.cuda_sources()
        impl = reg.impls[f"{fusion}/cuda/fused"]
        assert impl.kind == "fused" and impl.dtypes == DTYPES and impl.doc.strip()
        ok, why = impl.available()
        assert ok or why.strip()


def test_launch_constants_match_sources():
    from harness.attention import HEAD_DIM_LIMIT

    for fusion, p in (("attn_score_softmax", "FB_ATT"), ("attention_prefill", "FB_ATT")):
        m, d = _impl_module(fusion), _defines(CU[fusion])
        assert (m.THREADS, m.TILE, m.MAX_GRID_Y) == (d[f"{p}_THREADS"], d[f"{p}_BM"], d[f"{p}_MAX_GRID_Y"])
        assert d[f"{p}_THREADS"] == 256 and d[f"{p}_BM"] == 64   # 16 x 16 threads, 4 x 4 each
        assert (d[f"{p}_BM"] + d[f"{p}_PAD"]) % 4 == 0           # 16-byte aligned shared rows
    m = _impl_module("attention_prefill")
    assert m.HEAD_DIMS[-1] == HEAD_DIM_LIMIT and all(h % 16 == 0 for h in m.HEAD_DIMS)
    m, d = _impl_module("decode_attention"), _defines(CU["decode_attention"])
    assert (m.THREADS, m.DMAX, m.GMAX, m.COMBINE_THREADS, m.MAX_GRID) == (
        d["FB_DA_THREADS"], d["FB_DA_DMAX"], d["FB_DA_GMAX"], d["FB_DA_COMBINE_THREADS"], d["FB_DA_MAX_GRID"])
    assert m.DMAX == HEAD_DIM_LIMIT and m.THREADS % 32 == 0 and m.GROUPS[-1] == m.GMAX


def test_plans_name_only_defined_kernels():
    sc, ap, da = (_impl_module(f) for f in FUSIONS)
    for dtype in DTYPES:
        for d in (1, 4, 17, 64, 65, 80, 96, 128, 129, 256):
            (launch,) = ap.launch_plan(2, 3, 70, d, dtype).launches
            name, grid, block = launch.kernel, launch.grid, launch.block
            assert name in ap.KERNELS and grid == (2, 6) and block == (256,) and launch.smem == 0
            assert int(name.split("_d")[1].split("_")[0]) >= d
        (launch,) = sc.launch_plan(1, 70000, 5, dtype).launches
        assert launch.kernel in sc.KERNELS and launch.grid == (1, 65535)
        assert sc.launch_plan(0, 3, 70, dtype).launches == ()   # nothing to launch for an empty p
        for g in (1, 2, 3, 4, 5, 7, 8, 9, 16):
            p = da.launch_plan(2, 4096, 2 * g, 2, 128, dtype)
            nsplit, G, plan = p.switches["nsplit"], p.switches["G"], p.launches
            assert all(launch.kernel in da.KERNELS for launch in plan)
            assert G == next((x for x in (1, 2, 4, 8) if x >= g), 8)
            assert plan[0][1] == (nsplit, 2 * 2 * -(-g // G))
            assert len(plan) == (2 if nsplit > 1 else 1)


def test_decode_split_rule():
    da = _impl_module("decode_attention")
    # registers -> resident 4-warp blocks per SM (65536 registers, 256 per warp at a time)
    assert [da.resident_blocks(r) for r in (0, 16, 64, 93, 166, 255)] == [da.DEFAULT_BLOCKS_PER_SM, 16, 8, 5, 3, 2]
    # small B·Hkv, long cache: split to fill an H200; the case gets 32 splits of 128 keys
    assert da.choose_splits(rows=8, T=4096, sm_count=132, blocks_per_sm=3) == 32
    assert da.choose_splits(rows=8, T=32768, sm_count=132, blocks_per_sm=3) == da.MAX_SPLITS
    assert da.choose_splits(rows=64, T=8192, sm_count=132, blocks_per_sm=3) == 25   # about 4 waves
    assert da.choose_splits(rows=1, T=1, sm_count=132) == 1                 # no split under 128 keys
    assert da.choose_splits(rows=1, T=129, sm_count=132) == 2
    assert da.choose_splits(rows=4096, T=8192, sm_count=132) == 1           # the grid is full already
    for rows in (1, 3, 8, 40, 200, 1000):
        for T in (1, 100, 4096, 100000):
            for bps in (1, 3, 8):
                n = da.choose_splits(rows, T, 132, bps)
                assert 1 <= n <= da.MAX_SPLITS and (n == 1 or T / n >= da.SPLIT_MIN_KEYS / 2)
                assert n == da.MAX_SPLITS or n * rows >= min(da.WAVES * bps * 132, rows * -(-T // 128))
    p = da.launch_plan(1, 4096, 32, 8, 128, "float16")
    assert p.switches == {"vec": 1, "nsplit": 32, "G": 4}
    assert p.launches == (("decode_attention_split_g4_f16", (32, 8), (128,), 0, 0),
                          ("decode_attention_combine_f16", (32,), (128,), 0, 0))
    assert da.launch_plan(1, 4096, 32, 8, 17, "float16").switches["vec"] == 0       # 17 % 8: scalar loads
    # Gemma-2-2B (issue 19: head_dim 256, 2 q heads per kv head), and the property tests' limits:
    # T past MAX_SPLITS x SPLIT_MIN_KEYS, 9 q heads per kv head (two head chunks of G = 8)
    p = da.launch_plan(1, 4096, 8, 4, 256, "bfloat16")
    assert p.switches == {"vec": 1, "nsplit": 32, "G": 2} and p.launches[0].grid == (32, 4)
    p = da.launch_plan(1, 16385, 9, 1, 256, "bfloat16")
    assert p.switches == {"vec": 1, "nsplit": da.MAX_SPLITS, "G": 8} and p.launches[0].grid == (da.MAX_SPLITS, 2)
    assert da.launch_plan(1, 4096, 32, 8, 128, "float32", aligned=False).switches["vec"] == 0


# ---- emulation helpers -----------------------------------------------------------------------
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


def _inputs(fusion, dims, dtype, seed, value_shape="normal"):
    spec = importlib.import_module(f"impls.{fusion}").SPEC
    dims_, attrs = spec.split(dims)
    return spec.make_inputs(dims_, dtype, seed, value_shape), attrs


def _reference(fusion, inputs, attrs):
    from harness.ops import NumpyOps

    spec = importlib.import_module(f"impls.{fusion}").SPEC
    return spec.decompose(NumpyOps("float64"), **inputs, **attrs)


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


def _causal_key_reads(B, Hq, Hkv, S, d, tile, passes):
    """How often each k element is read when every query tile qt loads key tiles 0..qt."""
    ntiles = -(-S // tile)
    per_row = passes * (Hq // Hkv) * (ntiles - np.arange(S) // tile)         # (S,)
    return np.broadcast_to(per_row[None, None, :, None], (B, Hkv, S, d)).ravel()


# ---- attn_score_softmax ------------------------------------------------------------------------
def emulate_score_softmax(inputs, dtype, attrs, cap=None):
    mod = _impl_module("attn_score_softmax")
    t = Tiles(_defines(CU["attn_score_softmax"]), "FB_ATT")
    BM = t.BM
    B, Hq, S, d = inputs["q"].shape
    Hkv = inputs["k"].shape[1]
    g, scale = Hq // Hkv, attrs["scale"]
    (name, grid, block, _, _), = mod.launch_plan(B, Hq, S, dtype).launches
    assert block == (t.THREADS,)
    if cap:
        grid = (grid[0], min(grid[1], cap))
    q, k = In(inputs["q"], dtype), In(inputs["k"], dtype)
    p = Dst(B * Hq * S * S)
    ntiles = -(-S // BM)
    lanes = np.arange(16)
    rr, cc_ = np.arange(BM)[:, None], np.arange(BM)[None, :]   # tile row ty*4 + i, column tx*4 + j
    for bx in range(grid[0]):
        qt = ntiles - 1 - bx
        q0 = qt * BM
        for by in range(grid[1]):
            for bh in range(by, B * Hq, grid[1]):
                b, h = divmod(bh, Hq)
                qoff, koff = bh * S * d, (b * Hkv + h // g) * S * d
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


SCORE_CASES = [
    # (B, Hq, Hkv, S, d, dtype, grid-y cap)
    (1, 1, 1, 1, 4, "float32", None),        # one query, one key
    (1, 2, 1, 65, 17, "float16", None),      # two tiles, ragged d (two 16-dim steps), g = 2
    (2, 3, 3, 64, 80, "bfloat16", 2),        # exactly one tile, blocks loop over heads
    (1, 4, 2, 130, 8, "float32", 3),         # three tiles: zero tiles right of the diagonal
]


@pytest.mark.parametrize("B,Hq,Hkv,S,d,dtype,cap", SCORE_CASES)
def test_emulated_score_softmax(B, Hq, Hkv, S, d, dtype, cap):
    dims = {"B": B, "S": S, "n_heads": Hq, "n_kv_heads": Hkv, "head_dim": d}
    inputs, attrs = _inputs("attn_score_softmax", dims, dtype, seed=S + d)
    p, q, k = emulate_score_softmax(inputs, dtype, attrs, cap)
    p.once("p")
    _close(p.v, _reference("attn_score_softmax", inputs, attrs)["p"])
    # two passes over the tiles left of and on the diagonal, nothing right of it
    np.testing.assert_array_equal(k.reads, _causal_key_reads(B, Hq, Hkv, S, d, 64, passes=2))
    assert (q.reads > 0).all()


# ---- attention_prefill -----------------------------------------------------------------------
def emulate_prefill(inputs, dtype, attrs, cap=None):
    mod = _impl_module("attention_prefill")
    defs = _defines(CU["attention_prefill"])
    t = Tiles(defs, "FB_ATT")
    BM, TK, PAD, THREADS = t.BM, t.TK, t.PAD, t.THREADS
    B, Hq, S, d = inputs["q"].shape
    Hkv = inputs["k"].shape[1]
    g, scale = Hq // Hkv, attrs["scale"]
    (name, grid, block, _, _), = mod.launch_plan(B, Hq, S, d, dtype).launches
    DMAX = int(name.split("_d")[1].split("_")[0])
    assert DMAX >= d and DMAX % 16 == 0
    if cap:
        grid = (grid[0], min(grid[1], cap))
    q, k, v = (In(inputs[n], dtype) for n in ("q", "k", "v"))
    o = Dst(B * Hq * S * d)
    ntiles = -(-S // BM)
    lanes = np.arange(16)
    col_tx = np.arange(DMAX) % 16          # O column col belongs to thread tx = col % 16 (col = tx + 16c)
    for bx in range(grid[0]):
        qt = ntiles - 1 - bx
        q0 = qt * BM
        for by in range(grid[1]):
            for bh in range(by, B * Hq, grid[1]):
                b, h = divmod(bh, Hq)
                qoff, kvoff = bh * S * d, (b * Hkv + h // g) * S * d
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


PREFILL_CASES = [
    # (B, Hq, Hkv, S, d, dtype, grid-y cap)
    (1, 1, 1, 1, 4, "float32", None),        # S = 1
    (1, 2, 1, 65, 17, "float16", None),      # DMAX 64, two tiles, ragged last tile
    (2, 2, 1, 70, 80, "bfloat16", 3),        # DMAX 128, blocks loop over heads
    (1, 1, 1, 67, 256, "float32", None),     # DMAX 256
    (1, 4, 2, 130, 64, "float16", None),     # three tiles: causal skipping above the diagonal
]


@pytest.mark.parametrize("B,Hq,Hkv,S,d,dtype,cap", PREFILL_CASES)
def test_emulated_prefill(B, Hq, Hkv, S, d, dtype, cap):
    dims = {"B": B, "S": S, "n_heads": Hq, "n_kv_heads": Hkv, "head_dim": d}
    inputs, attrs = _inputs("attention_prefill", dims, dtype, seed=S * 3 + d)
    o, q, k, v = emulate_prefill(inputs, dtype, attrs, cap)
    o.once("o")
    _close(o.v, _reference("attention_prefill", inputs, attrs)["o"])
    want = _causal_key_reads(B, Hq, Hkv, S, d, 64, passes=1)
    np.testing.assert_array_equal(k.reads, want)    # each key tile once per query tile at or below it
    np.testing.assert_array_equal(v.reads, want)


def test_emulated_prefill_large_logits():
    """Logits near ±80 (the "large" value shape): the running maximum keeps exp() finite."""
    dims = {"B": 1, "S": 70, "n_heads": 2, "n_kv_heads": 1, "head_dim": 64}
    inputs, attrs = _inputs("attention_prefill", dims, "float32", seed=5, value_shape="large")
    o, *_ = emulate_prefill(inputs, "float32", attrs)
    o.once("o")
    assert np.isfinite(o.v).all()
    _close(o.v, _reference("attention_prefill", inputs, attrs)["o"])


# ---- decode_attention ------------------------------------------------------------------------
def emulate_decode(inputs, dtype, attrs, nsplit=None, aligned=True, cap=None):
    """Both kernels of the plan; returns (o, k, v, scratch or None, plan)."""
    mod = _impl_module("decode_attention")
    defs = _defines(CU["decode_attention"])
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


def _decode_inputs(B, T, Hq, Hkv, d, dtype, seed, value_shape="ragged"):
    dims = {"B": B, "T": T, "n_heads": Hq, "n_kv_heads": Hkv, "head_dim": d}
    inputs, attrs = _inputs("decode_attention", dims, dtype, seed, value_shape)
    poisoned = dict(inputs)
    dead = np.arange(T)[None, :] >= np.asarray(inputs["lens"])[:, None]          # (B, T)
    for n in ("k", "v"):
        a = inputs[n].copy()
        a[np.broadcast_to(dead[:, None, :], a.shape[:3])] = np.nan               # never to be read
        poisoned[n] = a
    return inputs, poisoned, attrs, dead


DECODE_CASES = [
    # (B, T, Hq, Hkv, d, dtype, nsplit (None: the rule), aligned, grid cap)
    (1, 1, 1, 1, 4, "float32", None, True, None),       # T = 1, one lane per key
    (2, 17, 4, 2, 17, "float16", None, True, None),     # scalar loads (17 % 8), g = 2
    (3, 37, 6, 2, 64, "bfloat16", 3, True, None),       # g = 3 in a G = 4 block, 3 splits, ragged lens
    (2, 50, 10, 1, 8, "float32", 4, True, 2),           # g = 10: two head chunks (8 + 2), rows loop
    (1, 300, 8, 8, 256, "float32", 5, True, None),      # d = 256 float32: two chunks per lane
    (1, 517, 8, 4, 256, "bfloat16", 1, True, None),     # Gemma-2's g = 2 at d = 256, unsplit, T > 512
    (2, 100, 4, 1, 80, "float16", 7, True, None),       # 10 vectors on 16 lanes, empty splits
    (2, 64, 2, 2, 96, "bfloat16", None, False, None),   # unaligned pointers: scalar path
    (1, 23, 1, 1, 128, "float32", 2, True, None),       # 16 lanes x 2 chunks per key, 2 keys per warp
    (3, 131, 4, 4, 5, "bfloat16", 2, True, 2),          # prime T, d = 5, combine blocks loop
]


@pytest.mark.parametrize("B,T,Hq,Hkv,d,dtype,nsplit,aligned,cap", DECODE_CASES)
def test_emulated_decode(B, T, Hq, Hkv, d, dtype, nsplit, aligned, cap):
    inputs, poisoned, attrs, dead = _decode_inputs(B, T, Hq, Hkv, d, dtype, seed=T + d)
    o, k, v, scratch, plan = emulate_decode(poisoned, dtype, attrs, nsplit, aligned, cap)
    o.once("o")
    assert np.isfinite(o.v).all(), "a cache position past lens[b] reached the output"
    _close(o.v, _reference("decode_attention", inputs, attrs)["o"])
    # the valid cache read exactly once per head chunk, nothing past lens[b] ever
    g = Hq // Hkv
    G = _impl_module("decode_attention").head_group(g)
    want = np.where(dead[:, None, :, None], 0, -(-g // G))
    for mem in (k, v):
        np.testing.assert_array_equal(mem.reads.reshape(B, Hkv, T, d), np.broadcast_to(want, (B, Hkv, T, d)))
    used = plan[0][1][0]
    assert used == (nsplit or used) and len(plan) == (2 if used > 1 else 1)


def test_emulated_decode_all_empty_and_large_logits():
    """Every sequence empty: zeros, nothing read; logits near ±80 over split partials: finite."""
    inputs, poisoned, attrs, _ = _decode_inputs(2, 40, 4, 2, 16, "float16", seed=1)
    poisoned["lens"] = np.zeros(2, dtype=np.int32)
    for n in ("k", "v"):
        poisoned[n] = np.full_like(poisoned[n], np.nan)
    o, k, v, _, _ = emulate_decode(poisoned, "float16", attrs, nsplit=3)
    o.once("o")
    assert (o.v == 0).all() and not k.reads.any() and not v.reads.any()

    inputs, poisoned, attrs, _ = _decode_inputs(1, 200, 2, 1, 32, "float32", seed=2, value_shape="large")
    o, *_ = emulate_decode(poisoned, "float32", attrs, nsplit=4)
    o.once("o")
    assert np.isfinite(o.v).all()
    _close(o.v, _reference("decode_attention", inputs, attrs)["o"])


def test_gather_packs_like_a_vector_load():
    """fb_gather (decode_attention.cu) builds the 16 bytes a vector load would give: element e
    of 8 halves in word e / 2, the low half for even e, as the prelude's unpack reads them."""
    src = CU["decode_attention"].read_text()
    assert "w[e >> 1] |= (unsigned int)p[i + e] << (16 * (e & 1));" in src
    halves = np.arange(1, 9, dtype=np.uint16) * 0x1111
    words = np.zeros(4, dtype=np.uint32)
    for e in range(8):
        words[e >> 1] |= np.uint32(halves[e]) << np.uint32(16 * (e & 1))
    np.testing.assert_array_equal(words.view(np.uint16), halves)    # little-endian: a plain copy


# ---- GPU tests (skipped without a usable device) -----------------------------------------------
GPU_CASES = {
    "attn_score_softmax": [
        {"B": 1, "S": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 4},
        {"B": 2, "S": 67, "n_heads": 4, "n_kv_heads": 2, "head_dim": 17},
        {"B": 1, "S": 600, "n_heads": 3, "n_kv_heads": 1, "head_dim": 128},    # S > 512
        {"B": 1, "S": 129, "n_heads": 2, "n_kv_heads": 2, "head_dim": 256},
        {"B": 1, "S": 512, "n_heads": 8, "n_kv_heads": 4, "head_dim": 256},     # Gemma-2-2B prefill512
    ],
    "attention_prefill": [
        {"B": 1, "S": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 4},
        {"B": 2, "S": 67, "n_heads": 4, "n_kv_heads": 2, "head_dim": 17},
        {"B": 1, "S": 257, "n_heads": 6, "n_kv_heads": 2, "head_dim": 80},
        {"B": 1, "S": 1031, "n_heads": 2, "n_kv_heads": 1, "head_dim": 128},
        {"B": 1, "S": 97, "n_heads": 2, "n_kv_heads": 1, "head_dim": 256},
        {"B": 1, "S": 512, "n_heads": 8, "n_kv_heads": 4, "head_dim": 256},     # Gemma-2-2B prefill512
        {"B": 2, "S": 130, "n_heads": 2, "n_kv_heads": 2, "head_dim": 96},
    ],
    "decode_attention": [
        {"B": 1, "T": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 4},
        {"B": 3, "T": 131, "n_heads": 6, "n_kv_heads": 2, "head_dim": 17},
        {"B": 5, "T": 700, "n_heads": 4, "n_kv_heads": 4, "head_dim": 64},
        {"B": 1, "T": 4096, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128},
        {"B": 2, "T": 4099, "n_heads": 14, "n_kv_heads": 2, "head_dim": 64},
        {"B": 2, "T": 513, "n_heads": 20, "n_kv_heads": 2, "head_dim": 80},     # g = 10: head chunks
        {"B": 1, "T": 1000, "n_heads": 2, "n_kv_heads": 1, "head_dim": 256},
        {"B": 1, "T": 4096, "n_heads": 8, "n_kv_heads": 4, "head_dim": 256},    # Gemma-2-2B decode4096 (issue 19)
        {"B": 1, "T": 16385, "n_heads": 9, "n_kv_heads": 1, "head_dim": 256},   # nsplit = MAX_SPLITS, 2 head chunks
    ],
}
GPU_PARAMS = [(f, p) for f, ps in GPU_CASES.items() for p in ps]


def _ids(v):
    return v if isinstance(v, str) else "-".join(str(x) for x in v.values())


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fusion,params", GPU_PARAMS, ids=_ids)
def test_gpu_fused_matches_reference(fusion, params, dtype):
    spec = importlib.import_module(f"impls.{fusion}").SPEC
    for value_shape in spec.value_shapes:
        verdict = _judge_impl(f"{fusion}/cuda/fused", fusion, params, dtype, value_shape, seed=sum(params.values()))
        assert verdict.passed, (value_shape, verdict.reasons)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_gpu_chain_matches_reference(fusion, dtype):
    params = GPU_CASES[fusion][1]
    verdict = _judge_impl(f"{fusion}/cuda/unfused", fusion, params, dtype, "normal", seed=3)
    assert verdict.passed, verdict.reasons


def _run_decode(inputs, attrs, dtype):
    from harness.registry import discover
    from impls.decode_attention import SPEC

    p = discover(entry_points=False).impls["decode_attention/cuda/fused"].prepare(SPEC, inputs, attrs, dtype)
    p.poison()
    p.run()
    return p, p.outputs()["o"].astype(np.float64)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nsplit", [1, 3, 64])
def test_gpu_decode_never_reads_past_lens(dtype, nsplit, monkeypatch):
    """Cache rows past lens[b] hold NaN: the output is the same as with finite values there,
    whatever the number of splits (forced through choose_splits)."""
    mod = _impl_module("decode_attention")
    monkeypatch.setattr(mod, "choose_splits", lambda *args: nsplit)
    inputs, poisoned, attrs, _ = _decode_inputs(5, 1000, 8, 2, 128, dtype, seed=7)
    p, clean = _run_decode(inputs, attrs, dtype)
    assert p.nsplit == nsplit
    _, out = _run_decode(poisoned, attrs, dtype)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, clean)
    lens = np.asarray(inputs["lens"])
    assert (out[lens == 0] == 0).all()


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_chain_attention_ops_match_numpy(dtype):
    from harness.dtypes import np_dtype
    from harness.ops import NumpyOps

    b = _cuda_backend()
    ops, ref = b.ops(dtype), NumpyOps(dtype)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 5, 17)).astype(np_dtype(dtype))
    c = rng.standard_normal((2, 3, 7, 17)).astype(np_dtype(dtype))
    w = rng.standard_normal((2, 3, 5, 7)).astype(np_dtype(dtype))
    lens = np.array([0, 4], dtype=np.int32)
    da, dc, dw, dl = (b.upload(x) for x in (a, c, w, lens))
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    masked = ref.length_mask(w, lens)           # row b = 0 fully masked
    cases = [
        (ops.matmul_nt(da, dc), ref.matmul_nt(a, c)),
        (ops.matmul(dw, dc), ref.matmul(w, c)),
        (ops.scale(da, 0.37), ref.scale(a, 0.37)),
        (ops.causal_mask(dw), ref.causal_mask(w)),
        (ops.length_mask(dw, dl), masked),
        (ops.softmax(ops.length_mask(dw, dl)), ref.softmax(masked)),
        (ops.softmax(ops.causal_mask(dw)), ref.softmax(ref.causal_mask(w))),
    ]
    for got, want in cases:
        got = b.download(got)
        assert got.dtype == np_dtype(dtype) and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)
    sm = b.download(ops.softmax(ops.length_mask(dw, dl))).astype(np.float64)
    assert (sm[0] == 0).all() and not np.isnan(sm).any()
