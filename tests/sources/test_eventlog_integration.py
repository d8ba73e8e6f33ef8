"""Event logs of the real pool's catalogue jobs give the same outcomes as the schedd's history.

For every catalogue job (run for real by the ``catalogue_run`` fixture), the record built from
its user log (``logs/<name>.<cluster>.log``) must have the job's GlobalJobId, final status, exit
code/signal, hold code/subcode/reason and remove reason as the final ad the schedd reports;
classified with its events it must get the category the catalogue tags it with. The same for
the schedds' global event logs, tailed through EventLogSource while the catalogue (but its slow
proxy-expiry job) runs again: the shared pool's global logs rotate within minutes under other
tests' load, and the tail must follow those rotations without a gap.

What a log cannot carry, and is therefore not compared (docs/sources-eventlog.md): the memory
figures (a log has the last image-size update, the history ad the schedd's own figures),
attributes only the job ad has (Owner, x509UserProxyExpiration, MATCH_EXP_JOB_GLIDEIN_Site,
LastRemoteHost's startd name part).
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from opos_monitor.enrich.derive import Enricher
from opos_monitor.sources.base import SourceKey
from opos_monitor.sources.eventlog import Checkpoint, EventLogSource, EventLogSpec, Position, file_id, read_log

pytestmark = pytest.mark.integration

ROOT = Path("/var/cache/opos-monitor/trixie")
USER_LOGS = ROOT / "home/submitter/jobs/logs"
JOBS = Path(__file__).resolve().parents[2] / "deploy" / "dev-pool" / "jobs"
GLOBAL_LOGS = {
    "jobsub01": ROOT / "var/log/condor/EventLog",
    "jobsub02": ROOT / "var/log/condor/EventLog.jobsub02",
    "ospool-ap01": ROOT / "var/lib/condor-ospool/log/EventLog",
}
#: Counters are not compared. NumHolds: HTCondor 23.9.6 counts a SYSTEM_PERIODIC_HOLD twice in
#: the job ad (NumHolds = 2, NumHoldsByReason = [SystemPolicy = 2]) while writing one hold event -
#: seen on every memory_over and proxy_expired job of the pool. NumJobStarts: a schedd restart
#: while the job runs (other tests stop and start the shared pool's schedds) can lose the ad's
#: update - seen: NumJobStarts 0 in the ad of a job whose log has its execute event. The log's
#: counts are the events that happened (unit tests check them).
COMPARED = ("ExitCode", "ExitBySignal", "ExitSignal", "HoldReasonCode", "HoldReasonSubCode", "HoldReason",
            "LastHoldReasonCode", "LastHoldReasonSubCode", "LastHoldReason", "RemoveReason",
            "CompletionDate")
#: QDate is the submit event's time, which can be a second later than the job's QDate (the
#: schedd writes the event when the submit transaction commits): within QDATE_SLACK_S. The
#: synthesized GlobalJobId is then one second off too; a log whose job-ad-information events
#: carry GlobalJobId gives the exact one (test_job_ad_information_gives_the_exact_global_job_id).
QDATE_SLACK_S = 2
#: the same holds for CompletionDate (the terminate event's time; the schedd stamps the ad when
#: it learns of the exit, seen a second later)
TIME_ATTRS = ("CompletionDate",)


class Handoff:
    def __init__(self) -> None:
        self.checkpoints: dict = {}
        self.history: dict = {}  # key -> every committed checkpoint
        self.records: dict = {}
        self.events: dict = {}

    def checkpoint(self, key):
        return self.checkpoints.get(key)

    def commit(self, key, records, checkpoint):
        for r in records:
            self.records[r.global_job_id] = r
        self.checkpoints[key] = checkpoint
        self.history.setdefault(key, []).append(checkpoint)

    def commit_with_events(self, key, records, events, checkpoint):
        self.commit(key, records, checkpoint)
        for r, ev in zip(records, events):
            self.events[r.global_job_id] = ev


@pytest.fixture(scope="module")
def enricher():
    return Enricher.create(["default"], {"fnal.gov": "FermiGrid"})


def opos_name(entry) -> str:
    m = re.search(r"^opos_name\s*=\s*(\S+)", (JOBS / entry.submit).read_text(), re.M)
    assert m, entry.submit
    return m.group(1)


#: exit attributes come from a terminate event: compared for completed jobs only (the schedd
#: also records how a held or removed job's last run was killed, e.g. ExitSignal 15 after a
#: policy hold - no event says that)
EXIT_ATTRS = ("ExitCode", "ExitBySignal", "ExitSignal", "CompletionDate")


#: The dev pool runs jobsub02 as a second schedd on jobsub01's host: its shadows write their
#: events (execute, evict, terminate, image size) to the host's EVENT_LOG - jobsub01's - and only
#: the schedd's own events (submit, hold, release, abort) reach EventLog.jobsub02. So in that
#: global log, attributes that come from shadow events are not there.
SHADOW_ATTRS = ("ExitCode", "ExitBySignal", "ExitSignal", "CompletionDate")


def _compared(status: str, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    out = COMPARED if status == "completed" else tuple(k for k in COMPARED if k not in EXIT_ATTRS)
    return tuple(k for k in out if k not in skip)


def check(record, events, o, enricher, skip: tuple[str, ...] = ()) -> object:
    """None when the record tells the job's outcome as the schedd does; else what differs."""
    if record.status != o.status:
        return f"status {record.status} != {o.status}"
    names = _compared(o.status, skip)
    want = {k: o.ad.get(k) for k in names}
    have = {k: record.attrs.get(k) for k in names}
    for k in TIME_ATTRS:  # an event's time may be a second off the schedd's own time stamp
        if k in want and have[k] is not None and want[k] is not None and abs(have[k] - want[k]) <= QDATE_SLACK_S:
            have[k] = want[k]
    if have != want:
        return {k: (have[k], v) for k, v in want.items() if have[k] != v}
    category = enricher.derive(record.attrs, events)["category"]
    if category != o.entry.category:
        return f"category {category} != {o.entry.category}"
    return None


