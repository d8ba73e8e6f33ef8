"""Discovery, queue polls and the all-schedds poller, against in-process fakes."""

from __future__ import annotations

import threading
import time

import pytest
from schedd_fakes import FakeGrid, FakeSchedd, RecordingHandoff, job_ad

from opos_monitor.config import HTCondorConfig, PoolConfig
from opos_monitor.sources.base import SourceKey
from opos_monitor.sources.htc import Backoff, InlineRunner, ScheddTarget
from opos_monitor.sources.schedd import Discovery, ScheddSources, poll_queue, status_counts


def grid_two_pools():
    grid = FakeGrid()
    a, b, c = FakeSchedd("jobsub01@fnal"), FakeSchedd("jobsub02@fnal"), FakeSchedd("ospool-ap01@osg")
    grid.add_pool("fg1:9618", a, b)
    grid.collectors["fg2:9618"] = grid.collectors["fg1:9618"].__class__([a, b])
    grid.add_pool("osg:9619", c)
    pools = {"fermigrid": PoolConfig(collectors=["fg1:9618", "fg2:9618"]), "ospool": PoolConfig(collectors=["osg:9619"])}
    return grid, pools, (a, b, c)


# --- discovery ------------------------------------------------------------------------------


def test_discovery_lists_every_pools_schedds():
    grid, pools, _ = grid_two_pools()
    d = Discovery(pools, InlineRunner(grid.connect))
    results = d.discover()
    assert [(r.key.pool, r.key.schedd, r.key.source, r.ok) for r in results] == [
        ("fermigrid", "*", "discovery", True), ("ospool", "*", "discovery", True)]
    assert [(k.target.pool, k.target.name) for k in d.schedds()] == [
        ("fermigrid", "jobsub01@fnal"), ("fermigrid", "jobsub02@fnal"), ("ospool", "ospool-ap01@osg")]
    assert d.schedds()[0].target.address.startswith("<127.0.0.1:9618")


def test_discovery_applies_allow_and_deny():
    grid, pools, _ = grid_two_pools()
    pools["fermigrid"] = PoolConfig(collectors=["fg1:9618"], schedds_allow=["jobsub0*"], schedds_deny=["*02@*"])
    d = Discovery(pools, InlineRunner(grid.connect))
    d.discover()
    assert [k.target.name for k in d.schedds()] == ["jobsub01@fnal", "ospool-ap01@osg"]


def test_discovery_fails_over_to_the_next_collector():
    grid, pools, _ = grid_two_pools()
    grid.collectors["fg1:9618"].down = "Failed to connect to fg1:9618"
    d = Discovery(pools, InlineRunner(grid.connect))
    assert all(r.ok for r in d.discover())
    assert len(d.schedds()) == 3


def test_collector_failure_marks_discovery_down_and_keeps_the_last_list():
    grid, pools, _ = grid_two_pools()
    d = Discovery(pools, InlineRunner(grid.connect))
    d.discover()
    grid.collectors["fg1:9618"].down = "Failed to connect to fg1:9618"
    grid.collectors["fg2:9618"].down = "SECMAN:2007 did not respond"
    fg, osg = d.discover()
    assert not fg.ok and osg.ok
    assert "pool fermigrid: no collector answered" in fg.error
    assert "fg1:9618" in fg.error and "fg2:9618" in fg.error and "keeping the 2 schedd(s)" in fg.error
    assert [k.target.name for k in d.schedds()] == ["jobsub01@fnal", "jobsub02@fnal", "ospool-ap01@osg"]


def test_a_schedd_no_longer_advertised_is_kept_then_forgotten():
    grid, pools, (a, b, c) = grid_two_pools()
    now = [1000.0]
    d = Discovery(pools, InlineRunner(grid.connect), forget_after_s=600, clock=lambda: now[0])
    d.discover()
    for col in ("fg1:9618", "fg2:9618"):
        grid.collectors[col].schedds = [a]
    d.discover()
    missing = {k.target.name: k.missing_since for k in d.schedds()}
    assert missing == {"jobsub01@fnal": None, "jobsub02@fnal": 1000.0, "ospool-ap01@osg": None}
    now[0] += 601
    d.discover()
    assert [k.target.name for k in d.schedds()] == ["jobsub01@fnal", "ospool-ap01@osg"]


