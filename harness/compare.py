"""Two results -> what changed: accuracy verdicts, then speed beyond noise (`fusebench compare`).

Records are matched by (machine, fusion, backend, variant, case, dtype) and what was
measured: the case's parameters (params_id: a user case file may reuse a shipped case name
with other dimensions) and the backend's API where it has one (wgpu on Vulkan or, without
a Vulkan driver, on OpenGL: not the same machine). The newest record of each side wins, by
timestamp; only runs from the same machine are compared. Records of one name whose
parameters or API differ are not compared: their row says DIFFERENT WORKLOAD or DIFFERENT
API. Unavailable records are left out (they count as "only in one side"), and so is the
float64 reference (kind "reference"): it is the yardstick the verdicts are measured
against, never a contender, so it has no verdict and no say in the exit status.

Accuracy: verdict pass -> fail is a NEW FAILURE, fail -> pass is FIXED, and a passing
record whose NMSE grew more than DRIFT_FACTOR (10x) is an ACCURACY DRIFT (reported, never
fatal).

Speed, from the two sample sets (`time.samples`), never from a fixed percentage:

- r = median(NEW) / median(BASE), with a percentile-bootstrap confidence interval
  [lo, hi] (LEVEL = 99 %, RESAMPLES = 2000 resamples of each side independently, fixed
  seed so that the same files always give the same answer). The bootstrap makes no
  assumption about the shape of the distributions (timings are skewed, with outliers),
  and the median is the statistic the harness reports.
- A practical-equivalence margin m = max(1 %, c), where c = sqrt(noise_BASE² + noise_NEW²)
  is the combined relative standard error of the two medians (harness.timing's `noise`,
  recomputed from the samples): a change smaller than what the two measurements resolve,
  or than 1 % (below which run-to-run effects such as clocks and memory placement
  dominate), is not a change worth a verdict.
- SLOWER when lo > 1 + m, FASTER when hi < 1 - m: 99 % sure the change exceeds both the
  noise and 1 %.
- SAME when the 90 % interval lies within [1 - e, 1 + e], e = max(m, SAME_WITHIN): the
  usual two one-sided tests at 5 % each (TOST), 95 % sure any change is smaller than e. SAME_WITHIN (5 %, `--same-within`) is
  the change the caller agrees to call negligible; it never decides FASTER or SLOWER.
  That interval's half-width is about 1.6 c, so with the default an unchanged kernel is
  SAME when its medians are known to better than about 3 %.
- Otherwise UNSURE: the samples cannot tell a change of e from none; more samples
  (`bench --min-samples`, `--budget`) or a quieter machine resolve it.
- Fewer than MIN_SAMPLES samples on a side, or cold against hot timing: UNSURE.
  Records without samples (check runs) get only the accuracy comparison.

Between runs. The bootstrap sees only the variation within one run, and a machine that
drifts between runs (memory clock, thermal state, a neighbour on a shared VM) moves every
median by more than that: on the 2-core CI VM two `bench` runs of one commit differ by a
median 11 % per record while each reports about 2 % noise. When a side holds two or more
runs of a record (distinct run_id: several files, a folder, or one file that several runs
appended to), the spread of their medians is measured: s, the standard deviation of the
log run medians, pooled over every such record of both sides (the drift is the machine's,
not the kernel's; DRIFT_MIN_DF degrees of freedom at least). `--drift F` states it instead
(e.g. from an earlier repeated comparison on the same machine). With s known, each side's
figure is the geometric mean of its run medians, and the intervals are Student's t on the
log ratio with standard error sqrt(max(s, noise_B)² / k_B + max(s, noise_N)² / k_N) (k runs
a side) and, for a measured s, one degree of freedom per run beyond the first of each side
(the drift moves whole runs: records of one run are not independent draws of it; a given s
is taken as known), widened to hold the bootstrap's: a drift of s is then noise, not
change. Without it (one run a side and no --drift) the verdicts rest on the within-run noise
alone and cannot see between-run drift, and the summary says so (a slowdown beyond that
noise still counts).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from harness.results import read_records, workload_of
from harness.timing import summarize

KEY = ("machine", "fusion", "backend", "variant", "case", "dtype")
LEVEL, SAME_LEVEL, RESAMPLES, SEED = 0.99, 0.90, 2000, 0
MIN_MARGIN = 0.01
SAME_WITHIN = 0.05
MIN_SAMPLES = 5
DRIFT_FACTOR = 10.0
DRIFT_MIN_DF = 3  # records' worth of repeated runs before the between-run spread is trusted
ORDER = {"NEW FAILURE": 0, "ACCURACY DRIFT": 1, "FIXED": 2, "SLOWER": 3, "FASTER": 4, "SAME": 5, "UNSURE": 6,
         "DIFFERENT WORKLOAD": 7, "DIFFERENT API": 8}
UNPAIRED = ("DIFFERENT WORKLOAD", "DIFFERENT API")


class CompareError(Exception):
    """Nothing to compare (missing path, no records, nothing in common); one message."""


@dataclass
class Speed:
    verdict: str  # SAME, FASTER, SLOWER or UNSURE
    ratio: float | None = None  # median NEW / median BASE
    lo: float | None = None  # LEVEL confidence interval of the ratio
    hi: float | None = None
    margin: float | None = None
    note: str = ""
    base_s: float | None = None  # the figures the ratio is of: a run's median, or the geometric
    new_s: float | None = None  # mean of the run medians when the between-run spread is counted


def speed(base, new, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED,
          same_within: float = SAME_WITHIN, drift: float | None = None, drift_df: int | None = None) -> Speed:
    """The speed verdict for two sample sets (seconds) or two lists of runs' sample sets
    (a list of lists: repeated runs of one record); `drift`: the machine's between-run
    spread s (None: unknown, within-run noise only), estimated with `drift_df` degrees of
    freedom (None: known, e.g. given). See the module docstring."""
    if _is_runs(base) or _is_runs(new):
        return _speed_runs(_runs(base), _runs(new), level=level, resamples=resamples, seed=seed,
                           same_within=same_within, drift=drift, drift_df=drift_df)
    b, n = _clean(base), _clean(new)
    if min(len(b), len(n)) < MIN_SAMPLES:
        ratio = float(np.median(n) / np.median(b)) if len(b) and len(n) else None
        return Speed("UNSURE", ratio, note=f"too few samples ({len(b)} vs {len(n)}; need {MIN_SAMPLES})")
    rng = np.random.default_rng(seed)
    mb = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    mn = np.median(n[rng.integers(0, len(n), (resamples, len(n)))], axis=1)
    a, e = (1 - level) / 2, (1 - SAME_LEVEL) / 2
    lo, hi, lo_same, hi_same = (float(q) for q in np.quantile(mn / mb, [a, 1 - a, e, 1 - e]))
    m = max(MIN_MARGIN, math.hypot(summarize(b, "").noise, summarize(n, "").noise))
    return Speed(_verdict(lo, hi, lo_same, hi_same, m, same_within), float(np.median(n) / np.median(b)), lo, hi, m,
                 base_s=float(np.median(b)), new_s=float(np.median(n)))


def _verdict(lo: float, hi: float, lo_same: float, hi_same: float, m: float, same_within: float) -> str:
    if lo > 1 + m:
        return "SLOWER"
    if hi < 1 - m:
        return "FASTER"
    if lo_same >= 1 - max(m, same_within) and hi_same <= 1 + max(m, same_within):
        return "SAME"
    return "UNSURE"


def _is_runs(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(r, (list, tuple, np.ndarray)) for r in x)


def _runs(x) -> list[np.ndarray]:
    runs = [_clean(r) for r in (x if _is_runs(x) else [x])]
    return [r for r in runs if len(r)]


def _t(level: float, df: int) -> float:
    """The two-sided `level` quantile of Student's t with df degrees of freedom (the normal's
    from 200 on): its density integrated numerically, the upper limit found by bisection."""
    from statistics import NormalDist

    if df >= 200:
        return NormalDist().inv_cdf(0.5 + level / 2)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def mass(x: float) -> float:  # P(0 < T < x), Simpson's rule on 2000 intervals
        u = np.linspace(0.0, x, 2001)
        f = c * (1 + u * u / df) ** (-(df + 1) / 2)
        return float((x / 6000) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    lo, hi = 0.0, 1.0
    while mass(hi) < level / 2:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < level / 2 else (lo, mid)
    return (lo + hi) / 2


def _speed_runs(base: list[np.ndarray], new: list[np.ndarray], *, level, resamples, seed, same_within,
                drift, drift_df) -> Speed:
    """Repeated runs a side: the newest run of each gives the within-run bootstrap; with a
    between-run spread `drift` known, the geometric means of the run medians and a
    Student's t interval on the log ratio that includes it (never narrower)."""
    if not base or not new:
        return Speed("UNSURE", note="no samples")
    one = speed(base[-1], new[-1], level=level, resamples=resamples, seed=seed, same_within=same_within)
    if drift is None or one.lo is None:
        return one
    nb_, nn_ = (summarize(base[-1], "").noise, summarize(new[-1], "").noise)
    lb = np.mean([math.log(np.median(r)) for r in base])
    ln = np.mean([math.log(np.median(r)) for r in new])
    se = math.sqrt(max(drift, nb_) ** 2 / len(base) + max(drift, nn_) ** 2 / len(new))
    ratio = math.exp(ln - lb)
    df = 10**6 if drift_df is None else max(1, drift_df)
    z, zs = _t(level, df), _t(SAME_LEVEL, df)
    lo, hi = min(one.lo, ratio * math.exp(-z * se)), max(one.hi, ratio * math.exp(z * se))
    lo_same, hi_same = ratio * math.exp(-zs * se), ratio * math.exp(zs * se)
    v = _verdict(lo, hi, lo_same, hi_same, one.margin, same_within)
    note = f"{len(base)} vs {len(new)} runs, between-run spread {drift:.1%}"
    return Speed(v, ratio, lo, hi, one.margin, note, base_s=math.exp(lb), new_s=math.exp(ln))


