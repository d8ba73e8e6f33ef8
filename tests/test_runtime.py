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
