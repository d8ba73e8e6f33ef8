"""The example Alertmanager config: amtool check-config, route tests, and a real Alertmanager
on 127.0.0.1 that routes by severity to webhook receivers and applies the inhibitions."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from .conftest import AM_CONFIG, free_port, http_json, stop, wait_ready


def amtool_route(amtool: str, labels: dict[str, str], expect: str | None = None) -> subprocess.CompletedProcess:
    args = [amtool, "config", "routes", "test", f"--config.file={AM_CONFIG}"]
    if expect is not None:
        args.append(f"--verify.receivers={expect}")
    args += [f"{k}={v}" for k, v in labels.items()]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_amtool_check_config(prom_bins):
    proc = subprocess.run([prom_bins["amtool"], "check-config", str(AM_CONFIG)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "3 inhibit rules" in proc.stdout and "3 receivers" in proc.stdout


@pytest.mark.parametrize(
    "labels, receiver",
    [
        ({"alertname": "OposScheddUnreachable", "severity": "page", "pool": "fermigrid", "schedd": "jobsub01"},
         "opos-page"),
        ({"alertname": "OposSiteFailureRatioHigh", "severity": "page", "site": "Nebraska"}, "opos-page"),
        ({"alertname": "OposHistoryLagHigh", "severity": "ticket", "pool": "fermigrid", "schedd": "jobsub02"},
         "opos-ticket"),
        ({"alertname": "OposDeadLetters", "severity": "ticket"}, "opos-ticket"),
        ({"alertname": "SomethingElse", "severity": "info"}, "opos-default"),
        ({"alertname": "NoSeverity"}, "opos-default"),
    ],
)
def test_routes_by_severity(prom_bins, labels, receiver):
    proc = amtool_route(prom_bins["amtool"], labels, expect=receiver)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receiver


def test_route_test_detects_a_wrong_receiver(prom_bins):
    proc = amtool_route(prom_bins["amtool"], {"alertname": "OposStoreFull", "severity": "page"}, expect="opos-ticket")
    assert proc.returncode != 0


# ------------------------------------------------------------------------------ live Alertmanager
class Webhook:
    """A webhook receiver for the test: records every notification (path, JSON body)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.lock:
                    hook.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [a["labels"] for p, body in self.received if p == path for a in body["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alertmanager(prom_bins, tmp_path) -> Iterator[tuple[str, Webhook]]:
    """The shipped config, with receivers pointed at the test webhook and group_wait at 1s."""
    hook = Webhook()
    text = AM_CONFIG.read_text().replace("http://127.0.0.1:9095", hook.url)
    for wait in ("30s", "10s", "1m"):
        text = text.replace(f"group_wait: {wait}", "group_wait: 1s")
    assert hook.url in text and "group_wait: 1s" in text
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(text)
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [prom_bins["alertmanager"], f"--config.file={cfg}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield f"http://127.0.0.1:{port}", hook
    finally:
        stop(proc)
        hook.close()


def alert(name: str, severity: str, **labels: str) -> dict:
    return {"labels": {"alertname": name, "severity": severity, **labels},
            "annotations": {"summary": f"test {name}"}}


def wait_for(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def states(am: str) -> dict[tuple[str, str, str], dict]:
    """(alertname, schedd or site, instance) -> status, from Alertmanager's API."""
    out = {}
    for a in http_json(f"{am}/api/v2/alerts"):
        lb = a["labels"]
        out[(lb["alertname"], lb.get("schedd") or lb.get("site", ""), lb.get("instance", ""))] = a["status"]
    return out


MON = {"job": "opos-monitor", "instance": "mon:9720"}


def test_live_routing_grouping_and_inhibition(alertmanager):
    am, hook = alertmanager
    http_json(f"{am}/api/v2/alerts", [
        alert("OposScheddUnreachable", "page", pool="fermigrid", schedd="jobsub01.fnal.gov", **MON),
        # derived alerts of the unreachable schedd: inhibited
        alert("OposSourceDown", "ticket", pool="fermigrid", schedd="jobsub01.fnal.gov", source="history", **MON),
        alert("OposHistoryLagHigh", "ticket", pool="fermigrid", schedd="jobsub01.fnal.gov", source="history", **MON),
        # not derived (a gap is real data loss): delivered
        alert("OposHistoryGapDetected", "ticket", pool="fermigrid", schedd="jobsub01.fnal.gov", source="history",
              **MON),
        # another schedd's failing source: delivered
        alert("OposSourceDown", "ticket", pool="fermigrid", schedd="jobsub02.fnal.gov", source="history", **MON),
        alert("OposSiteFailureRatioHigh", "page", site="Nebraska"),
        # a stuck instance silences its own per-source alerts, not another instance's
        alert("OposMonitorStuck", "page", job="opos-monitor", instance="mon3:9720"),
        alert("OposSourceStalled", "ticket", job="opos-monitor", instance="mon3:9720", pool="ospool",
              schedd="jobsub03.fnal.gov", source="queue"),
        alert("OposSourceStalled", "ticket", job="opos-monitor", instance="mon:9720", pool="ospool",
              schedd="jobsub04.fnal.gov", source="queue"),
    ])

    def delivered() -> tuple[set, set]:
        page = {(a["alertname"], a.get("schedd") or a.get("site")) for a in hook.alerts("/opos/page")}
        ticket = {(a["alertname"], a.get("schedd")) for a in hook.alerts("/opos/ticket")}
        return page, ticket

    want_page = {("OposScheddUnreachable", "jobsub01.fnal.gov"), ("OposSiteFailureRatioHigh", "Nebraska"),
                 ("OposMonitorStuck", None)}
    want_ticket = {("OposHistoryGapDetected", "jobsub01.fnal.gov"), ("OposSourceDown", "jobsub02.fnal.gov"),
                   ("OposSourceStalled", "jobsub04.fnal.gov")}
    assert wait_for(lambda: delivered() == (want_page, want_ticket)), delivered()
    time.sleep(3)  # inhibited alerts would have been sent with the same 1s group_wait
    assert delivered() == (want_page, want_ticket)
    assert hook.alerts("/opos/default") == []
    # grouping by alertname/pool/schedd/site: one notification per group
    with hook.lock:
        groups = [tuple(sorted(body["groupLabels"].items())) for _, body in hook.received]
    assert len(groups) == len(set(groups)) == 6
    assert all(set(dict(g)) <= {"alertname", "pool", "schedd", "site"} for g in groups)

    st = states(am)
    assert st[("OposSourceDown", "jobsub01.fnal.gov", "mon:9720")]["state"] == "suppressed"
    assert st[("OposSourceDown", "jobsub01.fnal.gov", "mon:9720")]["inhibitedBy"]
    assert st[("OposHistoryLagHigh", "jobsub01.fnal.gov", "mon:9720")]["state"] == "suppressed"
    assert st[("OposSourceStalled", "jobsub03.fnal.gov", "mon3:9720")]["state"] == "suppressed"
    assert st[("OposSourceStalled", "jobsub04.fnal.gov", "mon:9720")]["state"] == "active"
    assert st[("OposHistoryGapDetected", "jobsub01.fnal.gov", "mon:9720")]["state"] == "active"

    # the daemon is down: every other opos alert is inhibited, whatever its labels
    http_json(f"{am}/api/v2/alerts", [alert("OposMonitorDown", "page", **MON)])
    assert wait_for(lambda: all(
        s["state"] == "suppressed" for k, s in states(am).items() if k[0] != "OposMonitorDown")), states(am)
    assert states(am)[("OposMonitorDown", "", "mon:9720")]["state"] == "active"
    assert wait_for(lambda: ("OposMonitorDown", None) in {
        (a["alertname"], a.get("schedd")) for a in hook.alerts("/opos/page")})
