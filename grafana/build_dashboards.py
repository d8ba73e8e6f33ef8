#!/usr/bin/env python3
"""Build opos-monitor's Grafana dashboards (grafana/dashboards/*.json) from one description.

    python grafana/build_dashboards.py            # (re)write grafana/dashboards/*.json
    python grafana/build_dashboards.py --check    # exit 1 when a committed JSON file differs

The JSON files are what Grafana loads (file provisioning, or import through the UI); this
script is how they are edited, so that every panel gets the same data source reference, units,
category and status colours, and a layout without overlaps. Change a panel here, run the script,
commit both. ``tests/grafana/test_dashboards.py`` fails when the JSON and this script disagree,
and evaluates every query against a real Prometheus that scraped the real daemon.

Conventions (docs/dashboards.md): the data source is the ``${datasource}`` template variable
(type prometheus); ``pool``, ``schedd``, ``site`` and ``category`` are multi-value variables from
``label_values()`` and always matched with ``=~``; failure rates are shown per minute; ratios
are ``percentunit`` with the 20 % line red; every panel has a description saying what to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

SCHEMA_VERSION = 39  # Grafana 10.4 / 11.0
PLUGIN_VERSION = "10.4.0"
TAG = "opos-monitor"
DS = {"type": "prometheus", "uid": "${datasource}"}
RUNBOOKS = "https://github.com/opos-monitor/opos-monitor/blob/main/docs/runbooks/"

UIDS = {
    "overview": "opos-overview",
    "sites": "opos-sites",
    "schedds": "opos-schedds",
    "shipping": "opos-shipping",
}
TITLES = {
    "overview": "opos-monitor / Overview",
    "sites": "opos-monitor / Sites",
    "schedds": "opos-monitor / Schedds",
    "shipping": "opos-monitor / Shipping",
}

# One colour per failure category and per job status, the same on every board.
CATEGORY_COLORS = {
    "site": "red",
    "memory": "orange",
    "certificate": "purple",
    "code": "blue",
    "transfer": "yellow",
    "policy": "dark-purple",
    "user": "green",
    "unknown": "#8e8e8e",
    "none": "#c8c8c8",
}
STATUS_COLORS = {
    "idle": "blue",
    "running": "green",
    "held": "red",
    "transferring_output": "yellow",
    "suspended": "orange",
    "completed": "light-blue",
    "removed": "#8e8e8e",
    "unknown": "purple",
}

# Selectors shared by the panels (always =~: the variables are multi-value).
POOL_SCHEDD = 'pool=~"$pool", schedd=~"$schedd"'
JOBSEL = 'pool=~"$pool", schedd=~"$schedd", site=~"$site"'
FAILSEL = 'pool=~"$pool", schedd=~"$schedd", site=~"$site", category=~"$category"'
SRCSEL = 'pool=~"$pool", schedd=~"$schedd", source=~"$source"'
INST = 'instance=~"$instance"'


def runbook(alert: str) -> dict[str, Any]:
    return {"title": f"Runbook: {alert}", "url": f"{RUNBOOKS}{alert}.md", "targetBlank": True}


def board_link(key: str, title: str, site_from_field: bool = False) -> dict[str, Any]:
    """A data link to another board, keeping the time range and data source."""
    url = f"/d/{UIDS[key]}?${{__url_time_range}}&${{datasource:queryparam}}"
    if site_from_field:
        url += "&var-site=${__field.labels.site}"
    return {"title": title, "url": url}


# ----------------------------------------------------------------------------------------------
# variables


def datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_var(name: str, label: str, definition: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": dict(DS),
        "definition": definition,
        "query": {"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "multi": True,
        "options": [],
        "refresh": 2,  # on time range change: new schedds / sites appear without a reload
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


POOL_VAR = query_var("pool", "Pool", "label_values(opos_source_up, pool)",
                     "HTCondor pools the monitor watches (from its configuration).")
SCHEDD_VAR = query_var("schedd", "Schedd", 'label_values(opos_source_up{pool=~"$pool", source="queue"}, schedd)',
                       "Access points (schedds) of the selected pools whose queue the monitor polls.")
SITE_VAR = query_var("site", "Site", 'label_values(opos_job_outcomes_total{pool=~"$pool"}, site)',
                     "Sites jobs ran at (GLIDEIN_Site after corrections); 'unknown' when a job never "
                     "matched, 'other' past the label cap.")
CATEGORY_VAR = query_var("category", "Category", "label_values(opos_jobs_held, category)",
                         "Failure categories of the classifier (site, memory, certificate, code, transfer, "
                         "policy, user, unknown; 'none' only for held jobs).")
SOURCE_VAR = query_var("source", "Source", 'label_values(opos_source_up{pool=~"$pool", schedd=~"$schedd"}, source)',
                       "Source kinds polled for the selected schedds (queue, history, epochs, eventlog, adfile).")
INSTANCE_VAR = query_var("instance", "Instance",
                         'label_values(opos_store_pending_records{job="opos-monitor"}, instance)',
                         "opos-monitor processes (scrape targets); each has its own store and shipper.")


# ----------------------------------------------------------------------------------------------
# panels


def target(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False, fmt: str = "time_series",
           interval: str = "") -> dict[str, Any]:
    t = {
        "datasource": dict(DS),
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "format": fmt,
        "refId": ref,
    }
    if interval:
        t["interval"] = interval
    return t


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


OK_ONLY = thresholds(("green", None))


def color_overrides(colors: dict[str, str]) -> list[dict[str, Any]]:
    return [{"matcher": {"id": "byName", "options": name},
             "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}]}
            for name, color in colors.items()]


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"type": "value", "options": {k: {"text": text, "color": color, "index": i}
                                          for i, (k, (text, color)) in enumerate(mapping.items())}}]


UP_DOWN = value_map({"0": ("DOWN", "red"), "1": ("UP", "green")})


def base(kind: str, title: str, description: str, targets: list[dict[str, Any]], *, w: int, h: int,
         unit: str, th: dict[str, Any] | None = None, links: list[dict[str, Any]] | None = None,
         mappings: list[dict[str, Any]] | None = None, overrides: list[dict[str, Any]] | None = None,
         min_: float | None = None, max_: float | None = None, decimals: int | None = None,
         no_value: str | None = None, color: dict[str, Any] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "thresholds": th or OK_ONLY, "mappings": mappings or [],
                                "color": color or {"mode": "palette-classic"}}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value is not None:
        defaults["noValue"] = no_value
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": dict(DS),
        "pluginVersion": PLUGIN_VERSION,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "links": links or [],
        "options": {},
        "targets": targets,
    }


def legend(calcs: list[str] | None = None, table: bool = True, placement: str = "bottom") -> dict[str, Any]:
    return {"showLegend": True, "displayMode": "table" if table else "list", "placement": placement,
            "calcs": calcs if calcs is not None else ["lastNotNull", "max"]}


def timeseries(title: str, description: str, targets: list[dict[str, Any]], *, unit: str, w: int = 12, h: int = 9,
               stack: bool = False, bars: bool = False, axis_label: str = "", th: dict[str, Any] | None = None,
               th_style: str = "off", fill: int = 10, calcs: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    p = base("timeseries", title, description, targets, w=w, h=h, unit=unit, th=th, **kw)
    p["fieldConfig"]["defaults"]["custom"] = {
        "drawStyle": "bars" if bars else "line",
        "lineInterpolation": "linear",
        "lineWidth": 1,
        "fillOpacity": 60 if (stack or bars) else fill,
        "gradientMode": "none",
        "showPoints": "never",
        "pointSize": 4,
        "spanNulls": False,
        "insertNulls": False,
        "barAlignment": 0,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisPlacement": "auto",
        "axisLabel": axis_label,
        "axisColorMode": "text",
        "axisCenteredZero": False,
        "axisSoftMin": 0,
        "scaleDistribution": {"type": "linear"},
        "thresholdsStyle": {"mode": th_style},
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
    }
    p["options"] = {"legend": legend(calcs), "tooltip": {"mode": "multi", "sort": "desc"}}
    return p


def stat(title: str, description: str, targets: list[dict[str, Any]], *, unit: str, w: int, h: int,
         color_mode: str = "background", text_mode: str = "value_and_name", **kw: Any) -> dict[str, Any]:
    p = base("stat", title, description, targets, w=w, h=h, unit=unit, **kw)
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": text_mode,
        "wideLayout": True,
        "showPercentChange": False,
    }
    return p


def bargauge(title: str, description: str, targets: list[dict[str, Any]], *, unit: str, w: int, h: int,
             **kw: Any) -> dict[str, Any]:
    p = base("bargauge", title, description, targets, w=w, h=h, unit=unit, **kw)
    p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "maxVizHeight": 300,
    }
    return p


def gauge(title: str, description: str, targets: list[dict[str, Any]], *, unit: str, w: int, h: int,
          **kw: Any) -> dict[str, Any]:
    p = base("gauge", title, description, targets, w=w, h=h, unit=unit, **kw)
    p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "auto",
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
        "sizing": "auto",
        "minVizHeight": 75,
        "minVizWidth": 75,
    }
    return p


def state_timeline(title: str, description: str, targets: list[dict[str, Any]], *, w: int, h: int,
                   mappings: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    p = base("state-timeline", title, description, targets, w=w, h=h, unit="short", mappings=mappings, **kw)
    p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    p["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 80, "lineWidth": 0,
                                              "hideFrom": {"legend": False, "tooltip": False, "viz": False}}
    p["options"] = {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                    "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "single", "sort": "none"}}
    return p


def table(title: str, description: str, targets: list[dict[str, Any]], *, w: int, h: int, unit: str = "short",
          transformations: list[dict[str, Any]] | None = None, sort_by: str | None = None, sort_desc: bool = True,
          **kw: Any) -> dict[str, Any]:
    p = base("table", title, description, targets, w=w, h=h, unit=unit, **kw)
    p["fieldConfig"]["defaults"]["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False,
                                              "filterable": False}
    p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    p["options"] = {"showHeader": True, "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
                    "sortBy": [{"displayName": sort_by, "desc": sort_desc}] if sort_by else []}
    p["transformations"] = transformations or []
    return p


def heatmap(title: str, description: str, targets: list[dict[str, Any]], *, w: int, h: int,
            **kw: Any) -> dict[str, Any]:
    p = base("heatmap", title, description, targets, w=w, h=h, unit="short", **kw)
    p["fieldConfig"]["defaults"]["custom"] = {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                              "scaleDistribution": {"type": "linear"}}
    p["options"] = {
        "calculate": False,
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "fill": "dark-orange", "reverse": False,
                  "steps": 64},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "showValue": "never",
        "tooltip": {"mode": "single", "show": True, "yHistogram": False},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "s"},
    }
    return p


def layout(rows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Place rows of panels on Grafana's 24-column grid: left to right, each row below the tallest
    panel of the previous one. Panel ids follow the reading order."""
    out: list[dict[str, Any]] = []
    y = 0
    for row in rows:
        x = 0
        for p in row:
            g = p["gridPos"]
            if x + g["w"] > 24:
                raise ValueError(f"row overflows 24 columns at {p['title']!r}")
            p["gridPos"] = {"h": g["h"], "w": g["w"], "x": x, "y": y}
            p["id"] = len(out) + 1
            out.append(p)
            x += g["w"]
        y += max(p["gridPos"]["h"] for p in row)
    return out