def _show(problems: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in problems.items())


def same_job(record, outcome) -> bool:
    """The record is of this run's job: its id, or (the id synthesized from the submit event's
    time) the same schedd, cluster.proc and a QDate within the slack."""
    if record.global_job_id == outcome.ad["GlobalJobId"]:
        return True
    q = record.attrs.get("QDate")
    return (record.synthetic_id and record.schedd == outcome.schedd_name and record.cluster_id == outcome.cluster
            and record.proc_id == outcome.ad["ProcId"] and q is not None
            and abs(q - outcome.ad["QDate"]) <= QDATE_SLACK_S)


def user_log_record(outcome, timeout=30.0):
    """The record of this run's job in its user log (waiting for the final event if the log
    lags the schedd), with its events."""
    path = USER_LOGS / f"{opos_name(outcome.entry)}.{outcome.cluster}.log"
    deadline = time.monotonic() + timeout
    while True:
        found = None
        if path.exists():
            for record, events in read_log(path, pool=outcome.entry.pool, schedd=outcome.schedd_name):
                if same_job(record, outcome):
                    found = record, events
        if (found and found[0].status == outcome.status) or time.monotonic() > deadline:
            return path, found
        time.sleep(1)


def test_user_logs_give_the_historys_outcomes(catalogue_run, enricher):
    problems = {}
    for name, o in sorted(catalogue_run.items()):
        path, found = user_log_record(o)
        if found is None:
            problems[name] = f"no record of {o.ad['GlobalJobId']} in {path}"
            continue
        record, events = found
        diff = check(record, events, o, enricher)
        if diff:
            problems[name] = diff
    assert not problems, _show(problems)


#: catalogue entries run again while the global logs are tailed (all but the slow proxy one)
TAILED = ("success", "exit_nonzero", "segfault", "missing_executable", "memory_over", "user_hold", "site_cvmfs",
          "credential_missing", "missing_input", "walltime", "site_held_then_removed", "ospool_success",
          "ospool_exit_nonzero")


