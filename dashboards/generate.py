#!/usr/bin/env python3
"""Writes scalewise's Grafana dashboards (classic JSON model) into dashboards/*.json, and the
Kubernetes ConfigMaps that carry them, the provisioning files, the Prometheus config and rules.

The JSON files are committed so that users can import or provision them as they are; this script
is their source, so a layout change is one edit here instead of a hundred in JSON. The test suite
runs `generate.py --check`, which fails when a committed file differs from what this writes.

Conventions (shared/research/dashboards-anchors.md): a `datasource` variable used by every panel
and target, stable uids, `editable: false`, a unit and a description on every panel, metric and
label names exactly as docs/metrics.md pins them, recording rules from
dashboards/rules/scalewise.rules.yaml where one exists.
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39

# The verdict as the recording rule service:scalewise_verdict:code encodes it.
VERDICT_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "insufficient data", "color": "text", "index": 0},
            "1": {"text": "scale up (CPU)", "color": "red", "index": 1},
            "2": {"text": "scale out (in-process wait)", "color": "orange", "index": 2},
            "3": {"text": "dependency", "color": "blue", "index": 3},
        },
    }
]


class Layout:
    """Places panels left to right in rows of 24 columns, and numbers them."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title):
        self.newline()
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        self.y += 1

    def newline(self):
        if self.x > 0:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i


def target(expr, legend="", ref="A", instant=False, table=False):
    t = {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }
    if table:
        t["format"] = "table"
    return t


def panel(kind, title, description, unit, targets, **extra):
    defaults = {"unit": unit, "mappings": [], "thresholds": extra.pop("thresholds", base_thresholds())}
    defaults.update(extra.pop("defaults", {}))
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": extra.pop("overrides", [])},
        "options": extra.pop("options", {}),
    }
    p.update(extra)
    return p


def base_thresholds(steps=None):
    return {"mode": "absolute", "steps": steps or [{"color": "green", "value": None}]}


def timeseries(title, description, unit, targets, stack=None, fill=10, thresholds=None, **extra):
    custom = {"fillOpacity": fill, "lineWidth": 1, "showPoints": "never", "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": stack, "group": "A"}
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "dashed"}
    defaults = extra.pop("defaults", {})
    defaults.setdefault("custom", {}).update(custom)
    return panel(
        "timeseries",
        title,
        description,
        unit,
        targets,
        defaults=defaults,
        thresholds=base_thresholds(thresholds),
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **extra,
    )


def stat(title, description, unit, targets, mappings=None, thresholds=None, color_mode="value", **extra):
    return panel(
        "stat",
        title,
        description,
        unit,
        targets,
        defaults={"mappings": mappings or [], "color": {"mode": "thresholds"}},
        thresholds=base_thresholds(thresholds),
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": color_mode,
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        **extra,
    )