# --- queue ----------------------------------------------------------------------------------


def test_status_counts_has_every_status():
    counts = status_counts([1, 1, 2, 5, 3, 7, 6, 4, None, 9])
    assert counts == {"idle": 2, "running": 1, "removed": 1, "completed": 1, "held": 1, "transferring_output": 1,
                      "suspended": 1, "unknown": 2}


def test_queue_poll_counts_and_hands_off_held_and_removed():
    grid, _, (a, _, _) = grid_two_pools()
    a.queue = ([job_ad(1, i, schedd=a.name, status=1) for i in range(5)]
               + [job_ad(2, i, schedd=a.name, status=2) for i in range(3)]
               + [job_ad(3, i, schedd=a.name, status=5, HoldReasonCode=26, HoldReasonSubCode=102,
                         HoldReason="Job memory usage 2100 MB exceeded request_memory 2000 MB") for i in range(4)]
               + [job_ad(4, 0, schedd=a.name, status=3, RemoveReason="via condor_rm (by user novapro)")])
    h = RecordingHandoff()
    target = ScheddTarget("fermigrid", a.name, "<x>")
    res = poll_queue(InlineRunner(grid.connect), target, h, batch_size=3)
    assert res.ok and res.key == SourceKey("fermigrid", a.name, "queue")
    assert res.status_counts["idle"] == 5 and res.status_counts["running"] == 3
    assert res.status_counts["held"] == 4 and res.status_counts["removed"] == 1
    assert res.records == 5
    assert [c[1] for c in h.commits] == [3, 2] and all(c[2] is None for c in h.commits)
    held = [r for r in h.delivered.values() if r.status == "held"]
    assert len(held) == 4 and held[0].hold_reason_code == 26 and held[0].source == "queue"
    assert held[0].hold_reason.startswith("Job memory usage")


def test_a_stop_ends_a_queue_poll_between_batches():
    grid, _, (a, _, _) = grid_two_pools()
    a.queue = [job_ad(3, i, schedd=a.name, status=5, HoldReasonCode=26) for i in range(10)]
    h = RecordingHandoff()
    res = poll_queue(InlineRunner(grid.connect), ScheddTarget("fermigrid", a.name, "<x>"), h, batch_size=3,
                     should_stop=lambda: len(h.commits) >= 2)
    assert res.ok and res.interrupted and res.records == 6 and [c[1] for c in h.commits] == [3, 3]
    assert res.status_counts["held"] == 10  # the counts come from the query, complete


# --- the poller ------------------------------------------------------------------------------


def sources(grid, pools, h, **kw):
    kw.setdefault("kinds", ("queue", "history", "epochs"))
    return ScheddSources(pools, HTCondorConfig(max_concurrent_schedds=kw.pop("concurrency", 2)), h,
                         runner=kw.pop("runner", InlineRunner(grid.connect)), **kw)


def test_poll_reports_every_source_of_every_schedd():
    grid, pools, (a, b, c) = grid_two_pools()
    a.complete(job_ad(10, i, schedd=a.name) for i in range(7))
    c.complete(job_ad(5, i, schedd=c.name) for i in range(2))
    h = RecordingHandoff()
    with sources(grid, pools, h) as src:
        results = src.poll()
    keys = [(str(r.key), r.ok) for r in results]
    assert keys[:2] == [("fermigrid/*/discovery", True), ("ospool/*/discovery", True)]
    assert {k for k, _ in keys[2:]} == {f"{p}/{s}/{k}" for p, s in (("fermigrid", a.name), ("fermigrid", b.name),
                                                                     ("ospool", c.name))
                                        for k in ("queue", "history", "epochs")}
    assert all(ok for _, ok in keys)
    assert len(h.ids()) == 9


