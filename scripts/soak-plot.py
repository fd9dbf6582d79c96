#!/usr/bin/env python3
"""Plots a scalewise-soak CSV as a hand-written SVG (standard library only).

usage: scripts/soak-plot.py SOAK.csv OUT.svg

Five small panels over time: collector RSS (MiB), open fds, SQLite size (MiB, WAL included),
answer latency (ms: p50 of /api/v1/services, of one service's ?window=5m and of /metrics) and
collector CPU (% of one core).
"""

import csv
import sys
from xml.sax.saxutils import escape

PANELS = [
    ("Collector RSS (MiB)", [("rss_mib", "#1f77b4", "RSS")]),
    ("Open fds", [("fds", "#2ca02c", "fds")]),
    ("SQLite on disk (MiB, incl. WAL)", [("sqlite_mib", "#9467bd", "db+wal"), ("wal_mib", "#c5b0d5", "wal")]),
    (
        "Answer latency p50 (ms)",
        [
            ("list_p50_ms", "#d62728", "/api/v1/services"),
            ("one_p50_ms", "#ff7f0e", "one service ?window=5m"),
            ("metrics_p50_ms", "#8c564b", "/metrics"),
        ],
    ),
    ("Collector CPU (% of one core)", [("cpu_pct", "#17becf", "CPU")]),
]

W, PH, ML, MR, MT, GAP = 760, 150, 64, 16, 34, 46


def nice_max(v):
    if v <= 0:
        return 1.0
    m = 10 ** len(str(int(v))) / 10 if v >= 1 else 1.0
    for f in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if f * m >= v * 1.05:
            return f * m
    return v * 1.1


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        sys.exit("no rows")
    tmax = max(r["t_s"] for r in rows) / 60.0 or 1.0
    height = MT + len(PANELS) * (PH + GAP) + 10
    pw = W - ML - MR
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
        f'viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{height}" fill="white"/>',
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">'
        f"scalewise-collector soak: {len(rows)} samples over {tmax:.0f} min</text>",
    ]
    for i, (title, series) in enumerate(PANELS):
        y0 = MT + i * (PH + GAP) + 14
        ymax = nice_max(max(r[c] for r in rows for c, _, _ in series))
        out.append(f'<text x="{ML}" y="{y0 - 6}" font-weight="bold">{escape(title)}</text>')
        out.append(f'<rect x="{ML}" y="{y0}" width="{pw}" height="{PH}" fill="none" stroke="#999"/>')
        for k in range(5):
            v = ymax * k / 4
            y = y0 + PH - PH * k / 4
            out.append(f'<line x1="{ML}" y1="{y:.1f}" x2="{ML + pw}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{ML - 4}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        step = 10 if tmax > 30 else 5 if tmax > 10 else 1
        m = 0
        while m <= tmax:
            x = ML + pw * m / tmax
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + PH}" stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + PH + 13}" text-anchor="middle">{m} min</text>')
            m += step
        for j, (col, color, label) in enumerate(series):
            pts = " ".join(
                f"{ML + pw * r['t_s'] / 60.0 / tmax:.1f},{y0 + PH - PH * min(r[col], ymax) / ymax:.1f}"
                for r in rows
            )
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
            if len(series) > 1:
                lx = ML + pw - 190
                ly = y0 + 14 + 13 * j
                out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 16}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
                out.append(f'<text x="{lx + 20}" y="{ly}">{escape(label)}</text>')
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
