"""Event-log source: parsing real HTCondor event text, job state, and tailing real files through
rotation, truncation, damage and restarts, with the checkpoint handed off like the pipeline does.

Fixtures in tests/data/eventlogs/ are real HTCondor 23.9.6 output from the dev pool (see the
README there); every fixture is also read with HTCondor's own reader (htcondor2.JobEventLog)
and must give the same events and values.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opos_monitor.enrich.classify import classify
from opos_monitor.sources.eventlog import (
    Checkpoint,
    EventLogSource,
    EventReader,
    JobTable,
    Position,
    live_paths,
    parse_event,
    parse_header,
    read_log,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "eventlogs"
FIXTURES = sorted(p for p in DATA.iterdir() if p.suffix != ".md")
SCHEDD = "jobsub01@vm"


# --------------------------------------------------------------------------- helpers


class MemoryHandoff:
    """The Handoff contract in memory: checkpoints advance only when commit returns."""

    def __init__(self) -> None:
        self.checkpoints: dict = {}
        self.commits: list = []  # (key, records, checkpoint)
        self.fail = 0  # fail this many next commits

    def checkpoint(self, key):
        return self.checkpoints.get(key)

    def commit(self, key, records, checkpoint):
        if self.fail:
            self.fail -= 1
            raise OSError("store unavailable")
        self.commits.append((key, list(records), checkpoint))
        self.checkpoints[key] = checkpoint

    def latest(self) -> dict:
        """Last record per job id, as a store that upserts by id keeps them."""
        out = {}
        for _, records, _ in self.commits:
            for r in records:
                out[r.global_job_id] = r
        return out


class EventsHandoff(MemoryHandoff):
    def __init__(self) -> None:
        super().__init__()
        self.events: dict = {}

    def commit_with_events(self, key, records, events, checkpoint):
        assert len(records) == len(events)
        self.commit(key, records, checkpoint)
        for r, ev in zip(records, events):
            self.events[r.global_job_id] = ev


def split_events(text: str) -> list[str]:
    """A log's events, each with its '...' line."""
    parts = text.split("...\n")
    assert parts[-1] == ""
    return [p + "...\n" for p in parts[:-1]]


def reader_events(path, **kw):
    errors = []
    with open(path, "rb") as f:
        r = EventReader(f, Position(), str(path), report=errors.append, **kw)
        out = [(ev, pos) for ev, pos in r]
    return out, r, errors


def events_in(path, **kw):
    return [ev for ev, _ in reader_events(path, final=True, **kw)[0] if ev is not None]


def final_records(path, schedd=SCHEDD):
    return {r.global_job_id: (r, ev) for r, ev in read_log(path, schedd=schedd)}


def comparable(record):
    attrs = dict(record.attrs)
    return record.global_job_id, record.status, attrs


def source(handoff, path, **kw):
    kw.setdefault("schedd", SCHEDD)
    kw.setdefault("settle_s", 10**9)
    return EventLogSource(handoff, [str(path)], **kw)


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


# --------------------------------------------------------------------------- the reader vs HTCondor's


