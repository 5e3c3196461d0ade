"""Plots for the HTML report, drawn at report time as inline SVG (no image files, no network,
no plotting library): every point and bar carries what it is, as an SVG <title>: the
browser's tooltip, which the page also writes under the plot on hover or tap.

Each function takes the report rows (harness.report.build_rows) and returns the HTML of one
<figure class="plot ...">, or None when there is nothing to draw.

- speedup_bars: per fusion, each fused kernel's speedup over its unfused chain, one bar per
  case · dtype · (machine) · backend from 1× on a log axis, with its 99 % interval as a
  whisker, coloured by that interval (report.interval_class): faster (all of it above 1×),
  slower (all below) or unsure (it holds 1×: this run cannot tell); a kernel that fails the
  accuracy gate is outlined dashed.
- roofline: per machine and backend, arithmetic intensity (FLOP/byte) against the achieved
  GFLOP/s under the machine's measured copy-bandwidth and matmul ceilings; points coloured
  by fusion, shaped by kind; a point above its roof is ringed.
- error_by_dtype: per fusion, NMSE against the float64 reference for each dtype, fused
  kernels beside the unfused chains and the torch peers, with the gate's bounds.
"""

from __future__ import annotations

import hashlib
import math
import re
from html import escape

KIND_COLOR = {"fused": "#1f77b4", "unfused": "#ff7f0e", "peer": "#2ca02c"}
KIND_NAME = {"fused": "fused kernel", "unfused": "unfused chain", "peer": "torch peer"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _e(s) -> str:
    return escape(str(s), quote=True)


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


def _f(v: float) -> str:
    return f"{v:.1f}"


def _tick_text(v: float, unit: str = "") -> str:
    t = f"{v:g}" if 1e-3 <= v < 1e5 else f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
    return t + unit


class LogAxis:
    """log10 scale from [lo, hi] (positive, finite) onto the pixels [a, b]."""

    def __init__(self, lo: float, hi: float, a: float, b: float):
        lo, hi = max(lo, 1e-300), min(max(hi, lo * 1.0001), 1e300)
        self.l0, self.l1, self.a, self.b = math.log10(lo), math.log10(hi), a, b
        if self.l1 - self.l0 < 1e-9:
            self.l0, self.l1 = self.l0 - 0.5, self.l1 + 0.5

    def __call__(self, v: float) -> float:
        lv = math.log10(min(max(v, 1e-300), 1e300))
        return self.a + (lv - self.l0) / (self.l1 - self.l0) * (self.b - self.a)

    def ticks(self, most: int = 7) -> list[float]:
        """Decades (every k-th, at most `most`), or 1-2-5 steps where the range is under two decades."""
        span = self.l1 - self.l0
        if span < 2:
            out = [m * 10.0 ** d for d in range(math.floor(self.l0) - 1, math.ceil(self.l1) + 1) for m in (1, 2, 5)]
            out = [v for v in out if self.l0 - 1e-9 <= math.log10(v) <= self.l1 + 1e-9]
            return out if len(out) <= most + 3 else out[::2]
        step = max(1, math.ceil(span / most))
        return [10.0 ** d for d in range(math.ceil(self.l0), math.floor(self.l1) + 1) if d % step == 0]


def _range(values, pad: float = 1.5) -> tuple[float, float]:
    vs = [v for v in values if _ok(v)]
    lo, hi = (min(vs), max(vs)) if vs else (1.0, 10.0)
    return lo / pad, hi * pad


def _figure(kind: str, svg: str, width: int, height: int, caption: str = "", legend: str = "", label: str = "") -> str:
    return (f'<figure class="plot {kind}" style="width: {width}px"><svg role="img" aria-label="{_e(label)}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}">{svg}</svg>'
            + (f'<div class="legend">{legend}</div>' if legend else "")
            + '<figcaption class="hover muted">hover (or tap) a point, bar or line for what it is</figcaption>'
            + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>")


def _text(x, y, s, anchor="start", cls="", size=None, extra="") -> str:
    return (f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}"' + (f' class="{cls}"' if cls else "")
            + (f' font-size="{size}"' if size else "") + extra + f">{_e(s)}</text>")


def _mark(r: dict, kind: str, x: float, y: float, color: str, label: str, cls: str = "pt") -> str:
    """A point: ● fused kernel, □ unfused chain, △ torch peer."""
    title = f"<title>{_e(label)}</title>"
    attrs = f'class="{cls} {kind}"'
    if kind == "fused":
        return f'<circle {attrs} cx="{_f(x)}" cy="{_f(y)}" r="4.5" fill="{color}" fill-opacity="0.85">{title}</circle>'
    if kind == "unfused":
        return (f'<rect {attrs} x="{_f(x - 4)}" y="{_f(y - 4)}" width="8" height="8" fill="white" fill-opacity="0.6" '
                f'stroke="{color}" stroke-width="1.6">{title}</rect>')
    return (f'<path {attrs} d="M{_f(x)},{_f(y - 5)} L{_f(x + 4.5)},{_f(y + 4)} L{_f(x - 4.5)},{_f(y + 4)} Z" '
            f'fill="white" fill-opacity="0.6" stroke="{color}" stroke-width="1.6">{title}</path>')


def _rate(giga: float, unit: str) -> str:
    """A rate given in G<unit>, in the unit that reads best: 4.23 TB/s, 349 MFLOP/s."""
    for scale, prefix in ((1e3, "T"), (1.0, "G"), (1e-3, "M"), (1e-6, "k")):
        if giga >= scale:
            return f"{giga / scale:.3g} {prefix}{unit}"
    return f"{giga * 1e9:.3g} {unit}"


def _impl(r: dict, machine: bool = False) -> str:
    return f"{r['backend']}/{r['variant']}" + (f" on {r['machine']}" if machine else "")


def speedup_bars(rows: list[dict], fusion: str) -> str | None:
    from harness.report import interval_class, interval_text

    bars = [r for r in rows if r["fusion"] == fusion and r["kind"] == "fused" and _ok(r.get("speedup_chain"))]
    if not bars:
        return None
    machines = len({r["machine"] for r in bars}) > 1
    bars.sort(key=lambda r: (r["case"], r["dtype"], r["machine"], r["backend"], r["variant"]))
    names = [f"{r['case']} {r['dtype']} · " + (f"{r['machine']} " if machines else "") + _impl(r) for r in bars]
    label_w = min(max(6.3 * max(map(len, names)) + 12, 120), 430)  # ~6.3 px a character at 11 px
    plot_w, value_w, row_h, top, bottom = 280, 150, 17, 22, 34
    width, height = round(label_w + plot_w + value_w), top + row_h * len(bars) + bottom
    ends = [v for r in bars for v in (r["speedup_chain"], *(r.get("speedup_chain_ci") or ()))]
    lo, hi = _range(ends + [1 / 1.5, 1.5], pad=1.15)
    x = LogAxis(lo, hi, label_w, label_w + plot_w)
    out = [_text(4, 14, f"{fusion}: fused kernel over the unfused chain", size=12)]
    for t in x.ticks():
        out.append(f'<line class="grid" x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{top}" y2="{height - bottom}"/>')
        out.append(_text(x(t), height - bottom + 13, _tick_text(t, "×"), "middle"))
    for i, r in enumerate(bars):
        v, ci = r["speedup_chain"], r.get("speedup_chain_ci")
        cls = interval_class(ci) + ("" if r.get("verdict") == "pass" else " fail")
        y0 = top + i * row_h
        name = names[i] if len(names[i]) <= 66 else names[i][:65] + "…"
        said = (f"{v:.2f}×" + (f" ({interval_text(ci)})" if ci else " (no interval)")
                + {"faster": " faster", "slower": " slower", "unsure": ": cannot tell"}[interval_class(ci)]
                + ("" if r.get("verdict") == "pass" else f"; {r.get('verdict') or r.get('status')}: fails the gate"))
        label = f"{fusion} · {name}: {said} than the chain".replace(": cannot tell than the chain",
                                                                     ": cannot tell from the chain")
        a, b = sorted((x(1), x(v)))
        lo_ci, hi_ci = (ci if ci else (v, v))
        out.append(f'<g><title>{_e(label)}</title>'
                   + _text(label_w - 6, y0 + 12, name, "end")
                   + f'<rect class="bar {cls}" data-v="{v:.6g}"'
                   + (f' data-lo="{ci[0]:.6g}" data-hi="{ci[1]:.6g}"' if ci else "")
                   + f' x="{_f(a)}" y="{y0 + 3}" width="{_f(max(b - a, 1))}" height="{row_h - 6}"/>'
                   + (f'<line class="axis" x1="{_f(x(lo_ci))}" x2="{_f(x(hi_ci))}" y1="{y0 + row_h / 2}" '
                      f'y2="{y0 + row_h / 2}"/>' if ci else "")
                   + _text(label_w + plot_w + 6, y0 + 12, f"{v:.2f}×" + (f" {interval_text(ci)}" if ci else "")
                           + ("" if r.get("verdict") == "pass" else " FAIL"),
                           cls="bad" if "fail" in cls else "") + "</g>")
    out.append(f'<line class="one" x1="{_f(x(1))}" x2="{_f(x(1))}" y1="{top - 4}" y2="{height - bottom + 2}"/>')
    out.append(_text(label_w + plot_w / 2, height - 4, "× over the unfused chain (log)", "middle"))
    legend = ('<span><i style="background:#3a9a4a"></i>faster (99 % interval above 1×)</span>'
              '<span><i style="background:#d04040"></i>slower (interval below 1×)</span>'
              '<span><i style="background:#aaa"></i>cannot tell (interval holds 1×)</span>'
              '<span>dashed outline: fails the accuracy gate</span>')
    return _figure("speedup", "".join(out), width, height, legend=legend, label=f"{fusion} speedup over the chain")


def roofline(rows: list[dict], machine: str, backend: str) -> str | None:
    from harness.report import KIND_ORDER

    pts = [r for r in rows if r["machine"] == machine and r["backend"] == backend and r["kind"] in KIND_COLOR
           and _ok(r.get("median_s")) and _ok(r.get("flops")) and _ok(r.get("bytes")) and _ok(r.get("gflops"))]
    if not pts:
        return None
    peak = next((r["peak"] for r in pts if isinstance(r.get("peak"), dict) and r["peak"]), {})
    bw = peak.get("copy_gbps") if _ok(peak.get("copy_gbps")) else None
    ceilings: dict[float, list[str]] = {}  # one line per distinct rate, naming every dtype at it
    for k in sorted(k for k in peak if str(k).startswith("matmul_gflops") and _ok(peak[k])):
        ceilings.setdefault(float(f"{peak[k]:.3g}"), []).append(k.removeprefix("matmul_gflops").lstrip("_") or "float32")
    left, right, top, bottom = 64, 170, 26, 40
    pw, ph = 450, 330
    width, height = left + pw + right, top + ph + bottom
    ai = [r["flops"] / r["bytes"] for r in pts]
    x = LogAxis(*_range(ai, pad=2.5), left, left + pw)
    ys = [r["gflops"] for r in pts] + list(ceilings)
    if bw:  # the copy roof where the points are
        ys += [bw * min(ai), bw * max(ai)]
    y = LogAxis(*_range(ys, pad=2.0), top + ph, top)
    xl, xh = 10 ** x.l0, 10 ** x.l1
    clip = "clip-" + re.sub(r"[^A-Za-z0-9_-]", "_", f"{machine}-{backend}") + "-" + \
        hashlib.sha1(f"{machine}\0{backend}".encode()).hexdigest()[:6]
    out = [f'<defs><clipPath id="{clip}"><rect x="{left}" y="{top}" width="{pw}" '
           f'height="{ph}"/></clipPath></defs>',
           _text(left, 15, f"roofline: {machine} · {backend}", size=12)]
    for t in x.ticks():
        out.append(f'<line class="grid" x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{top}" y2="{top + ph}"/>')
        out.append(_text(x(t), top + ph + 13, _tick_text(t), "middle"))
    for t in y.ticks():
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{_f(y(t))}" y2="{_f(y(t))}"/>')
        out.append(_text(left - 4, y(t) + 4, _tick_text(t), "end"))
    out.append(f'<rect class="axis" x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none"/>')
    roofs = [f'<g clip-path="url(#{clip})">']
    top_rate = max(ceilings, default=None)
    labels = []  # (y, text, second line) of each matmul roof, right of the plot
    if bw:
        x_end = min(xh, top_rate / bw) if top_rate else xh
        x_in = max(xl, 10 ** y.l0 / bw)  # where the copy roof comes into the plot
        roofs.append(f'<line class="roof" x1="{_f(x(xl))}" y1="{_f(y(bw * xl))}" x2="{_f(x(x_end))}" '
                     f'y2="{_f(y(bw * x_end))}"><title>measured copy bandwidth {_rate(bw, "B/s")}</title></line>')
        if x_in < x_end:  # its name along it, a little above, a fifth of the way in
            lx = 10 ** (math.log10(x_in) + 0.2 * (math.log10(x_end) - math.log10(x_in)))
            angle = math.degrees(math.atan2(y(bw * x_end) - y(bw * x_in), x(x_end) - x(x_in)))
            out_copy = _text(x(lx), y(bw * lx) - 5, f"copy {_rate(bw, 'B/s')}", size=10,
                             extra=f' transform="rotate({angle:.1f} {_f(x(lx))} {_f(y(bw * lx) - 5)})"')
        else:
            labels.append((y(bw * x_end), f"copy {_rate(bw, 'B/s')}", "(solid line)"))
            out_copy = ""
    for rate, names in sorted(ceilings.items()):
        x0 = max(xl, rate / bw) if bw else xl
        roofs.append(f'<line class="roof mm" x1="{_f(x(x0))}" y1="{_f(y(rate))}" x2="{_f(x(xh))}" y2="{_f(y(rate))}">'
                     f'<title>measured matmul rate ({", ".join(names)}) {_rate(rate, "FLOP/s")}</title></line>')
        labels.append((y(rate), f"matmul {_rate(rate, 'FLOP/s')}", ", ".join(names)))
    roofs.append("</g>")
    out += roofs
    if bw:
        out.append(out_copy)
    labels.sort()
    placed: list[float] = []
    for ly, text, more in labels:  # from the top down, never on top of each other
        ly = min(max(ly + 4, top + 10), top + ph)
        if placed and ly < placed[-1] + 26:
            ly = placed[-1] + 26
        placed.append(ly)
        out.append(_text(left + pw + 5, ly, text, size=10))
        if more:
            out.append(_text(left + pw + 5, ly + 11, more, size=9, extra=' fill="#666"'))
    fusions = sorted({r["fusion"] for r in pts})
    color = {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(fusions)}
    order = sorted(range(len(pts)), key=lambda i: KIND_ORDER.get(pts[i]["kind"], 9), reverse=True)  # fused on top
    for i in order:
        r = pts[i]
        # the point's own roof: the copy line, and the matmul rate of its dtype (as runner's % of peak)
        fl = next((peak[k] for k in (f"matmul_gflops_{r['dtype']}", "matmul_gflops") if _ok(peak.get(k))), None)
        roof = min([v for v in (fl, bw * ai[i] if bw else None) if v], default=None)
        above = roof is not None and r["gflops"] > roof * 1.0001
        frac = r.get("frac_peak")
        label = (f"{r['fusion']} · {_impl(r)} · {r['case']} {r['dtype']}: {r['gflops']:.3g} GFLOP/s, "
                 + (f"{r['gbps']:.3g} GB/s, " if _ok(r.get("gbps")) else "") + f"{ai[i]:.3g} FLOP/byte"
                 + (f", {100 * frac:.0f}% of peak" if _ok(frac) else "")
                 + (" — above the measured roof" if above else "")
                 + ("" if r.get("verdict") in (None, "pass") else f"; {r.get('verdict')}"))
        cx, cy = x(ai[i]), y(r["gflops"])
        if above:
            out.append(f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="7.5" fill="none" stroke="#d00" stroke-width="1.2"/>')
        out.append(_mark(r, r["kind"], cx, cy, color[r["fusion"]], label, "pt above" if above else "pt"))
    out.append(_text(left + pw / 2, height - 6, "arithmetic intensity (FLOP / byte)", "middle"))
    out.append(_text(14, top + ph / 2, "achieved GFLOP/s", "middle", extra=f' transform="rotate(-90 14 {_f(top + ph / 2)})"'))
    legend = "".join(f'<span><i style="background:{color[f]}"></i>{_e(f)}</span>' for f in fusions) + \
        "<span>● fused · □ chain · △ torch peer</span>"
    return _figure("roofline", "".join(out), width, height, legend=legend, label=f"roofline {machine} {backend}")


def error_by_dtype(rows: list[dict], fusion: str) -> str | None:
    # NaN or Inf NMSE (a kernel that wrote NaN) has no place on a log axis: the table shows it
    pts = [r for r in rows if r["fusion"] == fusion and r["kind"] in KIND_COLOR
           and isinstance(r.get("nmse"), (int, float)) and math.isfinite(r["nmse"])]
    if not pts:
        return None
    known = ("float32", "float16", "bfloat16")
    dtypes = sorted({r["dtype"] for r in pts}, key=lambda d: (known.index(d) if d in known else 9, str(d)))
    left, right, top, bottom, col = 64, 12, 26, 40, 120
    width, ph = left + col * len(dtypes) + right, 250
    height = top + ph + bottom
    floor = 1e-30
    bounds = {(r["dtype"], float(r["nmse_bound"])) for r in pts if _ok(r.get("nmse_bound"))}
    y = LogAxis(*_range([max(r["nmse"], floor) for r in pts] + [b for _, b in bounds], pad=3), top + ph, top)
    out = [_text(left, 15, f"{fusion}: NMSE against the float64 reference", size=12)]
    for t in y.ticks():
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_f(y(t))}" y2="{_f(y(t))}"/>')
        out.append(_text(left - 4, y(t) + 4, _tick_text(t), "end"))
    out.append(f'<rect class="axis" x="{left}" y="{top}" width="{width - left - right}" height="{ph}" fill="none"/>')
    for i, d in enumerate(dtypes):
        out.append(_text(left + col * (i + 0.5), top + ph + 14, d, "middle"))
    for d, b in sorted(bounds):
        cx = left + col * (dtypes.index(d) + 0.5)
        out.append(f'<line class="bound" x1="{_f(cx - col * 0.42)}" x2="{_f(cx + col * 0.42)}" y1="{_f(y(b))}" '
                   f'y2="{_f(y(b))}"><title>accuracy gate: NMSE bound {b:.3g} ({_e(d)})</title></line>')
    offsets = {"fused": -0.22, "unfused": 0.0, "peer": 0.22}
    for r in sorted(pts, key=lambda r: list(KIND_COLOR).index(r["kind"]), reverse=True):
        cx = left + col * (dtypes.index(r["dtype"]) + 0.5 + offsets[r["kind"]])
        label = (f"{fusion} · {_impl(r)} · {r['case']} {r['dtype']} on {r['machine']}: NMSE {r['nmse']:.3g}"
                 + (f" (bound {r['nmse_bound']:.3g})" if _ok(r.get("nmse_bound")) else "")
                 + ("" if r.get("verdict") in (None, "pass") else f"; {r.get('verdict')}"))
        out.append(_mark(r, r["kind"], cx, y(max(r["nmse"], floor)), KIND_COLOR[r["kind"]], label))
    out.append(_text(14, top + ph / 2, "NMSE (log)", "middle", extra=f' transform="rotate(-90 14 {_f(top + ph / 2)})"'))
    legend = "".join(f'<span><i style="background:{c}"></i>{KIND_NAME[k]}</span>' for k, c in KIND_COLOR.items()) + \
        '<span>red dashes: the gate\'s bound</span>'
    return _figure("error", "".join(out), width, height, legend=legend, label=f"{fusion} error by dtype")
