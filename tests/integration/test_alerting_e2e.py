"""End to end, all real, all on 127.0.0.1 (issue 6, "Must show"): `opos-monitor run` polls the
real dev pool; a real Prometheus scrapes it (job ``opos-monitor``, every 2 s) and evaluates the
shipped rules (a copy whose ``for:`` durations are divided by 30 - expressions and range windows
unchanged); a real Alertmanager runs the shipped example config (a copy whose receivers point at
a webhook in this test, group_wait 1 s, group_interval 2 s).

1. Catalogue jobs that fail at one site (``site_cvmfs.sub``: the Nebraska startd holds them,
   HoldReasonCode 21, category site) make OposSiteFailureRatioHigh{site="Nebraska"} go pending
   then firing in Prometheus, and Alertmanager delivers it to the page receiver with the rule's
   labels.
2. Stopping schedd jobsub02 makes OposScheddUnreachable for it go pending then firing and be
   delivered; its derived OposSourceDown is inhibited by it (shipped inhibition); turning the
   schedd back on resolves the alert and the resolution is delivered too.

Other engineers use the same pool: our jobs carry ``+OposTestTag`` and only they are removed;
jobsub02 is always turned back on (finally).

    OPOS_DEVPOOL_KEEP=1 .venv/bin/python -m pytest tests/integration/test_alerting_e2e.py -q -x
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from alerts.conftest import prom_bins  # noqa: F401 - the real Prometheus/Alertmanager binaries (a fixture)

from .e2e_support import (POOL_CONFIG, SCRAPE_JOB, AlertRecorder, Proc, Webhook, am_alerts, devpool_cmd, fmt,
                          free_port, get_text, http_json, notifications, prometheus_config, query, remove_tagged,
                          sample, start_alertmanager, start_daemon, start_prometheus, submit, tagged_jobs,
                          tagged_submit_description, wait_for, write_am_config, write_scaled_rules)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE_SUB = ROOT / "deploy" / "dev-pool" / "jobs" / "site_cvmfs.sub"
SITE = "Nebraska"
N_JOBS = 12  # OposSiteFailureRatioHigh needs >= 10 outcomes at the site in 30 minutes
FOR_DIVISOR = 30
RUNBOOK = "https://github.com/opos-monitor/opos-monitor/blob/main/docs/runbooks/"
JOBSUB02_DAEMON = "SCHEDD_JOBSUB02"  # jobsub02 is a second schedd of the fermigrid master (local name)


class Stack:
    """The processes of one run and what is needed to explain a failure."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.hook: Webhook | None = None
        self.recorder: AlertRecorder | None = None
        self.daemon_url = self.prom = self.am = ""
        self.daemon: Proc | None = None
        self.jobs = lambda: []  # our tagged jobs, for diagnostics

    def diag(self) -> str:
        parts = []
        if self.recorder:
            parts.append(self.recorder.summary())
        if self.prom:
            for expr in (f'site:opos_job_outcomes:increase30m{{site="{SITE}"}}',
                         f'site:opos_job_site_failure_ratio:rate30m{{site="{SITE}"}}',
                         f'opos_job_failures_total{{site="{SITE}",category="site"}}',
                         "schedd:opos_source_up:max", f'up{{job="{SCRAPE_JOB}"}}'):
                try:
                    rows = [(r["metric"], r["value"][1]) for r in query(self.prom, expr)]
                except Exception as exc:  # noqa: BLE001 - diagnostics only
                    rows = [repr(exc)]
                parts.append(f"Prometheus {expr}:\n{fmt(rows)}")
        if self.am:
            try:
                rows = [(a["labels"].get("alertname"), a["status"]["state"], a["status"].get("inhibitedBy"),
                         {k: v for k, v in a["labels"].items() if k in ("site", "schedd", "source")})
                        for a in am_alerts(self.am)]
            except Exception as exc:  # noqa: BLE001
                rows = [repr(exc)]
            parts.append(f"Alertmanager alerts:\n{fmt(rows)}")
        if self.hook:
            rows = [(n["path"], n["status"], n["labels"].get("alertname"),
                     {k: v for k, v in n["labels"].items() if k in ("site", "schedd", "source")})
                    for n in notifications(self.hook)]
            parts.append(f"webhook notifications:\n{fmt(rows)}")
        parts.append(f"our jobs:\n{fmt(self.jobs())}")
        for p in self.procs:
            rc = p.popen.poll()
            parts.append(f"--- {p.name} ({'running' if rc is None else f'exited {rc}'}) log tail:\n"
                         + p.tail(25, skip="maximum number of running instances reached"))
        return "\n\n".join(parts)

    def close(self) -> None:
        if self.recorder:
            self.recorder.close()
        for p in reversed(self.procs):
            p.stop()
        if self.hook:
            self.hook.close()