def _local_mdhms(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%m-%d %H:%M:%S")


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_every_fixture_reads_like_htcondors_own_reader(path):
    htcondor2 = pytest.importorskip("htcondor2")
    mine = events_in(path)
    theirs = list(htcondor2.JobEventLog(str(path)).events(0))
    assert len(mine) == len(theirs) > 0
    for a, b in zip(mine, theirs):
        d = dict(b.items())
        assert (a.number, a.cluster, a.proc) == (int(b.type), b.cluster, b.proc)
        # legacy MM/DD dates carry no year (HTCondor assumes the current one): compare the rest
        assert _local_mdhms(a.time) == _local_mdhms(b.timestamp)
        f = a.fields
        expect = {
            0: [("host", "SubmitHost")],
            1: [("host", "ExecuteHost"), ("slot", "SlotName")],
            4: [("reason", "Reason"), ("code", "ReasonCode")],
            5: [("exit_code", "ReturnValue"), ("signal", "TerminatedBySignal"), ("core_file", "CoreFile")],
            6: [("memory_mb", "MemoryUsage"), ("rss_kb", "ResidentSetSize"), ("image_kb", "Size"),
                ("pss_kb", "ProportionalSetSize")],
            7: [("reason", "Message")],
            9: [("reason", "Reason")],
            12: [("reason", "HoldReason"), ("code", "HoldReasonCode"), ("subcode", "HoldReasonSubCode")],
            13: [("reason", "Reason")],
            21: [("reason", "ErrorMsg"), ("code", "HoldReasonCode"), ("slot", "ExecuteHost"), ("daemon", "Daemon")],
            22: [("reason", "DisconnectReason"), ("slot", "StartdName"), ("host", "StartdAddr")],
            23: [("slot", "StartdName"), ("host", "StartdAddr"), ("starter", "StarterAddr")],
            24: [("reason", "Reason"), ("slot", "StartdName")],
        }.get(a.number, [])
        for mine_key, their_key in expect:
            assert (f.get(mine_key) or None) == (d.get(their_key) or None), (path.name, a.line, mine_key)
        if a.number == 5 and "usage" in f:
            for attr in ("MemoryUsage", "RequestMemory", "DiskUsage", "RequestDisk", "CpusUsage", "RequestCpus"):
                assert f["usage"].get(attr) == d.get(attr), (path.name, a.line, attr)
        if a.number == 28:
            for k, v in f["ad"].items():
                if not hasattr(d.get(k), "eval"):
                    assert d.get(k) == v, (path.name, a.line, k)


# --------------------------------------------------------------------------- headers and bodies


def test_header_formats_and_times():
    iso = parse_header("001 (100.000.000) 2026-11-22 08:00:05.500Z Job executing on host: <a>")
    assert (iso.number, iso.cluster, iso.proc, iso.subproc) == (1, 100, 0, 0)
    assert iso.time == datetime(2026, 11, 22, 8, 0, 5, 500000, tzinfo=timezone.utc).timestamp()
    assert iso.text == "Job executing on host: <a>"
    utc = parse_header("012 (7.0.0) 2026-11-22 08:00:05 Job was held.", tz=timezone.utc)
    assert utc.time == datetime(2026, 11, 22, 8, 0, 5, tzinfo=timezone.utc).timestamp()
    # the legacy date has no year: the reference time's, or the year before when that would
    # put the event in the future (a log read on 2 January with December events)
    ref = datetime(2027, 1, 2, 12, 0, tzinfo=timezone.utc).timestamp()
    dec = parse_header("005 (1.0.0) 12/31 23:00:00 Job terminated.", tz=timezone.utc, ref=ref)
    assert dec.time == datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc).timestamp()
    jan = parse_header("005 (1.0.0) 01/02 11:00:00 Job terminated.", tz=timezone.utc, ref=ref)
    assert jan.time == datetime(2027, 1, 2, 11, 0, tzinfo=timezone.utc).timestamp()
    hdr = parse_header("008 (-01.-01.-01) 11/22 06:47:06 Global JobLog: ctime=1 id=abc sequence=1   ", ref=ref)
    assert (hdr.cluster, hdr.proc) == (-1, -1)
    for bad in ("01 (1.0.0) 2026-11-22 08:00:05 x", "000 (1.0) 2026-11-22 08:00:05 x", "000 (1.0.0) 13/45 08:00:05 x",
                "Job was held.", "", "000 (1.0.0) yesterday"):
        assert parse_header(bad) is None, bad


def _one(path, number, nth=0, cluster=None):
    evs = [e for e in events_in(DATA / path) if e.number == number and (cluster is None or e.cluster == cluster)]
    return evs[nth]


def test_submit_and_execute_events():
    sub = _one("handmade_formats.log", 0)
    assert sub.type == "submitted" and sub.fields["host"].startswith("<192.168.1.10:9618?") and sub.fields["notes"] == ["DAG Node: reco_step1"]
    ex = _one("segfault.log", 1)
    assert ex.type == "executed"
    assert ex.fields["slot"] == "slot1_2@vm" and "sock=wisc" in ex.fields["host"]
    assert ex.fields["props"] == {"CondorScratchDir": "/var/lib/condor/execute/dir_58748", "Cpus": 1, "Disk": 103425,
                                  "GPUs": 0, "Memory": 128}


def test_terminated_events():
    normal = _one("exit_nonzero_two_schedds.log", 5)
    assert normal.fields["exit_code"] == 65 and "signal" not in normal.fields
    assert normal.fields["usage"] == {"CpusUsage": 0, "RequestCpus": 1, "CpusProvisioned": 1, "DiskUsage": 15,
                                      "RequestDisk": 102400, "DiskProvisioned": 103424, "GPUsProvisioned": 0,
                                      "MemoryUsage": 4, "RequestMemory": 128, "MemoryProvisioned": 128,
                                      "TimeExecuteUsage": 1, "TimeSlotBusyUsage": 2}
    assert normal.fields["run_bytes_sent"] == 77.0 and normal.fields["total_bytes_received"] == 178.0
    assert "reason" not in normal.fields and normal.fields["toe"].startswith("Job terminated of its own accord")
    seg = _one("segfault.log", 5)
    assert seg.fields["signal"] == 11 and "exit_code" not in seg.fields and "core_file" not in seg.fields
    core = _one("handmade_formats.log", 5, cluster=100)
    assert core.fields["signal"] == 6 and core.fields["core_file"] == "/var/lib/condor/execute/dir_2/core.4242"
    assert core.fields["total_remote_user_s"] == 86400 + 3600 + 2 * 60 + 13 and core.fields["total_remote_sys_s"] == 5
    assert core.fields["usage"]["CpusUsage"] == 0.99