def between_run_spread(*sides: dict[tuple, list[dict]]) -> tuple[float | None, int]:
    """The pooled standard deviation of log run medians over every record that has two or
    more runs on one side, and its degrees of freedom; (None, df) below DRIFT_MIN_DF."""
    ss, df = 0.0, 0
    for side in sides:
        for recs in side.values():
            meds = [m for m in (_median(r) for r in recs) if m and m > 0]
            if len(meds) >= 2:
                logs = np.log(meds)
                ss += float(np.sum((logs - logs.mean()) ** 2))
                df += len(meds) - 1
    return (math.sqrt(ss / df) if df >= DRIFT_MIN_DF else None), df


def _clean(samples) -> np.ndarray:
    s = np.asarray(samples if samples is not None else [], dtype=np.float64)
    return s[np.isfinite(s) & (s > 0)]


def backend_api(r: dict) -> str | None:
    """The graphics API the record's backend ran on, where its fingerprint names one (wgsl:
    Vulkan, OpenGL, Metal, D3D12); None elsewhere."""
    fp = r.get("fingerprint")
    backends = fp.get("backends") if isinstance(fp, dict) else None
    mine = backends.get(r.get("backend")) if isinstance(backends, dict) else None
    api = mine.get("api", mine.get("backend_type")) if isinstance(mine, dict) else None
    return None if api in (None, "") else str(api)


