"""Ad-file source: dumps and history files replayed through the hand-off, resumable without
duplicates; the real pool's raw history file replayed, interrupted and resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from opos_monitor.classads import read_path
from opos_monitor.sources.adfile import AdFileCheckpoint, AdFileSource, record_of_ad, schedd_of

ADS = Path(__file__).resolve().parents[1] / "data" / "ads"
POOL_HISTORY = Path("/var/cache/opos-monitor/trixie/var/spool/condor/history")


class Handoff:
    """The Handoff contract in memory; ``fail_at``: commit numbers (1-based) that raise."""

    def __init__(self, fail_at=()) -> None:
        self.checkpoints: dict = {}
        self.commits: list = []
        self.calls = 0
        self.fail_at = set(fail_at)

    def checkpoint(self, key):
        return self.checkpoints.get(key)

    def commit(self, key, records, checkpoint):
        self.calls += 1
        if self.calls in self.fail_at:
            raise ConnectionError("sink did not acknowledge")
        self.commits.append((key, list(records), checkpoint))
        self.checkpoints[key] = checkpoint

    def ids(self) -> list[str]:
        return [r.global_job_id for _, recs, _ in self.commits for r in recs]


def banners(data: bytes) -> int:
    return data.count(b"\n*** ") + data.startswith(b"*** ")


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name,n", [("condor_q_long.txt", 3), ("condor_history.json", 2), ("ads.jsonl", 3),
                                    ("history_raw.txt", 3), ("condor_q_new.txt", None)])
def test_every_format_gives_one_record_per_ad(tmp_path, name, n):
    path = tmp_path / name
    shutil.copy(ADS / name, path)
    want = [record_of_ad(a, pool="fermigrid", schedd=None).global_job_id for a in read_path(path)]
    if n is not None:
        assert len(want) == n
    h = Handoff()
    res, = AdFileSource(h, [path], pool="fermigrid").poll()
    assert res.ok and res.records == len(want) > 0
    recs = [r for _, rs, _ in h.commits for r in rs]
    assert [r.global_job_id for r in recs] == want
    assert all(r.source == "adfile" and r.pool == "fermigrid" for r in recs)
    assert [r.schedd for r in recs] == [g.split("#")[0] for g in want]
    if name != "condor_q_new.txt":  # the new-syntax sample has no GlobalJobIds
        assert [r.global_job_id for r in recs] == [a["GlobalJobId"] for a in read_path(path)]
    assert sum(res.status_counts.values()) == len(want)


def test_schedd_from_config_or_global_job_id():
    ad = {"GlobalJobId": "jobsub02.fnal.gov#12.3#1700000000", "ClusterId": 12, "ProcId": 3, "JobStatus": 4}
    assert schedd_of(ad) == "jobsub02.fnal.gov" and schedd_of({"globaljobid": "x#1.0#2"}) == "x"
    assert schedd_of({"ClusterId": 1}) is None
    assert record_of_ad(ad, pool="p", schedd=None).schedd == "jobsub02.fnal.gov"
    assert record_of_ad(ad, pool="p", schedd="jobsub09").schedd == "jobsub09"
    r = record_of_ad({"ClusterId": 5, "ProcId": 0, "QDate": 1700000000}, pool="p", schedd=None)
    assert r.schedd == "unknown" and r.global_job_id == "unknown#5.0#1700000000"


# --------------------------------------------------------------------------- resume


def _history_copy(tmp_path, n_ads=None) -> Path:
    """A raw history file in the pool's format (the shared fixture repeated to 300 ads)."""
    one = (ADS / "history_raw.txt").read_text()
    out = []
    for i in range(100):  # distinct job ids in every copy
        out.append(re.sub(r"#(\d+)\.(\d+)#", lambda m: f"#{m.group(1)}.{int(m.group(2)) * 1000 + i}#", one))
    path = tmp_path / "history"
    path.write_text("".join(out))
    return path


def test_interrupted_replay_resumes_without_duplicates_or_loss(tmp_path):
    path = _history_copy(tmp_path)
    want = [a["GlobalJobId"] for a in read_path(path)]
    assert len(want) == len(set(want)) == 300
    h = Handoff(fail_at={3})  # the third batch is not acknowledged
    res, = AdFileSource(h, [path], batch_size=40).poll()
    assert not res.ok and "did not acknowledge" in res.error and res.records == 80
    ck = AdFileCheckpoint.loads(h.checkpoints[res.key])
    assert ck.ads == 80
    src = AdFileSource(h, [path], batch_size=40)  # a restarted daemon
    res, = src.poll()
    assert res.ok and res.records == 220 and src.stats[str(path)].resumed_after == 80
    assert h.ids() == want
    res, = src.poll()  # nothing new
    assert res.ok and res.records == 0 and len(h.commits) == 8


