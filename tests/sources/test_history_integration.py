"""History and job epochs on the real dev pool: no cap (25,000 jobs between two polls), gaps
after rotation, per-attempt epoch records, and a SIGKILL between fetching and acknowledging.

The tests change the pool's configuration only through a test-only file in the chroot's
``config.d`` (removed afterwards) and only for their schedd (``JOBSUB02.*`` knobs), and they
only look at jobs they submitted (``+OposTestTag``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from devpool_jobs import (RUN, new_tag, process_runner, runtime_config, submit, submit_noop, tagged_history_ids,
                          target, wait_left_queue, wait_until)
from schedd_fakes import RecordingHandoff

from opos_monitor.sources.history import EPOCHS, HISTORY, HistoryOptions, attempt_of, poll_history
from opos_monitor.sources.htc import job_projection

pytestmark = pytest.mark.integration

POOL, SCHEDD = "fermigrid", "jobsub02@vm"
OPTS = HistoryOptions(projection=job_projection(("OposTestTag",)))
DRIVER = Path(__file__).resolve().parent / "history_crash_driver.py"


@pytest.fixture(scope="module")
def runner(devpool):
    r = process_runner(120)
    yield r
    r.close()


def tagged(h: RecordingHandoff, tag: str, source: str = "history") -> list:
    return [r for (src, _), r in h.delivered.items() if src == source and r.attrs.get("OposTestTag") == tag]


def test_25000_jobs_completed_between_two_polls_all_arrive_once(devpool, runner):
    _, htcondor2 = devpool
    tag = new_tag("25k")
    # room for all of them in jobsub02's history whatever else runs on the pool meanwhile
    with runtime_config("25k", {"JOBSUB02.MAX_HISTORY_LOG": "500000000"}, [(POOL, SCHEDD)]):
        t = target(htcondor2, POOL, SCHEDD)
        h = RecordingHandoff()
        poll_history(runner, t, h, HISTORY, HistoryOptions(backfill=False))  # start from now
        submit_noop(SCHEDD, 25_000, tag)
        wait_left_queue(htcondor2, POOL, SCHEDD, tag, timeout=900)
        t0 = time.monotonic()
        res = poll_history(runner, target(htcondor2, POOL, SCHEDD), h, HISTORY, OPTS)
        elapsed = time.monotonic() - t0
        expected = set(tagged_history_ids(htcondor2, POOL, SCHEDD, tag))
    ours = tagged(h, tag)
    assert len(expected) == 25_000
    assert {r.global_job_id for r in ours} == expected
    assert not h.duplicates(), list(h.duplicates().items())[:5]
    assert res.gap is None and res.records >= 25_000
    assert all(r.status == "completed" and r.source == "history" for r in ours)
    print(f"\n25k poll: {res.records} records in {elapsed:.1f} s ({res.records / elapsed:.0f} records/s)")


def test_records_rotated_away_before_a_poll_are_reported_as_a_gap(devpool, runner, caplog):
    _, htcondor2 = devpool
    tag = new_tag("gap")
    knobs = {"JOBSUB02.MAX_HISTORY_LOG": "100000", "JOBSUB02.MAX_HISTORY_ROTATIONS": "1"}
    with runtime_config("gap", knobs, [(POOL, SCHEDD)]):
        h = RecordingHandoff()
        poll_history(runner, target(htcondor2, POOL, SCHEDD), h, HISTORY, HistoryOptions(backfill=False))
        submit_noop(SCHEDD, 20, tag)
        wait_left_queue(htcondor2, POOL, SCHEDD, tag, timeout=300)
        first = poll_history(runner, target(htcondor2, POOL, SCHEDD), h, HISTORY, OPTS)
        assert first.gap is None and len(tagged(h, tag)) == 20
        checkpointed = max(tagged(h, tag), key=lambda r: (r.cluster_id, r.proc_id))
        submit_noop(SCHEDD, 400, tag)  # ~800 kB of history: far more than the 2 x 100 kB kept
        wait_left_queue(htcondor2, POOL, SCHEDD, tag, timeout=300)
        readable = set(tagged_history_ids(htcondor2, POOL, SCHEDD, tag))
        assert checkpointed.global_job_id not in readable and len(readable) < 420  # really rotated away
        with caplog.at_level(logging.WARNING, logger="opos_monitor.sources.history"):
            res = poll_history(runner, target(htcondor2, POOL, SCHEDD), h, HISTORY, OPTS)
    assert res.gap and "no longer in the history" in res.gap and SCHEDD in res.gap
    assert "history gap" in caplog.text
    got = {r.global_job_id for r in tagged(h, tag)}
    assert readable <= got  # everything still readable arrived
    assert not h.duplicates()
    print(f"\ngap reported: {res.gap}")


ON_EXIT_TWICE = "on_exit_remove = NumJobStarts >= 2"


def test_job_epochs_arrive_once_per_attempt(devpool, runner):
    _, htcondor2 = devpool
    tag = new_tag("epochs")
    # jobsub01's shadows write the file jobsub01 reads (see docs/sources.md on local-name schedds)
    with runtime_config("epochs", {"JOB_EPOCH_HISTORY": "$(SPOOL)/epoch_history"}, [(POOL, "jobsub01@vm")]):
        t = target(htcondor2, POOL, "jobsub01@vm")
        h = RecordingHandoff()
        poll_history(runner, t, h, EPOCHS, HistoryOptions(backfill=False))
        submit("jobsub01@vm", RUN.format(tag=tag, n=3, extra=ON_EXIT_TWICE))
        wait_left_queue(htcondor2, POOL, "jobsub01@vm", tag, timeout=300)

        def all_attempts():
            poll_history(runner, target(htcondor2, POOL, "jobsub01@vm"), h, EPOCHS, OPTS)
            return len(tagged(h, tag, "epochs")) >= 6

        wait_until(all_attempts, 60, "6 epoch records")
        again = poll_history(runner, target(htcondor2, POOL, "jobsub01@vm"), h, EPOCHS, OPTS)
    ours = tagged(h, tag, "epochs")
    attempts = Counter((r.global_job_id, attempt_of(r)) for r in ours)
    assert len(attempts) == 6 and set(attempts.values()) == {1}
    assert sorted({a for _, a in attempts}) == [1, 2]
    assert all(r.source == "epochs" for r in ours)
    assert again.records == 0 or not tagged(h, tag, "epochs")[6:]
    assert not h.duplicates()


def _driver(tmp: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), str(tmp / "store.sqlite"), str(tmp / "acks.log"), POOL,
                             SCHEDD, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_sigkill_between_fetch_and_ack_loses_nothing_and_duplicates_nothing(devpool, tmp_path):
    _, htcondor2 = devpool
    tag = new_tag("crash")
    proc = _driver(tmp_path, "--no-backfill")
    assert proc.wait(120) == 0, proc.stderr.read()
    submit_noop(SCHEDD, 1500, tag)
    wait_left_queue(htcondor2, POOL, SCHEDD, tag, timeout=300)
    marker = tmp_path / "hanging"
    proc = _driver(tmp_path, "--hang-at", "3", "--page", "500", "--batch", "200", "--marker", str(marker))
    try:
        wait_until(marker.exists, 180, "the driver to fetch history and block before acknowledging", every=0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its query workers
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    acks = (tmp_path / "acks.log").read_text().splitlines()
    assert 0 < len(acks) < 1500  # some batches were acknowledged before the kill, not all
    proc = _driver(tmp_path, "--page", "500", "--batch", "200")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    expected = set(tagged_history_ids(htcondor2, POOL, SCHEDD, tag))
    assert len(expected) == 1500
    acked = Counter(line.split("\t")[0] for line in (tmp_path / "acks.log").read_text().splitlines()
                    if line.endswith("\t" + tag))
    assert set(acked) == expected  # every record arrives
    assert set(acked.values()) == {1}  # none twice
    from opos_monitor.sinks.store import Store

    with Store.open(tmp_path / "store.sqlite", max_bytes=2 * 1024**3) as store:
        stored = [store.job(gid) for gid in sorted(expected)]
    assert all(len([d for d in docs if d.kind == "job"]) == 1 for docs in stored)
    print(f"\nafter the kill {len(acks)} records were acknowledged; the restart: {out.strip()}")
