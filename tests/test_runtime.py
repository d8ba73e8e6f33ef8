"""Runtime start-up without a pool: what it declares in the metrics before any poll."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "sinks"))

from storekit import record_for, scenario_ad  # noqa: E402

from opos_monitor.config import Config  # noqa: E402
from opos_monitor.runtime import Runtime  # noqa: E402
from opos_monitor.sinks.store import Store  # noqa: E402


def failure_series(rt: Runtime, site: str) -> dict[str, float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from opos_monitor.sinks.metrics import make_registry

    text = generate_latest(make_registry(rt.metrics, process=False)).decode()
    return {s.labels["category"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "opos_job_failures_total" and s.labels.get("site") == site}


def test_sites_of_stored_records_and_corrections_are_declared_at_start(tmp_path):
    now = int(time.time())
    with Store.open(tmp_path / "store.sqlite", max_bytes=256 * 1024**2) as store:
        store.commit_batch([record_for(scenario_ad("success", 100, site="MWT2", end=now - 3600)),
                            record_for(scenario_ad("success", 101, site="Old_Site", end=now - 90 * 86400))])
    cfg = Config(state_dir=tmp_path, sites={"corrections": {"fnal.gov": "FermiGrid"}})
    rt = Runtime(cfg, runner=object())  # no schedd is polled here; the runner is never called
    try:
        rt.metrics.set_schedds("fermigrid", ["jobsub01@fnal"])
        for site in ("MWT2", "FermiGrid"):  # every failure counter exists at 0 before the first failure
            series = failure_series(rt, site)
            assert series and set(series.values()) == {0.0}, (site, series)
        assert failure_series(rt, "Old_Site") == {}  # not seen for 90 days: not declared
    finally:
        rt.close()


def test_held_jobs_by_category_stay_right_when_polls_fetch_only_new_holds(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "sources"))
    from schedd_fakes import FakeGrid, FakeSchedd, job_ad

    from opos_monitor.sources.htc import InlineRunner

    name = "jobsub01@fnal"
    grid = FakeGrid()
    schedd = FakeSchedd(name)
    grid.add_pool("fg1:9618", schedd)
    t0 = int(time.time()) - 3600
    memory = dict(HoldReasonCode=34, HoldReasonSubCode=0,
                  HoldReason="Error from slot1@wn: Job has gone over cgroup memory limit of 2000 megabytes.")
    transfer = dict(HoldReasonCode=13, HoldReasonSubCode=2,
                    HoldReason="Error from slot1@wn: Failed to transfer files: input.root: No such file")
    schedd.queue = ([job_ad(1, i, schedd=name, status=5, t=t0, **memory) for i in range(3)]
                    + [job_ad(9, 0, schedd=name, status=2, t=t0 + 1000)])  # the newest status change
    cfg = Config.model_validate({"state_dir": str(tmp_path), "pools": {"fermigrid": {"collectors": ["fg1:9618"]}},
                                 "sources": {"schedd_sources": ["queue"]}})
    rt = Runtime(cfg, runner=InlineRunner(grid.connect))

    def held() -> dict[str, float]:
        from prometheus_client import generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        from opos_monitor.sinks.metrics import make_registry

        text = generate_latest(make_registry(rt.metrics, process=False)).decode()
        return {s.labels["category"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "opos_jobs_held" and s.value}

    try:
        rt.poll_all()
        assert held() == {"memory": 3}
        results = rt.poll_all()  # nothing new: no record handed off, the gauge keeps every held job
        assert [r.records for r in results if r.key.source == "queue"] == [0]
        assert held() == {"memory": 3}
        schedd.queue.append(job_ad(2, 0, schedd=name, status=5, t=t0 + 2000, **transfer))
        schedd.queue[0] = job_ad(1, 0, schedd=name, status=1, t=t0 + 2000)  # released
        results = rt.poll_all()
        assert [r.records for r in results if r.key.source == "queue"] == [1]
        assert held() == {"memory": 2, "transfer": 1}
    finally:
        rt.close()