def test_grown_file_resumes_after_the_last_ad(tmp_path):
    full = _history_copy(tmp_path).read_bytes()
    cut = full.index(b"\n***", len(full) // 2)
    cut = full.index(b"\n", cut + 1) + 1  # just after a banner line
    path = tmp_path / "live"
    path.write_bytes(full[:cut])
    h = Handoff()
    src = AdFileSource(h, [path])
    first, = src.poll()
    with open(path, "ab") as f:
        f.write(full[cut:])
    second, = src.poll()
    assert first.records + second.records == 300 and second.gap is None
    assert len(h.ids()) == len(set(h.ids())) == 300


def test_a_replaced_file_is_replayed_from_the_start_and_reported(tmp_path):
    path = tmp_path / "dump"
    shutil.copy(ADS / "condor_q_long.txt", path)
    h = Handoff()
    src = AdFileSource(h, [path])
    src.poll()
    shutil.copy(ADS / "history_raw.txt", path)
    res, = src.poll()
    assert res.gap and "changed since the checkpoint" in res.gap and src.stats[str(path)].changed
    assert res.records == 3


def test_last_ad_of_a_file_being_written_is_held_back(tmp_path):
    one = (ADS / "history_raw.txt").read_text()
    body, _, banner = one.rstrip("\n").rpartition("\n")  # the last ad without its banner line
    assert banner.startswith("***")
    path = tmp_path / "history"
    path.write_text(body + "\n")
    h = Handoff()
    src = AdFileSource(h, [path], settle_s=60)
    res, = src.poll()
    assert res.records == 2 and src.stats[str(path)].held_back
    with open(path, "a") as f:
        f.write(banner + "\n")
    res, = src.poll()
    assert res.records == 1 and not src.stats[str(path)].held_back
    assert len(set(h.ids())) == 3
    # a file nobody writes any more: its unterminated last ad is taken as it is
    old = tmp_path / "old"
    old.write_text(body + "\n")
    t = time.time() - 3600
    os.utime(old, (t, t))
    res, = AdFileSource(Handoff(), [old], settle_s=60).poll()
    assert res.records == 3


def test_malformed_ads_are_reported_counted_and_skipped(tmp_path):
    good = (ADS / "condor_q_long.txt").read_text()
    path = tmp_path / "bad.txt"
    path.write_text("this line is not an attribute\nMyType = \"Job\"\nJobStatus = 2\n\n" + good
                    + "\nClusterId = 77\nProcId = 0\nHoldReason = \"unterminated\n\n")
    errors = []
    h = Handoff()
    src = AdFileSource(h, [path], errors=errors.append)
    res, = src.poll()
    st = src.stats[str(path)]
    assert res.ok and res.records == 4  # the 3 good ads and the cut-off one with its identity
    assert st.unusable == 1 and st.problems == 3
    lines = [(e.line, e.message) for e in errors]
    assert (1, "not an 'Attr = value' line") in lines and any("unterminated" in m for _, m in lines)
    assert any("has no GlobalJobId and no ClusterId" in m for _, m in lines)
    assert all(e.name == str(path) for e in errors)


def test_truncated_json_is_reported_and_the_rest_kept(tmp_path):
    lines = (ADS / "ads.jsonl").read_text().splitlines()
    path = tmp_path / "cut.jsonl"
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    errors = []
    res, = AdFileSource(Handoff(), [path], errors=errors.append).poll()
    assert res.ok and res.records == 2 and errors and errors[0].line == 3


def test_missing_file_marks_the_source_down(tmp_path):
    res, = AdFileSource(Handoff(), [tmp_path / "nope"]).poll()
    assert not res.ok and res.error.startswith("no such file")


def test_checkpoint_round_trip():
    ck = AdFileCheckpoint(1, 2, 300, "ab", 300, 17, False)
    assert AdFileCheckpoint.loads(ck.dumps()) == ck
    assert json.loads(ck.dumps())["ads"] == 17
    for bad in (None, "", "{", "[]", '{"v": 9}', '{"v": 1}'):
        assert AdFileCheckpoint.loads(bad) is None


# --------------------------------------------------------------------------- the real pool's history


@pytest.mark.integration
def test_real_pool_history_replay_interrupted_and_resumed(devpool, tmp_path):
    """The schedd's own raw history file (a snapshot: the schedd keeps appending to it)."""
    assert POOL_HISTORY.is_file(), "the dev pool has no history file"
    path = tmp_path / "history"
    shutil.copy(POOL_HISTORY, path)
    data = path.read_bytes()
    n = banners(data)
    assert n > 0
    want = [a["GlobalJobId"] for a in read_path(path)]
    assert len(want) == n
    batch = max(1, n // 7)
    h = Handoff(fail_at={3})
    first, = AdFileSource(h, [path], pool="fermigrid", batch_size=batch).poll()
    assert not first.ok and first.records == 2 * batch
    src = AdFileSource(h, [path], pool="fermigrid", batch_size=batch)
    second, = src.poll()
    assert second.ok and first.records + second.records == n
    got = h.ids()
    assert got == want and len(got) == n
    dup = [g for g, c in Counter(got).items() if c > 1]
    assert not dup, dup[:5]
    recs = [r for _, rs, _ in h.commits for r in rs]
    assert {r.schedd for r in recs} <= {"jobsub01@vm", "jobsub02@vm"}
    assert all(r.status in ("completed", "removed") for r in recs)
