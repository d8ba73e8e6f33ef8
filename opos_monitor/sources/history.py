"""Schedd history and job epoch history: incremental, checkpointed, gap-free, no cap.

One poll of one schedd's history (or epoch history) works in two steps:

1. **Index** – ask the schedd for every record newer than the checkpoint with a tiny projection
   (the record's key and time).  The query's ``since`` stops the scan at the record *just older*
   than the checkpointed one, so the checkpointed record itself must come back as the oldest
   result: when it does not, the record is no longer readable (rotated away, beyond the schedd's
   scan limit, or the history was reset) and the poll reports a **gap** instead of silently
   carrying on.
2. **Pages, oldest first** – fetch the full records in pages of at most ``page_size`` records
   (the memory bound) and hand them off oldest first, in batches of ``batch_size``, each batch
   with the checkpoint it reaches (its newest record plus the record just older).  A crash
   loses nothing: everything newer than the last committed batch is fetched again, and at most
   the batch in flight is re-sent (records are upserted by id).

Why pages need the index: the schedd only scans its history newest-first and can only be told
where to *stop* (``since``), never where to start.  A page is a contiguous run of positions in
that order; its query stops just below the page and its constraint selects exactly the page's
keys among the newer ones (a few ``(ClusterId, ProcId)`` intervals computed from the index),
so a page costs one scan of the history down to the page.  Total schedd work for a backlog of
N records is about N²/(2·page) scanned ads, memory stays bounded by one page.

Checkpoints are JSON text: ``{"v": 1, "source": "history", "newest": [cluster, proc, qdate],
"next": [...] | null, "t": completion time of the newest record}`` (epoch keys also carry the
attempt: ``NumShadowStarts`` and ``EpochWriteDate``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any, Callable, NamedTuple, Optional, Sequence

import orjson

from ..records import JobRecord, to_float, to_int
from .base import Handoff, PollResult, SourceKey
from .htc import EPOCH_ATTRS, JOB_ATTRS, QueryError, Runner, ScheddTarget, ad_dict, record_from_wire, record_to_wire

__all__ = [
    "EPOCHS",
    "HISTORY",
    "Checkpoint",
    "HistoryOptions",
    "Stream",
    "attempt_of",
    "locate_backlog",
    "page_constraint",
    "plan_pages",
    "poll_history",
    "since_expr",
]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
#: The schedd hands a constraint to its history helper as one command-line argument, and Linux
#: refuses arguments over 128 KiB (MAX_ARG_STRLEN): longer page constraints split the page.
MAX_CONSTRAINT_CHARS = 64 * 1024
Key = tuple  # a record's key values (ints; -1 where the attribute is missing)


@dataclass(frozen=True, slots=True)
class Stream:
    """What differs between the schedd's job history and its job epoch history."""

    source: str  # SourceKey.source and JobRecord.source
    method: str  # the htcondor2.Schedd method
    key_attrs: tuple[str, ...]  # identify one record
    order_attrs: tuple[str, ...]  # integer attributes used to select a page (unique together)
    time_attrs: tuple[str, ...]  # the record's time: first one present
    extra_attrs: tuple[str, ...] = ()


HISTORY = Stream("history", "history", ("ClusterId", "ProcId", "QDate"), ("ClusterId", "ProcId"),
                 ("CompletionDate", "EnteredCurrentStatus"))
EPOCHS = Stream("epochs", "jobEpochHistory", ("ClusterId", "ProcId", "QDate", "NumShadowStarts", "EpochWriteDate"),
                ("ClusterId", "ProcId", "NumShadowStarts", "EpochWriteDate"),
                ("EpochWriteDate", "EnteredCurrentStatus"), EPOCH_ATTRS)
STREAMS = {s.source: s for s in (HISTORY, EPOCHS)}


