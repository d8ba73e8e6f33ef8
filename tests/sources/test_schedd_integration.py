"""The live schedd source on the real dev pool: discovery of both pools, queue counts against
``condor_q -totals``, a stopped schedd reported down while the others keep being polled."""

from __future__ import annotations

import time

import pytest
from devpool_jobs import (POOL_CONFIG, condor_q_totals, devpool, htcondor_config, new_tag, pool_configs,
                          remove_tagged, submit, wait_until, worker_env)
from schedd_fakes import RecordingHandoff

from opos_monitor.sources.htc import Backoff
from opos_monitor.sources.schedd import ScheddSources

pytestmark = pytest.mark.integration

SCHEDDS = {("fermigrid", "jobsub01@vm"), ("fermigrid", "jobsub02@vm"), ("ospool", "ospool-ap01@vm")}
HELD = """opos_name = sources-test
include : common.inc
executable = /bin/true
transfer_executable = false
hold = true
log =
output =
error =
+OposTestTag = "{tag}"
queue {n}
"""


@pytest.fixture
def make_sources(devpool):
    made = []

    def make(handoff, **kw):
        src = ScheddSources(pool_configs(), htcondor_config(**kw.pop("htc", {})), handoff, worker_env=worker_env(),
                            extra_attrs=("OposTestTag",), **kw)
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


def by_key(results):
    return {(r.key.pool, r.key.schedd, r.key.source): r for r in results}


def test_both_pools_schedds_are_discovered_and_polled(make_sources):
    src = make_sources(RecordingHandoff(), kinds=("queue",))
    res = by_key(src.poll())
    assert res[("fermigrid", "*", "discovery")].ok and res[("ospool", "*", "discovery")].ok
    assert {(k.target.pool, k.target.name) for k in src.discovery.schedds()} == SCHEDDS
    for pool, name in SCHEDDS:
        r = res[(pool, name, "queue")]
        assert r.ok, r.error
        assert sum(r.status_counts.values()) >= 0 and "held" in r.status_counts


def _comparable(ours: dict) -> dict:
    """Our per-status counts in condor_q's terms (it counts transferring output as running)."""
    return {"jobs": sum(ours.values()), "completed": ours["completed"], "removed": ours["removed"],
            "idle": ours["idle"], "running": ours["running"] + ours["transferring_output"], "held": ours["held"],
            "suspended": ours["suspended"]}


def test_queue_counts_equal_condor_q_totals(make_sources):
    tag = new_tag("queue")
    submit("jobsub01@vm", HELD.format(tag=tag, n=3))
    submit("ospool-ap01@vm", HELD.format(tag=tag, n=2), pool="ospool")
    h = RecordingHandoff()
    src = make_sources(h, kinds=("queue",))
    try:
        # the pool is shared: compare when condor_q agrees with itself before and after our poll
        for _attempt in range(10):
            before = {(p, s): condor_q_totals(s, p) for p, s in SCHEDDS}
            res = by_key(src.poll())
            after = {(p, s): condor_q_totals(s, p) for p, s in SCHEDDS}
            if before == after:
                break
            time.sleep(2)
        else:
            pytest.fail("the queues never held still for a comparison")
        for pool, name in SCHEDDS:
            r = res[(pool, name, "queue")]
            assert r.ok, r.error
            assert _comparable(dict(r.status_counts)) == after[(pool, name)], (pool, name)
        ours = [rec for rec in h.delivered.values() if rec.attrs.get("OposTestTag") == tag]
        assert len(ours) == 5
        assert {rec.status for rec in ours} == {"held"} and {rec.hold_reason_code for rec in ours} == {15}
        assert {rec.schedd for rec in ours} == {"jobsub01@vm", "ospool-ap01@vm"}
        assert all(rec.source == "queue" for rec in ours)
        assert not any(c[2] for c in h.commits)  # queue hand-offs never carry a checkpoint
    finally:
        remove_tagged("jobsub01@vm", tag)
        remove_tagged("ospool-ap01@vm", tag, pool="ospool")


def _schedd_answers(src, name):
    res = by_key(src.poll(kinds=("queue",)))
    r = res.get(("fermigrid", name, "queue"))
    return r is not None and r.ok


def test_a_stopped_schedd_is_down_and_the_others_keep_being_polled(make_sources):
    src = make_sources(RecordingHandoff(), kinds=("queue", "history"), backoff=Backoff(base_s=1, max_s=2))
    first = by_key(src.poll())
    assert all(r.ok for r in first.values()), [r.error for r in first.values() if not r.ok]
    # jobsub02 is a second schedd of the fermigrid master (local name): stop it through the master
    devpool("root", "condor_off", "-daemon", "SCHEDD_JOBSUB02", config=POOL_CONFIG["fermigrid"])
    try:
        time.sleep(2)
        t0 = time.monotonic()
        res = by_key(src.poll())
        elapsed = time.monotonic() - t0
        for kind in ("queue", "history"):
            r = res[("fermigrid", "jobsub02@vm", kind)]
            assert not r.ok and r.error.startswith("jobsub02@vm: "), r.error
        assert "not advertised by the collector" in res[("fermigrid", "jobsub02@vm", "queue")].error
        for pool, name in SCHEDDS - {("fermigrid", "jobsub02@vm")}:
            for kind in ("queue", "history"):
                assert res[(pool, name, kind)].ok, res[(pool, name, kind)].error
        assert elapsed < 30
    finally:
        devpool("root", "condor_on", "-daemon", "SCHEDD_JOBSUB02", config=POOL_CONFIG["fermigrid"])
    time.sleep(2)
    wait_until(lambda: _schedd_answers(src, "jobsub02@vm"), 120, "jobsub02 to answer again", every=2.5)
    names = {k.target.name: k.missing_since for k in src.discovery.schedds()}
    assert names["jobsub02@vm"] is None  # advertised again
