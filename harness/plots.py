"""Static plots for the HTML report, rendered at report time as PNG data URIs.

Each function takes the report rows (harness.report.build_rows) and returns a
`data:image/png;base64,...` string, or None when there is nothing to draw. matplotlib
is imported inside the functions and used through `Figure` (no pyplot global state),
so the report works headless and the page needs no network to show the images.

- speedup_bars: per fusion, each fused kernel's speedup over its unfused chain
  (one bar per case · dtype · machine · backend, log axis, 1× marked).
- roofline: per machine and backend, arithmetic intensity (FLOP/byte) against the
  achieved GFLOP/s, under the machine's measured copy-bandwidth and matmul ceilings.
- error_by_dtype: per fusion, NMSE against the float64 reference for each dtype,
  fused kernels beside the unfused chains and the torch peers.
"""

from __future__ import annotations

import base64
import io
import math

KIND_STYLE = {"fused": ("tab:blue", "o"), "unfused": ("tab:orange", "s"), "peer": ("tab:green", "^")}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=96, layout="constrained")
    return fig, fig.add_subplot()


def _data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _times_axis(axis) -> None:
    """Label a log axis of ratios as 0.5×, 1×, 2× rather than 2×10⁰."""
    from matplotlib.ticker import FuncFormatter

    label = FuncFormatter(lambda v, _: f"{v:g}×")
    axis.set_major_formatter(label)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}×" if f"{v:g}"[0] in "235" else ""))


def speedup_bars(rows: list[dict], fusion: str) -> str | None:
    bars = [r for r in rows if r["fusion"] == fusion and r["kind"] == "fused" and r.get("speedup_chain")]
    if not bars:
        return None
    bars.sort(key=lambda r: (r["case"], r["dtype"], r["machine"], r["backend"]))
    labels = [f"{r['case']} {r['dtype']} · {r['machine']} {r['backend']}" for r in bars]
    values = [r["speedup_chain"] for r in bars]
    colors = ["tab:green" if v >= 1 and r.get("verdict") == "pass" else "tab:red" for v, r in zip(values, bars)]
    fig, ax = _figure(9, 0.9 + 0.22 * len(bars))
    y = range(len(bars))
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    _times_axis(ax.xaxis)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speedup over the unfused chain (median / median; red: slower or failing)")
    ax.set_title(f"{fusion}: fused kernel vs unfused chain")
    return _data_uri(fig)


def roofline(rows: list[dict], machine: str, backend: str) -> str | None:
    pts = [r for r in rows if r["machine"] == machine and r["backend"] == backend and r["kind"] in KIND_STYLE
           and r.get("median_s") and r.get("flops") and r.get("bytes")]
    if not pts:
        return None
    peak = next((r["peak"] for r in pts if r.get("peak")), {})
    fig, ax = _figure(6, 4)
    for kind, (color, marker) in KIND_STYLE.items():
        sel = [r for r in pts if r["kind"] == kind]
        if sel:
            ax.scatter([r["flops"] / r["bytes"] for r in sel], [r["gflops"] for r in sel], c=color, marker=marker,
                       s=18, label=kind, alpha=0.8)
    xs = [r["flops"] / r["bytes"] for r in pts]
    lo, hi = min(xs) / 2, max(xs) * 2
    bw = peak.get("copy_gbps")
    flops = [v for k, v in peak.items() if k.startswith("matmul_gflops") and v]
    if bw:
        ax.plot([lo, hi], [bw * lo, bw * hi], color="gray", linestyle="--", label=f"copy {bw:.0f} GB/s")
    ceilings: dict[float, list[str]] = {}  # one line per distinct rate, naming every dtype at it
    for k in sorted(k for k in peak if k.startswith("matmul_gflops") and peak[k]):
        ceilings.setdefault(round(peak[k]), []).append(k.removeprefix("matmul_gflops").lstrip("_") or "float32")
    for rate, names in ceilings.items():
        ax.axhline(rate, color="gray", linestyle=":", linewidth=0.8)
        ax.annotate(f"matmul ({', '.join(names)}) {rate} GFLOP/s", (lo, rate), fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    if flops:
        ax.set_ylim(top=max(flops) * 2)
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"roofline: {machine} · {backend}")
    ax.legend(fontsize=7, loc="lower right")
    return _data_uri(fig)


def error_by_dtype(rows: list[dict], fusion: str) -> str | None:
    # NaN or Inf NMSE (a kernel that wrote NaN) has no place on a log axis: the table shows it
    pts = [r for r in rows if r["fusion"] == fusion and r["kind"] != "reference" and r.get("nmse") is not None
           and math.isfinite(r["nmse"])]
    if not pts:
        return None
    dtypes = sorted({r["dtype"] for r in pts}, key=lambda d: ("float32", "float16", "bfloat16").index(d)
                    if d in ("float32", "float16", "bfloat16") else 9)
    fig, ax = _figure(6, 3.6)
    offsets = {"fused": -0.2, "unfused": 0.0, "peer": 0.2}
    for kind, (color, marker) in KIND_STYLE.items():
        sel = [r for r in pts if r["kind"] == kind]
        if sel:
            ax.scatter([dtypes.index(r["dtype"]) + offsets[kind] for r in sel],
                       [max(r["nmse"], 1e-30) for r in sel], c=color, marker=marker, s=18, alpha=0.7, label=kind)
    ax.set_xticks(range(len(dtypes)), dtypes)
    ax.set_yscale("log")
    ax.set_ylabel("NMSE vs float64 reference")
    ax.set_title(f"{fusion}: error by dtype")
    ax.legend(fontsize=7)
    return _data_uri(fig)