def identity(r: dict) -> tuple:
    """KEY and what was measured: the case's parameters and the backend's API."""
    return (*(r.get(f) for f in KEY), workload_of(r), backend_api(r))


def _compared(records: list[dict]) -> list[dict]:
    """The records compare looks at: neither unavailable nor the float64 reference."""
    return [r for r in records if r.get("status") != "unavailable"
            and r.get("kind") != "reference" and r.get("backend") != "reference"]


def runs_of(records: list[dict]) -> dict[tuple, list[dict]]:
    """Per identity, the newest record of each run (run_id), oldest run first; unavailable left out."""
    per: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r.get("status") == "unavailable":
            continue
        k = identity(r)
        run = str(r.get("run_id") or id(r))
        have = per.setdefault(k, {}).get(run)
        if have is None or str(r.get("timestamp", "")) >= str(have.get("timestamp", "")):
            per[k][run] = r
    return {k: sorted(v.values(), key=lambda r: str(r.get("timestamp", ""))) for k, v in per.items()}


def latest(records: list[dict]) -> dict[tuple, dict]:
    """The newest record (by timestamp) per identity, unavailable ones left out."""
    best: dict[tuple, dict] = {}
    for r in records:
        if r.get("status") == "unavailable":
            continue
        k = identity(r)
        if k not in best or str(r.get("timestamp", "")) >= str(best[k].get("timestamp", "")):
            best[k] = r
    return best


def accuracy(b: dict, n: dict) -> str | None:
    vb, vn = b.get("verdict"), n.get("verdict")
    if vb == "pass" and vn == "fail":
        return "NEW FAILURE"
    if vb == "fail" and vn == "pass":
        return "FIXED"
    eb, en = b.get("nmse"), n.get("nmse")
    if vb == vn == "pass" and isinstance(eb, (int, float)) and isinstance(en, (int, float)) \
            and en > DRIFT_FACTOR * max(eb, 1e-30):
        return "ACCURACY DRIFT"
    return None


