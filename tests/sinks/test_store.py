"""The durable local store (opos_monitor/sinks/store.py)."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from opos_monitor.enrich.classify import classify
from opos_monitor.enrich.site import attribute_site
from opos_monitor.records import JobRecord
from opos_monitor.sinks.store import (
    SCHEMA_VERSION,
    Checkpoint,
    Store,
    StoreError,
    StoreFull,
    StoredRecord,
    Version,
    backoff_s,
    decode_doc,
    end_time_of,
    job_key,
    stored_from,
    write_verdict,
)
from storekit import NOW, mixed_records, record_for, scenario_ad

HERE = Path(__file__).resolve().parent
WRITER = HERE / "crash_writer.py"
BIG = 1 << 40


class Clock:
    """A settable clock for backoff tests."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the file with plain sqlite3 (not through the Store)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def simple(doc_id: str, version: int = 0, *, category: str = "none", end: float | None = None,
           kind: str = "job", size: int = 200) -> StoredRecord:
    body = orjson.dumps({"id": doc_id, "v": version, "pad": os.urandom(size // 2).hex()})
    gjid = f"jobsub01.fnal.gov#{zlib.crc32(doc_id.encode()) % 10**6}.0#1"
    return StoredRecord(doc_id, kind, "fermigrid", "jobsub01.fnal.gov", gjid,
                        "novapro", "completed", "FermiGrid", category, None, None, None, None,
                        end, NOW + version, body)


# ---------------------------------------------------------------------------
# pure helpers


def test_job_key_and_end_time():
    assert job_key("jobsub01.fnal.gov#4102001.3#1718000100") == "4102001.3"
    assert job_key("jobsub01.fnal.gov#?.?#?") == "?.?"
    assert job_key("nohash") is None
    held = JobRecord.from_ad({"JobStatus": 5, "EnteredCurrentStatus": 1_718_000_500, "ClusterId": 1, "ProcId": 0},
                             pool="p", schedd="s", source="queue")
    assert end_time_of(held) == 1_718_000_500.0
    running = JobRecord.from_ad({"JobStatus": 2, "EnteredCurrentStatus": 1_718_000_500}, pool="p", schedd="s",
                                source="queue")
    assert end_time_of(running) is None
    done = JobRecord.from_ad({"JobStatus": 4, "CompletionDate": 1_718_000_900, "EnteredCurrentStatus": 1_718_000_901},
                             pool="p", schedd="s", source="history")
    assert end_time_of(done) == 1_718_000_900.0


def test_backoff_doubles_and_caps():
    assert [backoff_s(a, 5, 600) for a in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff_s(50, 5, 600) == 600
    assert backoff_s(10_000, 5, 600) == 600


def test_stored_from_carries_verdict_site_and_full_doc():
    ad = scenario_ad("memory_hold_removed", 4100001, site="Nebraska", end=NOW + 10)
    r = record_for(ad)
    rec = JobRecord.from_ad(ad, pool="fermigrid", schedd="jobsub01.fnal.gov", source="history")
    assert r.doc_id == rec.doc_id() and r.kind == "job"
    assert r.category == "memory" and r.site == "Nebraska" and r.signature_hash
    assert r.end_time == NOW + 10
    doc = orjson.loads(r.doc)
    assert doc["opos"]["category"] == "memory" and doc["opos"]["site"] == "Nebraska"
    assert doc["LastHoldReason"] == ad["LastHoldReason"]  # untruncated raw attribute
    att = stored_from(rec, None, None, attempt=2)
    assert att.kind == "attempt" and att.doc_id == rec.attempt_doc_id(2) and att.category is None
    assert orjson.loads(att.doc)["opos"]["attempt"] == 2


def test_stored_record_validates_kind():
    with pytest.raises(ValueError):
        dataclasses.replace(simple("a"), kind="jobs")


# ---------------------------------------------------------------------------
# round trip


def test_round_trip_and_reopen(tmp_path):
    path = tmp_path / "state" / "store.sqlite"
    recs = mixed_records(300, seed=3)
    with Store.open(path, max_bytes=BIG) as s:
        assert s.commit_batch(recs[:200], Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", '{"c": 200}')) == 200
        assert s.commit_batch(recs[200:], Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", '{"c": 300}')) == 100
        s.commit_batch([], Checkpoint("osg", "jobsub03.fnal.gov", "epochs", "17"))
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size == 0  # close checkpoints
    with Store.open(path, max_bytes=BIG) as s:
        assert s.checkpoint("fermigrid", "jobsub01.fnal.gov", "history") == '{"c": 300}'
        assert s.checkpoint("fermigrid", "jobsub01.fnal.gov", "queue") is None
        assert s.checkpoints() == {("fermigrid", "jobsub01.fnal.gov", "history"): '{"c": 300}',
                                   ("osg", "jobsub03.fnal.gov", "epochs"): "17"}
        assert s.counts()["records"] == 300 and s.pending_count() == 300
        for r in recs[::37]:
            (got,) = s.job(r.global_job_id)
            assert got.doc_id == r.doc_id and got.doc == orjson.loads(r.doc)
        taken = s.outbox_take(1000)
        assert sorted(i.doc_id for i in taken) == sorted(r.doc_id for r in recs)
        assert [i.seq for i in taken] == sorted(i.seq for i in taken)  # oldest first
        by_id = {r.doc_id: r for r in recs}
        assert all(i.doc == by_id[i.doc_id].doc for i in taken)


def test_upsert_overwrites_and_outbox_holds_latest_once(tmp_path):
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        done = scenario_ad("memory_hold_removed", 4200001, end=NOW + 50)
        running = dict(done, JobStatus=2, EnteredCurrentStatus=NOW - 3600, RemoveReason=None, LastHoldReason=None)
        v1 = record_for(running)
        v2 = record_for(done)
        assert v1.doc_id == v2.doc_id and v1.doc != v2.doc and v1.status == "running"
        assert s.commit_batch([v1]) == 1
        assert s.commit_batch([v2]) == 1
        assert s.commit_batch([v2]) == 0  # unchanged: not rewritten, not re-enqueued
        assert s.counts()["records"] == 1
        assert rows(s.path, "SELECT COUNT(*) FROM records WHERE doc_id = ?", (v1.doc_id,)) == [(1,)]
        assert s.pending_count() == 1
        (item,) = s.outbox_take(10)
        assert item.doc == v2.doc and item.end_time == NOW + 50
        # the same id twice in one batch: the last one wins
        v3 = record_for(dict(done, RemoveReason="removed by the shifter"))
        assert s.commit_batch([v2, v3]) == 1
        (item,) = s.outbox_take(10)
        assert item.doc == v3.doc and s.pending_count() == 1


def test_a_late_non_final_version_does_not_undo_a_final_one(tmp_path):
    ad = scenario_ad("success", 4200002, end=NOW)
    final = record_for(ad)
    late_queue_poll = record_for(dict(ad, JobStatus=2, CompletionDate=0, EnteredCurrentStatus=NOW - 600))
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        assert s.commit_batch([final]) == 1
        assert s.commit_batch([late_queue_poll], Checkpoint("fermigrid", "jobsub01.fnal.gov", "queue", "t1")) == 0
        assert s.stale_total == 1
        assert s.checkpoint("fermigrid", "jobsub01.fnal.gov", "queue") == "t1"  # the batch itself went through
        (doc,) = s.job(ad["GlobalJobId"])
        assert doc.status == "completed" and doc.doc == orjson.loads(final.doc)
        (item,) = s.outbox_take(10)
        assert item.doc == final.doc
        # a final version may still replace a final one (e.g. a reclassification)
        recl = dataclasses.replace(final, category="code", doc=final.doc.replace(b'"none"', b'"code"'))
        assert s.commit_batch([recl]) == 1 and s.job(ad["GlobalJobId"])[0].category == "code"


# ---------------------------------------------------------------------------
# one job seen by several sources (history, queue, event log)

#: what an event log can tell about a job (docs/sources-eventlog.md, "Records"), GlobalJobId
#: included (EVENT_LOG_JOB_AD_INFORMATION_ATTRS): the same document id as the schedd's record
EVENTLOG_ATTRS = (
    "GlobalJobId", "ClusterId", "ProcId", "QDate", "JobStatus", "LastJobStatus", "EnteredCurrentStatus",
    "JobStartDate", "JobCurrentStartDate", "NumJobStarts", "LastRemoteHost", "ExitBySignal", "ExitCode",
    "CompletionDate", "RemoteUserCpu", "RemoteSysCpu", "MemoryUsage", "RequestMemory", "DiskUsage",
    "RequestDisk", "RequestCpus", "NumHolds", "HoldReason", "HoldReasonCode", "HoldReasonSubCode",
    "LastHoldReason", "LastHoldReasonCode", "LastHoldReasonSubCode", "RemoveReason",
)


def from_source(ad: dict, source: str, *, updated_at: float = NOW) -> StoredRecord:
    """The record of ``ad`` as ``source`` delivers it: an event log only has EVENTLOG_ATTRS."""
    if source == "eventlog":
        ad = {k: v for k, v in ad.items() if k in EVENTLOG_ATTRS}
    rec = JobRecord.from_ad(ad, pool="fermigrid", schedd="jobsub01.fnal.gov", source=source)
    return stored_from(rec, classify(ad).to_dict(), attribute_site(ad), updated_at=updated_at)


def _v(status: str, source: str | None, doc: bytes = b"x") -> Version:
    return Version(doc, status, source)


@pytest.mark.parametrize("stored, incoming, verdict", [
    # nothing stored / identical document
    (None, _v("completed", "eventlog"), "new"),
    (_v("completed", "history"), _v("completed", "eventlog", b"x"), "same"),
    # a final state is never undone, whatever the source
    (_v("completed", "history"), _v("running", "queue", b"y"), "stale"),
    (_v("removed", "history"), _v("held", "eventlog", b"y"), "stale"),
    (_v("completed", "eventlog"), _v("running", "queue", b"y"), "stale"),
    # a final schedd record is kept against a (thinner) event-log one
    (_v("completed", "history"), _v("completed", "eventlog", b"y"), "thinner"),
    (_v("removed", "history"), _v("removed", "eventlog", b"y"), "thinner"),
    (_v("completed", "queue"), _v("completed", "eventlog", b"y"), "thinner"),  # final in the queue
    (_v("completed", "adfile"), _v("completed", "eventlog", b"y"), "thinner"),
    (_v("completed", None), _v("completed", "eventlog", b"y"), "thinner"),  # unknown: counts as a job ad
    # an event-log record replaces a schedd record that is not final
    (_v("idle", "queue"), _v("completed", "eventlog", b"y"), "changed"),
    (_v("held", "queue"), _v("removed", "eventlog", b"y"), "changed"),
    (_v("running", "queue"), _v("held", "eventlog", b"y"), "changed"),
    # a schedd record replaces an event-log record of the same job
    (_v("completed", "eventlog"), _v("completed", "history", b"y"), "changed"),
    (_v("removed", "eventlog"), _v("removed", "queue", b"y"), "changed"),
    (_v("running", "eventlog"), _v("completed", "history", b"y"), "changed"),
    # the same kind of source replaces its previous version (e.g. a reclassification)
    (_v("completed", "history"), _v("completed", "history", b"y"), "changed"),
    (_v("completed", "eventlog"), _v("completed", "eventlog", b"y"), "changed"),
    (_v("idle", "queue"), _v("running", "queue", b"y"), "changed"),
])
def test_write_verdict(stored, incoming, verdict):
    assert write_verdict(stored, incoming) == verdict


def test_history_then_eventlog_keeps_the_history_record_and_ships_nothing(tmp_path):
    ad = scenario_ad("memory_hold_removed", 4200011, end=NOW + 50)
    history = from_source(ad, "history")
    log = from_source(ad, "eventlog", updated_at=NOW + 60)
    assert log.doc_id == history.doc_id and log.status == history.status == "removed"
    assert len(orjson.loads(log.doc)) < len(orjson.loads(history.doc)) / 3
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        assert s.commit_batch([history]) == 1
        (item,) = s.outbox_take(10)
        assert s.outbox_ack([item.seq]) == 1
        cp = Checkpoint("fermigrid", "/var/log/condor/EventLog", "eventlog", '{"offset": 81332}')
        assert s.commit_batch([log], cp) == 0
        assert s.thinner_total == 1 and s.stale_total == 0
        assert s.checkpoint("fermigrid", "/var/log/condor/EventLog", "eventlog") == '{"offset": 81332}'
        assert s.pending_count() == 0 and s.outbox_take(10) == []  # not re-shipped to Elasticsearch
        (doc,) = s.job(ad["GlobalJobId"])
        assert doc.doc == orjson.loads(history.doc) and doc.doc["opos"]["source"] == "history"
        assert doc.updated_at == NOW
        # the same again (a re-read of the log) and a non-final one: still the history record
        running = from_source(dict(ad, JobStatus=2, EnteredCurrentStatus=NOW - 600), "eventlog")
        assert s.commit_batch([log]) == 0 and s.commit_batch([running]) == 0
        assert s.thinner_total == 2 and s.stale_total == 1 and s.pending_count() == 0
        assert s.job(ad["GlobalJobId"])[0].doc["opos"]["source"] == "history"
        # the history record itself may still change (a reclassification)
        recl = dataclasses.replace(history, category="code", updated_at=NOW + 70,
                                   doc=history.doc.replace(b'"memory"', b'"code"'))
        assert s.commit_batch([recl]) == 1 and s.pending_count() == 1


def test_a_batch_mixing_kept_and_written_records_enqueues_only_the_written(tmp_path):
    ads = [scenario_ad("success", 4200021 + i, end=NOW + i) for i in range(3)]
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        s.commit_batch([from_source(ads[0], "history")])
        s.commit_batch([from_source(dict(ads[1], JobStatus=1, CompletionDate=0), "queue")])
        s.outbox_ack(i.seq for i in s.outbox_take(10))
        logs = [from_source(ad, "eventlog", updated_at=NOW + 60) for ad in ads]
        assert s.commit_batch(logs) == 2  # over the idle queue record, and a new job
        assert s.thinner_total == 1
        assert sorted(i.doc_id for i in s.outbox_take(10)) == sorted(r.doc_id for r in logs[1:])
        assert [d.doc["opos"]["source"] for d in s.job(ads[0]["GlobalJobId"])] == ["history"]


def test_eventlog_then_history_replaces_the_eventlog_record(tmp_path):
    ad = scenario_ad("exit_code", 4200012, end=NOW + 50)
    log = from_source(ad, "eventlog")
    history = from_source(ad, "history", updated_at=NOW + 300)
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        assert s.commit_batch([log]) == 1
        # a newer event-log version (more attributes from a later event) replaces it: the
        # stored source is read from the (compressed) stored document
        log = from_source(dict(ad, NumHolds=1), "eventlog", updated_at=NOW + 10)
        assert s.commit_batch([log]) == 1 and s.thinner_total == 0
        (first,) = s.outbox_take(10)
        assert first.doc == log.doc
        assert s.commit_batch([history]) == 1
        assert s.thinner_total == 0 and s.stale_total == 0
        (doc,) = s.job(ad["GlobalJobId"])
        assert doc.doc == orjson.loads(history.doc) and doc.doc["opos"]["source"] == "history"
        (item,) = s.outbox_take(10)  # re-enqueued: the richer document replaces the thin one in ES
        assert item.doc == history.doc and item.seq != first.seq and item.updated_at == NOW + 300
        # and the event log coming round again (a re-read) does not undo it
        assert s.commit_batch([log]) == 0 and s.thinner_total == 1
        assert s.job(ad["GlobalJobId"])[0].doc["opos"]["source"] == "history"


@pytest.mark.parametrize("queue_status", [1, 5])  # idle, held
def test_a_final_eventlog_record_replaces_a_queue_record(tmp_path, queue_status):
    ad = scenario_ad("memory_hold_removed", 4200013, end=NOW + 50)
    queued = dict(ad, JobStatus=queue_status, EnteredCurrentStatus=NOW - 600, CompletionDate=0)
    if queue_status == 1:
        queued.pop("RemoveReason", None)
    queue = from_source(queued, "queue")
    log = from_source(ad, "eventlog", updated_at=NOW + 60)
    assert queue.status in ("idle", "held") and log.status == "removed"
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        assert s.commit_batch([queue]) == 1
        s.outbox_ack(i.seq for i in s.outbox_take(10))
        assert s.commit_batch([log]) == 1
        assert s.thinner_total == 0 and s.stale_total == 0
        (doc,) = s.job(ad["GlobalJobId"])
        assert doc.status == "removed" and doc.doc["opos"]["source"] == "eventlog"
        (item,) = s.outbox_take(10)
        assert item.doc == log.doc
        # a late queue poll does not undo it; the history record replaces it
        assert s.commit_batch([queue]) == 0 and s.stale_total == 1
        assert s.commit_batch([from_source(ad, "history", updated_at=NOW + 300)]) == 1
        assert s.job(ad["GlobalJobId"])[0].doc["opos"]["source"] == "history"


@pytest.mark.parametrize("compress", [True, False])
def test_the_stored_source_is_read_from_any_codec_and_after_reopening(tmp_path, compress):
    """The source comes from the stored document: dictionary-compressed (codec 2), raw, and
    in a store opened anew (another process, a restart)."""
    path = tmp_path / "s.sqlite"
    ad = scenario_ad("proxy_expired", 4200015, end=NOW)
    with Store.open(path, max_bytes=BIG, compress=compress) as s:
        s.commit_batch(mixed_records(20))  # the first batch makes the dictionary
        s.commit_batch([from_source(ad, "history")])
    ((codec,),) = rows(path, "SELECT codec FROM records WHERE global_job_id = ?", (ad["GlobalJobId"],))
    assert codec == (2 if compress else 0)
    with Store.open(path, max_bytes=BIG, compress=compress) as s:
        assert s.commit_batch([from_source(ad, "eventlog", updated_at=NOW + 60)]) == 0
        assert s.thinner_total == 1
        assert s.job(ad["GlobalJobId"])[0].doc["opos"]["source"] == "history"


def test_stored_documents_without_a_source_count_as_job_ads(tmp_path):
    """A document without ``opos.source`` (not made by stored_from) is kept like a schedd's."""
    ad = scenario_ad("success", 4200014, end=NOW)
    log = from_source(ad, "eventlog")
    legacy = dataclasses.replace(simple(log.doc_id), global_job_id=ad["GlobalJobId"], end_time=NOW)
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        s.commit_batch([legacy])
        assert s.commit_batch([log]) == 0 and s.thinner_total == 1
        assert s.job(log.doc_id)[0].doc == orjson.loads(legacy.doc)


def test_job_lookup_by_gjid_cluster_proc_and_doc_id(tmp_path):
    ad = scenario_ad("proxy_expired", 4300007, proc=3, schedd="jobsub02.fnal.gov", end=NOW)
    other = scenario_ad("success", 4300007, proc=3, schedd="jobsub04.fnal.gov", end=NOW)
    job = record_for(ad, schedd="jobsub02.fnal.gov")
    rec = JobRecord.from_ad(ad, pool="fermigrid", schedd="jobsub02.fnal.gov", source="epochs")
    attempts = [stored_from(rec, None, "Nebraska", attempt=a, updated_at=NOW + a) for a in (1, 2)]
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        s.commit_batch([job, *attempts, record_for(other, schedd="jobsub04.fnal.gov")])
        got = s.job(ad["GlobalJobId"])
        assert [(d.kind, d.doc_id) for d in got] == [("job", job.doc_id), ("attempt", attempts[0].doc_id),
                                                     ("attempt", attempts[1].doc_id)]
        assert got[0].category == "certificate" and got[0].doc["LastHoldReason"] == ad["LastHoldReason"]
        assert len(s.job("4300007.3")) == 4  # both schedds
        assert [d.schedd for d in s.job("4300007.3", schedd="jobsub02")] == ["jobsub02.fnal.gov"] * 3
        assert [d.doc_id for d in s.job(job.doc_id)] == [job.doc_id]
        assert s.job("4300008") == []
        with pytest.raises(ValueError):
            s.job("not a job")


# ---------------------------------------------------------------------------
# crash safety with real process kills


def _start_writer(path: Path, mode: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), str(path), mode, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=HERE)


def _verify_consistent(path: Path, n: int) -> int:
    """The stored checkpoint, after checking every batch up to it is whole and nothing after it exists."""
    sys.path.insert(0, str(HERE))
    try:
        import crash_writer as cw
    finally:
        sys.path.remove(str(HERE))
    with Store.open(path, max_bytes=BIG) as s:
        cp = s.checkpoint(*cw.CP)
        last = int(cp) if cp is not None else -1
        ids = {d for (d,) in rows(path, "SELECT doc_id FROM records")}
        expected = {f"b{i:06d}-{j:04d}" for i in range(last + 1) for j in range(n)}
        expected |= {"latest"} if last >= 0 else set()
        assert ids == expected, f"checkpoint {last}: {len(ids ^ expected)} records differ"
        zdict = [bytes(v) for (v,) in rows(path, "SELECT value FROM meta WHERE key = 'zdict'")]
        for d, codec, blob in rows(path, "SELECT doc_id, codec, doc FROM records"):
            i, j = (last, -1) if d == "latest" else (int(d[1:7]), int(d[8:]))
            assert decode_doc(codec, blob, *zdict) == cw.doc(i, j), d
        assert s.pending_count() == len(expected) == s.counts()["outbox"]
        assert rows(path, "PRAGMA integrity_check") == [("ok",)]
        return last


def test_sigkill_at_random_moments_keeps_checkpoint_and_records_together(tmp_path):
    path = tmp_path / "store.sqlite"
    rng = random.Random(int(os.environ.get("OPOS_TEST_SEED", "0")) or None)
    n = 40
    last_seen = -1
    for round_ in range(8):
        proc = _start_writer(path, "loop", n)
        first = proc.stdout.readline()
        assert first.startswith("committed"), first + proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        printed = [int(line.split()[1]) for line in [first, *out.splitlines()] if line.startswith("committed")]
        stored = _verify_consistent(path, n)
        # every commit that returned is durable; at most one more (killed between commit and print)
        assert printed[-1] <= stored <= printed[-1] + 1, (round_, printed[-1], stored)
        assert stored > last_seen
        last_seen = stored
    assert last_seen >= 8


def test_sigkill_during_long_transaction_loses_the_whole_batch_only(tmp_path):
    path = tmp_path / "store.sqlite"
    wal = Path(str(path) + "-wal")
    proc = _start_writer(path, "long", 40_000)
    assert proc.stdout.readline().strip() == "base"
    assert proc.stdout.readline().strip() == "long-start"
    start = wal.stat().st_size
    deadline = time.monotonic() + 120
    while wal.stat().st_size < start + 16 * 2**20:  # the transaction is spilling pages into the WAL
        assert proc.poll() is None and time.monotonic() < deadline, "writer ended before the WAL grew"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert "long-done" not in out
    grown = wal.stat().st_size
    assert grown >= start + 16 * 2**20
    with Store.open(path, max_bytes=BIG) as s:
        assert s.checkpoint("crashpool", "jobsub01", "history") == "0"
        assert s.counts()["records"] == 11 and s.pending_count() == 11
        assert rows(path, "SELECT COUNT(*) FROM records WHERE doc_id LIKE 'b000001-%'") == [(0,)]
        # and the store keeps working
        s.commit_batch([simple("after")], Checkpoint("crashpool", "jobsub01", "history", "1"))
    assert _verify_consistent_tail(path)


def _verify_consistent_tail(path: Path) -> bool:
    with Store.open(path, max_bytes=BIG) as s:
        return s.checkpoint("crashpool", "jobsub01", "history") == "1" and s.counts()["records"] == 12


# ---------------------------------------------------------------------------
# size: StoreFull back-pressure and pruning


def test_store_full_is_back_pressure_not_loss(tmp_path):
    recs = mixed_records(2400, seed=5)
    max_bytes = 1_500_000
    with Store.open(tmp_path / "s.sqlite", max_bytes=max_bytes) as s:
        batches = [recs[i:i + 50] for i in range(0, len(recs), 50)]
        committed = 0
        for k, b in enumerate(batches):
            try:
                s.commit_batch(b, Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", str(k)))
            except StoreFull as exc:
                full_at = k
                assert str(s.path) in str(exc) and "\n" not in str(exc)
                break
            committed += len(b)
            assert not s.full
        else:
            pytest.fail("the outbox never filled the store")
        assert s.full and s.full_total == 1
        assert s.checkpoint("fermigrid", "jobsub01.fnal.gov", "history") == str(full_at - 1)
        assert s.pending_count() == committed == s.counts()["records"]  # nothing pending was pruned
        assert not {r.doc_id for r in batches[full_at]} & {d for (d,) in rows(s.path, "SELECT doc_id FROM records")}
        assert s.used_bytes() <= max_bytes
        with pytest.raises(StoreFull):  # still full: the retry is refused the same way
            s.commit_batch(batches[full_at], Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", str(full_at)))
        assert s.checkpoint("fermigrid", "jobsub01.fnal.gov", "history") == str(full_at - 1)
        # the shipper catches up
        taken = s.outbox_take(10_000)
        assert len(taken) == committed
        s.outbox_ack(i.seq for i in taken)
        assert s.pending_count() == 0
        assert s.commit_batch(batches[full_at], Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", str(full_at)))
        assert not s.full
        assert s.checkpoint("fermigrid", "jobsub01.fnal.gov", "history") == str(full_at)
        assert s.pending_count() == len(batches[full_at])
        # from now on the shipper keeps up (one batch behind): old history is pruned, nothing refused
        for k in range(full_at + 1, len(batches)):
            s.outbox_ack(i.seq for i in s.outbox_take(10_000))
            s.commit_batch(batches[k], Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", str(k)))
            ids = {d for (d,) in rows(s.path, "SELECT doc_id FROM records")}
            assert {r.doc_id for r in batches[k]} <= ids
        assert s.pruned_total > 0 and not s.full
        assert s.used_bytes() <= max_bytes and s.size_bytes() <= max_bytes + 200_000


def test_pruning_order_successes_first_oldest_first_never_pending(tmp_path):
    max_bytes = 1_200_000
    with Store.open(tmp_path / "s.sqlite", max_bytes=max_bytes) as s:
        # 20 very old successes still pending in the outbox (ES is behind on them)
        pending = [simple(f"pending{i}", category="none", end=1000.0 + i, size=2000) for i in range(20)]
        s.commit_batch(pending)
        pending_seqs = {i.doc_id: i.seq for i in s.outbox_take(100)}
        # shipped history: failures (old) and successes (newer), then more successes over the limit
        fails = [simple(f"fail{i}", category="memory", end=2000.0 + i, size=2000) for i in range(100)]
        oks = [simple(f"ok{i}", category="none", end=3000.0 + i, size=2000) for i in range(2000)]
        done: list[StoredRecord] = []
        for b in [fails] + [oks[i:i + 50] for i in range(0, len(oks), 50)]:
            s.commit_batch(b)
            done += b
            s.outbox_ack(i.seq for i in s.outbox_take(1000) if i.doc_id not in pending_seqs)
            if s.pruned_total:
                break
        assert s.pruned_total > 0
        ids = {d for (d,) in rows(s.path, "SELECT doc_id FROM records")}
        assert {r.doc_id for r in pending} <= ids  # pending never dropped, though the oldest
        assert {r.doc_id for r in fails} <= ids  # failures kept while successes can go
        gone = [r for r in done if r.doc_id not in ids]
        kept_ok = [r for r in done if r.doc_id in ids and r.doc_id.startswith("ok")]
        assert gone and all(r.doc_id.startswith("ok") for r in gone)
        assert max(r.end_time for r in gone) < min(r.end_time for r in kept_ok)  # oldest first
        assert s.used_bytes() <= max_bytes * 0.95
        # keep going: once successes run out, the oldest failures go, pending still stays
        for k in range(100):
            s.commit_batch([simple(f"late{k}-{i}", category="site", end=9000.0 + k, size=2000) for i in range(50)])
            s.outbox_ack(x.seq for x in s.outbox_take(1000) if x.doc_id not in pending_seqs)
            ids = {d for (d,) in rows(s.path, "SELECT doc_id FROM records")}
            if not {r.doc_id for r in fails} <= ids:
                break
        else:
            pytest.fail("old failures were never pruned")
        assert {r.doc_id for r in pending} <= ids
        assert not any(d.startswith("ok") for d in ids)
        old_fails_left = sorted(int(d[4:]) for d in ids if d.startswith("fail"))
        assert old_fails_left == list(range(100 - len(old_fails_left), 100))  # the oldest went first
        assert all(f"late{k}-{i}" in ids for i in range(50))  # the newest batch is whole
        assert s.pending_count() == 20


def test_pruning_without_outbox_drops_nothing_needed(tmp_path):
    """With no ES configured nothing is pinned; the history just stays under the limit."""
    with Store.open(tmp_path / "s.sqlite", max_bytes=1_000_000, outbox_enabled=False) as s:
        for k in range(30):
            s.commit_batch([simple(f"r{k}-{i}", end=float(k * 100 + i), size=2000) for i in range(50)],
                           Checkpoint("p", "s", "history", str(k)))
        assert s.pending_count() == 0 and s.pruned_total > 0 and not s.full
        assert s.used_bytes() <= 1_000_000
        assert s.checkpoint("p", "s", "history") == "29"
        assert rows(s.path, "SELECT COUNT(*) FROM records WHERE doc_id LIKE 'r29-%'") == [(50,)]


def test_disk_full_is_store_full_and_rolls_back(tmp_path):
    """SQLITE_FULL (here from max_page_count, the same error a full disk gives) is back-pressure too."""
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        s.commit_batch([simple("first")], Checkpoint("p", "s", "history", "1"))
        pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
        s._conn.execute(f"PRAGMA max_page_count = {pages + 5}")
        with pytest.raises(StoreFull) as ei:
            s.commit_batch([simple(f"r{i}", size=4000) for i in range(200)], Checkpoint("p", "s", "history", "2"))
        assert "disk full" in str(ei.value) and s.full
        assert s.checkpoint("p", "s", "history") == "1"
        assert s.counts()["records"] == 1 and s.pending_count() == 1
        s._conn.execute("PRAGMA max_page_count = 1073741823")
        assert s.commit_batch([simple("r0")], Checkpoint("p", "s", "history", "2")) == 1
        assert not s.full and s.checkpoint("p", "s", "history") == "2"


def test_closed_store_says_so(tmp_path):
    s = Store.open(tmp_path / "s.sqlite", max_bytes=BIG)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.commit_batch([simple("a")])
    with pytest.raises(StoreError, match="closed"):
        s.pending_count()


def test_lowering_max_bytes_shrinks_the_file(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store.open(path, max_bytes=BIG, outbox_enabled=False) as s:
        s.commit_batch([simple(f"r{i}", end=float(i), size=3000) for i in range(2000)])
        before = s.size_bytes()
    assert before > 4_000_000
    with Store.open(path, max_bytes=2_000_000, outbox_enabled=False) as s:
        s.commit_batch([simple("new", end=1e9)])
        assert s.size_bytes() <= 2_000_000
    assert path.stat().st_size <= 2_000_000


# ---------------------------------------------------------------------------
# outbox semantics


def test_ack_of_an_older_version_keeps_the_newer_one(tmp_path):
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        s.commit_batch([simple("a", 1), simple("b", 1)])
        taken = s.outbox_take(10)
        assert [i.doc_id for i in taken] == ["a", "b"]
        s.commit_batch([simple("a", 2)])  # a newer version arrives while "a" v1 is in flight
        assert s.outbox_ack(i.seq for i in taken) == 1  # only b's row went
        assert s.pending_count() == 1
        (item,) = s.outbox_take(10)
        assert item.doc_id == "a" and orjson.loads(item.doc)["v"] == 2 and item.seq > taken[0].seq
        assert s.outbox_ack([item.seq]) == 1 and s.pending_count() == 0
        assert s.outbox_ack([item.seq]) == 0  # acking twice is harmless


def test_retry_backs_off_exponentially(tmp_path):
    clock = Clock()
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG, clock=clock, retry_base_s=5, retry_max_s=60) as s:
        s.commit_batch([simple("a"), simple("b")])
        a, b = s.outbox_take(10)
        assert s.outbox_retry([a.seq], "429 Too Many Requests") == 1
        assert [i.doc_id for i in s.outbox_take(10)] == ["b"]
        clock.t += 4.9
        assert [i.doc_id for i in s.outbox_take(10)] == ["b"]
        clock.t += 0.2
        (a2, _) = s.outbox_take(10)
        assert a2.doc_id == "a" and a2.attempts == 1 and a2.last_error == "429 Too Many Requests"
        s.outbox_retry([a.seq], "503")
        clock.t += 9.9
        assert [i.doc_id for i in s.outbox_take(10)] == ["b"]
        clock.t += 0.2
        assert [i.doc_id for i in s.outbox_take(10)] == ["a", "b"]
        for _ in range(10):
            s.outbox_retry([a.seq], "503")
        clock.t += 60.1
        (a3, _) = s.outbox_take(10)
        assert a3.attempts == 12  # capped at retry_max_s, never dropped
        # a new version resets the attempts
        s.commit_batch([simple("a", 5)])
        assert [(i.doc_id, i.attempts) for i in s.outbox_take(10)] == [("b", 0), ("a", 0)]


def test_dead_letters_keep_reason_and_doc_and_can_be_requeued(tmp_path):
    reason = "mapper_parsing_exception: failed to parse field [MemoryUsage] of type [long] " + "x" * 3000
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        recs = [simple(f"d{i}", end=float(i)) for i in range(5)]
        s.commit_batch(recs)
        taken = s.outbox_take(10)
        assert s.outbox_dead(taken[1].seq, reason) is True
        assert s.outbox_dead(taken[1].seq, reason) is False  # already moved
        assert s.dead_count() == 1 and s.pending_count() == 4
        (dl,) = s.dead_letters()
        assert dl.doc_id == "d1" and dl.reason == reason and dl.doc == recs[1].doc and dl.attempts == 1
        s.outbox_ack(i.seq for i in taken)
        assert s.pending_count() == 0 and s.dead_count() == 1  # acking the others leaves the dead letter
        # the dead record stays in the history
        assert rows(s.path, "SELECT COUNT(*) FROM records WHERE doc_id = 'd1'") == [(1,)]
        assert s.requeue_dead() == 1
        assert s.dead_count() == 0 and s.pending_count() == 1
        (again,) = s.outbox_take(10)
        assert again.doc_id == "d1" and again.attempts == 0 and again.doc == recs[1].doc


def test_dead_letter_of_a_superseded_version_is_not_recorded(tmp_path):
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        s.commit_batch([simple("a", 1)])
        (old,) = s.outbox_take(1)
        s.commit_batch([simple("a", 2)])
        assert s.outbox_dead(old.seq, "rejected") is False
        assert s.dead_count() == 0 and s.pending_count() == 1
        # a dead letter becomes obsolete when a newer version is delivered
        (cur,) = s.outbox_take(1)
        assert s.outbox_dead(cur.seq, "rejected v2") is True
        s.commit_batch([simple("a", 3)])
        (v3,) = s.outbox_take(1)
        assert s.dead_count() == 1
        s.outbox_ack([v3.seq])
        assert s.dead_count() == 0 and s.dead_letters() == []


def test_requeue_dead_by_id_and_requeue_range(tmp_path):
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        s.commit_batch([simple(f"r{i}", end=1000.0 + i) for i in range(100)])
        s.commit_batch([simple(f"att{i}", end=1000.0 + i, kind="attempt") for i in range(10)])
        taken = s.outbox_take(1000)
        dead = {i.doc_id: i.seq for i in taken if i.doc_id in ("r3", "r4")}
        for seq in dead.values():
            s.outbox_dead(seq, "rejected")
        s.outbox_ack(i.seq for i in taken)
        assert s.requeue_dead(["r4", "nope"]) == 1
        assert [i.doc_id for i in s.outbox_take(10)] == ["r4"]
        assert [d.doc_id for d in s.dead_letters()] == ["r3"]
        s.outbox_ack(i.seq for i in s.outbox_take(10))
        assert s.requeue_range(1005.0, 1010.0) == 10
        assert sorted(i.doc_id for i in s.outbox_take(100)) == sorted(
            [f"r{i}" for i in range(5, 10)] + [f"att{i}" for i in range(5, 10)])
        assert s.requeue_range(None, None, kinds=("attempt",)) == 10
        assert s.pending_count() == 15


def test_outbox_disabled_enqueues_nothing(tmp_path):
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG, outbox_enabled=False) as s:
        assert s.commit_batch([simple("a"), simple("b")]) == 2
        assert s.pending_count() == 0 and s.outbox_take(10) == []
        assert s.counts()["records"] == 2


class OutboxMachine(RuleBasedStateMachine):
    """Random commits/takes/acks/retries/dead-letters against a model of what must ship."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.s = Store.open(Path(self.dir.name) / "s.sqlite", max_bytes=BIG, clock=self.clock, retry_base_s=1)
        self.latest: dict[str, int] = {}  # doc_id -> latest committed version
        self.delivered: dict[str, int] = {}  # doc_id -> version the "ES" holds
        self.dead: set[str] = set()
        self.taken: list = []

    def teardown(self) -> None:
        self.s.close()
        self.dir.cleanup()

    @rule(ids=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4))
    def commit(self, ids):
        recs = []
        for d in ids:
            self.latest[d] = self.latest.get(d, 0) + 1
            recs.append(simple(d, self.latest[d], size=20))
        self.s.commit_batch(recs)
        self.dead -= set(ids)  # a new version goes back to the outbox

    @rule(n=st.integers(1, 6))
    def take(self, n):
        self.taken = self.s.outbox_take(n)

    @precondition(lambda self: self.taken)
    @rule()
    def ack(self):
        for i in self.taken:
            self.delivered[i.doc_id] = orjson.loads(i.doc)["v"]
        self.s.outbox_ack(i.seq for i in self.taken)
        self.taken = []

    @precondition(lambda self: self.taken)
    @rule()
    def retry(self):
        self.s.outbox_retry((i.seq for i in self.taken), "503")
        self.clock.t += 10_000
        self.taken = []

    @precondition(lambda self: self.taken)
    @rule()
    def reject_first(self):
        i = self.taken.pop(0)
        if self.s.outbox_dead(i.seq, "mapping") and orjson.loads(i.doc)["v"] == self.latest[i.doc_id]:
            self.dead.add(i.doc_id)

    @rule()
    def requeue(self):
        self.s.requeue_dead()
        self.dead.clear()

    @invariant()
    def counters_are_exact(self):
        c = self.s.counts()
        assert self.s.pending_count() == c["outbox"] and self.s.dead_count() == c["dead_letters"]

    @invariant()
    def nothing_lost(self):
        # every document is delivered at its latest version, pending, or dead
        pending = {d for (d,) in rows(self.s.path, "SELECT doc_id FROM outbox")}
        for d, v in self.latest.items():
            assert self.delivered.get(d) == v or d in pending or d in self.dead, (d, v)


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# errors at start-up


def _one_line(exc: StoreError, path: Path, *words: str) -> None:
    text = str(exc)
    assert "\n" not in text and str(path) in text, text
    for w in words:
        assert w in text, text


def test_parent_is_a_regular_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "state" / "store.sqlite"
    with pytest.raises(StoreError) as ei:
        Store.open(path, max_bytes=BIG)
    _one_line(ei.value, path, "not a directory")


def test_path_is_a_directory(tmp_path):
    with pytest.raises(StoreError) as ei:
        Store.open(tmp_path, max_bytes=BIG)
    _one_line(ei.value, tmp_path, "is a directory")


_UNWRITABLE = """
import sys
from opos_monitor.sinks.store import Store, StoreError
try:
    Store.open(sys.argv[1], max_bytes=1 << 30)
except StoreError as e:
    print("STOREERROR", e)
else:
    print("OPENED")
"""


def _run_without_dac_override(*args: str) -> str:
    """Run the probe as this user; as root, without the capabilities that bypass file permissions."""
    cmd = [sys.executable, "-c", _UNWRITABLE, *args]
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search,-fowner"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def test_unwritable_directory_and_file(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    try:
        ro.chmod(0o555)
        out = _run_without_dac_override(str(ro / "store.sqlite"))
        assert out.startswith("STOREERROR") and str(ro) in out and "not writable" in out, out
        out = _run_without_dac_override(str(ro / "sub" / "store.sqlite"))
        assert out.startswith("STOREERROR") and "cannot create directory" in out, out
    finally:
        ro.chmod(0o755)
    # an existing store file the daemon may not write
    path = tmp_path / "rw" / "store.sqlite"
    Store.open(path, max_bytes=BIG).close()
    path.chmod(0o444)
    out = _run_without_dac_override(str(path))
    assert out.startswith("STOREERROR") and "not readable and writable" in out, out
    path.chmod(0o644)
    assert _run_without_dac_override(str(path)).startswith("OPENED")  # the probe really can open a good one


def test_garbage_file_is_not_a_database(tmp_path):
    path = tmp_path / "store.sqlite"
    path.write_bytes(random.Random(1).randbytes(8192))
    with pytest.raises(StoreError) as ei:
        Store.open(path, max_bytes=BIG)
    _one_line(ei.value, path, "not a SQLite database", "move the file aside")
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_corrupt_pages_fail_the_check(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store.open(path, max_bytes=BIG) as s:
        s.commit_batch([simple(f"r{i}", size=600) for i in range(2000)])
    data = bytearray(path.read_bytes())
    page = 4096
    data[10 * page:10 * page + 200] = b"\xff" * 200  # a b-tree page in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as ei:
        Store.open(path, max_bytes=BIG)
    _one_line(ei.value, path)
    assert "corrupt" in str(ei.value) or "integrity check" in str(ei.value)


def test_newer_schema_version(tmp_path):
    path = tmp_path / "store.sqlite"
    Store.open(path, max_bytes=BIG).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as ei:
        Store.open(path, max_bytes=BIG)
    _one_line(ei.value, path, f"schema version {SCHEMA_VERSION + 1} is newer")


def test_foreign_sqlite_database(tmp_path):
    path = tmp_path / "store.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE moz_places (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as ei:
        Store.open(path, max_bytes=BIG)
    _one_line(ei.value, path, "not an opos-monitor store")


def test_open_sets_wal_full_and_schema(tmp_path):
    path = tmp_path / "store.sqlite"
    Store.open(path, max_bytes=BIG).close()
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert rows(path, "PRAGMA auto_vacuum") == [(2,)]
    s = Store.open(path, max_bytes=BIG)
    assert s._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    s.close()
    s = Store.open(path, max_bytes=BIG, synchronous="NORMAL")
    assert s._conn.execute("PRAGMA synchronous").fetchone() == (1,)
    s.close()


# ---------------------------------------------------------------------------
# history queries


SITES = ["FermiGrid", "Nebraska", "Wisconsin", "MIT"]
SCHEDDS = ["jobsub01.fnal.gov", "jobsub02.fnal.gov"]
OWNERS = ["novapro", "dunepro", "uboonepro"]
SCEN = ["success", "success", "exit_code", "memory_hold_removed", "memory_policy_removed", "site_docker",
        "transfer_output", "proxy_expired", "token_auth", "transfer_input", "signal_segv"]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    rng = random.Random(11)
    recs = []
    for k in range(400):
        schedd = rng.choice(SCHEDDS)
        ad = scenario_ad(rng.choice(SCEN), 4_500_000 + k, schedd=schedd, site=rng.choice(SITES),
                         owner=rng.choice(OWNERS), end=NOW + rng.randint(0, 86400))
        recs.append(record_for(ad, schedd=schedd))
    path = tmp_path_factory.mktemp("hist") / "store.sqlite"
    s = Store.open(path, max_bytes=BIG)
    for i in range(0, len(recs), 100):
        s.commit_batch(recs[i:i + 100])
    yield s, recs
    s.close()


def _model(recs, since=None, site=None, category=None, schedd=None, owner=None, signature=None):
    out = []
    for r in recs:
        if r.category in (None, "none"):
            continue
        t = r.end_time if r.end_time is not None else r.updated_at
        if since is not None and t < since:
            continue
        if site and (r.site or "").lower() != site.lower():
            continue
        if category and r.category != category:
            continue
        if schedd and r.schedd.lower() != schedd.lower() and not r.schedd.lower().startswith(schedd.lower() + "."):
            continue
        if owner and (r.owner or "").lower() != owner.lower():
            continue
        if signature and not ((r.signature_hash or "").startswith(signature)
                              or signature.lower() in (r.signature or "").lower()):
            continue
        out.append(r)
    return sorted(out, key=lambda r: (-(r.end_time or r.updated_at), r.doc_id))


@pytest.mark.parametrize("filters", [
    {},
    {"since": NOW + 43200},
    {"site": "nebraska"},
    {"category": "memory"},
    {"category": "certificate", "site": "MIT"},
    {"schedd": "jobsub02"},
    {"schedd": "jobsub01.fnal.gov", "owner": "dunepro"},
    {"signature": "cgroup memory limit"},
    {"since": NOW + 20000, "category": "site", "schedd": "jobsub01"},
])
def test_failures_filters_match_a_model(history, filters):
    s, recs = history
    want = _model(recs, **filters)
    assert want, "the fixture should have rows for every filter"
    got = s.failures(**filters, limit=1000)
    assert [r.doc_id for r in got] == [r.doc_id for r in want]
    assert all(r.category != "none" for r in got)
    assert [r.doc_id for r in s.failures(**filters, limit=3)] == [r.doc_id for r in want[:3]]


def test_failures_by_signature_hash(history):
    s, recs = history
    counts = Counter(r.signature_hash for r in recs if r.signature_hash and r.category != "none")
    sig, n = counts.most_common(1)[0]
    got = s.failures(signature=sig, limit=1000)
    assert len(got) == n and {r.signature_hash for r in got} == {sig}
    assert len(s.failures(signature=sig[:6], limit=1000)) >= n


@pytest.mark.parametrize("filters", [{}, {"category": "memory"}, {"site": "FermiGrid"}, {"since": NOW + 43200}])
def test_top_signatures_match_a_model(history, filters):
    s, recs = history
    rows_ = _model(recs, **filters)
    groups: dict[str, list[StoredRecord]] = {}
    for r in rows_:
        groups.setdefault(r.signature_hash or f"rule:{r.rule}", []).append(r)
    top = s.top_signatures(**filters, limit=100)
    assert sum(t.count for t in top) == len(rows_)
    assert {(t.signature_hash or f"rule:{t.rule}"): t.count for t in top} == {k: len(v) for k, v in groups.items()}
    assert [t.count for t in top] == sorted((t.count for t in top), reverse=True)
    for t in top:
        g = groups[t.signature_hash or f"rule:{t.rule}"]
        newest = max(g, key=lambda r: r.end_time)
        assert t.last_seen == newest.end_time
        assert t.explanation == newest.explanation and t.category == newest.category
    assert len(s.top_signatures(**filters, limit=2)) == min(2, len(groups))


def test_history_queries_use_the_indexes(history):
    s, _ = history

    def plan(sql: str, params: tuple) -> str:
        return " ".join(r[-1] for r in s._conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    assert "records_site_time" in plan(
        "SELECT doc_id FROM records WHERE category <> 'none' AND event_time >= ? AND site = ?", (0, "MIT"))
    assert "records_category_time" in plan(
        "SELECT doc_id FROM records WHERE category <> 'none' AND category = ? ORDER BY event_time DESC", ("memory",))
    assert "records_failed_time" in plan(
        "SELECT doc_id FROM records WHERE category <> 'none' AND event_time >= ? ORDER BY event_time DESC", (0,))
    assert "records_signature" in plan("SELECT doc_id FROM records WHERE signature_hash = ?", ("x",))
    assert "records_gjid" in plan("SELECT doc_id FROM records WHERE global_job_id = ?", ("x",))


# ---------------------------------------------------------------------------
# threads


def test_sources_and_shipper_threads_share_one_store(tmp_path):
    with Store.open(tmp_path / "s.sqlite", max_bytes=BIG) as s:
        shipped: dict[str, bytes] = {}
        stop = threading.Event()
        errors: list[BaseException] = []

        def source(name: str) -> None:
            try:
                for k in range(40):
                    s.commit_batch([simple(f"{name}-{k}-{i}", size=300) for i in range(25)],
                                   Checkpoint("p", name, "history", str(k)))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def shipper() -> None:
            while not stop.is_set() or s.pending_count():
                items = s.outbox_take(100)
                for i in items:
                    shipped[i.doc_id] = i.doc
                s.outbox_ack(i.seq for i in items)

        threads = [threading.Thread(target=source, args=(f"jobsub0{n}",)) for n in range(4)]
        ship = threading.Thread(target=shipper)
        ship.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        ship.join(timeout=60)
        assert not errors
        assert len(shipped) == 4 * 40 * 25 and s.pending_count() == 0
        assert {s.checkpoint("p", f"jobsub0{n}", "history") for n in range(4)} == {"39"}


# ---------------------------------------------------------------------------
# document encoding


def test_documents_compress_with_a_preset_dictionary_readable_by_other_processes(tmp_path):
    path = tmp_path / "s.sqlite"
    recs = mixed_records(400, seed=9)
    reader = Store.open(path, max_bytes=BIG)  # opened before the dictionary exists
    with Store.open(path, max_bytes=BIG) as writer:
        writer.commit_batch(recs[:200])
        writer.commit_batch(recs[200:])
    codecs = dict(rows(path, "SELECT codec, COUNT(*) FROM records GROUP BY codec"))
    assert codecs == {1: 200, 2: 200}  # the first batch plain zlib, then zlib with the dictionary
    (zdict,) = rows(path, "SELECT length(value) FROM meta WHERE key = 'zdict'")
    assert zdict[0] == 8192
    raw = sum(len(r.doc) for r in recs[200:])
    (stored,) = rows(path, "SELECT SUM(length(doc)) FROM records WHERE codec = 2")
    assert raw / stored[0] > 4, raw / stored[0]
    for r in recs[::25]:
        (got,) = reader.job(r.global_job_id)
        assert got.doc == orjson.loads(r.doc)
    assert {i.doc_id: i.doc for i in reader.outbox_take(1000)} == {r.doc_id: r.doc for r in recs}
    reader.close()
    with Store.open(path, max_bytes=BIG, compress=False) as plain:  # an uncompressed writer still reads all
        plain.commit_batch([simple("raw1")])
        assert rows(path, "SELECT codec FROM records WHERE doc_id = 'raw1'") == [(0,)]
        assert len(plain.outbox_take(1000)) == 401


def test_sites_lists_the_stored_sites_most_records_first(tmp_path):
    with Store.open(tmp_path / "s.sqlite", max_bytes=256 * 1024**2) as store:
        assert store.sites() == []
        recs = [record_for(scenario_ad("success", 100 + i, site="MWT2", end=NOW - 10)) for i in range(3)]
        recs += [record_for(scenario_ad("success", 200, site="Clemson", end=NOW - 40 * 86400))]
        store.commit_batch(recs)
        assert store.sites() == ["MWT2", "Clemson"]
        assert store.sites(since=NOW - 86400) == ["MWT2"]  # only recent records
        assert store.sites(limit=1) == ["MWT2"]
