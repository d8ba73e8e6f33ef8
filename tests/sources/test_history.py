"""History and job epoch polls against an in-process schedd with the real query semantics.

The fake evaluates ``since`` and the page constraints with ``classad2`` exactly as the
schedd's history helper does, so these tests exercise the real expressions.
"""

from __future__ import annotations

import json
import logging
import random

import classad2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from schedd_fakes import FakeGrid, FakeSchedd, RecordingHandoff, job_ad

from opos_monitor.sources.base import SourceKey
from opos_monitor.sources.history import (EPOCHS, HISTORY, Checkpoint, HistoryOptions, attempt_of, expected_scan,
                                          locate_backlog, page_constraint, plan_pages, poll_history, since_expr)
from opos_monitor.sources.htc import InlineRunner, QueryError, ScheddTarget

NAME = "jobsub01.fnal.gov"
TARGET = ScheddTarget("fermigrid", NAME, "<127.0.0.1:9618>")
KEY = SourceKey("fermigrid", NAME, "history")


def setup(n: int = 0, **kw):
    grid = FakeGrid()
    schedd = FakeSchedd(NAME, **kw)
    grid.add_pool("127.0.0.1:9618", schedd)
    schedd.complete(job_ad(100 + i // 10, i % 10, schedd=NAME) for i in range(n))
    return schedd, InlineRunner(grid.connect), RecordingHandoff()


def opts(page: int = 50, batch: int = 20, **kw) -> HistoryOptions:
    return HistoryOptions(page_size=page, batch_size=batch, **kw)


def gid(cluster: int, proc: int, qdate: int = 1_700_000_000) -> str:
    return f"{NAME}#{cluster}.{proc}#{qdate}"


# --- whole polls --------------------------------------------------------------------------


def test_first_poll_reads_everything_oldest_first_and_checkpoints_every_batch():
    schedd, runner, h = setup(130)
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.ok and res.records == 130 and res.gap is None
    assert not h.duplicates() and len(h.ids()) == 130
    # oldest first: the first committed batch holds the oldest records
    first = [k for k in h.commits][0]
    assert first[1] == 20
    delivered = list(h.delivered.values())
    assert delivered[0].global_job_id == gid(100, 0)
    cps = [json.loads(c[2]) for c in h.commits]
    assert all(c["source"] == "history" for c in cps)
    assert cps[-1]["newest"][:2] == [112, 9]  # the newest record
    assert cps[-1]["next"][:2] == [112, 8]


def test_incremental_poll_delivers_only_new_records_once():
    schedd, runner, h = setup(40)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(200, i, schedd=NAME) for i in range(25))
    schedd.history_calls.clear()
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.records == 25 and res.gap is None
    assert len(schedd.history_calls) == 1  # a small backlog takes one query (no index)
    assert not h.duplicates() and len(h.ids()) == 65
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.records == 0 and res.gap is None and res.lag_s is None


def test_no_cap_and_bounded_pages_for_a_big_backlog():
    schedd, runner, h = setup(10)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(300 + i // 100, i % 100, schedd=NAME) for i in range(1200))
    schedd.history_calls.clear()
    fetched = []
    orig = runner.call

    def spy(target, fn, *args, timeout=None):
        out = orig(target, fn, *args, timeout=timeout)
        fetched.append((fn.__name__, len(out)))
        return out

    runner.call = spy
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=40))
    assert res.records == 1200 and not h.duplicates() and len(h.ids()) == 1210
    assert fetched[0] == ("fetch_page", 101)  # the probe: more than one page is new
    assert fetched[1] == ("fetch_index", 1201)  # the index ends with the checkpointed record
    pages = [n for name, n in fetched[2:]]
    assert len(pages) == 12 and max(pages) <= 100  # the memory bound: pages of at most page_size


def test_page_scans_stop_below_each_page():
    schedd, runner, h = setup(500)
    schedd.scanned = 0
    poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=100))
    # index 500 + pages 500+400+300+200+100, plus the record each of the 4 newer pages stops at
    assert schedd.scanned == expected_scan(500, 100) + 4


def test_crash_mid_poll_loses_nothing_and_resends_nothing_committed():
    schedd, runner, h = setup(5)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(400 + i // 50, i % 50, schedd=NAME) for i in range(300))
    h.fail_on_commit = len(h.commits) + 7  # the 7th batch of the next poll fails
    with pytest.raises(OSError):
        poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=20))
    assert 0 < len(h.ids()) < 305
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=20))
    assert len(h.ids()) == 305 and not h.duplicates()
    assert res.records == 305 - 5 - 6 * 20