def _median(r: dict) -> float | None:
    m = r.get("median_s", (r.get("time") or {}).get("median"))
    return m if isinstance(m, (int, float)) else None


@dataclass
class Comparison:
    rows: list[dict]
    only_base: int
    only_new: int
    counts: dict = field(default_factory=dict)
    drift: float | None = None  # the between-run spread the verdicts include (None: within-run noise only)
    drift_source: str = ""  # "measured" (with drift_df), "given" or ""
    drift_df: int = 0
    runs: tuple = (1, 1)  # the most runs of one record on each side


def compare(base: list[dict], new: list[dict], same_within: float = SAME_WITHIN,
            drift: float | None = None) -> Comparison:
    """Matched rows, sorted: accuracy changes, slower, faster, then the rest. `drift`: the
    machine's between-run spread, if known (else measured from repeated runs, if any).
    Records of the float64 reference are left out (a yardstick, not a contender)."""
    base, new = _compared(base), _compared(new)
    lb, ln = latest(base), latest(new)
    rb, rn = runs_of(base), runs_of(new)
    measured, df = between_run_spread(rb, rn)
    source = "given" if drift is not None else "measured" if measured is not None else ""
    drift = drift if drift is not None else measured
    # the spread moves whole runs, so its estimate has about one degree of freedom per run
    # beyond the first of each side, however many records it was pooled over
    runs_df = None if source != "measured" else \
        max(1, sum(max((len(v) for v in side.values()), default=1) - 1 for side in (rb, rn)))
    if not lb or not ln:
        raise CompareError(f"{'BASE' if not lb else 'NEW'} has no usable records (only unavailable ones, the "
                           f"float64 reference, or none)")
    common = lb.keys() & ln.keys()
    unpaired = unpaired_rows(lb, ln, common)
    if not common:
        mb, mn = {k[0] for k in lb}, {k[0] for k in ln}
        if not mb & mn:
            raise CompareError(f"nothing matches: BASE is from machine(s) {', '.join(map(str, sorted(mb, key=str)))}"
                               f", NEW from {', '.join(map(str, sorted(mn, key=str)))}; only runs from the same "
                               "machine are compared")
        if unpaired:
            first = unpaired[0]
            raise CompareError(f"nothing matches: {len(unpaired)} record(s) share a name with the other side but not "
                               f"what was measured, e.g. {first['impl']} {first['case']} {first['dtype']}: "
                               f"{first['unpaired'].lower()} ({first['reason']})")
        raise CompareError("nothing matches: no (fusion, backend, variant, case, dtype) is in both BASE and NEW")
    rows = []
    for k in common:
        b, n = lb[k], ln[k]
        sb, sn = (b.get("time") or {}).get("samples"), (n.get("time") or {}).get("samples")
        sp = None
        if sb and sn:
            mode_b, mode_n = b["time"].get("mode"), n["time"].get("mode")
            runs_b = [x["time"]["samples"] for x in rb[k] if (x.get("time") or {}).get("samples")
                      and x["time"].get("mode") == mode_b]
            runs_n = [x["time"]["samples"] for x in rn[k] if (x.get("time") or {}).get("samples")
                      and x["time"].get("mode") == mode_n]
            sp = speed(runs_b or [sb], runs_n or [sn], same_within=same_within, drift=drift, drift_df=runs_df)
            if mode_b and mode_n and mode_b != mode_n:
                sp = Speed("UNSURE", sp.ratio, sp.lo, sp.hi, sp.margin, f"timing modes differ ({mode_b} vs {mode_n})")
        acc = accuracy(b, n)
        rows.append(_row(_name(k), b, n, unpaired=None, accuracy=acc,
                         reason=n.get("reason", "") if acc == "NEW FAILURE" else "",
                         base_s=sp.base_s if sp and sp.base_s else _median(b),
                         new_s=sp.new_s if sp and sp.new_s else _median(n), speed=asdict(sp) if sp else None))
    rows += unpaired
    rows.sort(key=_sort_key)
    counts = {v: 0 for v in ORDER}
    for r in rows:
        for v in (r["accuracy"], (r["speed"] or {}).get("verdict"), r["unpaired"]):
            if v:
                counts[v] += 1
    counts["untimed"] = sum(r["speed"] is None and not r["unpaired"] for r in rows)
    most = (max((len(rb[k]) for k in common), default=1), max((len(rn[k]) for k in common), default=1))
    named = {_name(r) for r in unpaired}
    only_base = sum(_name(k) not in named for k in lb.keys() - common)
    only_new = sum(_name(k) not in named for k in ln.keys() - common)
    return Comparison(rows, only_base, only_new, counts, drift, source, runs_df or 0, most)


