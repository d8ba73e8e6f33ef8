"""MetricsState + StateCollector: series, labels, bounding, pre-initialisation, promtool clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opos_monitor.enrich.blackhole import BlackHoleDetector, Flag
from opos_monitor.enrich.classify import CATEGORIES
from opos_monitor.sinks.metrics import (
    FAILURE_CATEGORIES,
    JOB_STATUSES,
    MetricsState,
    StateCollector,
    category_label,
    fold_counts,
    make_registry,
    status_label,
)
from opos_monitor.sources.base import PollResult, SourceKey

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_717_000_000.0
POOL = "fermigrid"
S1, S2 = "jobsub01.fnal.gov", "jobsub02.fnal.gov"
ALLOWED_LABELS = {"pool", "schedd", "site", "category", "status", "source", "sink", "version", "le", "verdict"}


def samples(state: MetricsState) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the collector yields (without process metrics): (name, labels) -> value."""
    text = generate_latest(make_registry(state, process=False)).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(state: MetricsState, name: str, **labels: str) -> float | None:
    return samples(state).get((name, tuple(sorted(labels.items()))))


def names(state: MetricsState) -> set[str]:
    return {n for n, _ in samples(state)}


def realistic_state() -> MetricsState:
    """A state as a busy daemon would hold: two pools, three schedds, a dozen sites."""
    st_ = MetricsState(clock=lambda: NOW)
    st_.set_schedds(POOL, [S1, S2], sources=("queue", "history", "epochs"))
    st_.set_schedds("osg", ["jobsub03.fnal.gov"])
    sites = ["FermiGrid", "MWT2", "Nebraska", "Wisconsin", "UCSD", "Clemson", "SU-ITS", "BNL", "CIT_CMS_T2", "RAL"]
    st_.set_sites(sites)
    for i, (pool, schedd) in enumerate([(POOL, S1), (POOL, S2), ("osg", "jobsub03.fnal.gov")]):
        for src in ("queue", "history"):
            st_.observe_poll(PollResult(SourceKey(pool, schedd, src), ok=i != 2 or src == "queue", duration_s=1.5 + i,
                                        records=1000 * (i + 1), lag_s=12.0 if src == "history" else None,
                                        error=None if i != 2 or src == "queue" else "SECMAN:2007:Failed to end classad message.",
                                        gap="rotated" if (i, src) == (1, "history") else None))
        st_.set_queue(pool, schedd, {"idle": 20000 + i, "running": 12000, "held": 312, "completed": 40},
                      {"memory": 200, "site": 100, "certificate": 12}, cred_expiring=7 * i)
        for j, site in enumerate(sites):
            st_.observe_finished(pool, schedd, site, "none", n=100 + j)
            st_.observe_finished(pool, schedd, site, CATEGORIES[1 + (i + j) % 8], n=j)
    st_.observe_finished(POOL, S1, None, "code")
    st_.set_blackholes([Flag("host", "wn-1.mwt2.org", "MWT2", 7, 0, NOW - 60, NOW),
                        Flag("host", "wn-2.mwt2.org", "MWT2", 5, 1, NOW - 60, NOW),
                        Flag("site", "Clemson", "Clemson", 30, 2, NOW - 60, NOW)])
    st_.set_store(pending=12345, dead=3, size_bytes=512 * 1024**2, full=False, max_bytes=2 * 1024**3,
                  kept={"stale": 4, "thinner": 1})
    st_.declare_sink("elasticsearch")
    st_.observe_es(sent=500, rejected=2, retries=1, latency_s=0.42)
    st_.observe_es(sent=0, rejected=0, retries=3, latency_s=30.0, ok=False)
    st_.observe_missed_run(POOL, S1, "history")
    return st_


# ------------------------------------------------------------------------------ pure helpers
def test_status_and_category_labels_are_bounded():
    assert status_label("Running") == "running"
    assert status_label("transferring_output") == "transferring_output"
    assert status_label("exploded") == status_label(None) == "unknown"
    assert category_label("MEMORY") == "memory"
    assert category_label("cosmic rays") == category_label("") == "unknown"