def attempt_of(record: JobRecord) -> Optional[int]:
    """The attempt number of a per-attempt (epoch) record: NumShadowStarts, else JobRunCount."""
    return record.num_shadow_starts if record.num_shadow_starts is not None else record.job_run_count


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """Tuning of one history poll (defaults suit a production schedd)."""

    page_size: int = 10000  # records fetched per query (a worker holds one page: ~110 MB of noop ads)
    prefetch: int = 2  # pages fetched at once (in parallel workers) while one is handed off
    probe_size: int = 1000  # a backlog up to this size is read in one query, without the index
    batch_size: int = 1000  # records per hand-off (one durable commit each)
    max_runs: int = 2000  # intervals in one page constraint before the page is split
    backfill: bool = True  # first poll (no checkpoint): read the whole history, else start now
    timeout_s: Optional[float] = None  # per query; None: the runner's default
    projection: tuple[str, ...] = JOB_ATTRS


# ---------------------------------------------------------------------------
# checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The newest record handed off, and the record just older than it (``next``)."""

    source: str
    newest: Key
    next: Optional[Key]
    t: Optional[float]  # the newest record's time (completion / epoch write)

    def to_json(self) -> str:
        return orjson.dumps({"v": CHECKPOINT_VERSION, "source": self.source, "newest": list(self.newest),
                             "next": list(self.next) if self.next is not None else None, "t": self.t}).decode()

    @classmethod
    def from_json(cls, text: str, stream: Stream) -> "Checkpoint":
        """Parse a stored checkpoint; raises ValueError (with the reason) if it is not ours."""
        try:
            d = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(d, dict) or d.get("v") != CHECKPOINT_VERSION or d.get("source") != stream.source:
            raise ValueError(f"not a version-{CHECKPOINT_VERSION} {stream.source} checkpoint")
        newest, nxt = d.get("newest"), d.get("next")
        n = len(stream.key_attrs)
        if not _valid_key(newest, n) or (nxt is not None and not _valid_key(nxt, n)):
            raise ValueError("malformed record key")
        return cls(stream.source, tuple(newest), tuple(nxt) if nxt is not None else None, to_float(d.get("t")))


def _valid_key(k: Any, n: int) -> bool:
    return isinstance(k, list) and len(k) == n and all(isinstance(x, int) and not isinstance(x, bool) for x in k)


# ---------------------------------------------------------------------------
# ClassAd expressions (pure)


def _attr(name: str, position: int) -> str:
    # ClusterId and ProcId are always there; later key attributes may be missing (-1)
    return name if position < 2 else f"ifThenElse(isUndefined({name}), -1, {name})"


def since_expr(key: Key, stream: Stream) -> str:
    """A ``since`` expression true exactly for the record with ``key``."""
    parts = [f"{a} =?= {'undefined' if v == -1 else v}" for a, v in zip(stream.key_attrs, key)]
    return " && ".join(parts)


def _bound(attrs: Sequence[str], vals: Key, start: int, op: str) -> str:
    """Lexicographic ``attrs[start:] op vals[start:]`` with op '>=' or '<='."""
    a, v = _attr(attrs[start], start), vals[start]
    if start == len(attrs) - 1:
        return f"{a} {op} {v}"
    strict = ">" if op == ">=" else "<"
    return f"({a} {strict} {v} || ({a} == {v} && {_bound(attrs, vals, start + 1, op)}))"


def _interval(attrs: Sequence[str], lo: Key, hi: Key, first: int = 0) -> str:
    """``lo <= (attrs) <= hi`` lexicographically on ``attrs[first:]``, as compact as the common
    prefix allows (``lo`` and ``hi`` are full keys)."""
    i = first
    eq = []
    while i < len(attrs) and lo[i] == hi[i]:
        eq.append(f"{_attr(attrs[i], i)} == {lo[i]}")
        i += 1
    if i == len(attrs) - 1:
        a = _attr(attrs[i], i)
        eq.append(f"{a} >= {lo[i]} && {a} <= {hi[i]}")
    elif i < len(attrs):
        a = _attr(attrs[i], i)
        middle = [f"({a} > {lo[i]} && {a} < {hi[i]})"] if hi[i] - lo[i] > 1 else []
        low = f"{a} == {lo[i]}" + (f" && {_bound(attrs, lo, i + 1, '>=')}" if i + 1 < len(attrs) else "")
        high = f"{a} == {hi[i]}" + (f" && {_bound(attrs, hi, i + 1, '<=')}" if i + 1 < len(attrs) else "")
        eq.append("(" + " || ".join([*middle, f"({low})", f"({high})"]) + ")")
    return "(" + " && ".join(eq) + ")" if eq else "true"