def state_timeline(title, description, targets, mappings, unit="none"):
    return panel(
        "state-timeline",
        title,
        description,
        unit,
        targets,
        defaults={"mappings": mappings, "color": {"mode": "thresholds"}, "custom": {"fillOpacity": 80, "lineWidth": 0}},
        options={
            "mergeValues": True,
            "showValue": "never",
            "alignValue": "left",
            "rowHeight": 0.8,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def bargauge(title, description, unit, targets, max_value=None):
    defaults = {"min": 0, "color": {"mode": "continuous-GrYlRd"}}
    if max_value is not None:
        defaults["max"] = max_value
    return panel(
        "bargauge",
        title,
        description,
        unit,
        targets,
        defaults=defaults,
        options={
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )


def table(title, description, unit, targets, rename, overrides=None, hide=()):
    exclude = {"Time": True}
    exclude.update({h: True for h in hide})
    return panel(
        "table",
        title,
        description,
        unit,
        targets,
        overrides=overrides or [],
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": exclude, "renameByName": rename, "indexByName": {}}},
        ],
    )


def override(field, props):
    return {"matcher": {"id": "byName", "options": field}, "properties": [{"id": k, "value": v} for k, v in props]}


def var_datasource():
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def var_query(name, label, query, multi=False, include_all=False):
    v = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "hide": 0,
        "regex": "",
        "options": [],
    }
    if include_all:
        v["allValue"] = ".*"
    return v


def dashboard(uid, title, description, variables, panels, links=()):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["scalewise"],
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": list(links)
        + [
            {
                "title": "scalewise",
                "type": "dashboards",
                "tags": ["scalewise"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
                "targetBlank": False,
                "icon": "external link",
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": variables},
        "panels": panels,
    }


# ---------------------------------------------------------------------------------------------
# Scalewise / Fleet


def fleet():
    sel = 'service_name=~"$service"'
    L = Layout()
    for title, verdict, color, desc in [
        ("Services watched", None, "text", "Services the collectors have a verdict for."),
        ("Scale up", "scale_up", "red", "Services limited by CPU: more or faster CPU, or faster code, helps."),
        ("Scale out", "scale_out", "orange", "Services waiting in-process (locks, pools, queues) with CPU to spare: more workers or instances help."),
        ("Dependency", "dependency", "blue", "Services waiting on a downstream dependency: fix the dependency; a rewrite will not help."),
        ("Insufficient data", "insufficient_data", "text", "Services without enough traffic in the window for a verdict."),
    ]:
        expr = (
            f"count(max by (service_name) (scalewise_verdict{{{sel}}})) or vector(0)"
            if verdict is None
            else f'count(scalewise_verdict{{verdict="{verdict}",{sel}}} == 1) or vector(0)'
        )
        L.add(
            stat(
                title,
                desc + " Counted from scalewise_verdict (the collector's window, 5m by default).",
                "none",
                [target(expr, ref="A", instant=True)],
                thresholds=[{"color": color, "value": None}],
            ),
            4,
            4,
        )
    L.add(
        stat(
            "Not reporting",
            "Services whose collector has received no point for over 5 minutes (scalewise_service_last_seen_timestamp_seconds). Alert: ScalewiseServiceNotReporting.",
            "none",
            [target(f"count(time() - scalewise_service_last_seen_timestamp_seconds{{{sel}}} > 300) or vector(0)", instant=True)],
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
        ),
        4,
        4,
    )
    rename = {
        "service_name": "Service",
        "Value #A": "Verdict",
        "Value #B": "Confidence",
        "Value #C": "Requests/s",
        "Value #D": "Mean latency",
        "Value #E": "In flight",
        "Value #F": "CPU used / capacity",
        "Value #G": "Instances",
        "component": "Top component",
        "Value #H": "Top component share",
        "dependency": "Top dependency",
        "Value #I": "Top dependency share",
    }
    L.add(
        table(
            "Services",
            "One row per service: the engine's verdict and confidence over the collector's window, load, latency, CPU, and where most request time goes. Click a service for its dashboard.",
            "none",
            [
                target(f"max by (service_name) (service:scalewise_verdict:code{{{sel}}})", ref="A", instant=True, table=True),
                target(f"max by (service_name) (scalewise_verdict_confidence_ratio{{{sel}}})", ref="B", instant=True, table=True),
                target(f"max by (service_name) (scalewise_requests_per_second{{{sel}}})", ref="C", instant=True, table=True),
                target(f"max by (service_name) (scalewise_request_latency_seconds{{{sel}}})", ref="D", instant=True, table=True),
                target(f"max by (service_name) (scalewise_requests_in_flight{{{sel}}})", ref="E", instant=True, table=True),
                target(
                    f"max by (service_name) (scalewise_cpu_used_cores{{{sel}}} / (scalewise_cpu_capacity_cores{{{sel}}} > 0))",
                    ref="F",
                    instant=True,
                    table=True,
                ),
                target(f"max by (service_name) (scalewise_service_instances{{{sel}}})", ref="G", instant=True, table=True),
                target(
                    f"topk by (service_name) (1, max by (service_name, component) (scalewise_component_share_ratio{{{sel}}}))",
                    ref="H",
                    instant=True,
                    table=True,
                ),
                target(
                    f"topk by (service_name) (1, max by (service_name, dependency) (scalewise_dependency_share_ratio{{{sel}}}))",
                    ref="I",
                    instant=True,
                    table=True,
                ),
            ],
            rename,
            hide=["__name__", "dependency_kind", "job", "instance"],
            overrides=[
                override(
                    "Verdict",
                    [("mappings", VERDICT_MAPPINGS), ("custom.cellOptions", {"type": "color-background"})],
                ),
                override(
                    "Service",
                    [
                        (
                            "links",
                            [
                                {
                                    "title": "Service dashboard",
                                    "url": "/d/scalewise-service/scalewise-service?var-service=${__value.text}&${datasource:queryparam}&${__url_time_range}",
                                }
                            ],
                        )
                    ],
                ),
                override("Confidence", [("unit", "percentunit"), ("decimals", 0)]),
                override("Requests/s", [("unit", "reqps")]),
                override("Mean latency", [("unit", "s")]),
                override("In flight", [("unit", "short"), ("decimals", 1)]),
                override("CPU used / capacity", [("unit", "percentunit"), ("custom.cellOptions", {"type": "gauge", "mode": "basic"}), ("min", 0), ("max", 1)]),
                override("Top component share", [("unit", "percentunit"), ("decimals", 0)]),
                override("Top dependency share", [("unit", "percentunit"), ("decimals", 0)]),
            ],
        ),
        24,
        9,
    )
    L.add(
        state_timeline(
            "Verdict over time",
            "Each service's verdict as the collector judged it (recording rule service:scalewise_verdict:code): red scale up, orange scale out, blue dependency, grey insufficient data.",
            [target(f"service:scalewise_verdict:code{{{sel}}}", "{{service_name}}")],
            VERDICT_MAPPINGS,
        ),
        24,
        8,
    )
    L.add(
        timeseries(
            "Confidence",
            "The engine's confidence in each verdict (0-1). Verdict alerts need 0.7 (dashed line).",
            "percentunit",
            [target(f"scalewise_verdict_confidence_ratio{{{sel}}}", "{{service_name}}")],
            thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 0.7}],
            defaults={"min": 0, "max": 1},
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Mean latency",
            "Mean request latency per service: request-seconds over completed requests, over the collector's window (scalewise_request_latency_seconds).",
            "s",
            [target(f"scalewise_request_latency_seconds{{{sel}}}", "{{service_name}}")],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Request rate",
            "Completed requests per second per service (scalewise_requests_per_second).",
            "reqps",
            [target(f"scalewise_requests_per_second{{{sel}}}", "{{service_name}}")],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Services per verdict",
            "How many services each verdict had over time.",
            "none",
            [target(f"count by (verdict) (scalewise_verdict{{{sel}}} == 1)", "{{verdict}}")],
            stack="normal",
        ),
        12,
        8,
    )
    return dashboard(
        "scalewise-fleet",
        "Scalewise / Fleet",
        "Every service scalewise watches: what limits it (CPU, in-process waiting or a dependency), how sure the engine is, and where request time goes.",
        [var_datasource(), var_query("service", "Service", "label_values(scalewise_verdict, service_name)", multi=True, include_all=True)],
        L.panels,
    )


# ---------------------------------------------------------------------------------------------
# Scalewise / Service


def service():
    s = 'service_name="$service"'
    si = 'service_name="$service",service_instance_id=~"$instance"'
    L = Layout()
    L.row("Verdict and load")
    L.add(
        stat(
            "Verdict",
            "What limits the service over the collector's window: scale up (CPU), scale out (in-process waiting with CPU to spare), dependency (downstream), or insufficient data. The link opens the collector's rewrite report.",
            "none",
            [target(f"service:scalewise_verdict:code{{{s}}}", instant=True)],
            mappings=VERDICT_MAPPINGS,
            color_mode="background",
            links=[
                {
                    "title": "Rewrite report (collector)",
                    "type": "link",
                    "url": "${collector_url}/api/v1/services/${service}/report?format=html",
                    "targetBlank": True,
                    "icon": "doc",
                    "tooltip": "",
                    "tags": [],
                    "asDropdown": False,
                    "includeVars": False,
                    "keepTime": False,
                }
            ],
        ),
        5,
        4,
    )
    L.add(
        panel(
            "gauge",
            "Confidence",
            "The engine's confidence in the verdict (0-1): margin between the top two components, amount of traffic, window length. Alerts on verdicts need 0.7.",
            "percentunit",
            [target(f"scalewise_verdict_confidence_ratio{{{s}}}", instant=True)],
            defaults={"min": 0, "max": 1},
            thresholds=base_thresholds([{"color": "red", "value": None}, {"color": "yellow", "value": 0.5}, {"color": "green", "value": 0.7}]),
            options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "showThresholdMarkers": True},
        ),
        4,
        4,
    )
    L.add(
        stat(
            "Rewrite ceiling",
            "The most any rewrite could save: the share of request time on CPU, in GC and waiting for a CPU (cpu + gc + cpu_wait). The rest is waiting a faster language does not shorten.",
            "percentunit",
            [target(f"scalewise_rewrite_ceiling_ratio{{{s}}}", instant=True)],
            thresholds=[{"color": "blue", "value": None}, {"color": "orange", "value": 0.3}, {"color": "red", "value": 0.6}],
        ),
        3,
        4,
    )
    for title, metric, unit, desc in [
        ("Requests/s", "scalewise_requests_per_second", "reqps", "Completed requests per second over the collector's window."),
        ("Mean latency", "scalewise_request_latency_seconds", "s", "Mean latency: request-seconds over completed requests."),
        ("In flight", "scalewise_requests_in_flight", "short", "Mean requests in flight (Little's law: rate x latency)."),
    ]:
        L.add(stat(title, desc, unit, [target(f"{metric}{{{s}}}", instant=True)]), 3, 4)
    L.add(
        stat(
            "Instances",
            "Instances (processes or pods) seen in the collector's window.",
            "none",
            [target(f"scalewise_service_instances{{{s}}}", instant=True)],
        ),
        3,
        4,
    )
    L.add(
        state_timeline(
            "Verdict over time",
            "The verdict at each evaluation (recording rule service:scalewise_verdict:code). A verdict that changes often means the service sits near a boundary: read a longer window.",
            [target(f"service:scalewise_verdict:code{{{s}}}", "verdict")],
            VERDICT_MAPPINGS,
        ),
        24,
        3,
    )

    L.row("Where request time goes")
    components_legend = "{{component}}"
    L.add(
        timeseries(
            "Mean latency by component",
            "Where an average request's time goes, stacked: on CPU (cpu), paused by GC (gc), runnable but waiting for a CPU (cpu_wait), waiting on downstream dependencies (downstream), and waiting inside the process (local_wait: locks, pools, queues; derived as the rest). The stack adds up to the mean latency.",
            "s",
            [
                target(
                    f"service_component:scalewise_request_component_time_seconds:rate5m{{{s}}}\n"
                    f"  / on (service_namespace, service_name) group_left ()\n"
                    f"    (service:scalewise_requests:rate5m{{{s}}} > 0)",
                    components_legend,
                )
            ],
            stack="normal",
            fill=60,
        ),
        12,
        9,
    )
    L.add(
        timeseries(
            "Share of request time by component",
            "The same budget as shares of request time (0-1, 5-minute rates; recording rule service_component:scalewise_request_component_time_seconds:ratio_rate5m).",
            "percentunit",
            [target(f"service_component:scalewise_request_component_time_seconds:ratio_rate5m{{{s}}}", components_legend)],
            stack="normal",
            fill=60,
            defaults={"min": 0, "max": 1},
        ),
        12,
        9,
    )
    L.add(
        bargauge(
            "Share of request time over the range",
            "Each component's share of all request time in the selected time range (sum of the 5-minute rates over the range, so busy minutes weigh more).",
            "percentunit",
            [
                target(
                    f"sum by (component) (sum_over_time(service_component:scalewise_request_component_time_seconds:rate5m{{{s}}}[$__range]))\n"
                    f"  / scalar(sum(sum_over_time(service:scalewise_request_time_seconds:rate5m{{{s}}}[$__range])))",
                    components_legend,
                    instant=True,
                )
            ],
            max_value=1,
        ),
        12,
        7,
    )
    L.add(
        bargauge(
            "Share of request time now (engine)",
            "The shares the engine based the current verdict on (scalewise_component_share_ratio over the collector's window).",
            "percentunit",
            [target(f"scalewise_component_share_ratio{{{s}}}", components_legend, instant=True)],
            max_value=1,
        ),
        12,
        7,
    )

    L.row("CPU")
    L.add(
        timeseries(
            "CPU used against capacity per instance",
            "Cores used by each instance (application threads plus runtime GC threads) and the cores it may use (the least of host cores, cpuset and CFS quota). Used near capacity is CPU saturation: requests queue for a CPU.",
            "suffix: cores",
            [
                target(f"service_instance:scalewise_cpu_seconds:rate5m{{{si}}}", "used {{service_instance_id}}", "A"),
                target(f"service_instance:scalewise_cpu_capacity_seconds:rate5m{{{si}}}", "capacity {{service_instance_id}}", "B"),
            ],
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                        {"id": "custom.fillOpacity", "value": 0},
                    ],
                }
            ],
            defaults={"min": 0},
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Run-queue delay per request",
            "Time an average request spent runnable but waiting for a CPU (cpu_wait: run-queue delay of the service's threads from schedstat), per instance. It includes cgroup throttling.",
            "s",
            [
                target(
                    f"sum by (service_instance_id) (rate(scalewise_request_component_time_seconds_total{{component=\"cpu_wait\",{si}}}[$__rate_interval]))\n"
                    f"  / (sum by (service_instance_id) (rate(scalewise_requests_total{{{si}}}[$__rate_interval])) > 0)",
                    "{{service_instance_id}}",
                )
            ],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "CPU throttling and pressure",
            "Per instance: seconds per second the cgroup was throttled by its CPU quota (a Kubernetes CPU limit), and the share of time some task waited for a CPU (cgroup cpu.pressure 'some').",
            "percentunit",
            [
                target(f"service_instance:scalewise_cpu_throttled_seconds:rate5m{{{si}}}", "throttled {{service_instance_id}}", "A"),
                target(
                    f"sum by (service_instance_id) (rate(scalewise_cpu_pressure_seconds_total{{{si}}}[$__rate_interval]))",
                    "pressure {{service_instance_id}}",
                    "B",
                ),
            ],
            defaults={"min": 0},
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "GC pauses",
            "Share of wall time each instance spent in stop-the-world GC pauses (JVM hsperfdata, or the service's /metrics or expvar for Go, Node, .NET). Alert ScalewiseServiceGCHigh fires when GC holds over 10% of request time.",
            "percentunit",
            [target(f"service_instance:scalewise_gc_pause_seconds:rate5m{{{si}}}", "{{service_instance_id}}")],
            defaults={"min": 0},
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Busiest thread",
            "Share of time the busiest single thread of each instance was on CPU or runnable. Near 100% means one thread (an event loop, a lone worker) is the limit, whatever the core count.",
            "percentunit",
            [
                target(
                    f"max by (service_instance_id) (rate(scalewise_thread_busiest_seconds_total{{{si}}}[$__rate_interval]))",
                    "{{service_instance_id}}",
                )
            ],
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 0.9}],
            defaults={"min": 0, "max": 1},
        ),
        8,
        8,
    )

    L.row("Dependencies")
    L.add(
        timeseries(
            "Share of request time per dependency",
            "Share of request time spent with a request outstanding to each downstream endpoint (service.peer.name, else address:port; top 20 per service, the rest as 'other').",
            "percentunit",
            [target(f"service_dependency:scalewise_dependency_time_seconds:ratio_rate5m{{{s}}}", "{{dependency}} ({{dependency_kind}})")],
            stack="normal",
            fill=40,
            defaults={"min": 0, "max": 1},
        ),
        12,
        8,
    )
    L.add(
        bargauge(
            "Dependencies now (engine)",
            "Each dependency's share of request time over the collector's window (scalewise_dependency_share_ratio).",
            "percentunit",
            [target(f"sort_desc(scalewise_dependency_share_ratio{{{s}}})", "{{dependency}} ({{dependency_kind}})", instant=True)],
            max_value=1,
        ),
        12,
        8,
    )

    L.row("Per instance")
    L.add(
        table(
            "Instance details",
            "One row per instance over the last 5 minutes: load, CPU against capacity, memory. An instance unlike the others (more in flight, less capacity) is an outlier to look at first.",
            "none",
            [
                target(f"sum by (service_instance_id) (rate(scalewise_request_time_seconds_total{{{si}}}[5m]))", ref="A", instant=True, table=True),
                target(f"sum by (service_instance_id) (rate(scalewise_requests_total{{{si}}}[5m]))", ref="B", instant=True, table=True),
                target(f"service_instance:scalewise_cpu_seconds:rate5m{{{si}}}", ref="C", instant=True, table=True),
                target(f"service_instance:scalewise_cpu_capacity_seconds:rate5m{{{si}}}", ref="D", instant=True, table=True),
                target(f"sum by (service_instance_id) (scalewise_memory_rss_bytes{{{si}}})", ref="E", instant=True, table=True),
            ],
            {
                "service_instance_id": "Instance",
                "Value #A": "In flight",
                "Value #B": "Requests/s",
                "Value #C": "CPU used (cores)",
                "Value #D": "CPU capacity (cores)",
                "Value #E": "Resident memory",
            },
            hide=["service_name", "service_namespace"],
            overrides=[
                override("In flight", [("decimals", 2)]),
                override("Requests/s", [("unit", "reqps")]),
                override("CPU used (cores)", [("decimals", 2)]),
                override("CPU capacity (cores)", [("decimals", 2)]),
                override("Resident memory", [("unit", "bytes")]),
            ],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "In flight per instance",
            "Mean requests in flight per instance (request-seconds per second). Instances of one service behind one load balancer should carry about the same.",
            "short",
            [
                target(
                    f"sum by (service_instance_id) (rate(scalewise_request_time_seconds_total{{{si}}}[$__rate_interval]))",
                    "{{service_instance_id}}",
                )
            ],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Resident memory per instance",
            "Resident memory of each instance's processes: what a rewrite or a GC setting would change.",
            "bytes",
            [target(f"sum by (service_instance_id) (scalewise_memory_rss_bytes{{{si}}})", "{{service_instance_id}}")],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Ambiguous socket samples",
            "Share of connection samples the agent could not order (request vs response within one kernel tick); they count half. High values lower confidence: spans are the precise source.",
            "percentunit",
            [
                target(
                    # An instance with no ambiguous sample may export no such series: 0, not a gap.
                    f"(sum by (service_instance_id) (rate(scalewise_socket_samples_total{{outcome=\"ambiguous\",{si}}}[$__rate_interval]))\n"
                    f"  or 0 * sum by (service_instance_id) (rate(scalewise_socket_samples_total{{{si}}}[$__rate_interval])))\n"
                    f"  / (sum by (service_instance_id) (rate(scalewise_socket_samples_total{{{si}}}[$__rate_interval])) > 0)",
                    "{{service_instance_id}}",
                )
            ],
            defaults={"min": 0},
        ),
        12,
        8,
    )
    return dashboard(
        "scalewise-service",
        "Scalewise / Service",
        "One service: its verdict and why, where request time goes, CPU against capacity, GC, dependencies and instances. The report link opens the collector's rewrite report.",
        [
            var_datasource(),
            var_query("service", "Service", "label_values(scalewise_verdict, service_name)"),
            var_query(
                "instance",
                "Instance",
                'label_values(scalewise_cpu_capacity_seconds_total{service_name="$service"}, service_instance_id)',
                multi=True,
                include_all=True,
            ),
            {
                "type": "textbox",
                "name": "collector_url",
                "label": "Collector URL",
                "description": "Base URL of the scalewise collector that owns this service, as the browser reaches it (for the report link).",
                "query": "http://scalewise-collector.scalewise.svc:4318",
                "current": {"text": "http://scalewise-collector.scalewise.svc:4318", "value": "http://scalewise-collector.scalewise.svc:4318"},
                "hide": 0,
                "options": [],
            },
        ],
        L.panels,
        links=[
            {
                "title": "Rewrite report",
                "type": "link",
                "url": "${collector_url}/api/v1/services/${service}/report?format=html",
                "targetBlank": True,
                "icon": "doc",
                "tooltip": "The collector's 'should we rewrite?' report for this service",
                "asDropdown": False,
                "includeVars": False,
                "keepTime": False,
                "tags": [],
            }
        ],
    )