def test_fold_counts_presets_every_key_and_folds_strays():
    got = fold_counts({"idle": 3, "weird": 2, "odd": 1}, status_label, JOB_STATUSES)
    assert set(got) == set(JOB_STATUSES)
    assert got["idle"] == 3 and got["unknown"] == 3 and got["running"] == 0


# ------------------------------------------------------------------------------ core series
def test_core_series_names_and_labels_match_the_contract():
    s = realistic_state()
    assert value(s, "opos_jobs", pool=POOL, schedd=S1, status="idle") == 20000
    assert value(s, "opos_job_failures_total", pool=POOL, schedd=S1, site="MWT2", category="site") is not None
    assert value(s, "opos_source_up", pool=POOL, schedd=S1, source="queue") == 1
    assert value(s, "opos_source_up", pool="osg", schedd="jobsub03.fnal.gov", source="history") == 0
    assert value(s, "opos_source_last_success_timestamp_seconds", pool=POOL, schedd=S1, source="history") == NOW
    assert value(s, "opos_store_pending_records") == 12345


def test_every_label_is_from_the_bounded_set_and_no_host_or_reason_leaks():
    s = realistic_state()
    text = generate_latest(make_registry(s, process=False)).decode()
    for fam in text_string_to_metric_families(text):
        assert fam.name.startswith("opos_"), fam.name
        for smp in fam.samples:
            assert set(smp.labels) <= ALLOWED_LABELS, (smp.name, smp.labels)
    assert "wn-1.mwt2.org" not in text and "SECMAN" not in text


def test_total_suffix_only_on_counters():
    text = generate_latest(make_registry(realistic_state(), process=False)).decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name, typ in types.items():
        assert name.endswith("_total") == (typ == "counter"), (name, typ)


def test_failures_and_outcomes_counters():
    s = MetricsState()
    s.observe_finished(POOL, S1, "MWT2", "none", n=8)
    s.observe_finished(POOL, S1, "MWT2", "memory", n=2)
    s.observe_finished(POOL, S1, "MWT2", "memory")
    assert value(s, "opos_job_outcomes_total", pool=POOL, schedd=S1, site="MWT2") == 11
    assert value(s, "opos_job_failures_total", pool=POOL, schedd=S1, site="MWT2", category="memory") == 3
    # category none is never a failure series; every failure category exists at 0 once the site is seen
    assert value(s, "opos_job_failures_total", pool=POOL, schedd=S1, site="MWT2", category="none") is None
    for c in FAILURE_CATEGORIES:
        assert value(s, "opos_job_failures_total", pool=POOL, schedd=S1, site="MWT2", category=c) is not None
    # an unheard-of category is counted as unknown, a missing site as site="unknown"
    s.observe_finished(POOL, S1, None, "gremlins")
    assert value(s, "opos_job_failures_total", pool=POOL, schedd=S1, site="unknown", category="unknown") == 1


def test_set_schedds_preinitialises_for_absence_alerts():
    s = MetricsState()
    s.set_sites(["MWT2", "Nebraska"])
    s.set_schedds(POOL, [S1, S2])
    for schedd in (S1, S2):
        for src in ("queue", "history"):
            assert value(s, "opos_source_up", pool=POOL, schedd=schedd, source=src) == 0
            assert value(s, "opos_source_errors_total", pool=POOL, schedd=schedd, source=src) == 0
        for status in JOB_STATUSES:
            assert value(s, "opos_jobs", pool=POOL, schedd=schedd, status=status) == 0
        for c in CATEGORIES:
            assert value(s, "opos_jobs_held", pool=POOL, schedd=schedd, category=c) == 0
        for site in ("MWT2", "Nebraska"):
            assert value(s, "opos_job_outcomes_total", pool=POOL, schedd=schedd, site=site) == 0
            for c in FAILURE_CATEGORIES:
                assert value(s, "opos_job_failures_total", pool=POOL, schedd=schedd, site=site, category=c) == 0
    # no success yet: no last-success timestamp (0 would read as "stale since 1970")
    assert "opos_source_last_success_timestamp_seconds" not in names(s)
    assert value(s, "opos_source_gaps_total", pool=POOL, schedd=S1, source="history") == 0
    # declaring a site after the schedds still reaches every schedd
    s.set_sites(["UCSD"])
    assert value(s, "opos_job_failures_total", pool=POOL, schedd=S2, site="UCSD", category="site") == 0