def _runs_expr(attrs: Sequence[str], runs: Sequence[tuple[Key, Key]]) -> str:
    """The runs as one expression; runs inside one cluster are grouped under one ``ClusterId ==``
    test, so the schedd rejects a record of another cluster with one comparison per cluster."""
    groups: dict[int, list[str]] = {}
    items: list[tuple[Optional[int], str]] = []  # (cluster of a group, or None with the expression)
    for lo, hi in runs:
        if len(attrs) > 1 and lo[0] == hi[0]:
            if lo[0] not in groups:
                groups[lo[0]] = []
                items.append((lo[0], ""))
            groups[lo[0]].append(_interval(attrs, lo, hi, 1))
        else:
            items.append((None, _interval(attrs, lo, hi)))
    out = []
    for cluster, expr in items:
        if cluster is None:
            out.append(expr)
            continue
        inner = groups[cluster]
        body = inner[0] if len(inner) == 1 else "(" + " || ".join(inner) + ")"
        out.append(f"({_attr(attrs[0], 0)} == {cluster} && {body})")
    return " || ".join(out) or "false"


def page_constraint(page: Sequence[Key], newer: Sequence[Key], attrs: Sequence[str], max_runs: int) -> Optional[str]:
    """A constraint true for every key of ``page`` and false for every key of ``newer``.

    Keys are the ``attrs`` values (order attributes).  Returns None when it would take more
    than ``max_runs`` intervals (the caller then splits the page).  A key in both sets is
    selected (the caller drops what it did not ask for).
    """
    inside = set(page)
    keys = sorted(inside | set(newer))
    runs: list[tuple[Key, Key]] = []
    start = prev = None
    for k in keys:
        if k in inside:
            start = k if start is None else start
            prev = k
        elif start is not None:
            runs.append((start, prev))
            start = None
    if start is not None:
        runs.append((start, prev))
    if len(runs) > max_runs:
        return None
    return _runs_expr(attrs, runs)


# ---------------------------------------------------------------------------
# planning (pure)


class Entry(NamedTuple):
    """One index entry: a record's key, its order key and time."""

    key: Key
    order: Key
    t: Optional[float]


def locate_backlog(index: Sequence[Entry], cp: Optional[Checkpoint]) -> tuple[int, bool]:
    """``(n, found)``: the first ``n`` index entries (newest first) are new; ``found`` tells
    whether the checkpointed record was seen (no gap)."""
    if cp is None:
        return len(index), True
    for pos, e in enumerate(index):
        if e.key == cp.newest:
            return pos, True
    return len(index), False


def plan_pages(n: int, page_size: int) -> list[tuple[int, int]]:
    """Pages over positions ``0..n-1`` (newest first) as ``(start, end)``, oldest page first."""
    pages = []
    end = n
    while end > 0:
        start = max(0, end - page_size)
        pages.append((start, end))
        end = start
    return pages


def describe_gap(index: Sequence[Entry], cp: Checkpoint, schedd: str, stream: Stream) -> str:
    """Why the checkpointed record is missing, in an operator's words."""
    what = f"{schedd} {stream.source}"
    ck = f"record {cp.newest[0]}.{cp.newest[1]} ({_iso(cp.t)})"
    if not index:
        return f"{what}: the history is empty but the checkpoint is at {ck}: history reset or deleted"
    newest_t = max((e.t for e in index if e.t is not None), default=None)
    if cp.t is not None and newest_t is not None and newest_t < cp.t:
        return f"{what}: history reset: its newest record ({_iso(newest_t)}) is older than the checkpoint {ck}"
    if max(e.key[0] for e in index) < cp.newest[0]:
        return f"{what}: history reset: job ids restarted (newest cluster {max(e.key[0] for e in index)} " \
               f"< checkpoint cluster {cp.newest[0]})"
    oldest_t = min((e.t for e in index if e.t is not None), default=None)
    return (f"{what}: checkpoint {ck} is no longer in the history (rotated away, see MAX_HISTORY_LOG / "
            f"MAX_HISTORY_ROTATIONS, or beyond the schedd's scan limit HISTORY_HELPER_MAX_HISTORY); "
            f"read all {len(index)} readable records, the oldest from {_iso(oldest_t)}: "
            f"records that ended between {_iso(cp.t)} and {_iso(oldest_t)} may be lost")


