"""Writes the comparison chart as a self-contained SVG (no dependencies).

Four panels, one bar per system: CPU seconds per million samples (the
system's processes, and stacked on them, lighter, its client's work in the
application), peak memory, freshness (p50 bar, p99 lighter bar behind it)
and the global p99's relative error (median bar, p90 lighter bar behind it).
"""

import math
import sys
import json
from xml.sax.saxutils import escape

SHORT = {
    "prometheus-default": "Prometheus, default buckets",
    "prometheus-fine": "Prometheus, tuned buckets",
    "vm-default": "vmagent+VM, default buckets",
    "vm-fine": "vmagent+VM, tuned buckets",
    "strata": "strata (NDJSON)",
    "strata-otlp": "strata (OpenTelemetry SDK)",
}
COLOR = {
    "prometheus-default": "#f2a25c",
    "prometheus-fine": "#d9661f",
    "vm-default": "#a99be0",
    "vm-fine": "#6a51c9",
    "strata": "#1b9e77",
    "strata-otlp": "#0b6e8a",
}
LABEL_W = 190
BAR_H = 22
GAP = 12


def _scale(v):
    """(axis maximum, tick step) with 3–6 round ticks covering v."""
    if not v or not math.isfinite(v) or v <= 0:
        return 1.0, 0.25
    exp = 10 ** math.floor(math.log10(v))
    for m in (0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10):
        step = m * exp
        if v / step <= 5:
            return math.ceil(v / step - 1e-9) * step, step
    return 10 * exp, 2 * exp


def _fmt(v, unit):
    if v is None or not math.isfinite(v):
        return "n/a"
    if unit == "%":
        return f"{v:.2f}%" if v < 10 else f"{v:.1f}%"
    if v >= 100:
        return f"{v:.0f}{unit}"
    if v >= 10:
        return f"{v:.1f}{unit}"
    return f"{v:.2f}{unit}"


def _tick(v, unit):
    return f"{v:g}{unit}"


def _finite(v):
    return v is not None and math.isfinite(v)


def _axis(x0, y0, w, title, n_rows, vmax_of, unit):
    """Title, grid and ticks of a panel; returns (svg, top, plot width, axis maximum)."""
    out = [f'<text x="{x0}" y="{y0 + 16}" class="title">{escape(title)}</text>']
    top = y0 + 34
    plot_w = w - LABEL_W - 120
    vmax, step = _scale(vmax_of)
    n_ticks = round(vmax / step)
    bottom = top + n_rows * (BAR_H + GAP)
    for i in range(n_ticks + 1):
        gx = x0 + LABEL_W + plot_w * i / n_ticks
        out.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{bottom - GAP + 4}" class="grid"/>')
        out.append(f'<text x="{gx:.1f}" y="{bottom + 10}" '
                   f'class="tick">{escape(_tick(round(step * i, 9), unit))}</text>')
    return out, top, plot_w, vmax


def _row_label(x0, y, system):
    return (f'<text x="{x0 + LABEL_W - 8}" y="{y + BAR_H / 2 + 4}" class="label">'
            f'{escape(SHORT.get(system, system))}</text>')


def _legend(x0, y, solid, light):
    x = x0 + LABEL_W
    x2 = x + max(110, 18 + 6 * len(solid) + 16)   # ~6 px per character at 10 px
    return (f'<rect x="{x}" y="{y - 9}" width="14" height="10" fill="#555"/>'
            f'<text x="{x + 18}" y="{y}" class="legend">{escape(solid)}</text>'
            f'<rect x="{x2}" y="{y - 9}" width="14" height="10" fill="#555" fill-opacity="0.35"/>'
            f'<text x="{x2 + 18}" y="{y}" class="legend">{escape(light)}</text>')


def _stacked_panel(x0, y0, w, title, rows, unit, base_label, top_label):
    """rows: [(system, base value, value stacked on it)]: one bar, the base
    part solid, the stacked part lighter; labelled "base + stacked"."""
    totals = [sum(v for v in (b, t) if _finite(v)) for _, b, t in rows]
    out, top, plot_w, vmax = _axis(x0, y0, w, title, len(rows), max(totals or [1]), unit)
    x = x0 + LABEL_W
    for i, ((system, base, stacked), total) in enumerate(zip(rows, totals)):
        y = top + i * (BAR_H + GAP)
        out.append(_row_label(x0, y, system))
        color = COLOR.get(system, "#888")
        bw = plot_w * base / vmax if _finite(base) else 0.0
        sw = plot_w * stacked / vmax if _finite(stacked) else 0.0
        out.append(f'<rect x="{x}" y="{y}" width="{max(1.0, bw):.1f}" height="{BAR_H}" fill="{color}"/>')
        if sw > 0:
            out.append(f'<rect x="{x + bw:.1f}" y="{y}" width="{sw:.1f}" height="{BAR_H}" '
                       f'fill="{color}" fill-opacity="0.35"/>')
        text = (f"{_fmt(base, '')} + {_fmt(stacked, '')} = {_fmt(total, unit)}" if _finite(stacked)
                else _fmt(base, unit))
        out.append(f'<text x="{x + bw + sw + 5:.1f}" y="{y + BAR_H / 2 + 4}" class="value">{escape(text)}</text>')
    out.append(_legend(x0, top + len(rows) * (BAR_H + GAP) + 30, base_label, top_label))
    return out