def dashboard(key: str, description: str, variables: list[dict[str, Any]], rows: list[list[dict[str, Any]]],
              time_from: str = "now-6h") -> dict[str, Any]:
    return {
        "uid": UIDS[key],
        "title": TITLES[key],
        "description": description,
        "tags": [TAG],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: line up a failure burst with the schedd that caused it
        "liveNow": False,
        "fiscalYearStartMonth": 0,
        "timezone": "browser",
        "weekStart": "",
        "refresh": "1m",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": ["30s", "1m", "5m", "15m", "30m", "1h"]},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
             "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            {"name": "opos alerts firing", "datasource": dict(DS), "enable": True, "hide": False,
             "iconColor": "red", "expr": 'ALERTS{alertname=~"Opos.+", alertstate="firing"}',
             "step": "60s", "titleFormat": "{{alertname}}", "tagKeys": "severity,pool,schedd,site,source",
             "textFormat": "{{alertname}} {{pool}} {{schedd}} {{site}} {{source}}", "useValueForTime": False},
        ]},
        "links": [
            {"title": "opos-monitor boards", "type": "dashboards", "tags": [TAG], "asDropdown": False,
             "includeVars": True, "keepTime": True, "targetBlank": False, "icon": "external link", "tooltip": "",
             "url": ""},
            {"title": "Runbooks", "type": "link", "url": RUNBOOKS, "icon": "doc", "targetBlank": True,
             "tooltip": "What each opos alert means, what to check, what to do", "asDropdown": False,
             "includeVars": False, "keepTime": False, "tags": []},
        ],
        "templating": {"list": [datasource_var(), *variables]},
        "panels": layout(rows),
    }