def _iso(t: Optional[float]) -> str:
    if t is None:
        return "unknown time"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# worker functions (run in a query worker process, or inline in tests)


def _key(ad: Any, attrs: Sequence[str]) -> Key:
    out = []
    for a in attrs:
        v = to_int(ad.get(a))
        out.append(-1 if v is None else v)
    return tuple(out)


def _time(ad: Any, attrs: Sequence[str]) -> Optional[float]:
    for a in attrs:
        t = to_float(ad.get(a))
        if t is not None and t > 0:
            return t
    return None


def _expr(text: Optional[str]) -> Any:
    if text is None:
        return None
    import classad2

    return classad2.ExprTree(text)


def fetch_index(client: Any, source: str, since: Optional[str], match: int = -1) -> list[tuple[Key, Key, Optional[float]]]:
    """Every record newer than ``since`` (newest first; at most ``match``) as index entries."""
    stream = STREAMS[source]
    attrs = list(dict.fromkeys((*stream.key_attrs, *stream.order_attrs, *stream.time_attrs)))
    ads = getattr(client, stream.method)(None, attrs, match, _expr(since))
    # plain tuples: they cross the process boundary much faster than objects
    return [(_key(ad, stream.key_attrs), _key(ad, stream.order_attrs), _time(ad, stream.time_attrs)) for ad in ads]


def fetch_page(client: Any, source: str, since: Optional[str], constraint: Optional[str], projection: Sequence[str],
               pool: str, schedd: str, match: int = -1) -> list[tuple[Key, tuple]]:
    """The records selected by ``constraint`` among those newer than ``since`` (newest first,
    at most ``match``), as ``(key, record_to_wire(JobRecord))``."""
    stream = STREAMS[source]
    ads = getattr(client, stream.method)(_expr(constraint), list(projection), match, _expr(since))
    out = []
    for ad in ads:
        d = ad_dict(ad)
        rec = JobRecord.from_ad(d, pool=pool, schedd=schedd, source=stream.source)
        out.append((_key(d, stream.key_attrs), record_to_wire(rec)))
    return out


# ---------------------------------------------------------------------------
# one poll


class _PageSpec(NamedTuple):
    start: int
    end: int
    since: Optional[str]
    constraint: Optional[str]


class _Stopped(Exception):
    """Raised inside a poll when a stop was requested: no further batch is handed off."""


def _never() -> bool:
    return False