def test_set_schedds_is_additive_and_forget_drops_one_schedd():
    s = MetricsState()
    s.set_schedds(POOL, [S1, S2])
    s.set_schedds(POOL, [S1])  # S2 left the collector: it must still show up=0 and alert
    assert value(s, "opos_source_up", pool=POOL, schedd=S2, source="queue") == 0
    s.observe_finished(POOL, S2, "MWT2", "site")
    s.forget_schedd(POOL, S2)
    assert all(dict(lbl).get("schedd") != S2 for _, lbl in samples(s))
    assert value(s, "opos_source_up", pool=POOL, schedd=S1, source="queue") == 0


def test_observe_poll_up_down_timestamps_errors_lag_gaps():
    t = [NOW]
    s = MetricsState(clock=lambda: t[0])
    key = SourceKey(POOL, S1, "history")
    s.observe_poll(PollResult(key, duration_s=2.0, records=50, lag_s=30.0))
    t[0] = NOW + 120
    s.observe_poll(PollResult(key, ok=False, error="timeout", duration_s=60.0, gap="rotated past 3 records"))
    assert value(s, "opos_source_up", pool=POOL, schedd=S1, source="history") == 0
    assert value(s, "opos_source_last_success_timestamp_seconds", pool=POOL, schedd=S1, source="history") == NOW
    assert value(s, "opos_source_errors_total", pool=POOL, schedd=S1, source="history") == 1
    assert value(s, "opos_source_records_total", pool=POOL, schedd=S1, source="history") == 50
    assert value(s, "opos_source_poll_duration_seconds_count", pool=POOL, schedd=S1, source="history") == 2
    assert value(s, "opos_source_poll_duration_seconds_sum", pool=POOL, schedd=S1, source="history") == 62.0
    assert value(s, "opos_source_last_poll_duration_seconds", pool=POOL, schedd=S1, source="history") == 60.0
    assert value(s, "opos_source_lag_seconds", pool=POOL, schedd=S1, source="history") == 30.0
    assert value(s, "opos_source_gaps_total", pool=POOL, schedd=S1, source="history") == 1
    s.observe_poll(PollResult(key, duration_s=1.0, lag_s=0.0), now=NOW + 240)
    assert value(s, "opos_source_up", pool=POOL, schedd=S1, source="history") == 1
    assert value(s, "opos_source_last_success_timestamp_seconds", pool=POOL, schedd=S1, source="history") == NOW + 240
    assert value(s, "opos_source_lag_seconds", pool=POOL, schedd=S1, source="history") == 0


def test_lag_drops_to_zero_once_a_poll_finds_nothing_new():
    """A backlog batch reports its lag; a quiet schedd afterwards hands off nothing (lag_s None):
    caught up, so the lag must not stay at the backlog's value (OposHistoryLagHigh)."""
    s = MetricsState(clock=lambda: NOW)
    key = SourceKey(POOL, S1, "history")
    s.observe_poll(PollResult(key, records=500, lag_s=3600.0))
    s.observe_poll(PollResult(key, ok=False, error="timeout"))  # a failure says nothing about lag
    assert value(s, "opos_source_lag_seconds", pool=POOL, schedd=S1, source="history") == 3600
    s.observe_poll(PollResult(key, records=0, interrupted=True))  # stopped before a batch: not caught up
    assert value(s, "opos_source_lag_seconds", pool=POOL, schedd=S1, source="history") == 3600
    s.observe_poll(PollResult(key, records=0))
    assert value(s, "opos_source_lag_seconds", pool=POOL, schedd=S1, source="history") == 0
    # a source that never reported a lag gets none
    s.observe_poll(PollResult(SourceKey(POOL, S1, "queue"), records=0))
    assert value(s, "opos_source_lag_seconds", pool=POOL, schedd=S1, source="queue") is None


