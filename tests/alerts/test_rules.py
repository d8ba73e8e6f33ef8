"""The shipped alert rules: promtool check + unit tests, every alert tested both ways, runbooks.

``promtool test rules`` runs alerts/tests/*.test.yml. On top, this module checks that the unit
tests cover every alert (a case where it fires and one where it stays quiet), that those tests
actually bite (each alert neutralised in turn makes them fail), that a real Prometheus loads the
rules, and that every alert carries its severity, summary, description and a runbook that exists.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import ALERTS, RULE_TESTS, RULES, RUNBOOK_BASE, RUNBOOKS

ALERT_RE = re.compile(r"^[ \t]*- alert: (\w+)[ \t]*$", re.M)
SEVERITIES = {"page", "ticket"}


def alert_names() -> list[str]:
    return ALERT_RE.findall(RULES.read_text())


def alert_blocks() -> dict[str, str]:
    """Alert name -> its text in the rules file (up to the next rule)."""
    text = RULES.read_text()
    starts = [(m.group(1), m.start()) for m in re.finditer(r"^[ \t]*- (?:alert|record): (\S+)[ \t]*$", text, re.M)]
    out = {}
    for i, (name, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else len(text)
        block = text[start:end]
        if "- alert:" in block.splitlines()[0]:
            out[name] = block
    return out


def test_alerts_are_the_documented_set():
    assert alert_names() == [
        "OposSiteFailureRatioHigh", "OposMemoryFailuresRising", "OposCertificateFailures",
        "OposCredentialsExpiringSoon", "OposBlackHoleNode", "OposScheddUnreachable", "OposSourceDown",
        "OposSourceStalled", "OposHistoryLagHigh", "OposHistoryGapDetected", "OposMonitorDown",
        "OposMonitorStuck", "OposShippingBacklogGrowing", "OposStoreFull", "OposDeadLetters",
    ]


def test_promtool_check_rules(prom_bins):
    proc = subprocess.run([prom_bins["promtool"], "check", "rules", str(RULES)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_rules = len(re.findall(r"^\s*- (?:alert|record): ", RULES.read_text(), re.M))
    assert f"SUCCESS: {n_rules} rules found" in proc.stdout


def test_promtool_test_rules(prom_bins):
    assert RULE_TESTS, "no alerts/tests/*.test.yml"
    proc = subprocess.run([prom_bins["promtool"], "test", "rules", *map(str, RULE_TESTS)], capture_output=True,
                          text=True, timeout=300, cwd=ALERTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_TESTS), proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    fires: set[str] = set()
    quiet: set[str] = set()
    for f in RULE_TESTS:
        for name, empty in re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*(\[\])?", f.read_text()):
            (quiet if empty else fires).add(name)
    names = set(alert_names())
    assert names - fires == set(), f"alerts never tested firing: {sorted(names - fires)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"
    assert (fires | quiet) - names == set(), f"tests for unknown alerts: {sorted((fires | quiet) - names)}"


@pytest.mark.parametrize("alert", alert_names())
def test_unit_tests_fail_when_the_alert_is_neutralised(alert, prom_bins, tmp_path):
    """Mutation check: with this alert's expression replaced by one that never fires, the unit
    tests must fail for this alert - so a passing run means the alert really fires as tested."""
    text = RULES.read_text()
    pattern = re.compile(rf"(- alert: {alert}\n\s+expr: )(.*?)(\n\s+for: )", re.S)
    mutated, n = pattern.subn(r"\g<1>vector(0) > 1\g<3>", text)
    assert n == 1, f"could not find the expression of {alert}"
    (tmp_path / "tests").mkdir()
    (tmp_path / "opos.rules.yml").write_text(mutated)
    files = [f for f in RULE_TESTS if f"alertname: {alert}\n" in f.read_text()]
    for f in files:
        (tmp_path / "tests" / f.name).write_text(f.read_text())
    proc = subprocess.run([prom_bins["promtool"], "test", "rules", *(f"tests/{f.name}" for f in files)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0, f"unit tests still pass with {alert} disabled"
    assert f"alertname: {alert}," in proc.stdout + proc.stderr


@pytest.mark.parametrize("alert", alert_names())
def test_alert_has_for_severity_annotations_and_runbook(alert):
    block = alert_blocks()[alert]
    assert re.search(r"^\s+for: \d+[smh]\s*$", block, re.M), f"{alert}: no for:"
    sev = re.search(r"^\s+severity: (\w+)\s*$", block, re.M)
    assert sev and sev.group(1) in SEVERITIES, f"{alert}: severity must be one of {SEVERITIES}"
    for key in ("summary", "description", "runbook_url"):
        assert re.search(rf"^\s+{key}: \S", block, re.M), f"{alert}: no {key}"
    url = re.search(r"runbook_url: \"([^\"]+)\"", block).group(1)
    assert url == f"{RUNBOOK_BASE}{alert}.md"
    runbook = RUNBOOKS / f"{alert}.md"
    assert runbook.is_file(), f"missing {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {alert}\n")
    for section in ("## What it means", "## What to check", "## What to do"):
        assert section in text, f"{runbook}: no '{section}' section"


def test_no_runbook_without_an_alert():
    names = set(alert_names())
    orphans = sorted(p.stem for p in RUNBOOKS.glob("*.md") if p.stem not in names and p.stem != "README")
    assert orphans == []


def test_real_prometheus_loads_the_rules(prometheus_rules_api):
    groups = {g["name"]: g for g in prometheus_rules_api["groups"]}
    assert set(groups) == {"opos-recording", "opos-alerts"}
    alerts = {r["name"]: r for r in groups["opos-alerts"]["rules"] if r["type"] == "alerting"}
    assert sorted(alerts) == sorted(alert_names())
    for name, rule in alerts.items():
        assert rule["health"] != "err", (name, rule.get("lastError"))
        assert rule["labels"]["severity"] in SEVERITIES
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}{name}.md"
        assert {"summary", "description"} <= set(rule["annotations"])
    records = [r for r in groups["opos-recording"]["rules"] if r["type"] == "recording"]
    # level:metric:operation naming
    assert records and all(re.fullmatch(r"[a-z_]+:opos_[a-z_]+:[a-z0-9]+", r["name"]) for r in records)


def test_rules_use_only_exported_series():
    """Every opos_ series an expression reads is one the collector exports (docs/metrics.md)."""
    from opos_monitor.sinks.metrics import MetricsState, make_registry
    from opos_monitor.sources.base import PollResult, SourceKey
    from prometheus_client import generate_latest

    s = MetricsState()
    s.set_schedds("p", ["s"], sources=("queue", "history"))
    s.observe_poll(PollResult(SourceKey("p", "s", "history"), lag_s=1.0))
    s.observe_finished("p", "s", "site", "memory")
    s.set_store(1, 1, 1, False)
    s.set_blackholes([])
    s.set_sites(["x"])
    types = re.findall(r"^# TYPE (opos_\w+) (\w+)$", generate_latest(make_registry(s, process=False)).decode(), re.M)
    exported = {n for n, _ in types} | {n + sfx for n, t in types if t in ("summary", "histogram")
                                        for sfx in ("_count", "_sum", "_bucket")}
    text = re.sub(r"#.*", "", RULES.read_text())
    exprs = " ".join(re.findall(r"expr: (.*?)(?=\n\s+(?:for|labels|- record|- alert)|\Z)", text, re.S))
    used = set(re.findall(r"(?<![:\w])(opos_[a-z_]+)(?![:\w])", exprs))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


def test_docs_table_lists_every_alert_with_its_severity_and_for():
    doc = (RUNBOOKS.parent / "metrics.md").read_text()
    rows = {name: (sev, dur) for name, sev, dur in
            re.findall(r"^\| (Opos\w+) \| (\w+) \| (\d+[smh]) \|", doc, re.M)}
    assert sorted(rows) == sorted(alert_names())
    for alert, block in alert_blocks().items():
        sev = re.search(r"^\s+severity: (\w+)\s*$", block, re.M).group(1)
        dur = re.search(r"^\s+for: (\d+[smh])\s*$", block, re.M).group(1)
        assert rows[alert] == (sev, dur), alert