def _seed_at_end(h: Handoff, key: SourceKey, path: Path) -> None:
    """Start tailing at the last complete event, as `tail -f` would (line numbers count from
    there): a busy global log is tens of MB."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        tail = os.pread(f.fileno(), min(st.st_size, 1 << 20), max(0, st.st_size - (1 << 20)))
        cut = tail.rfind(b"\n...\n")
        offset = st.st_size - len(tail) + cut + 5 if cut >= 0 else 0
        h.checkpoints[key] = Checkpoint(file_id(f, st), Position(offset, 1)).dumps()


@pytest.fixture(scope="module")
def tailed_run(devpool):
    """Catalogue jobs run while every schedd's global event log is tailed through the source,
    polled every half second as the daemon would - the shared pool's global logs rotate
    (EVENT_LOG_MAX_SIZE 50 MB) within minutes when other tests flood the schedds, so reading
    them afterwards is not enough. Returns (outcomes, handoff, gaps, rotations per log)."""
    cat, htcondor2 = devpool
    entries = [e for e in cat.load() if e.name in TAILED]
    h = Handoff()
    specs = []
    for short, pool in {(e.schedd, e.pool) for e in entries}:
        path = GLOBAL_LOGS[short]
        assert path.is_file(), path
        specs.append(EventLogSpec(str(path), pool=pool, schedd=cat.schedd_full_name(htcondor2, pool, short)))
        _seed_at_end(h, SourceKey(pool, str(path.resolve()), "eventlog"), path)
    src = EventLogSource(h, specs, batch_events=2000)
    stop = threading.Event()
    gaps: list = []
    errors: list = []

    def tail() -> None:
        while True:
            for r in src.poll():
                if not r.ok:
                    errors.append(r.error)
                if r.gap:
                    gaps.append((r.key.schedd, r.gap))
            if stop.wait(0.5):
                return

    thread = threading.Thread(target=tail, name="eventlog-tail", daemon=True)
    thread.start()
    try:
        # a generous overall timeout: other tests load the shared pool with thousands of jobs
        outcomes = cat.run(entries, timeout=900)
        time.sleep(3)  # the last events reach the logs
    except TimeoutError as exc:
        pytest.fail(f"the pool did not run the catalogue jobs: {exc}", pytrace=False)
    finally:
        stop.set()
        thread.join(timeout=120)
    for r in src.poll():
        if r.gap:
            gaps.append((r.key.schedd, r.gap))
    assert not errors, errors
    rotations = {key.schedd: len({Checkpoint.loads(c).file.ino for c in h.history[key]}) - 1 for key in h.history}
    return outcomes, h, gaps, rotations


def _collisions(catalogue_run) -> set[str]:
    """jobsub01 jobs whose id a jobsub02 job of the same run also has: jobsub02's shadows
    write that job's events into jobsub01's global log (SHADOW_ATTRS), mixing the two jobs'
    events under one id - a layout of the dev pool (two schedds, one host), not of a site."""
    ids02 = {o.cluster for o in catalogue_run.values() if o.schedd_name.startswith("jobsub02")}
    return {n for n, o in catalogue_run.items() if o.schedd_name.startswith("jobsub01") and o.cluster in ids02}


def test_global_event_logs_give_the_historys_outcomes(tailed_run, enricher):
    catalogue_run, h, gaps, rotations = tailed_run
    print("rotations followed while tailing:", rotations)
    assert not gaps, gaps  # a rotation during the run was followed, not lost
    problems = {}
    skipped = _collisions(catalogue_run)
    compared = [n for n in catalogue_run if n not in skipped]
    assert len([n for n in compared if catalogue_run[n].schedd_name.startswith("jobsub01")]) >= 3, skipped
    for name, o in sorted(catalogue_run.items()):
        if name in skipped:
            continue
        gid = o.ad["GlobalJobId"]
        matches = [r for r in h.records.values() if same_job(r, o)]
        if len(matches) != 1:
            problems[name] = f"{len(matches)} records of {gid}"
            continue
        record = matches[0]
        skip = SHADOW_ATTRS if o.schedd_name.startswith("jobsub02") else ()
        diff = check(record, h.events[record.global_job_id], o, enricher, skip)
        if diff:
            problems[name] = diff
    assert not problems, _show(problems)


def test_global_log_ad_information_attributes_reach_the_record(tailed_run):
    """The pool's EVENT_LOG_JOB_AD_INFORMATION_ATTRS (GLIDEIN_Site, MemoryUsage, RequestMemory)
    are merged into records built from the global event log."""
    catalogue_run, h, _, _ = tailed_run
    skipped = _collisions(catalogue_run)
    checked = 0
    for name, o in catalogue_run.items():
        if not o.schedd_name.startswith("jobsub01") or name in skipped:
            continue
        record, = [r for r in h.records.values() if same_job(r, o)]
        assert record.request_memory_mb == o.ad["RequestMemory"] == 128, name
        checked += 1
        if name == "memory_over":
            assert record.memory_usage_mb and record.memory_usage_mb > 128
    assert checked >= 3


def test_job_ad_information_gives_the_exact_global_job_id(devpool):
    """A job whose user log gets job-ad-information events with its GlobalJobId (submit file:
    ``job_ad_information_attrs = GlobalJobId``; for a global log: EVENT_LOG_JOB_AD_INFORMATION_ATTRS)
    gets its exact GlobalJobId, whatever second the submit event was written in."""
    cat, htcondor2 = devpool
    schedd_name = cat.schedd_full_name(htcondor2, "fermigrid", "jobsub01")
    tag = f"eventlog-test-{os.getpid()}-{int(time.time())}"
    out = cat.devpool("submit", "success.sub", "-name", schedd_name, "-pool", cat.POOL_ADDR["fermigrid"],
                      "-append", "job_ad_information_attrs = GlobalJobId", "-append", f'+OposRunId = "{tag}"').stdout
    cluster = int(re.search(r"submitted to cluster (\d+)", out).group(1))
    schedd = cat._schedd(htcondor2, "fermigrid", schedd_name)
    path = USER_LOGS / f"success.{cluster}.log"
    deadline = time.monotonic() + 120
    ad = None
    while time.monotonic() < deadline:
        ads = list(schedd.history(constraint=f'ClusterId == {cluster} && OposRunId == "{tag}"',
                                  projection=["GlobalJobId", "QDate", "ExitCode", "JobStatus"], match=1))
        if ads:
            ad = ads[0]
            break
        time.sleep(2)
    assert ad is not None, f"job {cluster} did not complete"
    (record, events), = [(r, e) for r, e in read_log(path, pool="fermigrid", schedd=schedd_name)
                         if r.cluster_id == cluster and r.status == "completed"]
    assert record.global_job_id == ad["GlobalJobId"] and not record.synthetic_id
    assert record.exit_code == ad["ExitCode"] == 0 and events[-1]["type"] == "terminated"