def test_a_stop_ends_the_poll_after_the_batch_in_flight_and_the_next_poll_resumes():
    schedd, runner, h = setup(5)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(400 + i // 50, i % 50, schedd=NAME) for i in range(300))
    first = len(h.commits)
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=20),
                       should_stop=lambda: len(h.commits) >= first + 3)
    assert res.ok and res.interrupted and res.records == 60
    assert len(h.ids()) == 65
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=20))
    assert not res.interrupted and res.records == 240 and res.gap is None
    assert len(h.ids()) == 305 and not h.duplicates()


def test_a_stop_does_not_wait_for_a_page_still_being_fetched():
    import threading
    import time

    schedd, runner, h = setup(5)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(400 + i // 50, i % 50, schedd=NAME) for i in range(300))
    release, stop = threading.Event(), threading.Event()
    orig = runner.call

    def slow_pages(target, fn, *args, timeout=None):
        if fn.__name__ == "fetch_page" and args[2] is not None:  # a page (not the probe)
            stop.set()  # the stop comes while the schedd is still answering
            release.wait(30)
        return orig(target, fn, *args, timeout=timeout)

    runner.call = slow_pages
    t0 = time.monotonic()
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=20), should_stop=stop.is_set)
    took = time.monotonic() - t0
    release.set()
    assert res.interrupted and res.records == 0 and took < 5
    runner.call = orig
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=20))
    assert res.records == 300 and len(h.ids()) == 305 and not h.duplicates()


def test_interleaved_completion_order_and_split_pages():
    schedd, runner, h = setup(0)
    rng = random.Random(7)
    ads = [job_ad(c, p, schedd=NAME) for c in range(500, 520) for p in range(30)]
    rng.shuffle(ads)  # jobs of 20 clusters leave the queue in random order
    schedd.complete(ads)
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=80, batch=25, max_runs=4))
    assert res.records == 600 and not h.duplicates() and len(h.ids()) == 600
    page_queries = [c for c in schedd.history_calls if c["constraint"] is not None]
    assert len(page_queries) > len(plan_pages(600, 80))  # scattered pages were split


def test_records_added_during_a_poll_wait_for_the_next_poll():
    schedd, runner, h = setup(60)
    calls = {"n": 0}

    def add_once(s):
        calls["n"] += 1
        if calls["n"] == 2:  # after the index query
            s.complete(job_ad(900, i, schedd=NAME) for i in range(15))

    schedd.on_history = add_once
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=25))
    assert res.records == 60 and len(h.ids()) == 60
    schedd.on_history = None
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=25))
    assert res.records == 15 and len(h.ids()) == 75 and not h.duplicates()


# --- gaps -----------------------------------------------------------------------------------


