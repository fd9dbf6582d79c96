#!/usr/bin/env python3
"""Draws a dashboard as Grafana would lay it out, from a real Prometheus's answers to the
dashboard's own queries: there is no Grafana server on the test machine, so this is how a person
looks at what the queries return.

Usage: render.py PROMETHEUS_URL SERVICE OUT.png [DASHBOARD.json] [--range SECONDS]

Every panel's targets run as Grafana would run them (variables substituted: $service = SERVICE,
multi-value variables = all, $__rate_interval = 1m, $__range = the range), range queries over
the last --range seconds (default 3600) at a 15 s step, instant queries at the end. Stat, gauge,
bar gauge, time series (stacked where the panel stacks), state timeline, status history and
table panels are drawn at their gridPos. Needs matplotlib (PyPI); not part of the test suite's
dependencies: the suite calls this only when SCALEWISE_RENDER_DIR is set.
"""

import json
import pathlib
import sys
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
COLORS = {
    "red": "#e02f44",
    "orange": "#ff780a",
    "blue": "#3274d9",
    "green": "#56a64b",
    "yellow": "#fade2a",
    "text": "#8e8e8e",
}
PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0"]
BG = "#181b1f"
FG = "#ccccdc"


def query(base, expr, instant, start, end, step=15):
    if instant:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": end})
    else:
        url = f"{base}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr, "start": start, "end": end, "step": step}
        )
    with urllib.request.urlopen(url, timeout=30) as r:
        data = json.load(r)["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def substitute(expr, service, range_s):
    for k, v in [
        ("${service}", service),
        ("$service", service),
        ("$instance", ".*"),
        ("$agent", ".*"),
        ("$collector", ".*"),
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", f"{range_s}s"),
    ]:
        expr = expr.replace(k, v)
    return expr


def legend(fmt, metric):
    if not fmt or fmt == "__auto":
        return ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    while "{{" in out:
        a = out.index("{{")
        b = out.index("}}", a)
        out = out[:a] + out[b + 2 :]
    return out.strip()


def fmt_value(v, unit):
    if v != v:  # NaN
        return "NaN"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "reqps":
        return f"{v:.1f} req/s"
    if unit == "bytes":
        return f"{v / 2**20:.0f} MiB"
    if unit.startswith("suffix:"):
        return f"{v:.2f}{unit[len('suffix:'):]}"
    return f"{v:.3g}"


def mapping(panel, v):
    for m in panel["fieldConfig"]["defaults"].get("mappings", []):
        opt = m.get("options", {}).get(str(int(v)) if v == int(v) else str(v))
        if opt:
            return opt["text"], COLORS.get(opt.get("color"), FG)
    return None, None


def threshold_color(panel, v):
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    color = "green"
    for s in steps:
        if s["value"] is None or v >= s["value"]:
            color = s["color"]
    return COLORS.get(color, color)


def style(ax, title):
    ax.set_facecolor(BG)
    for s in ax.spines.values():
        s.set_color("#2c3235")
    ax.tick_params(colors=FG, labelsize=6)
    ax.set_title(title, color=FG, fontsize=8, loc="left")


def draw(ax, panel, results, unit, start, end):
    kind = panel["type"]
    style(ax, panel["title"])
    series = [(legend(t.get("legendFormat"), r["metric"]), r) for t, rs in results for r in rs]
    if kind in ("stat", "gauge"):
        ax.set_xticks([])
        ax.set_yticks([])
        if not series:
            ax.text(0.5, 0.4, "No data", color=FG, ha="center", va="center", fontsize=12)
            return
        v = float(series[0][1]["value"][1])
        text, color = mapping(panel, v)
        if text is None:
            text, color = fmt_value(v, unit), threshold_color(panel, v)
        ax.text(0.5, 0.4, text, color=color, ha="center", va="center", fontsize=13 if len(text) < 12 else 9, fontweight="bold")
        return
    if kind == "bargauge":
        labels = [s[0] for s in series]
        values = [float(s[1]["value"][1]) for s in series]
        ax.barh(range(len(values)), values, color=[PALETTE[i % len(PALETTE)] for i in range(len(values))])
        ax.set_yticks(range(len(values)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, max([1.0] + values) if unit == "percentunit" else None)
        for i, v in enumerate(values):
            ax.text(v, i, " " + fmt_value(v, unit), color=FG, va="center", fontsize=6)
        return
    if kind == "table":
        ax.set_xticks([])
        ax.set_yticks([])
        rows = {}
        for (t, rs) in results:
            for r in rs:
                key = tuple(v for k, v in sorted(r["metric"].items()) if k not in ("__name__",))
                rows.setdefault(key, []).append(fmt_value(float(r["value"][1]), "none"))
        lines = ["  ".join(k) + ": " + "  ".join(v) for k, v in list(rows.items())[:8]]
        ax.text(0.01, 0.95, "\n".join(lines) or "No data", color=FG, va="top", fontsize=6, family="monospace")
        return
    if kind in ("state-timeline", "status-history"):
        ax.set_yticks([])
        for i, (name, r) in enumerate(series):
            for ts, v in r["values"]:
                _, color = mapping(panel, float(v))
                ax.barh(i, 0.25, left=(float(ts) - end) / 60, color=color or FG, height=0.8)
        ax.set_yticks(range(len(series)), [s[0] for s in series], fontsize=6)
        ax.set_xlim((start - end) / 60, 0)
        ax.set_xlabel("minutes before now", color=FG, fontsize=6)
        return
    # time series
    stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
    if not series:
        ax.text(0.5, 0.5, "No data", color=FG, ha="center", va="center", transform=ax.transAxes)
        return
    xs_all = sorted({float(ts) for _, r in series for ts, _ in r["values"]})
    xs = [(x - end) / 60 for x in xs_all]
    ys = []
    for _, r in series:
        m = {float(ts): float(v) for ts, v in r["values"]}
        ys.append([m.get(x, 0.0) for x in xs_all])
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    if stacked:
        ax.stackplot(xs, ys, labels=[s[0] for s in series], colors=colors, alpha=0.8)
    else:
        for (name, _), y, c in zip(series, ys, colors):
            ax.plot(xs, y, label=name, color=c, linewidth=1)
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    elif unit == "s":
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v * 1000:.0f} ms"))
    ax.set_xlim(xs[0], 0)
    d = panel["fieldConfig"]["defaults"]
    if "max" in d:
        ax.set_ylim(d.get("min", 0), d["max"])
    ax.legend(fontsize=5, loc="upper left", facecolor=BG, labelcolor=FG, framealpha=0.6)
    ax.set_xlabel("minutes before now", color=FG, fontsize=6)


def main():
    args = [a for a in sys.argv[1:]]
    range_s = 3600
    if "--range" in args:
        i = args.index("--range")
        range_s = int(args[i + 1])
        del args[i : i + 2]
    base, service, out = args[0], args[1], pathlib.Path(args[2])
    dash = json.loads(pathlib.Path(args[3] if len(args) > 3 else HERE / "service.json").read_text())
    end = time.time()
    start = end - range_s
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42
    top = 1.5  # grid units of header above the first row
    fig = plt.figure(figsize=(18, (rows + top) * unit_h), facecolor="#111217")
    fig.text(0.005, 1 - 0.6 / (rows + top), f"{dash['title']}   service = {service}   last {range_s // 60} min, drawn from Prometheus's answers to the panels' queries", color=FG, fontsize=11)
    rows_total = rows + top
    empty = []
    for p in panels:
        g = p["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        bottom = 1 - (g["y"] + top + g["h"]) / rows_total
        height = g["h"] / rows_total
        if p["type"] == "row":
            fig.text(0.005, bottom + height / 2, p["title"], color=FG, fontsize=10, fontweight="bold", va="center")
            continue
        ax = fig.add_axes([left + 0.006, bottom + 0.012 / (rows_total * unit_h / 10), width - 0.012, height - 0.03 / (rows_total * unit_h / 10)])
        results = []
        for t in p["targets"]:
            expr = substitute(t["expr"], service, range_s)
            results.append((t, query(base, expr, t.get("instant", False), start, end)))
        if not any(rs for _, rs in results):
            empty.append(p["title"])
        draw(ax, p, results, p["fieldConfig"]["defaults"]["unit"], start, end)
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())
    print(f"{out}: {len(panels)} panels, empty: {empty or 'none'}")


if __name__ == "__main__":
    main()
