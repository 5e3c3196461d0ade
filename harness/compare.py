"""Two results -> what changed: accuracy verdicts, then speed beyond noise (`fusebench compare`).

Records are matched by (machine, fusion, backend, variant, case, dtype), the newest of each
side by timestamp; only runs from the same machine are compared. Unavailable records are
left out (they count as "only in one side").

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

The bootstrap sees only the variation within each run; a machine that drifts between
runs (thermal state, other load) is what the 1 % floor of the margin guards against.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from harness.results import read_records
from harness.timing import summarize

KEY = ("machine", "fusion", "backend", "variant", "case", "dtype")
LEVEL, SAME_LEVEL, RESAMPLES, SEED = 0.99, 0.90, 2000, 0
MIN_MARGIN = 0.01
SAME_WITHIN = 0.05
MIN_SAMPLES = 5
DRIFT_FACTOR = 10.0
ORDER = {"NEW FAILURE": 0, "ACCURACY DRIFT": 1, "FIXED": 2, "SLOWER": 3, "FASTER": 4, "SAME": 5, "UNSURE": 6}


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


def speed(base, new, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED,
          same_within: float = SAME_WITHIN) -> Speed:
    """The speed verdict for two sample sets (seconds); see the module docstring."""
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
    if lo > 1 + m:
        v = "SLOWER"
    elif hi < 1 - m:
        v = "FASTER"
    elif lo_same >= 1 - max(m, same_within) and hi_same <= 1 + max(m, same_within):
        v = "SAME"
    else:
        v = "UNSURE"
    return Speed(v, float(np.median(n) / np.median(b)), lo, hi, m)


def _clean(samples) -> np.ndarray:
    s = np.asarray(samples if samples is not None else [], dtype=np.float64)
    return s[np.isfinite(s) & (s > 0)]


def latest(records: list[dict]) -> dict[tuple, dict]:
    """The newest record (by timestamp) per KEY, unavailable ones left out."""
    best: dict[tuple, dict] = {}
    for r in records:
        if r.get("status") == "unavailable":
            continue
        k = tuple(r.get(f) for f in KEY)
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


def compare(base: list[dict], new: list[dict], same_within: float = SAME_WITHIN) -> Comparison:
    """Matched rows, sorted: accuracy changes, slower, faster, then the rest."""
    lb, ln = latest(base), latest(new)
    if not lb or not ln:
        raise CompareError(f"{'BASE' if not lb else 'NEW'} has no usable records (only unavailable ones, or none)")
    common = lb.keys() & ln.keys()
    if not common:
        mb, mn = {k[0] for k in lb}, {k[0] for k in ln}
        if not mb & mn:
            raise CompareError(f"nothing matches: BASE is from machine(s) {', '.join(map(str, sorted(mb, key=str)))}"
                               f", NEW from {', '.join(map(str, sorted(mn, key=str)))}; only runs from the same "
                               "machine are compared")
        raise CompareError("nothing matches: no (fusion, backend, variant, case, dtype) is in both BASE and NEW")
    rows = []
    for k in common:
        b, n = lb[k], ln[k]
        sb, sn = (b.get("time") or {}).get("samples"), (n.get("time") or {}).get("samples")
        sp = None
        if sb and sn:
            sp = speed(sb, sn, same_within=same_within)
            mb, mn = b["time"].get("mode"), n["time"].get("mode")
            if mb and mn and mb != mn:
                sp = Speed("UNSURE", sp.ratio, sp.lo, sp.hi, sp.margin, f"timing modes differ ({mb} vs {mn})")
        acc = accuracy(b, n)
        rows.append({**dict(zip(KEY, k)), "impl": n.get("impl") or f"{k[1]}/{k[2]}/{k[3]}",
                     "accuracy": acc, "reason": n.get("reason", "") if acc == "NEW FAILURE" else "",
                     "base_verdict": b.get("verdict"), "new_verdict": n.get("verdict"),
                     "base_nmse": b.get("nmse"), "new_nmse": n.get("nmse"),
                     "base_s": _median(b), "new_s": _median(n), "speed": asdict(sp) if sp else None,
                     "base_commit": b.get("commit"), "new_commit": n.get("commit")})
    rows.sort(key=_sort_key)
    counts = {v: 0 for v in ORDER}
    for r in rows:
        for v in (r["accuracy"], (r["speed"] or {}).get("verdict")):
            if v:
                counts[v] += 1
    counts["untimed"] = sum(r["speed"] is None for r in rows)
    return Comparison(rows, len(lb.keys() - common), len(ln.keys() - common), counts)


def _sort_key(r: dict) -> tuple:
    """Accuracy changes first, then slower (worst first), faster (best first), same, unsure."""
    sp = r["speed"] or {}
    ratio = sp.get("ratio") or 1.0
    return (ORDER[r["accuracy"]] if r["accuracy"] else 9, ORDER.get(sp.get("verdict"), 9),
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
    return (f"{len(c.rows)} matched: {k['NEW FAILURE']} new failures, {k['FIXED']} fixed, "
            f"{k['ACCURACY DRIFT']} accuracy drift; {k['SLOWER']} slower, {k['FASTER']} faster, {k['SAME']} same, "
            f"{k['UNSURE']} unsure, {k['untimed']} untimed; {c.only_base} only in BASE, {c.only_new} only in NEW")


def _ms(s) -> str:
    return "" if s is None else f"{s * 1e3:.4g}"


def _verdict_cell(r: dict) -> str:
    style = {"NEW FAILURE": "bold red", "ACCURACY DRIFT": "yellow", "FIXED": "green", "SLOWER": "bold red",
             "FASTER": "green", "SAME": "dim", "UNSURE": "yellow"}
    parts = []
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
         fail_on_accuracy: bool = True, same_within: float = SAME_WITHIN, console=None) -> int:
    """Compare two results files/folders, print the outcome; 1 on a regression, else 0."""
    c = compare(load(base), load(new), same_within)
    failed = (fail_on_accuracy and c.counts["NEW FAILURE"] > 0) or (fail_on_slower and c.counts["SLOWER"] > 0)
    if as_json:
        print(json.dumps({"base": base, "new": new, "rule": {"level": LEVEL, "resamples": RESAMPLES,
                          "same_level": SAME_LEVEL, "min_margin": MIN_MARGIN, "same_within": same_within, "min_samples": MIN_SAMPLES, "drift_factor": DRIFT_FACTOR},
                          "counts": c.counts, "only_base": c.only_base, "only_new": c.only_new,
                          "failed": failed, "rows": c.rows}, indent=2, default=str))
    else:
        if console is None:
            from rich.console import Console

            console = Console()
        print_table(c, console, f"compare: {base} -> {new}")
    print(summary_line(c), file=sys.stderr if as_json else sys.stdout)
    if c.counts["UNSURE"] and not as_json:
        print(f"UNSURE: the samples cannot tell a change of {same_within:.0%} (or the noise) from none; more samples "
              "(bench --min-samples/--budget) narrow the interval")
    return 1 if failed else 0
