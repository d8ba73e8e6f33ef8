"""The Grafana boards (grafana/dashboards/*.json): static checks of the JSON model against the
documented series (docs/metrics.md) and recording rules (alerts/opos.rules.yml), and a live test
that evaluates every panel's PromQL against a real Prometheus scraping the real daemon polling
the real dev pool.

No Grafana server can be installed here, so the live test does what Grafana would: resolve the
template variables through Prometheus' label API, substitute them (multi-value ``=~"$var"`` as
a regex of real values, ``$__rate_interval`` 1m, ``$__interval`` 15s, ``$__range`` 5m), and send
each query to /api/v1/query (and /api/v1/query_range for time-series panels).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from . import miniyaml
from .conftest import REPORT
from .promql import parse

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
BOARDS_DIR = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
METRICS_DOC = ROOT / "docs" / "metrics.md"
DASHBOARDS_DOC = ROOT / "docs" / "dashboards.md"
RULES = ROOT / "alerts" / "opos.rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/opos-monitor/opos-monitor/blob/main/docs/runbooks/"
DEV_CONFIG = ROOT / "deploy" / "dev-pool" / "opos-monitor.toml"
ES_ENDPOINT = ROOT / "tests" / "sinks" / "es_endpoint.py"

TITLES = {
    "overview.json": "opos-monitor / Overview",
    "sites.json": "opos-monitor / Sites",
    "schedds.json": "opos-monitor / Schedds",
    "shipping.json": "opos-monitor / Shipping",
}
# Variables each board must offer (besides the data source).
REQUIRED_VARS = {
    "overview.json": {"pool", "schedd", "site", "category"},
    "sites.json": {"pool", "schedd", "site", "category"},
    "schedds.json": {"pool", "schedd"},
    "shipping.json": {"instance"},
}
DS = {"type": "prometheus", "uid": "${datasource}"}
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
BUILTIN_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                "__url_time_range", "__field", "__value", "__data", "__series", "__all", "__name", "__from",
                "__to", "__dashboard", "__org", "__user"}
SUBSTITUTE = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
UNITS = {"short", "s", "percentunit", "bytes", "reqps", "none"}
# Exact label values (DESIGN.md §3 and docs/metrics.md).
CATEGORIES = {"none", "site", "memory", "certificate", "code", "transfer", "policy", "user", "unknown"}
STATUSES = {"idle", "running", "removed", "completed", "held", "transferring_output", "suspended", "unknown"}
SOURCES = {"queue", "history", "epochs", "eventlog", "adfile"}
TIME_SERIES_PANELS = {"timeseries", "state-timeline", "heatmap"}


# ---------------------------------------------------------------------------------------------
# what the boards may use: documented series and recording rules


def documented_series() -> dict[str, set[str]]:
    """Series name -> its label names, from the tables of docs/metrics.md's "Series" section."""
    text = METRICS_DOC.read_text()
    section = text.split("\n## Series", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\|\s*`([a-z_:]+)`\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|")
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        m = row.match(line)
        if not m:
            continue
        name, mtype, labels_text = m.groups()
        labels = set() if labels_text.strip() in ("—", "-", "") else set(re.findall(r"[a-z_]+", labels_text))
        labels |= SCRAPE_LABELS
        if mtype.startswith("summary"):
            out[f"{name}_count"] = out[f"{name}_sum"] = labels
        elif mtype.startswith("histogram"):
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_count"] = out[f"{name}_sum"] = labels - {"le"}
        else:
            out[name] = labels
    assert len(out) > 30, f"docs/metrics.md: could not read the series tables (found {sorted(out)})"
    return out


def recording_rules() -> dict[str, tuple[str, set[str]]]:
    """Recording rule name -> (expression, output labels: its outer ``by (...)``)."""
    doc = miniyaml.loads(RULES.read_text())
    out = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            m = re.match(r"\s*\w+\s+by\s*\(([^)]*)\)", rule["expr"])
            assert m, f"recording rule {rule['record']}: expected 'agg by (...) (...)' to know its labels"
            out[rule["record"]] = (rule["expr"], {x.strip() for x in m.group(1).split(",") if x.strip()})
    assert out, "no recording rules found in alerts/opos.rules.yml"
    return out


def alert_names() -> set[str]:
    doc = miniyaml.loads(RULES.read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def known_series() -> dict[str, set[str]]:
    series = documented_series()
    for name, (_, labels) in recording_rules().items():
        series[name] = labels
    every_label = set().union(*series.values())
    # Prometheus' own series the boards read: the scrape's health and the alert state.
    series["up"] = set(SCRAPE_LABELS)
    series["ALERTS"] = every_label | {"alertname", "alertstate", "severity"}
    return series


# ---------------------------------------------------------------------------------------------
# the boards


def load_boards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(BOARDS_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows (none today)
    return out


def queries(board: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(label, query dict with expr/legendFormat/refId, panel or None) for every panel target and
    every Prometheus annotation."""
    for p in panels(board):
        for t in p.get("targets", []):
            yield f"{p['title']} [{t.get('refId')}]", t, p
    for a in board.get("annotations", {}).get("list", []):
        if a.get("expr"):
            yield f"annotation {a['name']}", {"expr": a["expr"], "legendFormat": "", "refId": "ann"}, None


def query_vars(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in board["templating"]["list"] if v["type"] == "query"]


LABEL_VALUES = re.compile(r"^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$")
VAR_REF = re.compile(r"\$\{(\w+)(?:[:.][^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def var_refs(text: str) -> set[str]:
    return {a or b or c for a, b, c in VAR_REF.findall(text)}


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend or ""))


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    return load_boards()


# ---------------------------------------------------------------------------------------------
# static checks


def test_the_four_boards_parse_with_the_runbooks_titles_and_unique_uids(boards):
    assert set(boards) == set(TITLES), f"grafana/dashboards holds {sorted(boards)}"
    assert {name: b["title"] for name, b in boards.items()} == TITLES
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids) and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", u) for u in uids), uids
    for name, b in boards.items():
        assert b["schemaVersion"] >= 38, name
        assert "opos-monitor" in b["tags"], name
        assert b.get("description"), name
        assert b["time"]["from"].startswith("now-") and b["refresh"], name
        ids = [p["id"] for p in panels(b)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        titles = [p["title"] for p in panels(b)]
        assert len(set(titles)) == len(titles), f"{name}: duplicate panel titles"


def test_committed_json_is_what_the_generator_builds():
    spec = importlib.util.spec_from_file_location("opos_build_dashboards", GRAFANA / "build_dashboards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    built = mod.build()
    assert set(built) == set(TITLES)
    stale = [name for name, text in built.items() if (BOARDS_DIR / name).read_text() != text]
    assert not stale, f"{stale} differ from grafana/build_dashboards.py: run python grafana/build_dashboards.py"


def test_every_panel_has_the_datasource_variable_a_query_a_description_and_a_unit(boards):
    problems = []
    for name, b in boards.items():
        for p in panels(b):
            where = f"{name}: {p['title']!r}"
            if p["type"] == "row":
                problems.append(f"{where}: rows are not used (every panel must have a query)")
                continue
            if p.get("datasource") != DS:
                problems.append(f"{where}: datasource {p.get('datasource')} is not {DS}")
            targets = p.get("targets") or []
            if not targets:
                problems.append(f"{where}: no target")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs):
                problems.append(f"{where}: duplicate refIds {refs}")
            for t in targets:
                if t.get("datasource") != DS:
                    problems.append(f"{where} [{t.get('refId')}]: target datasource {t.get('datasource')}")
                if not (t.get("expr") or "").strip():
                    problems.append(f"{where} [{t.get('refId')}]: empty expr")
            if len(p.get("description", "")) < 60:
                problems.append(f"{where}: description missing or too short to help a shifter")
            unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
            if unit not in UNITS:
                problems.append(f"{where}: unit {unit!r} not one of {sorted(UNITS)}")
    assert not problems, "\n".join(problems)


def test_panels_sit_on_the_grid_without_overlapping(boards):
    for name, b in boards.items():
        cells: dict[tuple[int, int], str] = {}
        for p in panels(b):
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, (name, p["title"], g)
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = p["title"]


def variable_problems(name: str, b: dict[str, Any], series: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    variables = b["templating"]["list"]
    names = [v["name"] for v in variables]
    ds = [v for v in variables if v["name"] == "datasource"]
    if not (ds and ds[0]["type"] == "datasource" and ds[0]["query"] == "prometheus"):
        problems.append(f"{name}: no 'datasource' variable of type datasource / prometheus")
    missing = REQUIRED_VARS.get(name, set()) - set(names)
    if missing:
        problems.append(f"{name}: missing variables {sorted(missing)}")
    for i, v in enumerate(variables):
        if v["type"] == "datasource":
            continue
        where = f"{name}: variable {v['name']}"
        if v["type"] != "query" or v.get("datasource") != DS:
            problems.append(f"{where}: must be a query variable on {DS}")
            continue
        definition = v["definition"]
        if v["query"].get("query") != definition:
            problems.append(f"{where}: query {v['query']} differs from definition {definition!r}")
        if not (v["multi"] and v["includeAll"]):
            problems.append(f"{where}: should be multi-value with All")
        m = LABEL_VALUES.match(definition)
        if not m:
            problems.append(f"{where}: {definition!r} is not label_values(selector, label)")
            continue
        sel = parse(m.group(1))
        for s in sel.selectors:
            if s.metric not in series:
                problems.append(f"{where}: unknown metric {s.metric}")
                continue
            for label, _, _ in s.matchers:
                if label not in series[s.metric]:
                    problems.append(f"{where}: {s.metric} has no label {label}")
            if m.group(2) not in series[s.metric]:
                problems.append(f"{where}: {s.metric} has no label {m.group(2)}")
        for ref in var_refs(definition):
            if ref not in names[:i]:
                problems.append(f"{where}: uses ${ref} before it is defined")
    # every reference resolves; every variable is used
    used: set[str] = set()
    texts = [json.dumps(p) for p in panels(b)] + [v.get("definition", "") for v in variables]
    texts += [json.dumps(b.get("annotations", {})), json.dumps(b.get("links", []))]
    for text in texts:
        used |= var_refs(text)
    undefined = used - set(names) - BUILTIN_VARS
    if undefined:
        problems.append(f"{name}: undefined variables {sorted(undefined)}")
    unused = set(names) - used
    if unused:
        problems.append(f"{name}: variables offered but used by no panel: {sorted(unused)}")
    # multi-value variables only with =~ / !~ (an = breaks as soon as two values are selected)
    for label, t, _ in queries(b):
        for m in re.finditer(r'(?<![=!])(=|!=)\s*"[^"]*\$', t["expr"]):
            problems.append(f"{name}: {label}: multi-value variable matched with {m.group(1)!r}")
    return problems


def test_template_variables_are_defined_used_and_read_documented_labels(boards):
    series = known_series()
    problems = [p for name, b in boards.items() for p in variable_problems(name, b, series)]
    assert not problems, "\n".join(problems)


def metric_problems(name: str, b: dict[str, Any], series: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    for label, t, _ in queries(b):
        parsed = parse(t["expr"])
        if parsed.unknown_functions:
            problems.append(f"{name}: {label}: unknown functions {sorted(parsed.unknown_functions)}")
        if not parsed.metrics:
            problems.append(f"{name}: {label}: selects no series")
        for metric in sorted(parsed.metrics - set(series)):
            problems.append(f"{name}: {label}: {metric} is not in docs/metrics.md nor a recording rule")
    return problems


def test_every_metric_is_documented_or_a_recording_rule(boards):
    series = known_series()
    problems = [p for name, b in boards.items() for p in metric_problems(name, b, series)]
    assert not problems, "\n".join(problems)


def label_problems(name: str, b: dict[str, Any], series: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    for label, t, _ in queries(b):
        parsed = parse(t["expr"])
        available: set[str] = set()
        for s in parsed.selectors:
            labels = series.get(s.metric or "", set())
            available |= labels
            for lab, op, value in s.matchers:
                if lab not in labels:
                    problems.append(f"{name}: {label}: {s.metric} has no label {lab!r}")
                if op in ("=", "!=") and "$" not in value:
                    allowed = {"category": CATEGORIES, "status": STATUSES, "source": SOURCES,
                               "job": {"opos-monitor"}}.get(lab)
                    if allowed is not None and value not in allowed:
                        problems.append(f"{name}: {label}: {lab}={value!r} is not a value it takes")
        if any((s.metric or "").endswith("_bucket") for s in parsed.selectors):
            available.add("le")
        for g in sorted(parsed.grouping - available):
            problems.append(f"{name}: {label}: groups or joins on {g!r}, which no series in it has")
        # a legend can only name labels that survive the outer aggregation
        m = re.match(r"\s*(?:sort_desc\(|topk\(\d+,\s*)*\w+\s+by\s*\(([^)]*)\)", t["expr"])
        out_labels = {x.strip() for x in m.group(1).split(",")} if m else available
        for lab in sorted(legend_labels(t.get("legendFormat", "")) - out_labels):
            problems.append(f"{name}: {label}: legend uses {{{{{lab}}}}}, not in the result's labels")
    return problems


def test_no_panel_uses_a_label_its_series_do_not_have(boards):
    series = known_series()
    problems = [p for name, b in boards.items() for p in label_problems(name, b, series)]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_broken_panels(boards):
    """The checks above, fed a board with typical mistakes, name each one."""
    series = known_series()
    b = copy.deepcopy(boards["overview.json"])
    ps = panels(b)
    ps[0]["targets"][0]["expr"] = 'site:opos_job_failure_ratio:rate30m{pool=~"$pool"}'  # no pool on the rule
    ps[1]["targets"][0]["expr"] = 'sum by (site) (rate(opos_job_failure_total[5m]))'  # misspelt metric
    ps[2]["targets"][0]["expr"] = 'sum by (schedd) (opos_jobs{status="finished", schedd="$schedd"})'
    ps[3]["targets"][0]["legendFormat"] = "{{site}}"  # the panel sums by category
    ps[4]["targets"][0]["expr"] = 'sum by (host) (opos_blackhole_hosts)'  # no host label, ever
    ps[5]["targets"][0]["expr"] = 'rat(opos_job_outcomes_total[5m])'
    b["templating"]["list"].append(dict(b["templating"]["list"][1], name="unused",
                                        definition="label_values(opos_jobs, owner)"))
    found = "\n".join(label_problems("x", b, series) + metric_problems("x", b, series)
                      + variable_problems("x", b, series))
    for needle in ("site:opos_job_failure_ratio:rate30m has no label 'pool'",
                   "opos_job_failure_total is not in docs/metrics.md",
                   "status='finished' is not a value it takes",
                   "multi-value variable matched with '='",
                   "legend uses {{site}}",
                   "groups or joins on 'host'",
                   "unknown functions ['rat']",
                   "opos_jobs has no label owner",
                   "used by no panel: ['unused']"):
        assert needle in found, f"check missed: {needle}\n{found}"


def _red_step(th: dict[str, Any]) -> float | None:
    reds = [s["value"] for s in th.get("steps", []) if s["value"] is not None and "red" in s["color"]]
    return min(reds) if reds else None


def test_units_and_thresholds_fit_what_is_shown(boards):
    problems = []
    for name, b in boards.items():
        for p in panels(b):
            exprs = " ".join(t["expr"] for t in p["targets"])
            d = p["fieldConfig"]["defaults"]
            where = f"{name}: {p['title']!r}"
            if "failure_ratio" in exprs or ("site_category:opos_job_failures" in exprs and "/" in exprs):
                if d["unit"] != "percentunit":
                    problems.append(f"{where}: a failure ratio must be percentunit")
                if _red_step(d["thresholds"]) != 0.2:
                    problems.append(f"{where}: failure ratio must turn red above 20 %")
            elif "time() -" in exprs or "opos_source_lag_seconds" in exprs or (
                    "_duration_seconds" in exprs and p["type"] != "heatmap"):
                if d["unit"] != "s":
                    problems.append(f"{where}: durations and ages are in seconds")
            elif "_bytes" in exprs and "/" not in exprs and d["unit"] != "bytes":
                problems.append(f"{where}: sizes are in bytes")
            for o in p["fieldConfig"]["overrides"]:
                props = {x["id"]: x["value"] for x in o["properties"]}
                if "ratio" in str(o["matcher"].get("options", "")).lower():
                    if props.get("unit") != "percentunit" or _red_step(props.get("thresholds", {})) != 0.2:
                        problems.append(f"{where}: column {o['matcher']['options']!r} must be percent, red > 20 %")
    assert not problems, "\n".join(problems)


def test_no_hard_coded_hosts_and_links_go_to_runbooks_or_boards(boards):
    uids = {b["uid"] for b in boards.values()}
    runbooks = {p.stem for p in RUNBOOKS.glob("*.md")}
    linked: set[str] = set()
    problems = []
    for name, b in boards.items():
        text = json.dumps(b)
        for pattern in (r"\b\d{1,3}(?:\.\d{1,3}){3}\b", r"localhost", r"\.fnal\.gov", r"@vm\b", r":9090\b",
                        r":9720\b", r"jobsub0\d"):
            if re.search(pattern, text):
                problems.append(f"{name}: hard-coded host matching {pattern!r}")
        for url in re.findall(r'"url": "([^"]*)"', text):
            if url.startswith(RUNBOOK_BASE):
                stem = url[len(RUNBOOK_BASE):].removesuffix(".md")
                if stem and "$" not in stem:
                    linked.add(stem)
                    if stem not in runbooks:
                        problems.append(f"{name}: link to a runbook that does not exist: {url}")
            elif url.startswith("/d/"):
                if url[3:].split("?")[0].split("/")[0] not in uids:
                    problems.append(f"{name}: link to an unknown board {url}")
            elif url:
                problems.append(f"{name}: unexpected link {url}")
    missing = alert_names() - linked
    assert not missing, f"no panel links the runbook of {sorted(missing)}"
    assert not problems, "\n".join(problems)


def test_panels_the_runbooks_point_to_exist():
    """Runbooks say 'board **opos-monitor / X**, panel "y"': that panel must be on that board."""
    by_title = {b["title"]: b for b in load_boards().values()}
    refs = 0
    problems = []
    for rb in sorted(RUNBOOKS.glob("*.md")):
        text = " ".join(rb.read_text().split())
        for board, rest in re.findall(r"board \*\*(opos-monitor / \w+)\*\*((?:, panels? (?:\"[^\"]+\"(?: and )?)+)?)",
                                      text, flags=re.IGNORECASE):
            refs += 1
            if board not in by_title:
                problems.append(f"{rb.name}: board {board!r} does not exist")
                continue
            have = {re.sub(r"\s*·\s*\$\w+$", "", p["title"]).lower() for p in panels(by_title[board])}
            for panel in re.findall(r"\"([^\"]+)\"", rest):
                if panel.lower() not in have:
                    problems.append(f"{rb.name}: board {board!r} has no panel {panel!r}")
    assert refs >= 12, f"found only {refs} board references in docs/runbooks"
    assert not problems, "\n".join(problems)


def test_provisioning_files_load_the_boards_and_a_prometheus_from_the_environment():
    dash = miniyaml.loads((PROVISIONING / "dashboards.yml").read_text())
    assert dash["apiVersion"] == 1
    (prov,) = dash["providers"]
    assert prov["type"] == "file" and prov["options"]["path"] and prov["folder"] == "opos-monitor"
    assert prov["allowUiUpdates"] is False  # the JSON comes from build_dashboards.py
    ds_doc = miniyaml.loads((PROVISIONING / "datasources.yml").read_text())
    assert ds_doc["apiVersion"] == 1
    (ds,) = ds_doc["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy"
    assert re.fullmatch(r"\$\{?[A-Z_]+\}?", ds["url"]), "the Prometheus URL must come from the environment"
    assert re.fullmatch(r"\d+s", ds["jsonData"]["timeInterval"])
    readme = (GRAFANA / "README.md").read_text()
    for needle in ("provisioning/dashboards.yml", "provisioning/datasources.yml", "OPOS_PROMETHEUS_URL",
                   "build_dashboards.py", *TITLES.values()):
        assert needle in readme, f"grafana/README.md does not mention {needle!r}"


def test_docs_describe_every_board_and_panel(boards):
    doc = DASHBOARDS_DOC.read_text()
    missing = [b["title"] for b in boards.values() if b["title"] not in doc]
    missing += [f"{b['title']}: {p['title']}" for b in boards.values() for p in panels(b)
                if re.sub(r"\s*·\s*\$\w+$", "", p["title"]) not in doc]
    assert not missing, f"docs/dashboards.md does not describe {missing}"


def test_the_promql_reader_sees_what_the_checks_rely_on():
    p = parse('sum by (site) (rate(opos_job_failures_total{pool=~"$pool", category="site"}[$__rate_interval]))'
              ' / ignoring (category) group_left () site:opos_job_outcomes:rate30m{site=~"a|b"} > 0')
    assert p.metrics == {"opos_job_failures_total", "site:opos_job_outcomes:rate30m"}
    assert p.grouping == {"site", "category"}
    assert p.functions == {"sum", "rate"}
    assert p.selectors[0].matchers == [("pool", "=~", "$pool"), ("category", "=", "site")]
    assert parse("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))").metrics == {"x_bucket"}
    assert parse("rat(x[5m])").unknown_functions == {"rat"}
    assert parse('{__name__="up", job="a"}').selectors[0].metric == "up"


# ---------------------------------------------------------------------------------------------
# live: the real daemon on the dev pool, a real Prometheus with the shipped rules


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 30) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:  # Prometheus answers bad queries with 400 + a JSON error
        body = e.read()
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {e.code}: {body[:500]!r}"}


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if path:
        return path
    proc = subprocess.run([str(ROOT / "scripts" / "install-prometheus")], capture_output=True, text=True, timeout=900)
    path = shutil.which("prometheus")
    if not path:
        pytest.fail(f"no prometheus binary; scripts/install-prometheus exited {proc.returncode}:\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    return path


def load_es_endpoint():
    name = "opos_es_test_endpoint"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ES_ENDPOINT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def wait_for(what: str, fn, timeout: float, logs: list[Path], interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name} (tail)\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{tails}", pytrace=False)


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        q = {"query": expr, **({"time": f"{at:.3f}"} if at else {})}
        return http_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(q)}")

    def query_range(self, expr: str, start: float, end: float, step: str = "15s") -> dict[str, Any]:
        q = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        return http_json(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(q)}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def value(self, expr: str) -> float | None:
        r = self.query(expr)
        res = r.get("data", {}).get("result") or []
        return float(res[0]["value"][1]) if res else None

    def label_values(self, label: str, selector: str, start: float, end: float) -> list[str]:
        q = {"match[]": selector, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        r = http_json(f"{self.url}/api/v1/label/{label}/values?{urllib.parse.urlencode(q)}")
        assert r.get("status") == "success", f"label values {label} of {selector}: {r}"
        return sorted(r["data"])


@pytest.fixture
def live(devpool, tmp_path):
    """The daemon polling the dev pool (shipping to the ES test endpoint with a few injected
    faults), a real Prometheus scraping it every 2 s with alerts/opos.rules.yml, and the job
    catalogue run while both watch, so every series moves during Prometheus' window."""
    cat, _ = devpool
    es_mod = load_es_endpoint()
    es = es_mod.TestEndpoint("elasticsearch").start()
    # some retries (429 items, one 503 bulk) and a few permanent rejects (dead letters)
    es.faults.fail_requests(503, count=1)
    es.faults.fail_items(429, count=10, every=3)
    es.faults.fail_items(400, count=3, every=5, etype="mapper_parsing_exception")

    port = free_port()
    env = {**os.environ,
           "OPOS_MONITOR__STATE_DIR": str(tmp_path / "state"),
           "OPOS_MONITOR__METRICS__LISTEN": f"127.0.0.1:{port}",
           "OPOS_MONITOR__SOURCES__QUEUE_INTERVAL_S": "2",
           "OPOS_MONITOR__SOURCES__HISTORY_INTERVAL_S": "3",
           "OPOS_MONITOR__ELASTICSEARCH__ENABLED": "true",
           "OPOS_MONITOR__ELASTICSEARCH__URLS": f'["{es.url}"]',
           "OPOS_MONITOR__ELASTICSEARCH__BULK_DOCS": "200"}
    env.pop("NOTIFY_SOCKET", None)
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("wb") as fh:
        daemon = subprocess.Popen([sys.executable, "-m", "opos_monitor.cli", "-c", str(DEV_CONFIG), "--log-format",
                                   "json", "run"], env=env, stdout=fh, stderr=subprocess.STDOUT)

    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    cfg = prom_dir / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: opos-monitor\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    prom_port = free_port()
    prom_log = prom_dir / "prometheus.log"
    with prom_log.open("wb") as fh:
        prom_proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={cfg}", f"--storage.tsdb.path={prom_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=fh, stderr=subprocess.STDOUT)
    prom = Prom(f"http://127.0.0.1:{prom_port}")
    logs = [daemon_log, prom_log]
    try:
        def daemon_alive():
            if daemon.poll() is not None:
                pytest.fail(f"opos-monitor exited {daemon.returncode}:\n{daemon_log.read_text()[-4000:]}",
                            pytrace=False)
            return True

        def prom_alive():
            if prom_proc.poll() is not None:
                pytest.fail(f"prometheus exited {prom_proc.returncode}:\n{prom_log.read_text()[-4000:]}", pytrace=False)
            return prom.ready()

        wait_for("Prometheus to be ready", prom_alive, 60, logs, interval=0.2)
        wait_for("Prometheus to scrape opos-monitor",
                 lambda: daemon_alive() and prom.value('up{job="opos-monitor"} == 1'), 90, logs)
        wait_for("a successful queue poll of every schedd",
                 lambda: daemon_alive() and (prom.value(
                     'count(opos_source_last_success_timestamp_seconds{source="queue", schedd!="*"})') or 0) >= 3,
                 120, logs)
        t0 = time.time()
        # Failure counters move in Prometheus' eyes only once their series exist: on a fresh pool
        # the catalogue's first failures at a (schedd, site) create the series at 1, which
        # increase() cannot see. A second catalogue run then moves them.
        moved = {
            "failures counted while Prometheus watched": "sum(increase(opos_job_failures_total[10m])) > 0",
            "a site failure ratio from the recording rules": "count(site:opos_job_failure_ratio:rate30m > 0)",
            "schedd failures from the recording rules": "count(schedd_category:opos_job_failures:increase30m > 0)",
        }
        outcomes: dict[str, Any] = {}
        for runs in (1, 2):
            try:
                outcomes = cat.run(cat.load())
            except TimeoutError as exc:
                pytest.fail(f"catalogue: {exc}", pytrace=False)
            daemon_alive()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(prom.value(e) for e in moved.values()):
                time.sleep(1)
            if all(prom.value(e) for e in moved.values()):
                break
        REPORT.append(f"catalogue runs while Prometheus watched: {runs}")
        for what, expr in moved.items():
            wait_for(what, lambda expr=expr: prom.value(expr), 60, logs)
        wait_for("bulk requests to the ES test endpoint",
                 lambda: (prom.value("sum(opos_sink_request_duration_seconds_count)") or 0) > 0, 120, logs)
        wait_for("a few scrapes since the catalogue ran",
                 lambda: (prom.value(f'count_over_time(up{{job="opos-monitor"}}[{int(time.time() - t0) + 1}s])')
                          or 0) >= 5, 60, logs)

        def rules_evaluated():
            groups = http_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules and all(r.get("health") == "ok" and r.get("lastEvaluation", "").startswith("20")
                                 for r in rules) and len(rules)
        wait_for("every rule evaluated without error", rules_evaluated, 30, logs)
        daemon_alive()
        yield prom, outcomes, es
    finally:
        stop_process(daemon, 120)
        stop_process(prom_proc, 20)
        es.stop()


def regex_of(values: list[str]) -> str:
    """What Grafana puts into ``=~"$var"`` for several values: an escaped alternation, written as
    the body of a PromQL double-quoted string (so regex backslashes are doubled)."""
    esc = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", v).replace("\\", "\\\\") for v in values]
    return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"


def substitute(text: str, values: dict[str, list[str]]) -> str:
    def regex_form(m: re.Match) -> str:
        return f'{m.group(1)}"{regex_of(values[m.group(2)])}"'

    text = re.sub(r'(=~|!~)\s*"\$\{?(\w+)(?::regex)?\}?"', regex_form, text)
    for name, v in SUBSTITUTE.items():
        text = text.replace("${" + name + "}", v).replace("$" + name, v)

    def single(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name}")
        return values[name][0]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", single, text)


def resolve_variables(prom: Prom, board: dict[str, Any], start: float, end: float) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for v in query_vars(board):
        m = LABEL_VALUES.match(v["definition"])
        selector = substitute(m.group(1), values)
        got = prom.label_values(m.group(2), selector, start, end)
        assert got, f"{board['title']}: variable ${v['name']} ({v['definition']}) has no values on the dev pool"
        values[v["name"]] = got
    return values


# Panels that may show nothing on the dev pool, and why. Every other panel must return series.
MAY_BE_EMPTY = {
    ("opos-monitor / Overview", "Firing and pending alerts"):
        "no opos alert is pending or firing at that moment (they need minutes of a condition; the dev pool "
        "may or may not have a black-hole host flagged)",
    ("opos-monitor / Overview", "Black-hole hosts per site"):
        "only sites with flagged hosts are shown; the detector needs several quick failures on one host",
    ("opos-monitor / Sites", "Whole site flagged as a black hole"):
        "the series exists only for sites the detector has seen hosts of",
    ("opos-monitor / Sites", "Black-hole hosts"):
        "the series exists only for sites the detector has seen hosts of",
    ("opos-monitor / Schedds", "Held jobs by category"):
        "non-zero series only; the queues may hold no job at that moment",
    ("opos-monitor / Schedds", "History lag"):
        "set only after an incremental poll finished; a fresh daemon may still be reading a large history",
    ("*", "annotation opos alerts firing"):
        "alerts fire only after their 'for:' (3 to 30 minutes), longer than the test watches",
}
CORE = {
    ("opos-monitor / Overview", "Jobs by status per schedd"),
    ("opos-monitor / Overview", "Source up/down"),
    ("opos-monitor / Schedds", "Jobs by status · $schedd"),
    ("opos-monitor / Schedds", "Source up"),
    ("opos-monitor / Shipping", "Pending records"),
    ("opos-monitor / Shipping", "Store pending records"),
}


def result_series(r: dict[str, Any]) -> list[dict[str, Any]]:
    res = r.get("data", {}).get("result")
    if r.get("data", {}).get("resultType") == "scalar":
        return [{"metric": {}}]
    return res or []


@pytest.mark.integration
def test_every_panel_query_evaluates_on_prometheus_scraping_the_daemon(live):
    prom, outcomes, es = live
    boards = load_boards()
    end = time.time()
    start = end - 300
    problems: list[str] = []
    empty: list[tuple[str, str]] = []
    evaluated = 0
    for b in boards.values():
        values = resolve_variables(prom, b, start, end)
        REPORT.append(f"{b['title']}: variables " + ", ".join(f"${k}={v}" for k, v in values.items()))
        panel_empty: dict[str, bool] = {}
        for label, t, p in queries(b):
            expr = substitute(t["expr"], values)
            title = p["title"] if p else label
            kinds = ["instant"]
            if p is not None and p["type"] in TIME_SERIES_PANELS and not t.get("instant"):
                kinds.append("range")
            series: list[dict[str, Any]] = []
            for kind in kinds:
                r = prom.query(expr, end) if kind == "instant" else prom.query_range(expr, start, end)
                evaluated += 1
                if r.get("status") != "success" or r.get("error") or r.get("warnings"):
                    problems.append(f"{b['title']}: {label} ({kind}): {r.get('errorType')} {r.get('error')} "
                                    f"{r.get('warnings')}\n    {expr}")
                    continue
                if kind == "range" or len(kinds) == 1:
                    series = result_series(r)
            for s in series:
                missing = legend_labels(t.get("legendFormat", "")) - set(s["metric"])
                if missing:
                    problems.append(f"{b['title']}: {label}: legend labels {sorted(missing)} absent from "
                                    f"result {s['metric']}")
                    break
            if p is not None:
                for tr in p.get("transformations", []):
                    if tr["id"] == "groupingToMatrix" and series:
                        need = {tr["options"]["rowField"], tr["options"]["columnField"]}
                        if not need <= set(series[0]["metric"]):
                            problems.append(f"{b['title']}: {label}: groupingToMatrix needs {need}, "
                                            f"result has {series[0]['metric']}")
            panel_empty[title] = panel_empty.get(title, True) and not series
        for title, is_empty in panel_empty.items():
            if is_empty:
                empty.append((b["title"], title))

    REPORT.append(f"evaluated {evaluated} queries ({sum(len(panels(b)) for b in boards.values())} panels on "
                  f"{len(boards)} boards) against Prometheus scraping the daemon; catalogue outcomes: "
                  + ", ".join(f"{n}={o.status}" for n, o in sorted(outcomes.items())))
    def allowed(board: str, title: str) -> str | None:
        return MAY_BE_EMPTY.get((board, title)) or MAY_BE_EMPTY.get(("*", title))

    for board, title in empty:
        REPORT.append(f"empty: {board} / {title}: {allowed(board, title) or 'NOT EXPECTED'}")
    if not empty:
        REPORT.append("empty: none — every panel returned series")
    had_data = [f"{b} / {t}" for b, t in MAY_BE_EMPTY if b != "*" and (b, t) not in empty]
    if had_data:
        REPORT.append("may be empty, but had data this time: " + "; ".join(had_data))
    assert not problems, "queries that failed on Prometheus:\n" + "\n".join(problems)
    core_empty = [e for e in empty if e in CORE]
    assert not core_empty, f"core panels returned nothing: {core_empty}"
    unexpected = [e for e in empty if not allowed(*e)]
    assert not unexpected, f"panels with no data on the dev pool, none expected: {unexpected}"
    assert len(es.state.indices) > 0, "the daemon shipped nothing to the ES test endpoint"