def test_queue_poll_status_counts_and_set_queue():
    s = MetricsState()
    s.observe_poll(PollResult(SourceKey(POOL, S1, "queue"), status_counts={"idle": 5, "running": 2}))
    assert value(s, "opos_jobs", pool=POOL, schedd=S1, status="idle") == 5
    s.set_queue(POOL, S1, {"idle": 1, "held": 4, "bogus": 2}, {"memory": 3, "certificate": 1}, cred_expiring=9)
    assert value(s, "opos_jobs", pool=POOL, schedd=S1, status="idle") == 1
    assert value(s, "opos_jobs", pool=POOL, schedd=S1, status="running") == 0  # replaced, not merged
    assert value(s, "opos_jobs", pool=POOL, schedd=S1, status="unknown") == 2
    assert value(s, "opos_jobs_held", pool=POOL, schedd=S1, category="memory") == 3
    assert value(s, "opos_jobs_held", pool=POOL, schedd=S1, category="site") == 0
    assert value(s, "opos_jobs_credential_expiring", pool=POOL, schedd=S1) == 9
    assert value(s, "opos_credential_expiring_window_seconds") == 86400


def test_site_cap_folds_into_other_and_counts_overflows():
    s = MetricsState(max_sites=3)
    for i in range(10):
        s.observe_finished(POOL, S1, f"Site_{i}", "site")
    sites = {dict(lbl)["site"] for n, lbl in samples(s) if n == "opos_job_outcomes_total"}
    assert sites == {"Site_0", "Site_1", "Site_2", "other"}
    assert value(s, "opos_job_failures_total", pool=POOL, schedd=S1, site="other", category="site") == 7
    assert value(s, "opos_site_label_overflows_total") == 7
    assert value(s, "opos_site_labels") == 3 and value(s, "opos_site_labels_max") == 3
    # a site already labelled keeps its label after the cap is reached
    s.observe_finished(POOL, S1, "Site_1", "none")
    assert value(s, "opos_job_outcomes_total", pool=POOL, schedd=S1, site="Site_1") == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.sampled_from(CATEGORIES + ("bogus",))), max_size=80),
       st.integers(min_value=1, max_value=6))
def test_series_count_is_bounded_whatever_the_input(events, cap):
    s = MetricsState(max_sites=cap)
    s.set_schedds(POOL, [S1])
    for site, cat in events:
        s.observe_finished(POOL, S1, site, cat)
    sites = {dict(lbl)["site"] for n, lbl in samples(s) if n == "opos_job_outcomes_total"}
    assert len(sites - {"other", "unknown"}) <= cap
    total = sum(v for (n, _), v in samples(s).items() if n == "opos_job_outcomes_total")
    assert total == len(events)


def test_blackholes_count_hosts_per_site_never_host_labels():
    det = BlackHoleDetector(threshold=3, window_s=600, max_runtime_s=60)
    for i in range(4):
        det.observe(NOW + i, "wn-7.unl.edu", "Nebraska", failed=True, runtime_s=5)
        det.observe(NOW + i, "wn-8.unl.edu", "Nebraska", failed=True, runtime_s=5)
        det.observe(NOW + i, "wn-1.mwt2.org", "MWT2", failed=False, runtime_s=3600)
    s = MetricsState()
    s.set_sites(["MWT2"])
    s.set_blackholes(det.flagged_hosts() + det.flagged_sites())
    assert value(s, "opos_blackhole_hosts", site="Nebraska") == 2
    assert value(s, "opos_blackhole_hosts", site="MWT2") == 0
    assert value(s, "opos_blackhole_site", site="Nebraska") == 0  # 8 quick failures < site threshold 15
    s.set_blackholes([Flag("site", "Nebraska", "Nebraska", 20, 0, NOW, NOW)])
    assert value(s, "opos_blackhole_site", site="Nebraska") == 1
    assert value(s, "opos_blackhole_hosts", site="Nebraska") == 0  # cleared, still exported
    s.set_blackholes([])
    assert value(s, "opos_blackhole_site", site="Nebraska") == 0