def test_a_failing_schedd_is_down_backs_off_and_does_not_stop_the_others():
    grid, pools, (a, b, c) = grid_two_pools()
    b.down = "Failed to fetch ads from schedd, errmsg=SECMAN:2007:This service is running, but did not respond"
    now = [5000.0]
    h = RecordingHandoff()
    backoff = Backoff(base_s=30, max_s=300, clock=lambda: now[0])
    with sources(grid, pools, h, backoff=backoff) as src:
        res = {str(r.key): r for r in src.poll()}
        down = [res[f"fermigrid/{b.name}/{k}"] for k in ("queue", "history", "epochs")]
        assert all(not r.ok and b.name in r.error and "SECMAN:2007" in r.error for r in down)
        assert all(res[f"fermigrid/{a.name}/{k}"].ok for k in ("queue", "history", "epochs"))
        assert all(res[f"ospool/{c.name}/{k}"].ok for k in ("queue", "history", "epochs"))
        # within the backoff the schedd is not contacted at all
        b.down = None
        b.queue = [job_ad(1, 0, schedd=b.name, status=5)]
        res = {str(r.key): r for r in src.poll()}
        assert not res[f"fermigrid/{b.name}/queue"].ok and "backoff" in res[f"fermigrid/{b.name}/queue"].error
        assert not b.history_calls
        now[0] += 31
        res = {str(r.key): r for r in src.poll()}
        assert all(res[f"fermigrid/{b.name}/{k}"].ok for k in ("queue", "history", "epochs"))
        assert res[f"fermigrid/{b.name}/queue"].status_counts["held"] == 1


def test_a_schedd_gone_from_the_collector_is_reported_down_with_a_note():
    grid, pools, (a, b, c) = grid_two_pools()
    h = RecordingHandoff()
    with sources(grid, pools, h, kinds=("queue",)) as src:
        src.poll()
        for col in ("fg1:9618", "fg2:9618"):
            grid.collectors[col].schedds = [a]
        b.down = "Failed to connect to <127.0.0.1:9618?sock=jobsub02>"
        res = {str(r.key): r for r in src.poll()}
    r = res[f"fermigrid/{b.name}/queue"]
    assert not r.ok and "Failed to connect" in r.error and "not advertised by the collector since" in r.error


def test_polls_run_concurrently_up_to_the_limit():
    grid = FakeGrid()
    schedds = [FakeSchedd(f"jobsub0{i}@fnal") for i in range(1, 7)]
    grid.add_pool("fg:9618", *schedds)
    for s in schedds:
        s.delay_s = 0.2
    live, peak, lock = [0], [0], threading.Lock()
    inner = InlineRunner(grid.connect)

    class Counting:
        def call(self, target, fn, *args, timeout=None):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            try:
                return inner.call(target, fn, *args, timeout=timeout)
            finally:
                with lock:
                    live[0] -= 1

    with sources(grid, {"fermigrid": PoolConfig(collectors=["fg:9618"])}, RecordingHandoff(), kinds=("queue",),
                 runner=Counting(), concurrency=3) as src:
        t0 = time.monotonic()
        results = src.poll()
        elapsed = time.monotonic() - t0
    assert all(r.ok for r in results)
    assert peak[0] == 3
    assert elapsed < 6 * 0.2  # overlapped, not one after the other


def test_a_failing_handoff_is_reported_and_the_poll_goes_on():
    grid, pools, (a, b, c) = grid_two_pools()
    a.complete(job_ad(10, i, schedd=a.name) for i in range(3))
    h = RecordingHandoff()
    h.fail_on_commit = 1
    with sources(grid, pools, h, kinds=("history",), concurrency=1) as src:
        res = {str(r.key): r for r in src.poll()}
        assert not res[f"fermigrid/{a.name}/history"].ok
        assert "hand-off failed: disk full" in res[f"fermigrid/{a.name}/history"].error
        res = {str(r.key): r for r in src.poll()}  # no backoff: the schedd was fine
        assert res[f"fermigrid/{a.name}/history"].ok and res[f"fermigrid/{a.name}/history"].records == 3