class _Poll:
    """State of one history poll of one schedd (kept small; see :func:`poll_history`)."""

    def __init__(self, runner: Runner, target: ScheddTarget, handoff: Handoff, stream: Stream,
                 opts: HistoryOptions, clock: Callable[[], float], should_stop: Callable[[], bool] = _never) -> None:
        self.runner, self.target, self.handoff, self.stream, self.opts = runner, target, handoff, stream, opts
        self.should_stop = should_stop
        self.key = SourceKey(target.pool, target.name, stream.source)
        self.result = PollResult(self.key)
        self.gaps: list[str] = []
        self.projection = tuple(dict.fromkeys((*opts.projection, *stream.key_attrs, *stream.extra_attrs)))
        self.clock = clock
        self.newest_t: Optional[float] = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self.runner.call(self.target, fn, *args, timeout=self.opts.timeout_s)
        except QueryError as exc:
            if "JOB_EPOCH_HISTORY" in str(exc) and "undefined" in str(exc):
                raise QueryError(f"{exc} (job epochs need JOB_EPOCH_HISTORY set on the schedd, e.g. "
                                 f"JOB_EPOCH_HISTORY = $(SPOOL)/epoch_history)") from exc
            raise

    def load_checkpoint(self) -> Optional[Checkpoint]:
        text = self.handoff.checkpoint(self.key)
        if text is None:
            return None
        try:
            return Checkpoint.from_json(text, self.stream)
        except ValueError as exc:
            self.gaps.append(f"{self.key}: stored checkpoint unreadable ({exc}); reading the whole history")
            return None

    def run(self) -> PollResult:
        try:
            self.read()
        except _Stopped:
            self.result.interrupted = True
            log.info("%s: stop requested; poll ended after %d records (the rest is read on the next start)",
                     self.key, self.result.records)
        return self.finish()

    def read(self) -> None:
        cp = self.load_checkpoint()
        index_since = None
        if cp is not None:
            index_since = since_expr(cp.next, self.stream) if cp.next is not None else None
        if cp is None and not self.opts.backfill:  # start now: only the two newest records matter
            index = [Entry(*e) for e in self.call(fetch_index, self.stream.source, None, 2)]
            if index:
                self.commit([], self.checkpoint_at(index, 0))
            return
        if cp is not None and self.opts.probe_size > 0 and self.small_backlog(cp, index_since):
            return
        index = [Entry(*e) for e in self.call(fetch_index, self.stream.source, index_since)]
        n, found = locate_backlog(index, cp)
        if not found:
            self.gaps.append(describe_gap(index, cp, self.target.name, self.stream))
        # the scan for the oldest page stops at the checkpointed record (or where the index stopped)
        floor = since_expr(cp.newest, self.stream) if (cp is not None and found) else index_since
        specs = [spec for start, end in plan_pages(n, self.opts.page_size) for spec in self.specs(index, start, end, floor)]
        self.fetch_and_deliver(index, specs)

    def small_backlog(self, cp: Checkpoint, since: Optional[str]) -> bool:
        """The common case: everything since the checkpoint fits in one query.  Returns False
        (nothing handed off) when the backlog is larger than ``probe_size``."""
        limit = min(self.opts.probe_size, self.opts.page_size) + 1
        got = self.fetch(_PageSpec(0, 0, since, None), limit)
        index = [Entry(k, k, _time(r.attrs, self.stream.time_attrs)) for k, r in got]
        n, found = locate_backlog(index, cp)
        if not found and len(got) == limit:
            return False  # more than one probe's worth: take the long way
        if not found:  # the whole readable history came back without the checkpointed record
            self.gaps.append(describe_gap(index, cp, self.target.name, self.stream))
        self.deliver(index, 0, n, got)
        return True

    def specs(self, index: Sequence[Entry], start: int, end: int, floor: Optional[str]) -> list[_PageSpec]:
        """The queries for positions ``start..end-1``, oldest first; a page whose keys are too
        scattered for ``max_runs`` intervals is split in halves."""
        constraint = page_constraint([e.order for e in index[start:end]], [e.order for e in index[:start]],
                                     self.stream.order_attrs, self.opts.max_runs)
        if end - start > 1 and (constraint is None or len(constraint) > MAX_CONSTRAINT_CHARS):
            mid = (start + end) // 2
            return self.specs(index, mid, end, floor) + self.specs(index, start, mid, floor)
        since = since_expr(index[end].key, self.stream) if end < len(index) else floor
        return [_PageSpec(start, end, since, constraint)]

    def fetch(self, spec: _PageSpec, match: int = -1) -> list[tuple[Key, JobRecord]]:
        got = self.call(fetch_page, self.stream.source, spec.since, spec.constraint, self.projection,
                        self.target.pool, self.target.name, match)
        return [(k, record_from_wire(v)) for k, v in got]

    def fetch_and_deliver(self, index: Sequence[Entry], specs: Sequence[_PageSpec]) -> None:
        """Hand pages off in order while up to ``prefetch`` later pages are being fetched."""
        if not specs:
            return
        ahead = max(1, self.opts.prefetch)
        todo = iter(specs)
        ex = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="opos-history-fetch")
        stopped = False
        try:
            pending = deque((s, ex.submit(self.fetch, s)) for s in islice(todo, ahead))
            while pending:
                spec, future = pending.popleft()
                got = self.wait(future)
                nxt = next(todo, None)
                if nxt is not None and not self.should_stop():
                    pending.append((nxt, ex.submit(self.fetch, nxt)))
                self.deliver(index, spec.start, spec.end, got)
                del got
        except _Stopped:
            stopped = True
            raise
        finally:
            # on a stop, fetches in flight are abandoned (their workers end with the runner)
            ex.shutdown(wait=not stopped, cancel_futures=True)

    def wait(self, future: "Future[list[tuple[Key, JobRecord]]]") -> list[tuple[Key, JobRecord]]:
        """A page's result; gives up waiting (``_Stopped``) as soon as a stop is requested."""
        while True:
            try:
                return future.result(timeout=0.2)
            except TimeoutError:
                if self.should_stop():
                    raise _Stopped from None

    def deliver(self, index: Sequence[Entry], start: int, end: int, got: Sequence[tuple[Key, JobRecord]]) -> None:
        """Hand off the page oldest first in batches, each with the checkpoint it reaches."""
        by_key = {k: r for k, r in got}  # drops what was not asked for, and repeats
        positions = [p for p in range(end - 1, start - 1, -1) if index[p].key in by_key]
        missing = (end - start) - len(positions)
        if missing:
            self.gaps.append(f"{self.target.name} {self.stream.source}: {missing} records vanished while being "
                             f"read (rotated away during the poll)")
        # (a page that vanished entirely commits nothing: a checkpoint must name a record that exists)
        for i in range(0, len(positions), self.opts.batch_size):
            batch = positions[i:i + self.opts.batch_size]
            self.commit([by_key[index[p].key] for p in batch], self.checkpoint_at(index, batch[-1]))

    def checkpoint_at(self, index: Sequence[Entry], pos: int) -> Checkpoint:
        nxt = index[pos + 1].key if pos + 1 < len(index) else None
        return Checkpoint(self.stream.source, index[pos].key, nxt, index[pos].t)

    def commit(self, records: Sequence[JobRecord], cp: Checkpoint) -> None:
        if self.should_stop():  # the batch in flight (if any) was committed; take no new one
            raise _Stopped
        self.handoff.commit(self.key, records, cp.to_json())
        self.result.records += len(records)
        if records and cp.t is not None:
            self.newest_t = cp.t if self.newest_t is None else max(self.newest_t, cp.t)

    def finish(self) -> PollResult:
        if self.gaps:
            self.result.gap = "; ".join(self.gaps)
            log.warning("history gap on %s: %s", self.key, self.result.gap)
        if self.newest_t is not None:
            self.result.lag_s = max(0.0, self.clock() - self.newest_t)
        return self.result