def test_evicted_events_in_the_23_and_25_styles():
    old = _one("reconnect_failures_removed.log", 4)
    assert old.type == "evicted" and old.fields["reason"] == "Job not found at execution machine"
    assert "code" not in old.fields and old.fields["usage"]["RequestMemory"] == 128
    assert "MemoryUsage" not in old.fields["usage"]  # an empty Usage column
    new = _one("handmade_formats.log", 4, cluster=100)
    assert (new.fields["code"], new.fields["subcode"]) == (1005, 0)
    assert new.fields["reason"] == "The startd is draining this slot"
    assert new.fields["usage"] == {"CpusUsage": 0.95, "RequestCpus": 1, "CpusProvisioned": 1, "DiskUsage": 2048,
                                   "RequestDisk": 1000000, "DiskProvisioned": 1048576, "MemoryUsage": 1800,
                                   "RequestMemory": 2000, "MemoryProvisioned": 2048}
    requeued = _one("handmade_formats.log", 4, cluster=102)
    assert requeued.fields["requeued"] is True and requeued.fields["exit_code"] == 85
    assert requeued.fields["reason"] == "The OnExitRemove expression 'ExitCode =!= 85' evaluated to FALSE"


def test_hold_release_abort_events():
    held = _one("memory_over.log", 12)
    assert held.fields == {"reason": "Job memory usage 409 MB exceeded request_memory 128 MB", "code": 26, "subcode": 102}
    unspecified = _one("handmade_formats.log", 12)
    assert unspecified.fields == {"reason": "", "code": 0, "subcode": 0}
    released = _one("released.log", 13)
    assert released.fields["reason"] == "via condor_release (by user submitter)"
    aborted = _one("missing_output_removed.log", 9)
    assert aborted.fields["reason"] == "via condor_rm (by user submitter)"
    assert aborted.fields["toe"].startswith("Job terminated by itself")
    policy = _one("walltime.log", 9)
    assert policy.fields["reason"] == "Job exceeded its expected max lifetime of 8 seconds"


def test_remote_error_disconnect_reconnect_shadow_exception_events():
    err = _one("site_cvmfs.log", 21)
    assert err.fields == {"critical": True, "daemon": "starter", "slot": "slot1_2@unl@vm", "code": 21, "subcode": 40,
                          "reason": "CVMFS repository /cvmfs/fermilab.opensciencegrid.org is not available on this worker node"}
    disc = _one("reconnect_failures_removed.log", 22)
    assert disc.type == "job_disconnected" and disc.fields["reason"] == "Socket between submit and execute hosts closed unexpectedly"
    assert disc.fields["slot"] == "slot1_1@unl@vm"
    failed = _one("reconnect_failures_removed.log", 24)
    assert failed.type == "job_reconnect_failed"
    assert failed.fields == {"reason": "Job not found at execution machine", "slot": "slot1_1@unl@vm"}
    rec = _one("handmade_formats.log", 23)
    assert rec.type == "job_reconnected" and rec.fields["slot"] == "slot1_4@fnpc1234.fnal.gov"
    exc = _one("handmade_formats.log", 7)
    assert exc.type == "shadow_exception" and exc.fields["reason"].startswith("Error from slot1_3@fnpc1234.fnal.gov: Failed to open")
    assert exc.fields["run_bytes_received"] == 1200.0
    exe = _one("handmade_formats.log", 2)
    assert exe.type == "executable_error" and exe.fields["reason"] == "(1) Job file not executable."
    img = _one("handmade_formats.log", 6)
    assert img.fields == {"image_kb": 2500000, "memory_mb": 1800, "rss_kb": 1843200, "pss_kb": 1700000}


def test_global_log_header_and_job_ad_information_events():
    evs = events_in(DATA / "global_EventLog")
    header = evs[0]
    assert header.number == 8 and header.cluster == -1
    assert header.fields["log_id"] == "0.40259.1795330026.229092.1.1795330026.229605" and header.fields["sequence"] == 1
    info = next(e for e in evs if e.number == 28 and e.fields.get("trigger") == 12)
    assert info.type == "job_ad_information"
    ad = info.fields["ad"]
    assert ad["HoldReasonCode"] == 13 and ad["RequestMemory"] == 128
    # attributes that describe the triggering event are not job attributes
    assert not {"MyType", "EventTime", "TriggerEventTypeName", "Cluster", "Proc"} & set(ad)


def test_event_dicts_are_what_the_classifier_takes():
    d = _one("site_cvmfs.log", 12).to_dict()
    assert d["type"] == "held" and d["code"] == 21 and d["subcode"] == 40 and "CVMFS" in d["reason"]
    assert isinstance(d["time"], float) and d["cluster"] == 31
    assert _one("segfault.log", 0).to_dict()["reason"] == ""