def test_store_and_sink_series():
    s = MetricsState(clock=lambda: NOW)
    assert "opos_store_pending_records" not in names(s)  # nothing known about the store yet
    s.set_store(pending=10, dead=2, size_bytes=4096, full=True, max_bytes=1 << 30)
    assert value(s, "opos_store_pending_records") == 10
    assert value(s, "opos_store_dead_letter_records") == 2
    assert value(s, "opos_store_size_bytes") == 4096
    assert value(s, "opos_store_max_bytes") == 1 << 30
    assert value(s, "opos_store_full") == 1
    assert "opos_store_kept_records_total" not in names(s)
    s.set_store(pending=10, dead=2, size_bytes=4096, full=True, max_bytes=1 << 30, kept={"thinner": 3})
    assert value(s, "opos_store_kept_records_total", verdict="thinner") == 3
    assert value(s, "opos_store_kept_records_total", verdict="stale") == 0  # every reason exists from the start
    s.declare_sink("opensearch")
    assert value(s, "opos_sink_documents_sent_total", sink="opensearch") == 0
    s.observe_es(100, 1, 0, 0.2, sink="opensearch")
    s.observe_es(0, 0, 2, 12.0, sink="opensearch", ok=False, now=NOW + 60)
    assert value(s, "opos_sink_documents_sent_total", sink="opensearch") == 100
    assert value(s, "opos_sink_documents_rejected_total", sink="opensearch") == 1
    assert value(s, "opos_sink_retries_total", sink="opensearch") == 2
    assert value(s, "opos_sink_request_errors_total", sink="opensearch") == 1
    assert value(s, "opos_sink_last_success_timestamp_seconds", sink="opensearch") == NOW
    assert value(s, "opos_sink_request_duration_seconds_count", sink="opensearch") == 2
    assert value(s, "opos_sink_request_duration_seconds_bucket", sink="opensearch", le="0.25") == 1
    assert value(s, "opos_sink_request_duration_seconds_bucket", sink="opensearch", le="+Inf") == 2
    assert value(s, "opos_sink_request_duration_seconds_sum", sink="opensearch") == pytest.approx(12.2)


def test_build_info_and_missed_runs():
    s = MetricsState(version="9.9.9")
    s.observe_missed_run(POOL, S1, "history")
    s.observe_missed_run(POOL, S1, "history")
    assert value(s, "opos_build_info", version="9.9.9") == 1
    assert value(s, "opos_scheduler_missed_runs_total", pool=POOL, schedd=S1, source="history") == 2
    assert value(s, "opos_source_up", pool=POOL, schedd=S1, source="history") == 0  # known, never polled


def test_collector_reads_only_the_state(monkeypatch):
    """A scrape is a snapshot of held state: it must not call anything but the state."""
    s = realistic_state()
    calls = []
    real = s.snapshot
    monkeypatch.setattr(s, "snapshot", lambda: calls.append(1) or real())
    list(StateCollector(s).collect())
    assert calls == [1]


def test_concurrent_updates_and_scrapes_are_consistent():
    s = MetricsState()
    s.set_schedds(POOL, [S1])
    registry = make_registry(s, process=False)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(site: str) -> None:
        for _ in range(2000):
            s.observe_finished(POOL, S1, site, "memory")

    def scraper() -> None:
        try:
            while not stop.is_set():
                list(text_string_to_metric_families(generate_latest(registry).decode()))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"S{i}",)) for i in range(4)]
    sc = threading.Thread(target=scraper)
    sc.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sc.join()
    assert not errors
    for i in range(4):
        assert value(s, "opos_job_failures_total", pool=POOL, schedd=S1, site=f"S{i}", category="memory") == 2000