def _name(k) -> tuple:
    """The KEY part of an identity (or of a row)."""
    return tuple(k[f] for f in KEY) if isinstance(k, dict) else k[:len(KEY)]


def unpaired_rows(lb: dict[tuple, dict], ln: dict[tuple, dict], common) -> list[dict]:
    """A row for each KEY in both sides with no identity in common: the same name, but other
    case parameters (DIFFERENT WORKLOAD) or another backend API (DIFFERENT API)."""
    paired = {_name(k) for k in common}
    newest_b: dict[tuple, dict] = {}
    newest_n: dict[tuple, dict] = {}
    for side, newest in ((lb, newest_b), (ln, newest_n)):
        for k, r in side.items():
            have = newest.get(_name(k))
            newer = have is None or str(r.get("timestamp", "")) >= str(have.get("timestamp", ""))
            if _name(k) not in paired and newer:
                newest[_name(k)] = r
    rows = []
    for name in newest_b.keys() & newest_n.keys():
        b, n = newest_b[name], newest_n[name]
        if workload_of(b) != workload_of(n):
            what, why = "DIFFERENT WORKLOAD", f"parameters {_params(b)} vs {_params(n)}"
        else:
            what, why = "DIFFERENT API", f"{backend_api(b) or 'not named'} vs {backend_api(n) or 'not named'}"
        rows.append(_row(name, b, n, unpaired=what, accuracy=None, reason=why, base_s=_median(b), new_s=_median(n),
                         speed=None))
    return rows


def _row(name: tuple, b: dict, n: dict, **fields) -> dict:
    """A row of the comparison of base record b and new record n, both of KEY `name`."""
    return {**dict(zip(KEY, name)), "impl": n.get("impl") or f"{name[1]}/{name[2]}/{name[3]}",
            "base_verdict": b.get("verdict"), "new_verdict": n.get("verdict"), "base_nmse": b.get("nmse"),
            "new_nmse": n.get("nmse"), "base_commit": b.get("commit"), "new_commit": n.get("commit"), **fields}


def _params(r: dict) -> str:
    params = r.get("params")
    if not isinstance(params, dict):
        return f"(params_id {r.get('params_id')})"
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _sort_key(r: dict) -> tuple:
    """Accuracy changes first, then slower (worst first), faster (best first), same, unsure."""
    sp = r["speed"] or {}
    ratio = sp.get("ratio") or 1.0
    return (ORDER[r["accuracy"]] if r["accuracy"] else 9, ORDER.get(sp.get("verdict") or r["unpaired"], 9),
            -ratio if sp.get("verdict") == "SLOWER" else ratio, [str(r[f]) for f in KEY])


def load(path: str) -> list[dict]:
    if not Path(path).exists():
        raise CompareError(f"{path}: no such file or folder")
    loaded = read_records([path])
    for p in loaded.problems:
        print(f"warning: {p}", file=sys.stderr)
    if not loaded.records:
        raise CompareError(f"{path}: no fusebench records in it")
    return loaded.records


def summary_line(c: Comparison) -> str:
    k = c.counts
    matched = len(c.rows) - k["DIFFERENT WORKLOAD"] - k["DIFFERENT API"]
    return (f"{matched} matched: {k['NEW FAILURE']} new failures, {k['FIXED']} fixed, "
            f"{k['ACCURACY DRIFT']} accuracy drift; {k['SLOWER']} slower, {k['FASTER']} faster, {k['SAME']} same, "
            f"{k['UNSURE']} unsure, {k['untimed']} untimed; {c.only_base} only in BASE, {c.only_new} only in NEW"
            + (f"; {k['DIFFERENT WORKLOAD']} different workload, {k['DIFFERENT API']} different API (not compared)"
               if k["DIFFERENT WORKLOAD"] or k["DIFFERENT API"] else ""))