# ----------------------------------------------------------------------------------------------
# shared panel bodies

FAILURES_BY_CATEGORY_EXPR = (f"sum by (category) (rate(opos_job_failures_total{{{FAILSEL}}}[$__rate_interval])) * 60")


def failures_by_category(w: int = 12, h: int = 9) -> dict[str, Any]:
    return timeseries(
        "Failures by category",
        "Failed job outcomes per minute (held, removed, or completed with a failure), stacked by the "
        "classifier's category, for the selected pools, schedds, sites and categories. A band that grows "
        "suddenly is the first thing to chase: 'site' -> Sites board; 'memory' -> request_memory of the "
        "campaign; 'certificate' -> the submitter's proxy/token; 'code' -> the release. "
        "Series: opos_job_failures_total.",
        [target(FAILURES_BY_CATEGORY_EXPR, "{{category}}")],
        unit="short", axis_label="failures / min", stack=True, w=w, h=h, min_=0,
        overrides=color_overrides(CATEGORY_COLORS), calcs=["mean", "max"],
    )


RATIO_TH = thresholds(("green", None), ("orange", 0.1), ("red", 0.2))


def failure_ratio_per_site(w: int = 12, h: int = 9) -> dict[str, Any]:
    return timeseries(
        "Failure ratio per site",
        "Fraction of job outcomes at each site over the last 30 minutes that were failures of any "
        "category (recording rule site:opos_job_failure_ratio:rate30m). Above 20 % (red line) a site "
        "deserves a look on the Sites board; a site whose failures are mostly category 'site' pages "
        "through OposSiteFailureRatioHigh. Gaps mean no job finished at the site in 30 minutes.",
        [target('site:opos_job_failure_ratio:rate30m{site=~"$site"}', "{{site}}")],
        unit="percentunit", min_=0, max_=1, th=RATIO_TH, th_style="dashed", w=w, h=h,
        links=[board_link("sites", "Sites board"), runbook("OposSiteFailureRatioHigh")],
    )


# ----------------------------------------------------------------------------------------------
# Overview