def test_rotation_past_the_checkpoint_is_a_gap(caplog):
    schedd, runner, h = setup(30)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(600 + i // 10, i % 10, schedd=NAME) for i in range(100))
    schedd.rotate(keep=70)  # the checkpointed record and 30 unread ones are gone
    with caplog.at_level(logging.WARNING):
        res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.records == 70
    assert res.gap and "no longer in the history" in res.gap and "rotated" in res.gap
    assert "history gap" in caplog.text and NAME in caplog.text
    # the gap is reported once: the next poll is clean
    schedd.complete([job_ad(700, 0, schedd=NAME)])
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.records == 1 and res.gap is None


def test_scan_limit_smaller_than_the_backlog_is_a_gap():
    schedd, runner, h = setup(10)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(800 + i // 10, i % 10, schedd=NAME) for i in range(100))
    schedd.scan_limit = 60
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.gap and "HISTORY_HELPER_MAX_HISTORY" in res.gap
    assert res.records == 60


def test_history_reset_with_restarted_job_ids_is_a_gap():
    schedd, runner, h = setup(50)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.records = [job_ad(1, i, schedd=NAME, qdate=1_800_000_000) for i in range(5)]
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.gap and "reset" in res.gap and "job ids restarted" in res.gap
    assert res.records == 5


def test_history_emptied_is_a_gap():
    schedd, runner, h = setup(20)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.records = []
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.gap and "empty" in res.gap and res.records == 0


def test_history_older_than_the_checkpoint_is_a_reset():
    schedd, runner, h = setup(20)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.records = [job_ad(5000, 0, schedd=NAME, qdate=1_600_000_000, t=1_600_000_100)]
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.gap and "older than the checkpoint" in res.gap


def test_records_vanishing_during_the_poll_are_a_gap():
    schedd, runner, h = setup(0)
    calls = {"n": 0}

    def rotate_after_index(s):
        calls["n"] += 1
        if calls["n"] == 2:
            s.rotate(keep=150)

    schedd.complete(job_ad(100 + i // 10, i % 10, schedd=NAME) for i in range(200))
    schedd.on_history = rotate_after_index
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=50))
    assert res.gap and "50 records vanished" in res.gap
    assert res.records == 150 and len(h.ids()) == 150


def test_unreadable_checkpoint_is_reported_and_history_reread():
    schedd, runner, h = setup(12)
    h.checkpoints[KEY] = '{"cluster": 5}'
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.gap and "checkpoint unreadable" in res.gap and res.records == 12


def test_without_backfill_the_first_poll_starts_now():
    schedd, runner, h = setup(40)
    res = poll_history(runner, TARGET, h, HISTORY, opts(backfill=False))
    assert res.records == 0 and KEY in h.checkpoints
    assert [c["match"] for c in schedd.history_calls] == [2]  # no scan of the whole history
    schedd.complete(job_ad(999, i, schedd=NAME) for i in range(3))
    res = poll_history(runner, TARGET, h, HISTORY, opts(backfill=False))
    assert res.records == 3 and h.ids() == {gid(999, i) for i in range(3)}


def test_single_record_history_then_more():
    schedd, runner, h = setup(1)
    poll_history(runner, TARGET, h, HISTORY, opts())
    assert json.loads(h.checkpoints[KEY])["next"] is None
    schedd.complete(job_ad(101, i, schedd=NAME) for i in range(4))
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.records == 4 and res.gap is None and not h.duplicates()


def test_lag_is_the_age_of_the_newest_record_handed_off():
    schedd, runner, h = setup(0)
    schedd.complete([job_ad(1, 0, schedd=NAME, t=1_000)])
    res = poll_history(runner, TARGET, h, HISTORY, opts(), clock=lambda: 1_060.0)
    assert res.lag_s == 60.0


def test_failed_query_raises_and_keeps_the_checkpoint():
    schedd, runner, h = setup(10)
    poll_history(runner, TARGET, h, HISTORY, opts())
    before = dict(h.checkpoints)
    schedd.down = "SECMAN:2007:This service is running, but did not respond"
    with pytest.raises(QueryError, match=NAME):
        poll_history(runner, TARGET, h, HISTORY, opts())
    assert h.checkpoints == before


# --- epochs ----------------------------------------------------------------------------------


def epoch_ad(cluster, proc, attempt, t):
    return job_ad(cluster, proc, schedd=NAME, status=2, NumShadowStarts=attempt, JobRunCount=attempt,
                  EpochWriteDate=t, t=t)


def test_epochs_deliver_every_attempt_once():
    schedd, runner, h = setup(0)
    schedd.epoch_records = [epoch_ad(10, 0, 1, 100), epoch_ad(10, 1, 1, 101), epoch_ad(10, 0, 2, 150)]
    res = poll_history(runner, TARGET, h, EPOCHS, opts())
    assert res.records == 3 and res.key.source == "epochs"
    attempts = sorted((r.global_job_id, attempt_of(r)) for r in h.delivered.values())
    assert attempts == [(gid(10, 0), 1), (gid(10, 0), 2), (gid(10, 1), 1)]
    assert all(r.source == "epochs" for r in h.delivered.values())
    schedd.epoch_records.append(epoch_ad(10, 0, 3, 200))
    res = poll_history(runner, TARGET, h, EPOCHS, opts())
    assert res.records == 1 and not h.duplicates()


def test_epochs_pages_separate_attempts_of_the_same_job():
    schedd, runner, h = setup(0)
    schedd.epoch_records = [epoch_ad(20, p, a, 1000 + 10 * a + p) for a in (1, 2, 3) for p in range(40)]
    res = poll_history(runner, TARGET, h, EPOCHS, opts(page=30, batch=10))
    assert res.records == 120 and len(h.counts) == 120 and not h.duplicates()


def test_epochs_not_configured_names_the_knob():
    schedd, runner, h = setup(0, epochs=False)
    with pytest.raises(QueryError, match=r"JOB_EPOCH_HISTORY = \$\(SPOOL\)/epoch_history"):
        poll_history(runner, TARGET, h, EPOCHS, opts())


# --- pure parts ------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_rejects():
    cp = Checkpoint("history", (1, 2, 3), (1, 1, 3), 12.5)
    assert Checkpoint.from_json(cp.to_json(), HISTORY) == cp
    for bad in ("nope", "{}", '{"v": 1, "source": "epochs", "newest": [1,2,3], "next": null}',
                '{"v": 1, "source": "history", "newest": [1, 2], "next": null}',
                '{"v": 1, "source": "history", "newest": [1, 2, "x"], "next": null}'):
        with pytest.raises(ValueError):
            Checkpoint.from_json(bad, HISTORY)


def test_plan_pages_oldest_first():
    assert plan_pages(0, 10) == []
    assert plan_pages(25, 10) == [(15, 25), (5, 15), (0, 5)]


def test_locate_backlog():
    from opos_monitor.sources.history import Entry

    idx = [Entry((3, 0, 9), (3, 0), 3.0), Entry((2, 0, 9), (2, 0), 2.0), Entry((1, 0, 9), (1, 0), 1.0)]
    assert locate_backlog(idx, None) == (3, True)
    assert locate_backlog(idx, Checkpoint("history", (2, 0, 9), (1, 0, 9), 2.0)) == (1, True)
    assert locate_backlog(idx, Checkpoint("history", (0, 0, 9), None, 0.5)) == (3, False)


def _eval(expr: str, attrs, key) -> bool:
    ad = classad2.ClassAd({a: v for a, v in zip(attrs, key) if v != -1})
    return classad2.ExprTree(expr).eval(ad) is True


def test_since_expr_matches_exactly_one_key_including_undefined():
    attrs = EPOCHS.key_attrs
    key = (5, 1, 1700, 2, -1)
    expr = since_expr(key, EPOCHS)
    assert _eval(expr, attrs, key)
    assert not _eval(expr, attrs, (5, 1, 1700, 2, 77))
    assert not _eval(expr, attrs, (5, 1, 1700, 3, -1))


keys2 = st.tuples(st.integers(0, 6), st.integers(0, 6))
keys4 = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(-1, 3), st.integers(-1, 2))


@settings(max_examples=150, deadline=None)
@given(st.sets(keys2, min_size=1, max_size=25), st.sets(keys2, max_size=25), st.integers(1, 8))
def test_page_constraint_selects_exactly_the_page(page, newer, max_runs):
    attrs = HISTORY.order_attrs
    expr = page_constraint(sorted(page), sorted(newer), attrs, max_runs)
    if expr is None:
        return  # too scattered: the caller splits the page
    for k in page | newer:
        assert _eval(expr, attrs, k) == (k in page), (expr, k)


@settings(max_examples=100, deadline=None)
@given(st.sets(keys4, min_size=1, max_size=20), st.sets(keys4, max_size=20))
def test_page_constraint_with_four_attributes_and_missing_values(page, newer):
    attrs = EPOCHS.order_attrs
    expr = page_constraint(sorted(page), sorted(newer), attrs, 1000)
    for k in page | newer:
        assert _eval(expr, attrs, k) == (k in page), (expr, k)


def test_a_gap_found_by_the_one_query_probe():
    schedd, runner, h = setup(30)
    poll_history(runner, TARGET, h, HISTORY, opts())
    schedd.complete(job_ad(600, i, schedd=NAME) for i in range(20))
    schedd.rotate(keep=8)
    schedd.history_calls.clear()
    res = poll_history(runner, TARGET, h, HISTORY, opts())
    assert res.gap and "no longer in the history" in res.gap and res.records == 8
    assert len(schedd.history_calls) == 1


def test_many_clusters_finishing_interleaved_need_no_split():
    """Production-like: 40 clusters running side by side, procs finishing roughly in order."""
    schedd, runner, h = setup(0)
    rng = random.Random(3)
    ads = sorted((job_ad(c, p, schedd=NAME) for c in range(700, 740) for p in range(50)),
                 key=lambda ad: ad["ProcId"] + rng.uniform(0, 4))
    schedd.complete(ads)
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=300, batch=100))
    assert res.records == 2000 and not h.duplicates()
    page_queries = [c for c in schedd.history_calls if c["constraint"] is not None]
    assert len(page_queries) == len(plan_pages(2000, 300))
    assert max(len(c["constraint"]) for c in page_queries) < 40_000


def test_a_page_constraint_too_long_for_one_argument_splits_the_page(monkeypatch):
    import opos_monitor.sources.history as hist

    monkeypatch.setattr(hist, "MAX_CONSTRAINT_CHARS", 400)
    schedd, runner, h = setup(0)
    rng = random.Random(5)
    ads = [job_ad(c, p, schedd=NAME) for c in range(800, 830) for p in range(10)]
    rng.shuffle(ads)
    schedd.complete(ads)
    res = poll_history(runner, TARGET, h, HISTORY, opts(page=100, batch=50))
    assert res.records == 300 and not h.duplicates()
    page_queries = [c["constraint"] for c in schedd.history_calls if c["constraint"] is not None]
    assert len(page_queries) > 3 and all(len(c) <= 400 or c.count("ClusterId") == 1 for c in page_queries)