def test_parse_event_never_raises_on_odd_bodies():
    for lines in (["012 (1.0.0) 2026-11-22 08:00:05 Job was held."],
                  ["005 (1.0.0) 2026-11-22 08:00:05 Job terminated.", "\t(x) garbage", "\tPartitionable Resources : a"],
                  ["004 (1.0.0) 2026-11-22 08:00:05 Job was evicted. Code x", "\t\t\t"],
                  ["028 (1.0.0) 2026-11-22 08:00:05 Job ad information event triggered.", "Foo = [", "= 3"],
                  ["999 (1.0.0) 2026-11-22 08:00:05 Something from the future"]):
        ev = parse_event(lines)
        assert ev is not None and ev.number == int(lines[0][:3])
    assert parse_event(["not a header"]) is None and parse_event([]) is None
    assert parse_event(["999 (1.0.0) 2026-11-22 08:00:05 x"]).type == "event_999"


# --------------------------------------------------------------------------- job state


RECORDS = {
    # fixture: [(status, attrs that must be there)]
    "segfault.log": [("completed", {"ExitBySignal": True, "ExitSignal": 11, "JobCoreDumped": False, "QDate": 1795330806,
                                    "CompletionDate": 1795330810, "NumJobStarts": 1, "LastRemoteHost": "slot1_2@vm",
                                    "MemoryUsage": 10, "RequestMemory": 128})],
    "memory_over.log": [("held", {"HoldReasonCode": 26, "HoldReasonSubCode": 102, "NumHolds": 1, "MemoryUsage": 409,
                                  "ResidentSetSize": 418484,
                                  "HoldReason": "Job memory usage 409 MB exceeded request_memory 128 MB"})],
    "walltime.log": [("removed", {"RemoveReason": "Job exceeded its expected max lifetime of 8 seconds", "LastJobStatus": 2})],
    # removed while held: the hold becomes the last hold, as in the schedd's ad
    "missing_output_removed.log": [("removed", {"LastHoldReasonCode": 12, "LastHoldReasonSubCode": 2, "LastJobStatus": 5,
                                                "HoldReasonCode": None,
                                                "RemoveReason": "via condor_rm (by user submitter)"})],
    "released.log": [("removed", {"ReleaseReason": "via condor_release (by user submitter)",
                                  "RemoveReason": "via condor_rm -forcex (by user submitter)"})],
    "user_hold.log": [("held", {"HoldReasonCode": 1, "HoldReasonSubCode": 0, "HoldReason": "via condor_hold (by user submitter)",
                                "LastVacateTime": 1795330481, "CpusProvisioned": 1})],
    "exit_nonzero_two_schedds.log": [("completed", {"ExitCode": 65, "ExitBySignal": False, "QDate": 1795330026}),
                                     ("completed", {"ExitCode": 65, "ExitBySignal": False, "QDate": 1795330808})],
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_records_from_real_logs(name):
    got = read_log(DATA / name, schedd=SCHEDD, pool="fermigrid")
    want = RECORDS[name]
    assert len(got) == len(want)
    for (record, events), (status, attrs) in zip(got, want):
        assert record.status == status and record.source == "eventlog" and record.pool == "fermigrid"
        assert {k: record.attrs.get(k) for k in attrs} == attrs
        assert events and events[0]["type"] == "submitted"
        assert record.global_job_id == f"{SCHEDD}#{record.cluster_id}.{record.proc_id}#{record.attrs['QDate']}"


def test_record_from_every_kind_of_event():
    recs = {r.cluster_id: (r, ev) for r, ev in read_log(DATA / "handmade_formats.log", schedd="jobsub03.fnal.gov")}
    r, ev = recs[100]
    assert r.status == "completed" and r.exit_by_signal and r.exit_signal == 6 and r.job_core_dumped
    assert r.attrs["NumJobStarts"] == 3 and r.attrs["NumShadowExceptions"] == 1
    assert (r.attrs["VacateReasonCode"], r.attrs["VacateReason"]) == (1005, "The startd is draining this slot")
    assert r.remote_user_cpu_s == 90133.0 and r.remote_sys_cpu_s == 5.0
    assert r.memory_usage_mb == 1900 and r.request_memory_mb == 2000 and r.attrs["MemoryProvisioned"] == 2048
    assert r.attrs["JobStartDate"] < r.attrs["JobCurrentStartDate"]
    assert r.last_remote_host == "slot1_1@fnpc1234.fnal.gov" and r.execute_host == "fnpc1234.fnal.gov"
    assert r.q_date == datetime(2026, 11, 22, 8, 0, 0, tzinfo=timezone.utc)
    assert [e["type"] for e in ev] == ["submitted", "executed", "shadow_exception", "executed", "job_disconnected",
                                       "job_reconnected", "suspended", "unsuspended", "evicted", "executed", "terminated"]
    r, ev = recs[101]
    assert r.status == "removed" and r.attrs["LastHoldReasonCode"] == 0 and "HoldReasonCode" not in r.attrs
    assert r.remove_reason.startswith("The job attribute PeriodicRemove")
    assert r.release_reason == "via condor_release (by user novapro)"
    r, ev = recs[102]
    assert (r.proc_id, r.status, r.exit_code, r.exit_by_signal) == (3, "completed", 0, False)


def test_schedd_falls_back_to_the_submit_hosts_alias():
    (r, _), = read_log(DATA / "segfault.log")
    assert r.schedd == "vm" and r.global_job_id == "vm#19.0#1795330806" and r.synthetic_id
    recs = read_log(DATA / "handmade_formats.log")
    assert {r.schedd for r, _ in recs} == {"jobsub03.fnal.gov"}


def test_reused_ids_and_a_second_schedds_jobs_are_separate_records():
    recs = read_log(DATA / "exit_nonzero_two_schedds.log", schedd=SCHEDD)
    assert [r.attrs["QDate"] for r, _ in recs] == [1795330026, 1795330808]
    # the global log also carries events of another schedd's jobs 4.0, 5.0, 7.0 after the first
    # ones left the queue (no submit event): they must not reopen the finished jobs
    glob_recs = read_log(DATA / "global_EventLog", schedd=SCHEDD)
    first = {r.cluster_id: r for r, _ in glob_recs if r.attrs.get("QDate")}
    assert first[4].status == "completed" and first[4].exit_signal == 11
    assert first[5].status == "completed" and first[5].exit_code == 127
    assert first[7].status == "removed" and first[7].last_hold_reason_code == 12
    orphans = [r for r, _ in glob_recs if "QDate" not in r.attrs]
    assert sorted(r.cluster_id for r in orphans) == [4, 5, 7]
    assert all(r.global_job_id.endswith("#?") for r in orphans)


def test_a_held_job_never_runs_again_without_a_release(tmp_path):
    """An execute event for a held job (no release between) is another job with the same id:
    on the dev pool, a second schedd's shadows write to the first schedd's global log."""
    held = (DATA / "memory_over.log").read_text()
    other = "".join(e.replace("(019.000.000)", "(029.000.000)") for e in split_events((DATA / "segfault.log").read_text())
                    if not e.startswith("000"))
    path = tmp_path / "g.log"
    path.write_text(held + other)
    recs = read_log(path, schedd=SCHEDD)
    assert [(r.status, r.hold_reason_code, "QDate" in r.attrs) for r, _ in recs] == [("held", 26, True), ("completed", None, False)]


def test_job_ad_information_events_fill_the_ad():
    recs = {r.cluster_id: r for r, _ in read_log(DATA / "global_EventLog", schedd=SCHEDD) if "QDate" in r.attrs}
    assert recs[8].attrs["RequestMemory"] == 128 and recs[8].memory_usage_mb == 416
    assert recs[8].last_hold_reason_code == 26 and recs[8].status == "removed"
    assert "EventTime" not in recs[8].attrs and "SubmitHost" not in recs[8].attrs


@pytest.mark.parametrize("name,category", [
    ("segfault.log", "code"), ("memory_over.log", "memory"), ("site_cvmfs.log", "site"),
    ("missing_input_removed.log", "transfer"), ("missing_executable.log", "code"), ("user_hold.log", "user"),
    ("walltime.log", "policy"), ("proxy_expired.log", "certificate"),
    # removed by its owner after reconnect failures: the events carry the root cause
    ("reconnect_failures_removed.log", "site"),
])
def test_classifying_records_with_their_events(name, category):
    (record, events), = read_log(DATA / name, schedd=SCHEDD)
    assert classify(record.attrs, events).category == category


def test_table_is_bounded_and_reread_events_count_once():
    table = JobTable(max_jobs=2)
    evs = events_in(DATA / "global_EventLog")
    for ev in evs:
        table.apply(ev)
    assert len(table) == 2 and table.dropped > 0
    t2 = JobTable()
    held = [e for e in events_in(DATA / "memory_over.log")]
    for ev in held + held:  # the same events twice (a truncated file read again)
        t2.apply(ev)
    st = t2.get(29, 0)
    assert st.ad["NumHolds"] == 1 and len(st.events) == len([e for e in held if e.number in (0, 1, 12)])


# --------------------------------------------------------------------------- tailing


def test_tailing_event_by_event_with_partial_writes(tmp_path):
    src_text = (DATA / "reconnect_failures_removed.log").read_text() + (DATA / "released.log").read_text()
    path = tmp_path / "job.log"
    path.write_text("")
    h = MemoryHandoff()
    s = source(h, path)
    for ev in split_events(src_text):
        cut = len(ev) // 2
        append(path, ev[:cut])  # the writer is mid-event (mid-line, even)
        res, = s.poll()
        assert res.ok and res.error is None
        append(path, ev[cut:])
        res, = s.poll()
        assert res.ok
    want = final_records(path)
    got = h.latest()
    assert {k: comparable(r) for k, r in got.items()} == {k: comparable(r) for k, (r, _) in want.items()}
    ck = Checkpoint.loads(h.checkpoints[s.streams[str(path)].key])
    assert ck.pos.offset == path.stat().st_size and ck.pos.line == src_text.count("\n") + 1
    assert ck.replay_file is None  # every job in the log is finished: nothing to replay
    # every commit's checkpoint advances
    offsets = [Checkpoint.loads(c).pos.offset for _, _, c in h.commits]
    assert offsets == sorted(offsets)


def test_incomplete_last_event_waits_and_is_reported_once(tmp_path):
    events = split_events((DATA / "memory_over.log").read_text())
    path = tmp_path / "m.log"
    path.write_text("".join(events[:-1]) + events[-1][:-4])  # the hold event without its '...'
    errors = []
    h = MemoryHandoff()
    s = source(h, path, errors=errors.append)
    s.poll()
    s.poll()
    assert h.latest()[f"{SCHEDD}#29.0#1795331046"].status == "running"
    assert len([e for e in errors if "incomplete" in e.message]) == 1
    line = (DATA / "memory_over.log").read_text().count("\n") - 4 + 1  # the hold event is 4 lines
    assert errors[0].name == str(path) and errors[0].line == line
    append(path, "...\n")
    s.poll()
    assert h.latest()[f"{SCHEDD}#29.0#1795331046"].status == "held"


def test_writer_gone_mid_event_is_read_as_far_as_it_goes(tmp_path):
    events = split_events((DATA / "memory_over.log").read_text())
    path = tmp_path / "m.log"
    path.write_text("".join(events[:-1]) + events[-1][:-4])
    old = time.time() - 3600
    os.utime(path, (old, old))
    errors = []
    h = MemoryHandoff()
    EventLogSource(h, [str(path)], schedd=SCHEDD, settle_s=600, errors=errors.append).poll()
    r = h.latest()[f"{SCHEDD}#29.0#1795331046"]
    assert r.status == "held" and r.hold_reason_code == 26
    assert any("truncated" in e.message for e in errors)


def test_event_cut_short_by_the_next_event_and_garbage_lines(tmp_path):
    events = split_events((DATA / "missing_output_removed.log").read_text())
    held = next(i for i, e in enumerate(events) if e.startswith("012"))
    # the writer died inside the hold event (no Code line, no '...'); later a new writer goes on
    damaged = events[:held] + [events[held].split("\tCode")[0]] + events[held + 1:]
    garbage = "\x00\x00\x00binary junk\n  stray text\n"
    text = "".join(damaged[:3]) + garbage + "".join(damaged[3:])
    path = tmp_path / "d.log"
    path.write_text(text)
    errors = []
    h = MemoryHandoff()
    res, = source(h, path, errors=errors.append).poll()
    assert res.ok
    garbage_line = "".join(damaged[:3]).count("\n") + 1
    assert [(e.line, e.message) for e in errors if "skipped" in e.message] == [(garbage_line, "2 lines that are not events; skipped")]
    cut_line = (text[:text.index("012 (007")]).count("\n") + 1
    assert [e.line for e in errors if "cut short" in e.message] == [cut_line]
    r, = h.latest().values()
    assert r.status == "removed" and r.last_hold_reason.startswith("Transfer output files failure")
    assert r.last_hold_reason_code == 0  # the Code line was lost with the writer; everything else is there


def _global_parts(n_first: int):
    events = split_events((DATA / "global_EventLog").read_text())
    header, body = events[0], events[1:]
    assert 0 < n_first < len(body) - 20
    return header, body[:n_first], body[n_first:]


def test_rotation_reads_the_rotated_files_rest_then_the_new_file(tmp_path):
    header, first, rest = _global_parts(150)
    live = tmp_path / "EventLog"
    live.write_text(header + "".join(first[:100]))
    h = MemoryHandoff()
    s = source(h, live)
    s.poll()
    # HTCondor writes more, then rotates: EventLog -> EventLog.old, a new EventLog with a header
    append(live, "".join(first[100:]))
    os.rename(live, tmp_path / "EventLog.old")
    live.write_text(header.replace("sequence=1", "sequence=2") + "".join(rest))
    res, = s.poll()
    assert res.ok and res.gap is None
    whole = tmp_path / "whole"
    whole.write_text(header + "".join(first) + "".join(rest))
    assert {k: comparable(r) for k, r in h.latest().items()} == {k: comparable(r) for k, (r, _) in final_records(whole).items()}
    ck = Checkpoint.loads(h.checkpoints[s.streams[str(live)].key])
    assert ck.file.ino == live.stat().st_ino and ck.pos.offset == live.stat().st_size


def test_two_rotations_between_polls_with_numbered_files(tmp_path):
    header, first, rest = _global_parts(100)
    mid, last = rest[:80], rest[80:]
    live = tmp_path / "EventLog"
    live.write_text(header + "".join(first[:60]))
    h = MemoryHandoff()
    s = source(h, live)
    s.poll()
    append(live, "".join(first[60:]))
    os.rename(live, tmp_path / "EventLog.1")  # EVENT_LOG_MAX_ROTATIONS > 1
    live.write_text(header + "".join(mid))
    time.sleep(0.01)
    os.rename(tmp_path / "EventLog.1", tmp_path / "EventLog.2")
    os.rename(live, tmp_path / "EventLog.1")
    live.write_text(header + "".join(last))
    now = time.time()
    os.utime(tmp_path / "EventLog.2", (now - 20, now - 20))
    os.utime(tmp_path / "EventLog.1", (now - 10, now - 10))
    res, = s.poll()
    assert res.ok and res.gap is None
    whole = tmp_path / "whole"
    whole.write_text(header + "".join(first) + "".join(mid) + "".join(last))
    assert {k: comparable(r) for k, r in h.latest().items()} == {k: comparable(r) for k, (r, _) in final_records(whole).items()}
    # a glob that matches the rotated files too still gives one stream: the live file
    assert [Path(p).name for p in live_paths([str(tmp_path / "EventLog*")])] == ["EventLog"]


def test_rotated_file_gone_is_reported_as_a_gap(tmp_path):
    header, first, rest = _global_parts(100)
    live = tmp_path / "EventLog"
    live.write_text(header + "".join(first[:60]))
    h = MemoryHandoff()
    s = source(h, live)
    s.poll()
    append(live, "".join(first[60:]))
    (tmp_path / "new").write_text(header + "".join(rest))
    os.remove(live)  # rotated and already gone
    os.rename(tmp_path / "new", live)
    res, = s.poll()
    assert res.ok and res.gap and res.gap.startswith("rotated")
    # the new file was read whole
    ck = Checkpoint.loads(h.checkpoints[res.key])
    assert ck.pos.offset == live.stat().st_size


def test_truncated_file_is_read_again_without_counting_twice(tmp_path):
    events = split_events((DATA / "missing_output_removed.log").read_text())
    path = tmp_path / "t.log"
    path.write_text("".join(events[:-1]))  # up to the hold
    h = MemoryHandoff()
    s = source(h, path)
    s.poll()
    with open(path, "r+") as f:  # cut shorter than what was read
        f.truncate(len("".join(events[:4])))
    res, = s.poll()
    assert res.ok and res.gap and res.gap.startswith("truncated")
    append(path, "".join(events[4:]))
    res, = s.poll()
    assert res.ok and res.gap is None
    r, = h.latest().values()
    assert r.status == "removed" and r.attrs["NumHolds"] == 1 and r.attrs["NumJobStarts"] == 1


def test_rewritten_in_place_is_detected(tmp_path):
    a = (DATA / "segfault.log").read_text()
    b = (DATA / "walltime.log").read_text()
    path = tmp_path / "r.log"
    path.write_text(a)
    h = MemoryHandoff()
    s = source(h, path)
    s.poll()
    with open(path, "r+") as f:  # copytruncate-style: same inode, new content longer than the old offset
        f.seek(0)
        f.truncate()
        f.write(b + b + b)
    res, = s.poll()
    assert res.gap and "rewritten" in res.gap
    assert {r.cluster_id for r in h.latest().values()} == {19, 9}


def test_restart_resumes_without_loss_or_duplicates(tmp_path):
    """A new process (new source, same store) goes on from the checkpoint; jobs that were
    open keep their identity (QDate from the submit event read before the restart)."""
    header, first, rest = _global_parts(120)
    live = tmp_path / "EventLog"
    live.write_text(header + "".join(first))
    h = MemoryHandoff()
    source(h, live).poll()
    before = len(h.commits)
    ck = Checkpoint.loads(h.commits[-1][2])
    assert ck.replay_file is not None and ck.replay_pos.offset < ck.pos.offset  # open jobs to rebuild
    append(live, "".join(rest))
    res, = source(h, live).poll()  # the restarted daemon
    assert res.ok and res.gap is None
    whole = final_records(live)
    assert {k: comparable(r) for k, r in h.latest().items()} == {k: comparable(r) for k, (r, _) in whole.items()}
    # nothing re-read: the commits after the restart only carry jobs that new events touched
    touched_after = {r.global_job_id for _, recs, _ in h.commits[before:] for r in recs}
    new_ids = {(e.cluster, e.proc) for e in events_in(live) if e.offset >= ck.pos.offset and e.number in (0, 1, 4, 5, 9, 12, 13, 21, 22, 24)}
    assert {(r.cluster_id, r.proc_id) for _, recs, _ in h.commits[before:] for r in recs} == new_ids
    # jobs open across the restart were updated under the id they had before it
    across = touched_after & {r.global_job_id for _, recs, _ in h.commits[:before] for r in recs}
    assert across and not any(g.endswith("#?") for g in across)


def test_failed_commit_keeps_the_checkpoint_and_redelivers(tmp_path):
    events = split_events((DATA / "memory_over.log").read_text())
    path = tmp_path / "f.log"
    path.write_text("".join(events[:3]))
    h = MemoryHandoff()
    s = source(h, path)
    s.poll()
    good = dict(h.checkpoints)
    append(path, "".join(events[3:]))
    h.fail = 1
    res, = s.poll()
    assert not res.ok and "store unavailable" in res.error and h.checkpoints == good
    res, = s.poll()
    assert res.ok
    r, = h.latest().values()
    assert r.status == "held" and r.attrs["NumHolds"] == 1 and r.attrs["NumJobStarts"] == 1
    assert r.attrs["QDate"] == 1795331046  # the state was rebuilt from the committed checkpoint


def test_small_batches_keep_ad_information_with_its_event(tmp_path):
    header, first, _ = _global_parts(120)
    live = tmp_path / "EventLog"
    live.write_text(header + "".join(first))
    h = MemoryHandoff()
    res, = source(h, live, batch_events=1).poll()
    assert res.ok and len(h.commits) > 40
    for _, _, ck in h.commits:  # no batch ends between an event and its ad-information event
        off = Checkpoint.loads(ck).pos.offset
        assert not live.read_bytes()[off:].startswith(b"028 ")
    assert {k: comparable(r) for k, r in h.latest().items()} == {k: comparable(r) for k, (r, _) in final_records(live).items()}


def test_handoff_with_events_gets_each_records_events(tmp_path):
    path = tmp_path / "s.log"
    shutil.copy(DATA / "site_cvmfs.log", path)
    h = EventsHandoff()
    source(h, path).poll()
    (gid, evs), = h.events.items()
    assert [e["type"] for e in evs] == ["submitted", "executed", "remote_error", "evicted", "held"]
    assert classify(h.latest()[gid].attrs, evs).category == "site"


def test_unsupported_formats_and_missing_files_do_not_crash(tmp_path):
    xml = tmp_path / "x.log"
    xml.write_text('<?xml version="1.0"?>\n<c>\n<a n="MyType"><s>SubmitEvent</s></a>\n</c>\n')
    errors = []
    h = MemoryHandoff()
    s = EventLogSource(h, [str(xml), str(tmp_path / "missing.log"), str(tmp_path / "none-*.log")], errors=errors.append)
    res, missing = s.poll()
    assert res.ok and res.records == 0 and "XML and JSON" in errors[0].message
    assert not missing.ok and missing.error.startswith("no such file") and missing.key.schedd.endswith("missing.log")


def test_unchanged_files_are_not_read_again(tmp_path):
    path = tmp_path / "u.log"
    shutil.copy(DATA / "segfault.log", path)
    h = MemoryHandoff()
    s = source(h, path)
    s.poll()
    n = len(h.commits)
    res, = s.poll()
    assert res.ok and len(h.commits) == n and res.records == 0


def test_checkpoint_round_trip_and_bad_checkpoints():
    ck = Checkpoint.loads(json.dumps({"v": 1, "dev": 1, "inode": 2, "head": "ab", "head_len": 10, "offset": 99, "line": 7,
                                      "replay": {"dev": 1, "inode": 3, "head": "cd", "head_len": 4096, "offset": 5, "line": 2}}))
    assert ck.pos == Position(99, 7) and ck.replay_file.ino == 3 and ck.replay_pos == Position(5, 2)
    assert Checkpoint.loads(ck.dumps()) == ck
    for bad in ("", None, "{", '{"v": 2}', '{"v": 1}', "[]"):
        assert Checkpoint.loads(bad) is None


# --------------------------------------------------------------------------- property: any split, any restart

_PROPERTY_TEXT = (DATA / "global_EventLog").read_text()[:30000].rpartition("...\n")[0] + "...\n" + \
    (DATA / "handmade_formats.log").read_text()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_PROPERTY_TEXT.encode())), max_size=8),
       restarts=st.lists(st.booleans(), min_size=9, max_size=9),
       batch=st.integers(min_value=1, max_value=50))
def test_any_split_of_writes_and_any_restarts_give_the_whole_files_records(tmp_path_factory, cuts, restarts, batch):
    """However the writer's output is cut across polls (mid-line, mid-event) and whenever the
    daemon restarts, the records handed off end up as read_log gives them for the whole file."""
    data = _PROPERTY_TEXT.encode()
    d = tmp_path_factory.mktemp("prop")
    path = d / "EventLog"
    path.write_bytes(b"")
    h = MemoryHandoff()
    s = source(h, path, batch_events=batch)
    done = 0
    for cut, restart in zip(sorted(cuts) + [len(data)], restarts):
        with open(path, "ab") as f:
            f.write(data[done:cut])
        done = max(done, cut)
        if restart:
            s = source(h, path, batch_events=batch)
        res, = s.poll()
        assert res.ok and res.gap is None
    assert {k: comparable(r) for k, r in h.latest().items()} == {k: comparable(r) for k, (r, _) in final_records(path).items()}