# ------------------------------------------------------------------------------ promtool
@pytest.fixture(scope="session")
def promtool() -> str:
    """The real promtool (installed by scripts/install-prometheus when absent; never skipped)."""
    path = shutil.which("promtool")
    if path is None:
        proc = subprocess.run([str(ROOT / "scripts" / "install-prometheus")], capture_output=True, text=True,
                              timeout=900)
        path = shutil.which("promtool")
        if path is None:
            pytest.fail(f"promtool missing and scripts/install-prometheus failed:\n{proc.stdout}\n{proc.stderr}",
                        pytrace=False)
    return path


def test_promtool_check_metrics_is_clean_on_a_realistic_exposition(promtool):
    text = generate_latest(make_registry(realistic_state())).decode()
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_promtool_check_metrics_catches_a_bad_exposition(promtool):
    """The check above can fail: a counter without _total is reported."""
    bad = "# HELP opos_bad a counter\n# TYPE opos_bad counter\nopos_bad 1\n"
    proc = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "_total" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ fast text path
def test_render_text_is_byte_identical_to_generate_latest():
    s = realistic_state()
    reg = make_registry(s, process=False)
    assert reg.render_text() == generate_latest(reg)
    # twice: the second render comes from the prefix cache
    s.observe_finished(POOL, S1, "MWT2", "site", n=3)
    assert reg.render_text() == generate_latest(reg)


def test_render_text_escapes_and_formats_like_prometheus_client():
    s = MetricsState(clock=lambda: 1.5e9 + 0.123)
    odd = ['quo"te', "back\\slash", "new\nline", "ünïcode ✓", "", "other", "a,b=c}"]
    s.set_schedds('pool "x"', odd[:3])
    s.set_sites(odd)
    for site in odd:
        s.observe_finished("p", "s", site, "memory", n=10**7)
    s.observe_poll(PollResult(SourceKey("p", "s", "history"), duration_s=1e-7, lag_s=float("inf")))
    s.observe_poll(PollResult(SourceKey("p", "s", "queue"), duration_s=float("nan")))
    s.set_store(pending=2**53, dead=0, size_bytes=123456789012, full=False, max_bytes=999_999)
    s.observe_es(1, 0, 0, 1e-9)
    reg = make_registry(s, process=False)
    assert reg.render_text() == generate_latest(reg)


def test_render_text_includes_other_collectors_in_registration_order():
    s = realistic_state()
    reg = make_registry(s, process=True)
    fast = [f.name for f in text_string_to_metric_families(reg.render_text().decode())]
    slow = [f.name for f in text_string_to_metric_families(generate_latest(reg).decode())]
    assert fast == slow and "process_cpu_seconds" in fast and fast[0] == "opos_build_info"


def test_render_text_prefix_cache_stays_bounded():
    s = MetricsState()
    reg = make_registry(s, process=False)
    for i in range(30):
        s.set_schedds("p", [f"s{i}"])
        reg.render_text()
        s.forget_schedd("p", f"s{i}")
    reg.render_text()
    assert max(len(c) for c in reg._renderer._prefixes.values()) <= 2 * 8 + 1024
    assert reg.render_text() == generate_latest(reg)


# ------------------------------------------------------------------------------ docs in sync
def test_docs_list_every_series_and_no_other():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    text = generate_latest(make_registry(realistic_state(), process=False)).decode()
    exported = dict(re.findall(r"^# TYPE (opos_\w+) (\w+)$", text, re.M))
    documented = dict(re.findall(r"^\| `(opos_\w+)` \| (\w+)", doc, re.M))
    assert set(documented) == set(exported), (set(exported) ^ set(documented))
    for name, typ in exported.items():
        assert documented[name] == typ, (name, typ, documented[name])
    assert f"at most **{MetricsState().max_sites}** distinct values" in doc