def overview() -> dict[str, Any]:
    alerts = table(
        "Firing and pending alerts",
        "opos alerts Prometheus evaluates right now (firing first: red; pending: orange, i.e. the "
        "condition holds but not yet for the alert's 'for:' time). Click an alert name for its runbook: "
        "what it means, what to check, what to do. Empty means nothing is wrong that an alert knows of. "
        "Runbooks: " + RUNBOOKS,
        [target('ALERTS{alertname=~"Opos.+"}', "", instant=True, fmt="table")],
        w=12, h=8, no_value="No opos alert is firing or pending",
        links=[{"title": "All runbooks", "url": RUNBOOKS, "targetBlank": True}],
        transformations=[{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True, "instance": True},
            "indexByName": {"alertname": 0, "alertstate": 1, "severity": 2, "pool": 3, "schedd": 4, "site": 5,
                            "source": 6},
            "renameByName": {"alertname": "Alert", "alertstate": "State", "severity": "Severity", "pool": "Pool",
                             "schedd": "Schedd", "site": "Site", "source": "Source"}}}],
        sort_by="State", sort_desc=False,  # firing before pending
        overrides=[
            {"matcher": {"id": "byName", "options": "Alert"}, "properties": [
                {"id": "links", "value": [{"title": "Runbook for ${__value.raw}", "targetBlank": True,
                                           "url": RUNBOOKS + "${__value.raw}.md"}]}]},
            {"matcher": {"id": "byName", "options": "State"}, "properties": [
                {"id": "mappings", "value": value_map({"firing": ("firing", "red"), "pending": ("pending", "orange")})},
                {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
        ],
    )
    sources = stat(
        "Source up/down",
        "One tile per schedd and source kind: UP when the latest poll succeeded, DOWN when it failed or has "
        "not succeeded since the monitor started. A schedd with every tile DOWN is unreachable "
        "(OposScheddUnreachable); one DOWN tile is one failing source (OposSourceDown). Details on the "
        "Schedds board. Series: opos_source_up.",
        [target(f"opos_source_up{{{POOL_SCHEDD}}}", "{{schedd}} · {{source}}", instant=True)],
        unit="short", w=9, h=8, mappings=UP_DOWN, th=thresholds(("red", None), ("green", 1)),
        links=[board_link("schedds", "Schedds board"), runbook("OposScheddUnreachable"), runbook("OposSourceDown")],
        no_value="No source declared yet",
    )
    scraped = stat(
        "Monitor scraped",
        "Whether Prometheus can scrape opos-monitor (up{job=\"opos-monitor\"}). DOWN or empty: nothing on "
        "these boards is current — see OposMonitorDown.",
        [target('up{job="opos-monitor"}', "{{instance}}", instant=True)],
        unit="short", w=3, h=8, mappings=UP_DOWN, th=thresholds(("red", None), ("green", 1)),
        text_mode="value", links=[runbook("OposMonitorDown")], no_value="NOT SCRAPED",
    )
    top_sites = bargauge(
        "Top sites by failures",
        "The ten sites with the most failed job outcomes in the selected time range (all selected "
        "categories). Many failures at a site with few outcomes is a broken site; many failures "
        "everywhere is usually the campaign's code or credentials. Click a bar for the site's board.",
        [target(f"sort_desc(topk(10, sum by (site) (increase(opos_job_failures_total{{{FAILSEL}}}[$__range]))))",
                "{{site}}", instant=True)],
        unit="short", decimals=0, w=8, h=9, min_=0, no_value="No failures in range",
        th=thresholds(("green", None), ("orange", 10), ("red", 100)),
        links=[board_link("sites", "Sites board")],
        overrides=[{"matcher": {"id": "byFrameRefID", "options": "A"}, "properties": [
            {"id": "links", "value": [board_link("sites", "Open ${__field.labels.site} on the Sites board",
                                                 site_from_field=True)]}]}],
    )
    blackholes = bargauge(
        "Black-hole hosts per site",
        "Execute hosts the black-hole detector currently flags (hosts that fail job after job within "
        "minutes), counted per site; host names are in `opos-monitor failures --site SITE` and Kibana. "
        "Any bar here pages (OposBlackHoleNode).",
        [target(f'sort_desc(opos_blackhole_hosts{{site=~"$site"}} > 0)', "{{site}}", instant=True)],
        unit="short", decimals=0, w=8, h=9, min_=0, no_value="No black-hole hosts",
        th=thresholds(("green", None), ("red", 1)),
        links=[runbook("OposBlackHoleNode"), board_link("sites", "Sites board")],
        overrides=[{"matcher": {"id": "byFrameRefID", "options": "A"}, "properties": [
            {"id": "links", "value": [board_link("sites", "Open ${__field.labels.site} on the Sites board",
                                                 site_from_field=True)]}]}],
    )
    creds = timeseries(
        "Credentials expiring",
        "Queued jobs whose X.509 proxy expires within opos_credential_expiring_window_seconds (default 24 h) "
        "or has expired, per schedd. Renew the submitter's proxy before these jobs start failing as "
        "'certificate'; a count that drops by itself means the renewal caught up. Series: "
        "opos_jobs_credential_expiring.",
        [target(f"sum by (schedd) (opos_jobs_credential_expiring{{{POOL_SCHEDD}}})", "{{schedd}}")],
        unit="short", decimals=0, w=8, h=9, min_=0, th=thresholds(("green", None), ("orange", 1)),
        links=[runbook("OposCredentialsExpiringSoon"), runbook("OposCertificateFailures")],
    )
    held = timeseries(
        "Held jobs by category",
        "Jobs on hold in the selected schedds' queues right now, stacked by the category of their hold "
        "reason. Held jobs wait for a person: 'memory' holds need request_memory raised and a release, "
        "'certificate' holds a renewed proxy, 'site' holds a resubmit elsewhere. Series: opos_jobs_held.",
        [target(f'sum by (category) (opos_jobs_held{{{POOL_SCHEDD}, category=~"$category"}})', "{{category}}")],
        unit="short", decimals=0, stack=True, w=12, h=9, min_=0, overrides=color_overrides(CATEGORY_COLORS),
        links=[board_link("schedds", "Schedds board"), runbook("OposMemoryFailuresRising")],
    )
    by_status = table(
        "Jobs by status per schedd",
        "Jobs in each schedd's queue by JobStatus, as of its latest queue poll (equals condor_q -totals). "
        "Many held jobs: see 'Held jobs by category'; many idle and few running on a schedd: matching or "
        "negotiation problem, not a job failure. Series: opos_jobs.",
        [target(f"sum by (schedd, status) (opos_jobs{{{POOL_SCHEDD}}})", "", instant=True, fmt="table")],
        w=12, h=9, decimals=0,
        transformations=[
            {"id": "groupingToMatrix", "options": {"columnField": "status", "rowField": "schedd",
                                                    "valueField": "Value"}},
            {"id": "organize", "options": {
                "renameByName": {"schedd\\status": "Schedd"},
                "indexByName": {"schedd\\status": 0, "idle": 1, "running": 2, "held": 3, "transferring_output": 4,
                                "suspended": 5, "completed": 6, "removed": 7, "unknown": 8}}},
        ],
        overrides=[{"matcher": {"id": "byName", "options": "held"}, "properties": [
            {"id": "thresholds", "value": thresholds(("transparent", None), ("orange", 1))},
            {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}]}],
        links=[board_link("schedds", "Schedds board")],
    )
    return dashboard(
        "overview",
        "The shifter's first look: what fails, where and why; whether the monitor sees every schedd.",
        [POOL_VAR, SCHEDD_VAR, SITE_VAR, CATEGORY_VAR],
        [[alerts, sources, scraped],
         [failures_by_category(), failure_ratio_per_site()],
         [top_sites, blackholes, creds],
         [held, by_status]],
    )


# ----------------------------------------------------------------------------------------------
# Sites


def sites() -> dict[str, Any]:
    site_ratio = timeseries(
        "Site-caused failure ratio",
        "Fraction of outcomes at each site in the last 30 minutes that failed because of the site itself "
        "(category 'site': black-hole nodes, CVMFS or container problems, scratch full). This is what "
        "OposSiteFailureRatioHigh pages on: above 50 % (dark red line) with at least 10 outcomes for 5 "
        "minutes; red from 20 %, like every failure ratio on these boards. "
        "Recording rule site:opos_job_site_failure_ratio:rate30m.",
        [target('site:opos_job_site_failure_ratio:rate30m{site=~"$site"}', "{{site}}")],
        unit="percentunit", min_=0, max_=1, th=thresholds(("green", None), ("red", 0.2), ("dark-red", 0.5)),
        th_style="dashed", links=[runbook("OposSiteFailureRatioHigh")],
    )
    by_category_ratio = timeseries(
        "Failure ratio by category",
        "Fraction of each site's outcomes in the last 30 minutes that failed, per failure category "
        "(site_category:opos_job_failures:rate30m / site:opos_job_outcomes:rate30m; only non-zero "
        "series; the categories of a site add up to its failure ratio, site:opos_job_failure_ratio:rate30m). "
        "Memory, code or certificate failures are the campaign's problem, not the site's: they do not page "
        "the site alert, but show here. Red line: 20 %.",
        [target('site_category:opos_job_failures:rate30m{site=~"$site", category=~"$category"}\n'
                '  / ignoring (category) group_left ()\n'
                'site:opos_job_outcomes:rate30m{site=~"$site"}\n'
                '> 0', "{{site}} · {{category}}")],
        unit="percentunit", min_=0, th=RATIO_TH, th_style="dashed", no_value="No failures in the last 30 minutes",
        links=[runbook("OposSiteFailureRatioHigh")],
    )
    outcomes = timeseries(
        "Outcomes per site",
        "Job outcomes (completed, removed or held; failed or not) per minute at each selected site: the "
        "denominator of the failure ratios. A site that drops to zero while the campaign still runs "
        "elsewhere is not getting jobs matched (glideins not starting, site offline). Series: "
        "opos_job_outcomes_total.",
        [target(f"sum by (site) (rate(opos_job_outcomes_total{{{JOBSEL}}}[$__rate_interval])) * 60", "{{site}}")],
        unit="short", axis_label="outcomes / min", min_=0,
    )
    per_schedd = timeseries(
        "Failures at the selected sites per schedd",
        "Failures per minute at the selected sites and categories, split by the schedd (access point) "
        "the jobs came from: one schedd means one campaign or submitter is hit; all schedds means the "
        "site. Series: opos_job_failures_total.",
        [target(f"sum by (schedd) (rate(opos_job_failures_total{{{FAILSEL}}}[$__rate_interval])) * 60",
                "{{schedd}}")],
        unit="short", axis_label="failures / min", min_=0, stack=True,
    )
    bh_hosts = timeseries(
        "Black-hole hosts",
        "Execute hosts at each selected site that the black-hole detector flags (quick failure after quick "
        "failure within its window). A few hosts: black-hole nodes, ask the site to drain them; many at "
        "once, or the whole site flagged (next panel): a site-wide outage. Series: opos_blackhole_hosts.",
        [target('opos_blackhole_hosts{site=~"$site"}', "{{site}}")],
        unit="short", decimals=0, min_=0, th=thresholds(("green", None), ("red", 1)), th_style="dashed",
        links=[runbook("OposBlackHoleNode")],
    )
    bh_site = state_timeline(
        "Whole site flagged as a black hole",
        "1 (red) while the detector flags the whole site: most of its hosts fail jobs within minutes. "
        "Exclude the site from matching and open a ticket with the site. Series: opos_blackhole_site.",
        [target('opos_blackhole_site{site=~"$site"}', "{{site}}")],
        w=12, h=9, mappings=value_map({"0": ("ok", "green"), "1": ("BLACK HOLE", "red")}),
        th=thresholds(("green", None), ("red", 1)), links=[runbook("OposBlackHoleNode")],
    )
    summary = table(
        "Sites in the selected range",
        "Per site over the selected time range: outcomes, failures (selected categories), failures of "
        "category 'site', the failure ratio (red above 20 %) and the black-hole hosts flagged now. Sort "
        "by any column. Series: opos_job_outcomes_total, opos_job_failures_total, opos_blackhole_hosts.",
        [target(f"sum by (site) (increase(opos_job_outcomes_total{{{JOBSEL}}}[$__range]))", "", "A",
                instant=True, fmt="table"),
         target(f"sum by (site) (increase(opos_job_failures_total{{{FAILSEL}}}[$__range]))", "", "B",
                instant=True, fmt="table"),
         target(f'sum by (site) (increase(opos_job_failures_total{{{JOBSEL}, category="site"}}[$__range]))', "", "C",
                instant=True, fmt="table"),
         target(f"sum by (site) (increase(opos_job_failures_total{{{FAILSEL}}}[$__range]))\n"
                f"  / sum by (site) (increase(opos_job_outcomes_total{{{JOBSEL}}}[$__range]))", "", "D",
                instant=True, fmt="table"),
         target('max by (site) (opos_blackhole_hosts{site=~"$site"})', "", "E", instant=True, fmt="table")],
        w=24, h=9, decimals=0, sort_by="Failures",
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "indexByName": {"site": 0, "Value #A": 1, "Value #B": 2, "Value #C": 3, "Value #D": 4, "Value #E": 5},
                "renameByName": {"site": "Site", "Value #A": "Outcomes", "Value #B": "Failures",
                                 "Value #C": "Site failures", "Value #D": "Failure ratio",
                                 "Value #E": "Black-hole hosts"}}},
        ],
        overrides=[
            {"matcher": {"id": "byName", "options": "Failure ratio"}, "properties": [
                {"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1},
                {"id": "thresholds", "value": RATIO_TH},
                {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}]},
            {"matcher": {"id": "byName", "options": "Black-hole hosts"}, "properties": [
                {"id": "thresholds", "value": thresholds(("transparent", None), ("red", 1))},
                {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}]},
        ],
    )
    return dashboard(
        "sites",
        "Where jobs fail: failure ratios and categories per site, outcomes, black-hole hosts.",
        [POOL_VAR, SCHEDD_VAR, SITE_VAR, CATEGORY_VAR],
        [[failure_ratio_per_site(), site_ratio],
         [by_category_ratio, failures_by_category()],
         [outcomes, per_schedd],
         [bh_hosts, bh_site],
         [summary]],
    )