def _panel(x0, y0, w, title, rows, unit, back_label=None, front_label=None):
    """rows: [(system, front value, back value or None)]"""
    label_w, bar_h, gap = LABEL_W, BAR_H, GAP
    vmax_of = max([v for _, f, b in rows for v in (f, b) if _finite(v)] or [1])
    out, top, plot_w, vmax = _axis(x0, y0, w, title, len(rows), vmax_of, unit)
    for i, (system, front, back) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(_row_label(x0, y, system))
        color = COLOR.get(system, "#888")
        if back is not None and math.isfinite(back):
            bw = max(1.0, plot_w * back / vmax)
            out.append(f'<rect x="{x0 + label_w}" y="{y}" width="{bw:.1f}" height="{bar_h}" '
                       f'fill="{color}" fill-opacity="0.35"/>')
        if front is not None and math.isfinite(front):
            fw = max(1.0, plot_w * front / vmax)
            out.append(f'<rect x="{x0 + label_w}" y="{y + (4 if back is not None else 0)}" '
                       f'width="{fw:.1f}" height="{bar_h - (8 if back is not None else 0)}" fill="{color}"/>')
        text = _fmt(front, unit)
        if back is not None:
            text += f" / {_fmt(back, unit)}"
        end = max(v for v in (front, back, 0) if v is not None and math.isfinite(v))
        out.append(f'<text x="{x0 + label_w + plot_w * end / vmax + 5:.1f}" y="{y + bar_h / 2 + 4}" '
                   f'class="value">{escape(text)}</text>')
    if back_label:
        out.append(_legend(x0, top + len(rows) * (bar_h + gap) + 30, front_label, back_label))
    return out


def write_svg(doc, path):
    systems = doc["systems"]
    w = doc["workload"]
    # Each panel: title 34 px, a bar per system, tick labels and legend 44 px.
    ph = 34 + len(systems) * (BAR_H + GAP) + 44
    pw, W, H = 540, 1100, 50 + 2 * (ph + 10)
    y2 = 50 + ph + 10
    body = []

    def rows(front, back=None, scale=1.0):
        return [(s, r[front] * scale if r.get(front) is not None else None,
                 (r[back] * scale if r.get(back) is not None else None) if back else None)
                for s, r in systems.items()]

    body += _stacked_panel(10, 50, pw, "CPU seconds per million samples: pipeline + client",
                           [(s, r.get("cpu_s_per_million_samples"), r.get("client_cpu_s_per_million_samples"))
                            for s, r in systems.items()], " s",
                           "pipeline (the system's processes)", "client (in the application)")
    body += _panel(560, 50, pw, "Peak memory (VmHWM summed over the system's processes)",
                   rows("peak_rss_bytes", scale=1 / 2**20), " MiB")
    body += _panel(10, y2, pw, "Freshness: sample emitted → visible at the global tier",
                   rows("freshness_p50_s", "freshness_p99_s"), " s", "p99", "median")
    body += _panel(560, y2, pw, "Global p99 per service-minute: |error| vs exact p99",
                   rows("p99_error_median", "p99_error_p90", scale=100), "%", "p90", "median")
    subtitle = (f"{w['samples_total']:,} samples, {w['samples_total'] / w['load_s']:,.0f}/s, "
                f"{w['services']} services × 2 regions, scrape "
                f"{'and OTLP export ' if 'otlp_export_interval_s' in w else ''}interval {w['scrape_interval_s']} s, "
                f"{len(w['scored_minutes_utc'])} scored minutes, run of {doc['started_utc'][:16]}Z, "
                f"{doc['machine']['cpus']} CPUs — lower is better everywhere")
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           '<style>.title{font-size:14px;font-weight:bold;fill:#222}'
           '.label{font-size:12px;fill:#222;text-anchor:end}'
           '.value{font-size:11px;fill:#222}'
           '.tick{font-size:10px;fill:#666;text-anchor:middle}'
           '.legend{font-size:10px;fill:#444}'
           '.grid{stroke:#ddd;stroke-width:1}'
           '.h1{font-size:17px;font-weight:bold;fill:#111}.sub{font-size:12px;fill:#444}</style>',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           '<text x="10" y="22" class="h1">Global p99 across two regions: Prometheus federation, '
           'vmagent + VictoriaMetrics, strata</text>',
           f'<text x="10" y="40" class="sub">{escape(subtitle)}</text>']
    svg += body
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    # Re-draw a chart from a results file: chart.py RESULTS.json OUT.svg
    with open(sys.argv[1]) as f:
        write_svg(json.load(f), sys.argv[2])