def poll_history(runner: Runner, target: ScheddTarget, handoff: Handoff, stream: Stream = HISTORY,
                 opts: HistoryOptions = HistoryOptions(), clock: Callable[[], float] = time.time,
                 should_stop: Callable[[], bool] = _never) -> PollResult:
    """Poll one schedd's history (``HISTORY``) or job epoch history (``EPOCHS``) once.

    Fills ``PollResult.records`` (handed off), ``gap`` (why records may be missing, also logged),
    ``lag_s`` (now minus the newest handed-off record's time), ``duration_s``; a failed query
    raises :class:`~opos_monitor.sources.htc.QueryError` after whatever batches were already
    committed (their checkpoint stands), and a failed hand-off propagates its exception.

    ``should_stop`` is asked before each batch is handed off and while waiting for a page: once
    it says True the poll hands off nothing more and returns with ``interrupted`` set (every
    committed batch carries its checkpoint, so the next poll starts right after it).
    """
    t0 = time.monotonic()
    poll = _Poll(runner, target, handoff, stream, opts, clock, should_stop)
    result = poll.run()
    result.duration_s = time.monotonic() - t0
    return result


def expected_scan(n: int, page_size: int) -> int:
    """How many history ads the schedd scans for a backlog of ``n`` (index + pages), for docs/tests."""
    return n + sum(end for _start, end in plan_pages(n, page_size)) if n else 0