# ----------------------------------------------------------------------------------------------
# Schedds


def schedds() -> dict[str, Any]:
    reachable = stat(
        "Schedd reachable",
        "A schedd is reachable when the latest poll of any of its schedd-backed sources (queue, history, "
        "epochs) succeeded (recording rule schedd:opos_source_up:max). UNREACHABLE for 3 minutes pages "
        "OposScheddUnreachable: its jobs are not being watched.",
        [target(f"schedd:opos_source_up:max{{{POOL_SCHEDD}}}", "{{schedd}}", instant=True)],
        unit="short", w=24, h=4, mappings=value_map({"0": ("UNREACHABLE", "red"), "1": ("reachable", "green")}),
        th=thresholds(("red", None), ("green", 1)), links=[runbook("OposScheddUnreachable")],
    )
    jobs = timeseries(
        "Jobs by status · $schedd",
        "Jobs in this schedd's queue by JobStatus over time (latest queue poll; equals condor_q -totals). "
        "Held growing: see 'Held jobs by category'. Idle growing while running stays flat: matching or "
        "negotiator trouble. Series: opos_jobs.",
        [target('sum by (status) (opos_jobs{pool=~"$pool", schedd=~"$schedd"})', "{{status}}")],
        unit="short", decimals=0, stack=True, w=24, h=8, min_=0, overrides=color_overrides(STATUS_COLORS),
        calcs=["lastNotNull"],
    )
    jobs["repeat"] = "schedd"
    jobs["repeatDirection"] = "h"
    jobs["maxPerRow"] = 3
    held = timeseries(
        "Held jobs by category",
        "Held jobs per schedd and hold category (only non-zero series). Memory holds growing on one schedd: "
        "a campaign's request_memory is too low (OposMemoryFailuresRising); certificate holds: the "
        "submitter's proxy or token. `opos-monitor failures --schedd SCHEDD` groups them by signature. "
        "Series: opos_jobs_held.",
        [target(f"sum by (schedd, category) (opos_jobs_held{{{POOL_SCHEDD}}}) > 0", "{{schedd}} · {{category}}")],
        unit="short", decimals=0, stack=True, min_=0, no_value="No held jobs",
        links=[runbook("OposMemoryFailuresRising"), runbook("OposCertificateFailures")],
    )
    failures = timeseries(
        "Failures by schedd and category (30m)",
        "Failed outcomes of each schedd's jobs in the last 30 minutes by category (recording rule "
        "schedd_category:opos_job_failures:increase30m). OposMemoryFailuresRising fires at 10 memory "
        "failures in 30 minutes on one schedd.",
        [target(f'schedd_category:opos_job_failures:increase30m{{{POOL_SCHEDD}}} > 0',
                "{{schedd}} · {{category}}")],
        unit="short", decimals=0, min_=0, no_value="No failures in the last 30 minutes",
        links=[runbook("OposMemoryFailuresRising")],
    )
    up = state_timeline(
        "Source up",
        "Each source of each schedd over time: green UP while its polls succeed, red DOWN while they fail "
        "(or before its first success). A whole schedd red: OposScheddUnreachable; one row red: "
        "OposSourceDown. The monitor's log has each failed poll's error. Series: opos_source_up.",
        [target(f"opos_source_up{{{SRCSEL}}}", "{{schedd}} · {{source}}")],
        w=12, h=9, mappings=UP_DOWN, th=thresholds(("red", None), ("green", 1)),
        links=[runbook("OposScheddUnreachable"), runbook("OposSourceDown")],
    )
    age = bargauge(
        "Since last successful poll",
        "Seconds since each source's latest successful poll (time() - "
        "opos_source_last_success_timestamp_seconds). It should stay near the poll interval; orange "
        "after 5 minutes, red after 20 (OposSourceStalled looks for no finished poll in 20 minutes). "
        "Missing bars: the source never succeeded since the monitor started.",
        [target(f"time() - opos_source_last_success_timestamp_seconds{{{SRCSEL}}}", "{{schedd}} · {{source}}",
                instant=True)],
        unit="s", w=12, h=9, min_=0, th=thresholds(("green", None), ("orange", 300), ("red", 1200)),
        links=[runbook("OposSourceStalled")],
    )
    duration = timeseries(
        "Poll duration",
        "How long polls take: the latest poll (solid, opos_source_last_poll_duration_seconds) and the "
        "mean over the interval (dashed, from opos_source_poll_duration_seconds). A poll longer than its "
        "interval makes the scheduler skip runs (Missed runs panel); a schedd slow to answer is "
        "overloaded — the first sign before it becomes unreachable.",
        [target(f"opos_source_last_poll_duration_seconds{{{SRCSEL}}}", "{{schedd}} · {{source}} latest", "A"),
         target(f"rate(opos_source_poll_duration_seconds_sum{{{SRCSEL}}}[$__rate_interval])\n"
                f"  / rate(opos_source_poll_duration_seconds_count{{{SRCSEL}}}[$__rate_interval])",
                "{{schedd}} · {{source}} mean", "B")],
        unit="s", min_=0,
        overrides=[{"matcher": {"id": "byFrameRefID", "options": "B"}, "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}],
        links=[runbook("OposScheddUnreachable"), runbook("OposSourceStalled")],
    )
    errors = timeseries(
        "Poll errors",
        "Failed polls per minute, per schedd and source (opos_source_errors_total). The error text of "
        "each failure is in the monitor's log with the schedd name. Errors on every source of a schedd: "
        "the schedd or the network; on one source only: that query (e.g. history too large for the "
        "timeout).",
        [target(f"sum by (schedd, source) (rate(opos_source_errors_total{{{SRCSEL}}}[$__rate_interval])) * 60",
                "{{schedd}} · {{source}}")],
        unit="short", axis_label="errors / min", bars=True, min_=0,
        th=thresholds(("green", None), ("red", 0.001)), links=[runbook("OposSourceDown")],
    )
    lag = timeseries(
        "History lag",
        "How far reading of each incremental source (history, epochs, event log) is behind: now minus the "
        "newest record handed off, 0 when caught up. A falling line needs patience; a rising one needs "
        "action before the schedd rotates history away (a gap). Red line: 30 minutes, "
        "OposHistoryLagHigh. Series: opos_source_lag_seconds.",
        [target(f"opos_source_lag_seconds{{{SRCSEL}}}", "{{schedd}} · {{source}}")],
        unit="s", w=8, min_=0, th=thresholds(("green", None), ("red", 1800)), th_style="dashed",
        links=[runbook("OposHistoryLagHigh")],
    )
    gaps = timeseries(
        "History gaps (last hour)",
        "Gaps found in the last hour: records rotated away or truncated before the monitor read them "
        "(opos_source_gaps_total). Any bar fires OposHistoryGapDetected: those jobs are missing from the "
        "metrics and Elasticsearch until backfilled from the rotated history files.",
        [target(f"increase(opos_source_gaps_total{{{SRCSEL}}}[1h])", "{{schedd}} · {{source}}")],
        unit="short", w=8, bars=True, min_=0, th=thresholds(("green", None), ("red", 0.5)),
        links=[runbook("OposHistoryGapDetected")],
    )
    missed = timeseries(
        "Missed runs",
        "Polls per minute the scheduler skipped because the previous poll of the same source was still "
        "running (opos_scheduler_missed_runs_total). A few during a big backfill are normal; a steady "
        "rate means polls take longer than their interval — raise the interval or find the slow schedd "
        "(Poll duration).",
        [target(f"sum by (schedd, source) (rate(opos_scheduler_missed_runs_total{{{SRCSEL}}}[$__rate_interval])) * 60",
                "{{schedd}} · {{source}}")],
        unit="short", axis_label="missed runs / min", w=8, bars=True, min_=0, links=[runbook("OposSourceStalled")],
    )
    records = timeseries(
        "Records read",
        "Job records per minute each source handed to the pipeline (opos_source_records_total): the "
        "monitor's throughput. Zero while jobs finish on the schedd: the source is stalled; a spike: a "
        "backfill after downtime. Every source at zero and no poll finishing: the daemon is stuck "
        "(OposMonitorStuck).",
        [target(f"sum by (schedd, source) (rate(opos_source_records_total{{{SRCSEL}}}[$__rate_interval])) * 60",
                "{{schedd}} · {{source}}")],
        unit="short", axis_label="records / min", min_=0, links=[runbook("OposMonitorStuck")],
    )
    return dashboard(
        "schedds",
        "Access points: queue state, and whether the monitor polls each source of each schedd in time.",
        [POOL_VAR, SCHEDD_VAR, SOURCE_VAR],
        [[reachable],
         [jobs],
         [held, failures],
         [up, age],
         [duration, errors],
         [lag, gaps, missed],
         [records]],
    )


# ----------------------------------------------------------------------------------------------
# Shipping


def shipping() -> dict[str, Any]:
    pending = stat(
        "Pending records",
        "Records in the local store's outbox waiting to be shipped to Elasticsearch/OpenSearch "
        "(opos_store_pending_records). Orange above 10,000: OposShippingBacklogGrowing fires when it also "
        "keeps growing for 30 minutes.",
        [target(f"opos_store_pending_records{{{INST}}}", "{{instance}}", instant=True)],
        unit="short", decimals=0, w=6, h=5, th=thresholds(("green", None), ("orange", 10000)),
        links=[runbook("OposShippingBacklogGrowing")],
    )
    dead = stat(
        "Dead letters",
        "Records Elasticsearch rejected for good, kept in the store as dead letters "
        "(opos_store_dead_letter_records). Not in Kibana until the cause (usually a mapping conflict) "
        "is fixed and they are requeued; new ones fire OposDeadLetters.",
        [target(f"opos_store_dead_letter_records{{{INST}}}", "{{instance}}", instant=True)],
        unit="short", decimals=0, w=6, h=5, th=thresholds(("green", None), ("orange", 1)),
        links=[runbook("OposDeadLetters")],
    )
    fill = gauge(
        "Store fill",
        "Store size on disk as a fraction of store.max_bytes (opos_store_size_bytes / "
        "opos_store_max_bytes). At 100 % the store refuses new records (OposStoreFull); the daemon keeps "
        "its checkpoints and re-reads later, but rotated history is lost.",
        [target(f"opos_store_size_bytes{{{INST}}} / opos_store_max_bytes{{{INST}}}", "{{instance}}", instant=True)],
        unit="percentunit", w=6, h=5, min_=0, max_=1,
        th=thresholds(("green", None), ("orange", 0.8), ("red", 0.95)), links=[runbook("OposStoreFull")],
    )
    full = stat(
        "Store full",
        "FULL (red) when the store refused the latest batch for lack of room (opos_store_full): "
        "OposStoreFull pages after 5 minutes. Free disk or raise store.max_bytes; check why records are "
        "not shipped.",
        [target(f"opos_store_full{{{INST}}}", "{{instance}}", instant=True)],
        unit="short", w=6, h=5, mappings=value_map({"0": ("ok", "green"), "1": ("FULL", "red")}),
        th=thresholds(("green", None), ("red", 1)), links=[runbook("OposStoreFull")],
    )
    pending_ts = timeseries(
        "Store pending records",
        "The outbox over time (opos_store_pending_records): a saw-tooth is healthy shipping; a line that "
        "only climbs means Elasticsearch is down, slow or refusing, or unreachable from the monitor. "
        "Orange line: 10,000 (OposShippingBacklogGrowing threshold).",
        [target(f"opos_store_pending_records{{{INST}}}", "{{instance}}")],
        unit="short", decimals=0, min_=0, th=thresholds(("green", None), ("orange", 10000)), th_style="dashed",
        links=[runbook("OposShippingBacklogGrowing")],
    )
    size = timeseries(
        "Store size",
        "Size of the local SQLite store on disk (opos_store_size_bytes) against its limit store.max_bytes "
        "(opos_store_max_bytes, dashed red).",
        [target(f"opos_store_size_bytes{{{INST}}}", "{{instance}} size", "A"),
         target(f"opos_store_max_bytes{{{INST}}}", "{{instance}} limit", "B")],
        unit="bytes", min_=0,
        overrides=[{"matcher": {"id": "byFrameRefID", "options": "B"}, "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0}]}],
        links=[runbook("OposStoreFull")],
    )
    sent = timeseries(
        "Documents sent",
        "Documents per second Elasticsearch/OpenSearch accepted (opos_sink_documents_sent_total), per "
        "sink. Flat at zero while records are pending: shipping is stuck. Empty when shipping is not "
        "enabled (elasticsearch.enabled = false).",
        [target(f"sum by (instance, sink) (rate(opos_sink_documents_sent_total{{{INST}}}[$__rate_interval]))",
                "{{instance}} {{sink}}")],
        unit="short", axis_label="documents / s", min_=0, no_value="Shipping not enabled",
    )
    rejected = timeseries(
        "Documents rejected",
        "Documents per second rejected item by item (opos_sink_documents_rejected_total; they become dead "
        "letters). A burst is one bad batch; a steady flow means every record of some kind is refused — "
        "look at the dead letters' reasons and the index template.",
        [target(f"sum by (instance, sink) (rate(opos_sink_documents_rejected_total{{{INST}}}[$__rate_interval]))",
                "{{instance}} {{sink}}")],
        unit="short", axis_label="documents / s", bars=True, min_=0, th=thresholds(("green", None), ("red", 1e-9)),
        links=[runbook("OposDeadLetters")], no_value="Shipping not enabled",
    )
    retries = timeseries(
        "Retries and failed requests",
        "Bulk request retries per second (429 too many requests, 5xx, connection errors; "
        "opos_sink_retries_total) and bulk requests that failed as a whole "
        "(opos_sink_request_errors_total). Retries that keep up mean the cluster is overloaded; "
        "failed requests mean it is down or unreachable.",
        [target(f"sum by (instance, sink) (rate(opos_sink_retries_total{{{INST}}}[$__rate_interval]))",
                "{{instance}} {{sink}} retries", "A"),
         target(f"sum by (instance, sink) (rate(opos_sink_request_errors_total{{{INST}}}[$__rate_interval]))",
                "{{instance}} {{sink}} failed requests", "B")],
        unit="reqps", min_=0, links=[runbook("OposShippingBacklogGrowing")], no_value="Shipping not enabled",
    )
    latency_q = timeseries(
        "Bulk request latency",
        "Latency quantiles of bulk requests to the cluster (p50, p90, p99 from the histogram "
        "opos_sink_request_duration_seconds). Seconds-long p99 with retries: the cluster is overloaded "
        "(lower elasticsearch.bulk_docs or add capacity).",
        [target(f"histogram_quantile({q}, sum by (le, sink) "
                f"(rate(opos_sink_request_duration_seconds_bucket{{{INST}}}[$__rate_interval])))",
                f"{{{{sink}}}} p{int(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))],
        unit="s", min_=0, no_value="Shipping not enabled",
    )
    latency_h = heatmap(
        "Bulk request latency histogram",
        "Distribution of bulk request latencies over time (buckets of opos_sink_request_duration_seconds, "
        "0.01 to 60 s): two bands mean two kinds of requests (e.g. small batches and full ones, or "
        "retries).",
        [target(f"sum by (le) (increase(opos_sink_request_duration_seconds_bucket{{{INST}}}[$__rate_interval]))",
                "{{le}}", fmt="heatmap")],
        w=12, h=9, no_value="Shipping not enabled",
    )
    last_ok = bargauge(
        "Since last successful bulk request",
        "Seconds since the latest successful bulk request per sink "
        "(time() - opos_sink_last_success_timestamp_seconds). Orange after 5 minutes, red after 30 "
        "while records are pending: Kibana is falling behind.",
        [target(f"time() - opos_sink_last_success_timestamp_seconds{{{INST}}}", "{{instance}} {{sink}}",
                instant=True)],
        unit="s", w=24, h=6, min_=0, th=thresholds(("green", None), ("orange", 300), ("red", 1800)),
        no_value="Shipping not enabled", links=[runbook("OposShippingBacklogGrowing")],
    )
    dead_ts = timeseries(
        "Dead letters over time",
        "Dead-letter records in the store over time (opos_store_dead_letter_records). A step up is a "
        "rejected batch; it comes down when dead letters are requeued after the fix.",
        [target(f"opos_store_dead_letter_records{{{INST}}}", "{{instance}}")],
        unit="short", decimals=0, min_=0, links=[runbook("OposDeadLetters")],
    )
    return dashboard(
        "shipping",
        "The local store (outbox, dead letters, size) and shipping to Elasticsearch/OpenSearch.",
        [INSTANCE_VAR],
        [[pending, dead, fill, full],
         [pending_ts, size],
         [sent, rejected],
         [retries, dead_ts],
         [latency_q, latency_h],
         [last_ok]],
        time_from="now-24h",
    )


BOARDS = {"overview": overview, "sites": sites, "schedds": schedds, "shipping": shipping}


def build() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{key}.json": json.dumps(fn(), indent=2, ensure_ascii=False) + "\n" for key, fn in BOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if grafana/dashboards/*.json are out of date")
    args = ap.parse_args(argv)
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, text in build().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python grafana/build_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
