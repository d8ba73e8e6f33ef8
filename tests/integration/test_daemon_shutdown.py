"""SIGTERM in the middle of a large history poll, on the real dev pool.

``opos-monitor run`` backfills jobsub02's history (20,000 finished jobs of this test, plus
whatever earlier tests left there); the test sends SIGTERM as soon as the first batch is
committed, so the poll is still reading. The daemon must exit 0 within a bounded time, and a
restart on the same state directory must bring every record exactly once:

* nothing lost: every finished job of the test is in the store after the restart;
* nothing duplicated: the records handed off by the two runs together (each run logs every
  poll with its record count) equal the records in the store, so no record was fetched and
  committed twice across the stop.

Only history is polled and only jobsub02 (allow list), so every stored record comes from the
polls counted in the logs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from sources.devpool_jobs import (TOKEN, new_tag, runtime_config, submit_noop, tagged_history_ids, wait_left_queue,
                                  wait_until)

from .test_daemon import free_port

pytestmark = pytest.mark.integration

POOL = "fermigrid"
JOBS = 20_000
STOP_BOUND_S = 20.0  # the daemon ends the poll after the batch in flight: well under shutdown_timeout_s


def _schedd_name(htcondor2) -> str:
    ads = htcondor2.Collector("127.0.0.1:9618").query(htcondor2.AdTypes.Schedd, projection=["Name"])
    return next(str(ad["Name"]) for ad in ads if str(ad["Name"]).startswith("jobsub02@"))


def _start(state: Path, log: Path) -> subprocess.Popen:
    config = state.parent / "opos-monitor.toml"
    config.write_text(f"""state_dir = "{state}"

[pools.{POOL}]
collectors = ["127.0.0.1:9618"]
schedds_allow = ["jobsub02@*"]

[htcondor]
token_file = "{TOKEN}"
auth_methods = ["IDTOKENS"]
query_timeout_s = 60

[sources]
schedd_sources = ["history"]
history_interval_s = 5

[metrics]
listen = "127.0.0.1:{free_port()}"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPOS_MONITOR__") and k != "NOTIFY_SOCKET"}
    return subprocess.Popen([sys.executable, "-m", "opos_monitor.cli", "-c", str(config), "--log-format", "json",
                             "run"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _query(db: Path, sql: str, *args) -> list[tuple]:
    """Read the daemon's store while it runs (WAL: readers never block the writer)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def _events(log: Path, event: str) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(ev, dict) and ev.get("event") == event:
            out.append(ev)
    return out


def _polls(log: Path, schedd: str) -> list[dict]:
    return [e for e in _events(log, "poll finished") if e.get("source") == f"{POOL}/{schedd}/history"]


def _stop(proc: subprocess.Popen, log: Path) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("no exit within 120 s of SIGTERM:\n" + log.read_text()[-3000:])
    took = time.monotonic() - t0
    assert code == 0, log.read_text()[-3000:]
    return took


def test_sigterm_during_a_large_history_poll_exits_0_and_a_restart_loses_and_duplicates_nothing(devpool, tmp_path):
    _, htcondor2 = devpool
    schedd = _schedd_name(htcondor2)
    tag = new_tag("sigterm")
    state, db = tmp_path / "state", tmp_path / "state" / "store.sqlite"
    logs = [tmp_path / "run1.log", tmp_path / "run2.log"]
    # room for every record in jobsub02's history whatever else ran on the pool before
    with runtime_config("sigterm", {"JOBSUB02.MAX_HISTORY_LOG": "500000000"}, [(POOL, schedd)]):
        submit_noop(schedd, JOBS, tag)
        wait_left_queue(htcondor2, POOL, schedd, tag, timeout=900)
        expected = set(tagged_history_ids(htcondor2, POOL, schedd, tag))
        assert len(expected) == JOBS

        proc = _start(state, logs[0])
        try:
            # the first batch is committed with its checkpoint: the poll is under way
            wait_until(lambda: _query(db, "SELECT 1 FROM checkpoints WHERE source = 'history'") or proc.poll() is not None,
                       300, "the first history batch to be committed", every=0.05)
            assert proc.poll() is None, logs[0].read_text()[-3000:]
            took = _stop(proc, logs[0])
        finally:
            if proc.poll() is None:
                proc.kill()
        first = _polls(logs[0], schedd)
        stored_after_stop = _query(db, "SELECT COUNT(*) FROM records")[0][0]
        assert first and first[-1]["interrupted"] is True, first  # stopped mid-poll ...
        assert took < STOP_BOUND_S, f"SIGTERM took {took:.1f} s"  # ... in bounded time
        assert 0 < stored_after_stop < JOBS  # part of the backlog, committed with its checkpoint
        assert sum(p["records"] for p in first) == stored_after_stop
        assert "Traceback" not in logs[0].read_text()
        assert [e["clean"] for e in _events(logs[0], "stopped")] == [True]  # no query had to be abandoned

        proc = _start(state, logs[1])
        try:
            def all_stored() -> bool:
                gids = {g for (g,) in _query(db, "SELECT global_job_id FROM records")}
                return expected <= gids or proc.poll() is not None

            wait_until(all_stored, 600, "the restarted daemon to store every record", every=1)
            assert proc.poll() is None, logs[1].read_text()[-3000:]
            time.sleep(6)  # one more poll: caught up, nothing new
            _stop(proc, logs[1])
        finally:
            if proc.poll() is None:
                proc.kill()
    rows = _query(db, "SELECT global_job_id FROM records")
    gids = [g for (g,) in rows]
    assert expected <= set(gids)  # nothing lost
    assert len(gids) == len(set(gids))
    handed_off = sum(p["records"] for log in logs for p in _polls(log, schedd))
    assert handed_off == len(gids), (handed_off, len(gids))  # nothing fetched and committed twice
    assert "Traceback" not in logs[1].read_text()
    print(f"\nSIGTERM after {stored_after_stop} of {len(gids)} records: exit 0 in {took:.2f} s; "
          f"the restart read the remaining {len(gids) - stored_after_stop}")