def test_unknown_kind_is_refused():
    grid, pools, _ = grid_two_pools()
    with pytest.raises(ValueError, match="unknown source kind"):
        sources(grid, pools, RecordingHandoff(), kinds=("queue", "logs"))


def test_two_polls_of_one_source_never_overlap():
    grid, pools, (a, b, c) = grid_two_pools()
    a.complete(job_ad(10, i, schedd=a.name) for i in range(3))
    a.delay_s = 0.5
    h = RecordingHandoff()
    with sources(grid, pools, h, kinds=("history",), concurrency=4) as src:
        src.discovery.discover()
        known = src.discovery.schedds()[0]
        with __import__("concurrent.futures").futures.ThreadPoolExecutor(2) as ex:
            first, second = ex.map(lambda _: src.poll_schedd(known, ("history",))[0], range(2))
    assert sorted([first.records, second.records]) == [0, 3] and first.ok and second.ok
    assert not h.duplicates()


def test_expiring_soon_counts_live_jobs_whose_proxy_expires_in_the_window():
    from opos_monitor.sources.schedd import expiring_soon

    ads = [{"JobStatus": 2, "x509UserProxyExpiration": 100}, {"JobStatus": 1, "x509UserProxyExpiration": 500},
           {"JobStatus": 5, "x509UserProxyExpiration": 100},  # held: not live
           {"JobStatus": 2}, {"JobStatus": 2, "x509UserProxyExpiration": "expr"}]
    assert expiring_soon(ads, before=200) == 1
    assert expiring_soon(ads, before=1000) == 2


def test_after_stop_no_poll_queries_or_hands_off_anything():
    grid, pools, (a, b, c) = grid_two_pools()
    a.complete(job_ad(10, i, schedd=a.name) for i in range(7))
    h = RecordingHandoff()
    with sources(grid, pools, h) as src:
        src.discovery.discover()
        a.history_calls.clear()
        src.stop()
        results = src.poll_schedd(src.discovery.schedds()[0], ("queue", "history"))
    assert [r.interrupted for r in results] == [True, True] and all(r.ok for r in results)
    assert not h.commits and not a.history_calls


def test_queue_polls_fetch_full_ads_only_of_jobs_held_or_removed_since_the_last_complete_poll():
    grid, pools, (a, b, c) = grid_two_pools()
    t0 = 1_700_000_000
    a.queue = ([job_ad(1, i, schedd=a.name, status=5, t=t0, HoldReasonCode=26) for i in range(4)]
               + [job_ad(2, i, schedd=a.name, status=1, t=t0 + 1000) for i in range(3)])
    h = RecordingHandoff()
    with sources(grid, pools, h, kinds=("queue",)) as src:
        src.discovery.discover()
        known = next(k for k in src.discovery.schedds() if k.target.name == a.name)
        first = src.poll_schedd(known, ["queue"])[0]
        assert first.records == 4 and len(first.held_ids) == 4 and len(first.failed_now) == 4
        again = src.poll_schedd(known, ["queue"])[0]  # nothing changed: no full ad fetched
        assert again.records == 0 and sorted(again.held_ids) == sorted(first.held_ids)
        assert again.status_counts["held"] == 4 and again.status_counts["idle"] == 3
        # a job held now is fetched, even in the same second as the others; they are not again
        a.queue.append(job_ad(3, 0, schedd=a.name, status=5, t=t0, HoldReasonCode=13))
        third = src.poll_schedd(known, ["queue"])[0]
        assert third.records == 1 and len(third.held_ids) == 5
        assert [r.cluster_id for r in h.delivered.values() if r.cluster_id == 3] == [3]
        # a failed hand-off drops the mark: the next poll fetches every held job again
        h.fail_on_commit = len(h.commits) + 1
        a.queue.append(job_ad(4, 0, schedd=a.name, status=5, t=t0 + 3000))
        assert not src.poll_schedd(known, ["queue"])[0].ok
        assert src.poll_schedd(known, ["queue"])[0].records == 6