def drift_line(c: Comparison) -> str:
    """What the speed verdicts take into account, in one line."""
    if c.drift_source == "measured":
        return (f"between-run spread on this machine: {c.drift:.1%} (from repeated runs, up to {c.runs[0]} vs "
                f"{c.runs[1]} a record: {c.drift_df} degrees of freedom); the verdicts include it")
    if c.drift_source == "given":
        return f"between-run spread given: {c.drift:.1%} (--drift); the verdicts include it"
    moved = c.counts["SLOWER"] + c.counts["FASTER"]
    return ("one run a side: the verdicts cannot see between-run drift, only the noise within each run"
            + (f" ({moved} SLOWER/FASTER may be the machine's drift between the two runs)" if moved else "")
            + "; on a machine that drifts between runs, give each side two or more runs (append several bench runs "
              "to one file, or a folder) or --drift")


def _ms(s) -> str:
    return "" if s is None else f"{s * 1e3:.4g}"


def _verdict_cell(r: dict) -> str:
    style = {"NEW FAILURE": "bold red", "ACCURACY DRIFT": "yellow", "FIXED": "green", "SLOWER": "bold red",
             "FASTER": "green", "SAME": "dim", "UNSURE": "yellow"}
    parts = []
    if r["unpaired"]:
        return f"[yellow]{r['unpaired']}[/]: {r['reason']} (not compared)"
    if r["accuracy"]:
        extra = f": {r['reason']}" if r["reason"] else ""
        if r["accuracy"] == "ACCURACY DRIFT":
            extra = f": NMSE {r['base_nmse']:.3g} -> {r['new_nmse']:.3g}"
        parts.append(f"[{style[r['accuracy']]}]{r['accuracy']}[/]{extra}")
    if r["speed"]:
        sp = r["speed"]
        parts.append(f"[{style[sp['verdict']]}]{sp['verdict']}[/]" + (f" ({sp['note']})" if sp["note"] else ""))
    elif not r["accuracy"]:
        parts.append(f"[dim]{r['new_verdict'] or '?'} (untimed)[/]")
    return "; ".join(parts)


def print_table(c: Comparison, console, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title))
    for col in ("machine", "fusion", "impl", "case", "dtype", "base ms", "new ms", f"ratio [{LEVEL:.0%} CI]",
                "verdict"):
        t.add_column(col, overflow="fold", justify="right" if col.endswith("ms") else "left")
    for r in c.rows:
        sp = r["speed"] or {}
        ratio = ""
        if sp.get("ratio") is not None:
            ratio = f"{sp['ratio']:.3f}" + (f" [{sp['lo']:.3f}, {sp['hi']:.3f}] ±{sp['margin']:.1%}"
                                             if sp.get("lo") is not None else "")
        t.add_row(*(escape(str(r[f])) for f in ("machine", "fusion")), escape(f"{r['backend']}/{r['variant']}"),
                  escape(str(r["case"])), escape(str(r["dtype"])), _ms(r["base_s"]), _ms(r["new_s"]), ratio,
                  _verdict_cell({**r, "reason": escape(r["reason"] or "")}))
    console.print(t)


def main(base: str, new: str, *, as_json: bool = False, fail_on_slower: bool = True,
         fail_on_accuracy: bool = True, same_within: float = SAME_WITHIN, drift: float | None = None,
         console=None) -> int:
    """Compare two results files/folders, print the outcome; 1 on a regression, else 0."""
    c = compare(load(base), load(new), same_within, drift)
    failed = (fail_on_accuracy and c.counts["NEW FAILURE"] > 0) or (fail_on_slower and c.counts["SLOWER"] > 0)
    if as_json:
        print(json.dumps({"base": base, "new": new, "rule": {"level": LEVEL, "resamples": RESAMPLES,
                          "same_level": SAME_LEVEL, "min_margin": MIN_MARGIN, "same_within": same_within, "min_samples": MIN_SAMPLES, "drift_factor": DRIFT_FACTOR,
                                   "between_run_spread": c.drift, "spread_source": c.drift_source or None,
                                   "spread_df": c.drift_df},
                          "counts": c.counts, "only_base": c.only_base, "only_new": c.only_new, "note": drift_line(c),
                          "failed": failed, "rows": c.rows}, indent=2, default=str))
    else:
        if console is None:
            from rich.console import Console

            console = Console()
        print_table(c, console, f"compare: {base} -> {new}")
    print(summary_line(c), file=sys.stderr if as_json else sys.stdout)
    print(drift_line(c), file=sys.stderr if as_json else sys.stdout)
    if c.counts["UNSURE"] and not as_json:
        more = ("more runs a side (the between-run spread dominates)" if c.drift is not None
                else "more samples (bench --min-samples/--budget)")
        print(f"UNSURE: the samples cannot tell a change of {same_within:.0%} (or the noise) from none; {more} "
              "narrow the interval")
    return 1 if failed else 0