def _prom_states(seen) -> dict[str, float]:
    return dict(seen.first) if seen else {}


def test_site_failures_and_a_stopped_schedd_page_through_real_prometheus_and_alertmanager(devpool, prom_bins,
                                                                                          tmp_path):
    cat, htcondor2 = devpool
    jobsub01 = cat.schedd_full_name(htcondor2, "fermigrid", "jobsub01")
    jobsub02 = cat.schedd_full_name(htcondor2, "fermigrid", "jobsub02")
    tag = f"e2e-alerting-{uuid.uuid4().hex[:10]}"
    t_start = time.monotonic()
    st = Stack(tmp_path)
    st.jobs = lambda: tagged_jobs(htcondor2, jobsub01, tag)
    submitted = False
    try:
        # ------------------------------------------------------------ Alertmanager + webhook
        st.hook = Webhook()
        am_cfg = tmp_path / "alertmanager.yml"
        write_am_config(am_cfg, st.hook.url)
        am_port = free_port()
        st.procs.append(start_alertmanager(prom_bins["alertmanager"], tmp_path, am_cfg, am_port))
        st.am = f"http://127.0.0.1:{am_port}"

        # ------------------------------------------------------------ the daemon on the dev pool
        port = free_port()
        st.daemon = start_daemon(tmp_path, port)
        st.procs.append(st.daemon)
        st.daemon_url = f"http://127.0.0.1:{port}"

        def metrics() -> str:
            try:
                return get_text(st.daemon_url + "/metrics")
            except OSError:
                assert st.daemon.popen.poll() is None, f"the daemon exited:\n{st.daemon.tail(60)}"
                return ""

        def caught_up() -> bool:
            # jobsub01's whole history read (first poll backfills it): from here on, its counters
            # only move for jobs that finish now, so Prometheus's first sample is the baseline
            text = metrics()
            return (sample(text, "opos_source_up", schedd=jobsub01, source="history") == 1
                    and sample(text, "opos_source_up", schedd=jobsub01, source="queue") == 1
                    and sample(text, "opos_source_up", schedd=jobsub02, source="queue") == 1)

        wait_for(caught_up, 300, f"the daemon to poll {jobsub01} (queue and whole history) and {jobsub02} (queue)",
                 st.diag, every=1)

        # ------------------------------------------------------------ Prometheus with the shipped rules
        rules = tmp_path / "opos.rules.yml"
        changed = write_scaled_rules(rules, FOR_DIVISOR)
        assert changed["OposSiteFailureRatioHigh"] == ("5m", "10s")
        assert changed["OposScheddUnreachable"] == ("3m", "6s")
        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(prometheus_config(f"127.0.0.1:{port}", f"127.0.0.1:{am_port}", rules))
        prom_port = free_port()
        st.procs.append(start_prometheus(prom_bins["prometheus"], tmp_path, prom_cfg, prom_port))
        st.prom = f"http://127.0.0.1:{prom_port}"
        st.recorder = AlertRecorder(st.prom)
        wait_for(lambda: query(st.prom, f'up{{job="{SCRAPE_JOB}",instance="127.0.0.1:{port}"}} == 1'), 60,
                 "Prometheus to scrape the daemon", st.diag)
        n_rules = len(re.findall(r"(?m)^\s*- (?:record|alert): ", rules.read_text()))
        wait_for(lambda: http_rules_loaded(st.prom, n_rules), 30, "Prometheus to load and evaluate every rule", st.diag)
        # the Alertmanager is Prometheus's notifier
        wait_for(lambda: any(a.get("url", "").startswith(st.am) for a in
                             query_api(st.prom, "alertmanagers").get("activeAlertmanagers", [])),
                 30, "Prometheus to discover the Alertmanager", st.diag)
        time.sleep(6)  # three evaluations over the scraped data before our jobs exist
        assert not st.recorder.find("OposSiteFailureRatioHigh", site=SITE), (
            f"the site alert is active before this test's jobs were submitted (other jobs failing at {SITE}?)\n"
            + st.diag())

        # ------------------------------------------------------------ (1) jobs fail at one site
        def site_failures() -> float | None:
            """The daemon's count of site failures at Nebraska on jobsub01 (None: no scrape)."""
            text = metrics()
            if not text:
                return None
            return sample(text, "opos_job_failures_total", schedd=jobsub01, site=SITE, category="site") or 0.0

        baseline = wait_for(lambda: [v] if (v := site_failures()) is not None else None, 30,
                            "a scrape of the daemon's metrics", st.diag)[0]
        t_submit = time.monotonic()
        submit(jobsub01, tagged_submit_description(SITE_SUB, tag, N_JOBS))
        submitted = True
        fired = wait_for(lambda: st.recorder.firing("OposSiteFailureRatioHigh", site=SITE), 420,
                         f"OposSiteFailureRatioHigh{{site={SITE!r}}} to fire in Prometheus", st.diag, every=1)
        states = _prom_states(fired)
        assert "pending" in states and states["pending"] < states["firing"], (states, st.diag())
        assert states["firing"] - states["pending"] >= 10 - 2.5, states  # for: 10s (eval and poll jitter)
        assert fired.labels == {"alertname": "OposSiteFailureRatioHigh", "severity": "page", "site": SITE}

        def delivered_site() -> list[dict]:
            return [n for n in notifications(st.hook, "/opos/page") if n["status"] == "firing"
                    and n["labels"].get("alertname") == "OposSiteFailureRatioHigh" and n["labels"].get("site") == SITE]

        got = wait_for(delivered_site, 60, "Alertmanager to deliver OposSiteFailureRatioHigh to the page webhook",
                       st.diag)[0]
        assert got["receiver"] == "opos-page"
        assert got["labels"] == {"alertname": "OposSiteFailureRatioHigh", "severity": "page", "site": SITE}
        assert got["groupLabels"] == {"alertname": "OposSiteFailureRatioHigh", "site": SITE}
        assert SITE in got["annotations"]["summary"]
        assert got["annotations"]["runbook_url"] == RUNBOOK + "OposSiteFailureRatioHigh.md"
        t_site = time.monotonic() - t_submit

        # our jobs failed as the catalogue says: held by Nebraska's startd (HoldReasonCode 21)
        def ours_held() -> list[dict]:
            jobs = st.jobs()
            held = [j for j in jobs if j.get("JobStatus") == 5 and j.get("HoldReasonCode") == 21
                    and j.get("MachineAttrGLIDEIN_Site0") == SITE]
            return held if len(held) >= 10 else []

        held = wait_for(ours_held, 180, f"at least 10 of our jobs held at {SITE} with HoldReasonCode 21", st.diag,
                        every=2)
        # the daemon counted each of them once, as a site failure at Nebraska on jobsub01 (the
        # counter's baseline was taken after jobsub01's whole history had been read)
        wait_for(lambda: (site_failures() or 0.0) - baseline >= len(held), 30,
                 f"the daemon to count our {len(held)} held jobs in opos_job_failures_total{{site={SITE!r},"
                 f"category='site'}} of {jobsub01} (baseline before submitting: {baseline})", st.diag)

        # ------------------------------------------------------------ (2) a schedd stops
        assert not st.recorder.find("OposScheddUnreachable", schedd=jobsub02), st.diag()
        t_off = time.monotonic()
        devpool_cmd("root", "condor_off", "-daemon", JOBSUB02_DAEMON, config=POOL_CONFIG["fermigrid"])
        try:
            down = wait_for(lambda: st.recorder.firing("OposScheddUnreachable", schedd=jobsub02), 120,
                            f"OposScheddUnreachable{{schedd={jobsub02!r}}} to fire in Prometheus", st.diag)
            states = _prom_states(down)
            assert "pending" in states and states["pending"] < states["firing"], (states, st.diag())
            want = {"alertname": "OposScheddUnreachable", "severity": "page", "pool": "fermigrid", "schedd": jobsub02,
                    "job": SCRAPE_JOB, "instance": f"127.0.0.1:{port}"}
            assert down.labels == want

            def delivered_down() -> list[dict]:
                return [n for n in notifications(st.hook, "/opos/page") if n["status"] == "firing"
                        and n["labels"].get("alertname") == "OposScheddUnreachable"
                        and n["labels"].get("schedd") == jobsub02]

            got = wait_for(delivered_down, 60, "Alertmanager to deliver OposScheddUnreachable to the page webhook",
                           st.diag)[0]
            assert got["labels"] == want and got["receiver"] == "opos-page"
            assert got["groupLabels"] == {"alertname": "OposScheddUnreachable", "pool": "fermigrid",
                                          "schedd": jobsub02}
            assert got["annotations"]["runbook_url"] == RUNBOOK + "OposScheddUnreachable.md"
            t_down = time.monotonic() - t_off

            # the schedd's queue source is down too (OposSourceDown, for: 20s): Alertmanager holds
            # it back while its schedd is unreachable (shipped inhibition), nothing is sent
            wait_for(lambda: st.recorder.firing("OposSourceDown", schedd=jobsub02, source="queue"), 90,
                     f"OposSourceDown{{schedd={jobsub02!r},source='queue'}} to fire in Prometheus", st.diag)

            def inhibited() -> list[dict]:
                return [a for a in am_alerts(st.am) if a["labels"].get("alertname") == "OposSourceDown"
                        and a["labels"].get("schedd") == jobsub02 and a["labels"].get("source") == "queue"
                        and a["status"]["state"] == "suppressed" and a["status"].get("inhibitedBy")]

            wait_for(inhibited, 30, "Alertmanager to inhibit OposSourceDown of the unreachable schedd", st.diag)
            time.sleep(3)  # a notification would have gone out after group_wait 1s
            leaked = [n for n in notifications(st.hook) if n["labels"].get("alertname") == "OposSourceDown"
                      and n["labels"].get("schedd") == jobsub02 and n["labels"].get("source") == "queue"]
            assert leaked == [], st.diag()
        finally:
            devpool_cmd("root", "condor_on", "-daemon", JOBSUB02_DAEMON, config=POOL_CONFIG["fermigrid"])
        t_off_total = time.monotonic() - t_off

        # back on: the alert resolves in Prometheus and the resolution is delivered (send_resolved)
        wait_for(lambda: [n for n in notifications(st.hook, "/opos/page") if n["status"] == "resolved"
                          and n["labels"].get("alertname") == "OposScheddUnreachable"
                          and n["labels"].get("schedd") == jobsub02],
                 180, "the resolution of OposScheddUnreachable to be delivered after condor_on", st.diag)

        # ------------------------------------------------------------ health of the whole run
        rule_errors = [(r["name"], r.get("lastError")) for g in query_api(st.prom, "rules")["groups"]
                       for r in g["rules"] if r.get("health") == "err"]
        assert rule_errors == []
        # (OposMonitorDown is pending for a moment at Prometheus's start, before its first scrape)
        assert not st.recorder.firing("OposMonitorDown") and not st.recorder.firing("OposMonitorStuck"), st.diag()
        assert st.daemon.popen.poll() is None and "Traceback" not in st.daemon.log.read_text(), st.daemon.tail(80)
        print(f"\nsite alert firing+delivered {t_site:.0f} s after submitting {N_JOBS} jobs; schedd alert "
              f"delivered {t_down:.0f} s after condor_off (schedd off {t_off_total:.0f} s); "
              f"total {time.monotonic() - t_start:.0f} s")
    finally:
        if submitted:
            remove_tagged(jobsub01, tag)
        st.close()


def query_api(prom: str, what: str) -> dict:
    data = http_json(f"{prom}/api/v1/{what}")
    assert data["status"] == "success", data
    return data["data"]


def http_rules_loaded(prom: str, n_rules: int) -> bool:
    """Every rule of the copy loaded and evaluated at least once, none in error."""
    groups = query_api(prom, "rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    return len(rules) == n_rules and all(r.get("lastEvaluation", "").startswith("20") and r.get("health") == "ok"
                                    for r in rules)