# ---------------------------------------------------------------------------------------------
# Scalewise / Agents


def agents():
    a = 'job=~"scalewise-agent.*",instance=~"$agent"'
    c = 'job=~"scalewise-collector.*",instance=~"$collector"'
    L = Layout()
    L.row("Agents")
    L.add(
        panel(
            "status-history",
            "Agents up",
            "Whether Prometheus could scrape each agent's --metrics-listen endpoint. Alert: ScalewiseAgentDown.",
            "none",
            [target(f"up{{{a}}}", "{{instance}}")],
            defaults={
                "mappings": [{"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}],
                "color": {"mode": "thresholds"},
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            options={"showValue": "never", "rowHeight": 0.9, "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "single", "sort": "none"}},
        ),
        12,
        7,
    )
    L.add(
        timeseries(
            "Time since last export",
            "Seconds since each agent last exported to its collector (exports every 10 s by default). Alert ScalewiseAgentStale fires past 120 s.",
            "s",
            [target(f"time() - scalewise_agent_last_export_timestamp_seconds{{{a}}}", "{{instance}}")],
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 120}],
            defaults={"min": 0},
        ),
        12,
        7,
    )
    L.add(
        table(
            "Agent details",
            "One row per agent: services watched, CPU and memory it uses, version.",
            "none",
            [
                target(f"sum by (instance) (scalewise_agent_services{{{a}}})", ref="A", instant=True, table=True),
                target(f"sum by (instance) (rate(scalewise_agent_cpu_seconds_total{{{a}}}[5m]))", ref="B", instant=True, table=True),
                target(f"sum by (instance) (scalewise_agent_resident_memory_bytes{{{a}}})", ref="C", instant=True, table=True),
                target(f"max by (instance) (time() - scalewise_agent_last_export_timestamp_seconds{{{a}}})", ref="D", instant=True, table=True),
                target(f"max by (instance, version) (scalewise_build_info{{{a}}})", ref="E", instant=True, table=True),
            ],
            {
                "instance": "Agent",
                "Value #A": "Services",
                "Value #B": "CPU (share of a core)",
                "Value #C": "Resident memory",
                "Value #D": "Since last export",
                "version": "Version",
            },
            hide=["Value #E"],
            overrides=[
                override("CPU (share of a core)", [("unit", "percentunit"), ("decimals", 2)]),
                override("Resident memory", [("unit", "bytes")]),
                override("Since last export", [("unit", "s")]),
            ],
        ),
        24,
        7,
    )
    L.add(
        timeseries(
            "Sampler errors by kind",
            "Failed reads per second per agent, sampler and kind (permission_denied, not_found, kernel, ...). Sampling goes on; the budget misses what the failing sampler sees. A flat 'none' line means no errors. Alert: ScalewiseAgentSamplerErrors.",
            "ops",
            [
                target(
                    f"sum by (instance, sampler, kind) (rate(scalewise_agent_sampler_errors_total{{{a}}}[$__rate_interval]))\n"
                    f'  or on () label_replace(vector(0), "kind", "none", "", "")',
                    "{{instance}} {{sampler}} {{kind}}",
                )
            ],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Exports",
            "OTLP exports per second to the collector, by result. Failed exports lose no data (the next one carries the cumulative counters). Alert: ScalewiseAgentExportsFailing.",
            "ops",
            [target(f"sum by (instance, result) (rate(scalewise_agent_exports_total{{{a}}}[$__rate_interval]))", "{{instance}} {{result}}")],
            overrides=[
                {"matcher": {"id": "byRegexp", "options": ".*failed"}, "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}
            ],
        ),
        12,
        8,
    )
    L.add(
        timeseries(
            "Agent CPU",
            "CPU each agent uses, as a share of one core (measured overhead: under 1% of a core for 500 threads and 200 connections, BENCHMARKS.md).",
            "percentunit",
            [target(f"sum by (instance) (rate(scalewise_agent_cpu_seconds_total{{{a}}}[$__rate_interval]))", "{{instance}}")],
            defaults={"min": 0},
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Agent memory",
            "Resident memory of each agent.",
            "bytes",
            [target(f"sum by (instance) (scalewise_agent_resident_memory_bytes{{{a}}})", "{{instance}}")],
            defaults={"min": 0},
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Samples and services",
            "Sampling rounds per second and services watched per agent.",
            "short",
            [
                target(f"sum by (instance) (rate(scalewise_agent_samples_total{{{a}}}[$__rate_interval]))", "samples/s {{instance}}", "A"),
                target(f"sum by (instance) (scalewise_agent_services{{{a}}})", "services {{instance}}", "B"),
            ],
        ),
        8,
        8,
    )

    L.row("Collectors")
    L.add(
        timeseries(
            "Points received",
            "OTLP data points received per second per collector and transport.",
            "ops",
            [target(f"sum by (instance, transport) (rate(scalewise_collector_points_received_total{{{c}}}[$__rate_interval]))", "{{instance}} {{transport}}")],
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Points and requests rejected",
            "Data points and whole requests a collector refused, per second, by reason. A flat 'none' line means nothing was refused. Alert: ScalewiseCollectorRejectingPoints.",
            "ops",
            [
                target(
                    f"sum by (instance, reason) (rate(scalewise_collector_points_rejected_total{{{c}}}[$__rate_interval]))\n"
                    f'  or on () label_replace(vector(0), "reason", "none", "", "")',
                    "points {{instance}} {{reason}}",
                    "A",
                ),
                target(
                    f"sum by (instance, reason) (rate(scalewise_collector_requests_rejected_total{{{c}}}[$__rate_interval]))\n"
                    f'  or on () label_replace(vector(0), "reason", "none", "", "")',
                    "requests {{instance}} {{reason}}",
                    "B",
                ),
            ],
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Dropped at a cardinality bound",
            "Points a collector dropped because a bound (services, instances, dependencies, label length) was reached, per second. A flat 'none' line means no drops. Alert: ScalewiseCollectorCardinalityCapHit.",
            "ops",
            [
                target(
                    f"sum by (instance, limit) (rate(scalewise_collector_overflow_dropped_total{{{c}}}[$__rate_interval]))\n"
                    f'  or on () label_replace(vector(0), "limit", "none", "", "")',
                    "{{instance}} {{limit}}",
                )
            ],
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "Services and instances tracked",
            "Services and instances each collector holds in memory (bounded; see its config).",
            "short",
            [
                target(f"sum by (instance) (scalewise_collector_services{{{c}}})", "services {{instance}}", "A"),
                target(f"sum by (instance) (scalewise_collector_instances{{{c}}})", "instances {{instance}}", "B"),
            ],
        ),
        8,
        8,
    )
    L.add(
        timeseries(
            "SQLite flush time (p99)",
            "99th percentile of the time one flush of snapshots to SQLite takes, per collector. Slow flushes mean a slow or full volume.",
            "s",
            [
                target(
                    f"histogram_quantile(0.99, sum by (instance, le) (rate(scalewise_collector_sqlite_write_seconds_bucket{{{c}}}[$__rate_interval])))",
                    "{{instance}}",
                )
            ],
        ),
        8,
        8,
    )
    L.add(
        panel(
            "status-history",
            "Collectors up",
            "Whether Prometheus could scrape each collector's /metrics. Alert: ScalewiseCollectorDown.",
            "none",
            [target(f"up{{{c}}}", "{{instance}}")],
            defaults={
                "mappings": [{"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}],
                "color": {"mode": "thresholds"},
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            options={"showValue": "never", "rowHeight": 0.9, "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "single", "sort": "none"}},
        ),
        8,
        8,
    )
    return dashboard(
        "scalewise-agents",
        "Scalewise / Agents and collectors",
        "Health of scalewise itself: agents up and exporting, sampler errors, agent overhead, collector ingest, rejections and drops.",
        [
            var_datasource(),
            var_query("agent", "Agent", 'label_values(up{job=~"scalewise-agent.*"}, instance)', multi=True, include_all=True),
            var_query("collector", "Collector", 'label_values(up{job=~"scalewise-collector.*"}, instance)', multi=True, include_all=True),
        ],
        L.panels,
    )


DASHBOARDS = {"fleet.json": fleet, "service.json": service, "agents.json": agents}
REPO = HERE.parent
KUBE = REPO / "deploy" / "kubernetes"


def block(text, indent):
    """A YAML literal block scalar holding `text` exactly."""
    pad = " " * indent
    lines = [pad + line if line else "" for line in text.rstrip("\n").split("\n")]
    return "|\n" + "\n".join(lines) + "\n"


def configmap(name, comment, data, labels=None):
    out = [f"# {line}".rstrip() for line in comment.split("\n")]
    out += ["# Written by dashboards/generate.py: edit the sources, not this file.", "apiVersion: v1", "kind: ConfigMap", "metadata:"]
    out += [f"  name: {name}", "  namespace: scalewise", "  labels:", "    app.kubernetes.io/part-of: scalewise"]
    for k, v in (labels or {}).items():
        out.append(f'    {k}: "{v}"')
    out.append("data:")
    text = "\n".join(out) + "\n"
    for key, value in data.items():
        text += f"  {key}: " + block(value, 4)
    return text


def kubernetes_files(dashboards):
    files = {}
    files[KUBE / "grafana-dashboards.yaml"] = configmap(
        "scalewise-grafana-dashboards",
        "scalewise's Grafana dashboards. The label grafana_dashboard: \"1\" is what the Grafana Helm\n"
        "chart's dashboard sidecar looks for; without the sidecar, mount this ConfigMap at\n"
        "/var/lib/grafana/dashboards/scalewise with scalewise-grafana-provisioning beside it.",
        dashboards,
        labels={"grafana_dashboard": "1"},
    ) + "---\n" + configmap(
        "scalewise-grafana-provisioning",
        "Grafana file provisioning: mount at /etc/grafana/provisioning/dashboards/ (dashboards.yaml)\n"
        "and, optionally, /etc/grafana/provisioning/datasources/ (datasource.yaml).",
        {
            "dashboards.yaml": (HERE / "provisioning" / "dashboards.yaml").read_text(),
            "datasource.yaml": (HERE / "provisioning" / "datasource.yaml").read_text(),
        },
    )
    files[KUBE / "prometheus-config.yaml"] = configmap(
        "scalewise-prometheus",
        "A Prometheus configuration (kubernetes service discovery) and scalewise's recording and\n"
        "alert rules, side by side: mount at /etc/prometheus/.",
        {
            "prometheus.yml": (REPO / "deploy" / "prometheus" / "prometheus-kubernetes.yml").read_text(),
            "scalewise.rules.yaml": (HERE / "rules" / "scalewise.rules.yaml").read_text(),
        },
    )
    rules = (HERE / "rules" / "scalewise.rules.yaml").read_text()
    groups = rules[rules.index("groups:") :]
    files[KUBE / "prometheus-operator" / "prometheusrule.yaml"] = (
        "# scalewise's recording and alert rules as a Prometheus Operator PrometheusRule (the same\n"
        "# groups as dashboards/rules/scalewise.rules.yaml). Your Prometheus resource's ruleSelector\n"
        "# must match its labels. Written by dashboards/generate.py: edit the rules, not this file.\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: scalewise\n"
        "  namespace: scalewise\n"
        "  labels:\n"
        "    app.kubernetes.io/part-of: scalewise\n"
        "spec:\n" + "".join("  " + line if line.strip() else line for line in groups.splitlines(keepends=True))
    )
    return files


def main():
    check = "--check" in sys.argv[1:]
    outputs = {}
    dashboards = {}
    for name, build in DASHBOARDS.items():
        text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        outputs[HERE / name] = text
        dashboards[name] = text
    outputs.update(kubernetes_files(dashboards))
    stale = []
    for path, text in outputs.items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(REPO)))
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}: run dashboards/generate.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
