"""A real Prometheus scrapes the real exposition server (MetricsState behind it) with the
shipped rules: every series arrives intact, recording rules evaluate, and an alert goes pending
with the right labels. (The end-to-end test with the running daemon and the dev pool comes on
top of this one.)"""

from __future__ import annotations

import subprocess
import time
import urllib.parse

import pytest

from opos_monitor.sinks.http import ExpositionServer
from opos_monitor.sinks.metrics import MetricsState, make_registry
from opos_monitor.sources.base import PollResult, SourceKey

from .conftest import RULES, free_port, http_json, stop, wait_ready

POOL = "fermigrid"


def query(prom: str, expr: str) -> list[dict]:
    data = http_json(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert data["status"] == "success", data
    return data["data"]["result"]


def eventually(fn, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    return last


@pytest.fixture
def scraped(prom_bins, tmp_path):
    state = MetricsState()
    state.set_schedds(POOL, ["jobsub01.fnal.gov", "jobsub02.fnal.gov"])
    state.set_sites(["FermiGrid", "Nebraska"])
    state.observe_poll(PollResult(SourceKey(POOL, "jobsub01.fnal.gov", "queue"), duration_s=0.4,
                                  status_counts={"idle": 120, "running": 80, "held": 3}))
    state.observe_poll(PollResult(SourceKey(POOL, "jobsub01.fnal.gov", "history"), duration_s=1.2, lag_s=5.0))
    state.observe_finished(POOL, "jobsub01.fnal.gov", "Nebraska", "site", n=4)
    state.set_store(pending=17, dead=0, size_bytes=1 << 20, full=False)
    registry = make_registry(state)
    server = ExpositionServer(registry, "127.0.0.1:0").start()
    host, port = server.address
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: opos-monitor\n"
        f"    static_configs:\n      - targets: ['{host}:{port}']\n"
    )
    prom_port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [prom_bins["prometheus"], f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        wait_ready(f"{prom}/-/ready", proc, log)
        yield prom, state, registry, f"{host}:{port}"
    finally:
        stop(proc)
        server.stop()


def test_real_prometheus_scrapes_every_series_and_evaluates_the_rules(scraped):
    prom, state, registry, target = scraped
    up = eventually(lambda: query(prom, 'up{job="opos-monitor"} == 1'))
    assert up and up[0]["metric"]["instance"] == target
    ours = [ln for ln in registry.render_text().decode().splitlines() if ln.startswith("opos_")]
    # all opos_ samples ingested (none dropped by the parser)
    got = eventually(lambda: query(prom, 'count({__name__=~"opos_.+", job="opos-monitor"})'))
    assert int(got[0]["value"][1]) == len(ours)
    idle = query(prom, 'opos_jobs{schedd="jobsub01.fnal.gov",status="idle"}')
    assert idle[0]["value"][1] == "120"
    fails = query(prom, 'opos_job_failures_total{site="Nebraska",category="site"}')
    assert fails[0]["value"][1] == "4"
    # recording rules evaluate on the scraped series
    reach = eventually(lambda: query(prom, "schedd:opos_source_up:max"))
    assert {(r["metric"]["schedd"], r["value"][1]) for r in reach} == {("jobsub01.fnal.gov", "1"),
                                                                      ("jobsub02.fnal.gov", "0")}
    # jobsub02 was declared but never answered: its unreachable alert is pending (for: 3m)
    pending = eventually(lambda: query(prom, 'ALERTS{alertname="OposScheddUnreachable"}'))
    assert len(pending) == 1
    labels = pending[0]["metric"]
    assert labels["alertstate"] == "pending" and labels["schedd"] == "jobsub02.fnal.gov"
    assert labels["pool"] == POOL and labels["severity"] == "page"
    # no rule errors
    rules = http_json(f"{prom}/api/v1/rules")["data"]["groups"]
    errs = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r.get("health") == "err"]
    assert errs == []
    # a state change shows on the next scrape
    state.observe_poll(PollResult(SourceKey(POOL, "jobsub02.fnal.gov", "queue"), duration_s=0.3))
    assert eventually(lambda: query(prom, 'schedd:opos_source_up:max{schedd="jobsub02.fnal.gov"} == 1'))
    assert eventually(lambda: not query(prom, 'ALERTS{alertname="OposScheddUnreachable"}'))
