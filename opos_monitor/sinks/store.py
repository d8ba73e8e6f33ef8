"""The durable local store: SQLite in WAL mode.

Two roles in one file:

* the **outbox** between the sources and Elasticsearch: a record is
  acknowledged to its source once :meth:`Store.commit_batch` returns, and is
  shipped later (:meth:`Store.outbox_take` / :meth:`Store.outbox_ack`);
* the **embedded failure history** read by ``opos-monitor failures`` and
  ``explain`` (:meth:`Store.failures`, :meth:`Store.top_signatures`,
  :meth:`Store.job`).

It also holds the sources' **checkpoints**: a checkpoint advances in the same
SQLite transaction that stores the records fetched up to it, so a crash at any
point either keeps both or loses both (the source then fetches again, and the
upsert by deterministic document id means nothing is duplicated).

Design notes (see ``docs/store.md`` for the full schema, size policy and the
durability argument):

* ``records`` (job-level) and ``attempts`` (per-attempt) hold one row per
  document id with the columns the CLI filters on and the whole JSON document
  (``codec`` column: zlib level 1 with a preset dictionary made from the
  store's first documents, ~5.7x smaller than the JSON).  A batch rewrites
  only the records whose document changed (``doc_hash``); only those are
  enqueued.  A job's final version (completed/removed) is never replaced by a
  non-final one (a late queue poll), and a final version made from the
  schedd's job ad (history, queue, ad file) is never replaced by an event-log
  version of the same job, which carries far fewer attributes
  (:func:`write_verdict`).
* ``outbox`` rows reference a record by ``doc_id``; the shipper always gets the
  record's *latest* version.  Re-enqueueing a document gives it a new ``seq``,
  and acks are by ``seq``, so an ack for an older version never drops a newer
  one.
* Records pending in the outbox or in ``dead_letters`` are never pruned; the
  rest of the history is pruned oldest-first, successes before failures, when
  the database grows past ``max_bytes``.  When nothing more can be pruned,
  :meth:`Store.commit_batch` raises :class:`StoreFull` (back-pressure: the
  source keeps its checkpoint and retries).
* Thread safety: one connection guarded by one re-entrant lock; every public
  method may be called from any thread.  JSON compression, hashing and
  decompression run outside the lock.  Other processes (the CLI's ``replay``,
  ``failures``) may open the same file: WAL readers never block the writer, and
  writers wait up to ``busy_timeout_s`` for each other.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import orjson

from opos_monitor.records import JobRecord

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "Checkpoint",
    "DeadLetter",
    "FailureRow",
    "OutboxItem",
    "SignatureCount",
    "Store",
    "StoreError",
    "StoreFull",
    "StoredDoc",
    "StoredRecord",
    "THIN_SOURCES",
    "Version",
    "backoff_s",
    "decode_doc",
    "encode_doc",
    "end_time_of",
    "history_filter",
    "job_key",
    "make_zdict",
    "stored_from",
    "write_verdict",
]

KINDS = ("job", "attempt")
_TABLE = {"job": "records", "attempt": "attempts"}
CODEC_RAW = 0
CODEC_ZLIB = 1
CODEC_ZDICT = 2  # zlib with the store's preset dictionary (meta 'zdict')
#: size of the preset dictionary: one typical document's worth of attribute names and values
ZDICT_BYTES = 8192
#: a job in one of these states never leaves it: a late, non-final version of the same
#: document (a slow queue poll after the history record) must not overwrite it
TERMINAL = frozenset({"completed", "removed"})
#: sources whose records are built from events, not from the schedd's job ad: a final record
#: of the same job from any other source (history, queue, adfile) is richer and is kept
THIN_SOURCES = frozenset({"eventlog"})
#: after pruning, the database is brought down to this fraction of max_bytes,
#: so a store at its limit prunes once per ~10 % of max_bytes, not every batch
LOW_WATER = 0.9
#: estimated bytes a row costs beyond its compressed document (columns, indexes)
_ROW_OVERHEAD = 400
_PRUNE_CHUNK = 500
_IN_CHUNK = 500  # ids per "IN (...)" (well below SQLite's variable limit)


class StoreError(Exception):
    """The store cannot be used; the message is one line naming the path and the reason."""


class StoreFull(StoreError):
    """No room for this batch: the outbox (and dead letters) alone fill ``max_bytes``,
    or the disk is full.  Nothing of the batch was written and no checkpoint moved;
    retry later (back-pressure, not loss)."""


# ---------------------------------------------------------------------------
# value types


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One document to store: the columns the CLI filters on plus the JSON document.

    ``doc`` is the uncompressed JSON (``orjson.dumps(JobRecord.to_doc(...))``);
    the store compresses it.  ``end_time`` is the completion, removal or hold
    time (epoch seconds) or None while the job is alive; ``updated_at`` is when
    the daemon observed this version (epoch seconds).  ``source`` is the
    ``JobRecord.source`` (``history``, ``queue``, ``eventlog``...; None when
    unknown, which counts as a full job ad): see :func:`write_verdict`.
    """

    doc_id: str
    kind: str
    pool: str
    schedd: str
    global_job_id: str
    owner: str | None
    status: str
    site: str | None
    category: str | None
    rule: str | None
    signature: str | None
    signature_hash: str | None
    explanation: str | None
    end_time: float | None
    updated_at: float
    doc: bytes
    source: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"StoredRecord.kind must be one of {KINDS}, not {self.kind!r}")
        if not isinstance(self.doc, (bytes, bytearray, memoryview)):
            raise TypeError("StoredRecord.doc must be the JSON document as bytes")
        if not self.doc_id:
            raise ValueError("StoredRecord.doc_id must not be empty")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A source's position, e.g. ``Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", '{"cluster": ...}')``."""

    pool: str
    schedd: str
    source: str
    value: str


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A document waiting for Elasticsearch.  ``doc`` is the latest version's JSON."""

    seq: int
    doc_id: str
    kind: str
    end_time: float | None
    updated_at: float
    doc: bytes
    attempts: int
    last_error: str | None

    @property
    def index_time(self) -> float:
        """The time to pick a time-based index by: end time, else when last updated."""
        return self.end_time if self.end_time is not None else self.updated_at


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A document Elasticsearch rejected for good (mapping/parse error), with the reason."""

    doc_id: str
    kind: str
    seq: int
    reason: str
    attempts: int
    failed_at: float
    end_time: float | None
    doc: bytes


@dataclass(frozen=True, slots=True)
class FailureRow:
    """One failed job (or attempt) from the history, for ``opos-monitor failures``."""

    doc_id: str
    kind: str
    pool: str
    schedd: str
    global_job_id: str
    owner: str | None
    status: str
    site: str | None
    category: str
    rule: str | None
    signature: str | None
    signature_hash: str | None
    explanation: str | None
    end_time: float | None
    updated_at: float

    @property
    def time(self) -> float:
        return self.end_time if self.end_time is not None else self.updated_at


class SignatureCount(NamedTuple):
    """A failure signature with how many failures carry it and the newest example."""

    signature_hash: str | None
    signature: str | None
    category: str
    count: int
    explanation: str | None
    last_seen: float
    rule: str | None


@dataclass(frozen=True, slots=True)
class StoredDoc:
    """A stored document for ``explain``: summary columns plus the decoded JSON."""

    doc_id: str
    kind: str
    pool: str
    schedd: str
    global_job_id: str
    status: str
    category: str | None
    end_time: float | None
    updated_at: float
    doc: dict[str, Any]


# ---------------------------------------------------------------------------
# pure helpers


def end_time_of(record: JobRecord) -> float | None:
    """When the job ended or stopped (epoch s), by its current status.

    held: the hold time; removed: the removal time (else its completion date);
    completed: the completion date (else when it entered that status); a job
    still alive (idle, running, ...) has none.
    """
    status = record.status
    if status == "held":
        times = (record.hold_time,)
    elif status == "removed":
        times = (record.removal_time, record.completion_date)
    elif status == "completed":
        times = (record.completion_date, record.entered_current_status)
    else:
        return None
    for t in times:
        if t is not None:
            return t.timestamp()
    return None


def job_key(global_job_id: str) -> str | None:
    """``"123.4"`` from a GlobalJobId ``schedd#123.4#qdate`` (also the synthetic ids)."""
    parts = global_job_id.split("#")
    if len(parts) >= 3 and parts[1]:
        return parts[1]
    return None


def stored_from(
    record: JobRecord,
    verdict_dict: Mapping[str, Any] | None,
    site: str | None,
    *,
    attempt: int | None = None,
    updated_at: float | None = None,
) -> StoredRecord:
    """The :class:`StoredRecord` for a job record and its classification.

    ``verdict_dict`` is ``Verdict.to_dict()`` (or None when not classified);
    it and ``site`` go into the document's ``opos`` object.  With ``attempt``
    the record is a per-attempt record (``kind="attempt"``, id from
    ``JobRecord.attempt_doc_id``).
    """
    v = dict(verdict_dict or {})
    derived: dict[str, Any] = dict(v)
    if site is not None:
        derived["site"] = site
    if attempt is not None:
        derived["attempt"] = int(attempt)
    doc = orjson.dumps(record.to_doc(derived))
    return StoredRecord(
        doc_id=record.attempt_doc_id(attempt) if attempt is not None else record.doc_id(),
        kind="attempt" if attempt is not None else "job",
        pool=record.pool,
        schedd=record.schedd,
        global_job_id=record.global_job_id,
        owner=record.owner,
        status=record.status,
        site=site,
        category=v.get("category"),
        rule=v.get("rule"),
        signature=v.get("signature"),
        signature_hash=v.get("signature_hash"),
        explanation=v.get("explanation"),
        end_time=end_time_of(record),
        updated_at=time.time() if updated_at is None else float(updated_at),
        doc=doc,
        source=record.source,
    )


class Version(NamedTuple):
    """What the write rule looks at in one version of a document (stored or incoming)."""

    doc_hash: bytes
    status: str
    source: str | None  # JobRecord.source; None: unknown, counts as a full job ad


def write_verdict(stored: Version | None, incoming: Version) -> str:
    """Whether ``incoming`` replaces the ``stored`` version of the same document.

    * ``"new"``: nothing stored under this id; written.
    * ``"same"``: byte-identical document; not rewritten, not re-enqueued.
    * ``"stale"``: the stored version is final (completed/removed) and the incoming
      one is not (a queue poll committed after the history record); skipped.
    * ``"thinner"``: both are final, the incoming one comes from an event log and the
      stored one from the schedd's job ad (history, queue, ad file), which has the
      schedd's own values and many more attributes; skipped.
    * ``"changed"``: anything else; written and re-enqueued.  So a schedd version
      always replaces an event-log one (unless that would undo a final state), an
      event-log version replaces a schedd version that is not final (an idle, running
      or held queue record), and a version from the same kind of source replaces the
      previous one (e.g. a reclassification).

    ``stored.source`` matters only when both are final and ``incoming`` is from an
    event log (:func:`_needs_stored_source`).
    """
    if stored is None:
        return "new"
    if stored.doc_hash == incoming.doc_hash:
        return "same"
    if stored.status in TERMINAL:
        if incoming.status not in TERMINAL:
            return "stale"
        if incoming.source in THIN_SOURCES and stored.source not in THIN_SOURCES:
            return "thinner"
    return "changed"


def _needs_stored_source(doc_hash: bytes, status: str, incoming: Version) -> bool:
    """Whether :func:`write_verdict` looks at the stored version's source (the store then
    reads it from the stored document)."""
    return (
        incoming.source in THIN_SOURCES and status in TERMINAL and incoming.status in TERMINAL
        and doc_hash != incoming.doc_hash
    )


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Delay before retry number ``attempts`` (1-based): base * 2**(attempts-1), capped."""
    return min(max_s, base_s * 2.0 ** min(max(attempts - 1, 0), 60))


def encode_doc(doc: bytes, compress: bool, zdict: bytes | None = None) -> tuple[int, bytes]:
    """``(codec, blob)`` for a JSON document: raw, zlib level 1, or zlib level 1 with a preset dictionary."""
    if not compress:
        return CODEC_RAW, bytes(doc)
    if zdict:
        c = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
        return CODEC_ZDICT, c.compress(doc) + c.flush()
    return CODEC_ZLIB, zlib.compress(doc, 1)


def decode_doc(codec: int, blob: bytes, zdict: bytes | None = None) -> bytes:
    """The JSON bytes of a stored blob."""
    if codec == CODEC_ZDICT:
        if not zdict:
            raise StoreError("a document needs the store's compression dictionary, which is missing")
        d = zlib.decompressobj(zlib.MAX_WBITS, zdict)
        return d.decompress(blob) + d.flush()
    if codec == CODEC_ZLIB:
        return zlib.decompress(blob)
    if codec == CODEC_RAW:
        return bytes(blob)
    raise StoreError(f"unknown document codec {codec} (written by a newer opos-monitor?)")


def make_zdict(docs: Sequence[bytes], size: int = ZDICT_BYTES) -> bytes | None:
    """A preset dictionary from the first documents: the last ``size`` bytes of the first
    ones joined (zlib favours the end of a dictionary).  None when there is too little."""
    parts: list[bytes] = []
    n = 0
    for d in docs:
        parts.append(bytes(d))
        n += len(d)
        if n >= size:
            break
    if n < 1024:
        return None
    return b"".join(parts)[-size:]


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def history_filter(
    *,
    failed_only: bool,
    since: float | None = None,
    until: float | None = None,
    site: str | None = None,
    category: str | None = None,
    schedd: str | None = None,
    owner: str | None = None,
    signature: str | None = None,
) -> tuple[str, list[Any]]:
    """``(WHERE clause, parameters)`` for the history tables.

    site, category and owner match whole values, case-insensitively; schedd
    also matches its short name ("jobsub01" for "jobsub01.fnal.gov");
    signature matches a signature hash (or its prefix) or a piece of the
    signature template.
    """
    where: list[str] = []
    params: list[Any] = []
    if failed_only:
        where.append("category <> 'none'")
    if since is not None:
        where.append("event_time >= ?")
        params.append(float(since))
    if until is not None:
        where.append("event_time < ?")
        params.append(float(until))
    if site:
        where.append("site = ?")
        params.append(site)
    if category:
        where.append("category = ?")
        params.append(category)
    if schedd:
        where.append("(schedd = ? OR schedd LIKE ? ESCAPE '\\')")
        params += [schedd, _escape_like(schedd) + ".%"]
    if owner:
        where.append("owner = ?")
        params.append(owner)
    if signature:
        where.append("(signature_hash LIKE ? ESCAPE '\\' OR instr(lower(signature), lower(?)) > 0)")
        params += [_escape_like(signature.lower()) + "%", signature]
    return (" WHERE " + " AND ".join(where)) if where else "", params


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# ---------------------------------------------------------------------------
# schema

_HISTORY_COLUMNS = (
    "doc_id TEXT PRIMARY KEY,"
    " pool TEXT NOT NULL,"
    " schedd TEXT NOT NULL COLLATE NOCASE,"
    " global_job_id TEXT NOT NULL,"
    " job_key TEXT,"
    " owner TEXT COLLATE NOCASE,"
    " status TEXT NOT NULL,"
    " site TEXT COLLATE NOCASE,"
    " category TEXT COLLATE NOCASE,"
    " rule TEXT,"
    " signature TEXT,"
    " signature_hash TEXT,"
    " explanation TEXT,"
    " end_time REAL,"
    " updated_at REAL NOT NULL,"
    " event_time REAL NOT NULL,"  # end_time, else updated_at: what --since and pruning use
    " doc_hash BLOB NOT NULL,"
    " codec INTEGER NOT NULL,"
    " doc BLOB NOT NULL"
)
_COLS = (
    "doc_id", "pool", "schedd", "global_job_id", "job_key", "owner", "status", "site", "category", "rule",
    "signature", "signature_hash", "explanation", "end_time", "updated_at", "event_time", "doc_hash", "codec", "doc",
)
_SUMMARY = "doc_id, pool, schedd, global_job_id, owner, status, site, category, rule, signature, signature_hash, " \
           "explanation, end_time, updated_at"


def _history_ddl(table: str) -> tuple[str, ...]:
    return (
        f"CREATE TABLE {table} ({_HISTORY_COLUMNS})",
        f"CREATE INDEX {table}_category_time ON {table}(category, event_time)",
        f"CREATE INDEX {table}_site_time ON {table}(site, event_time)",
        # failures by time, covering what top_signatures() groups on (no table reads for the counts)
        f"CREATE INDEX {table}_failed_time ON {table}(event_time, category, signature_hash, rule)"
        " WHERE category <> 'none'",
        f"CREATE INDEX {table}_signature ON {table}(signature_hash)",
        f"CREATE INDEX {table}_gjid ON {table}(global_job_id)",
        f"CREATE INDEX {table}_job_key ON {table}(job_key)",
    )


#: migrations[i] brings the schema from version i to i+1; never edit a released one
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        *_history_ddl("records"),
        *_history_ddl("attempts"),
        "CREATE TABLE outbox ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " doc_id TEXT NOT NULL UNIQUE,"
        " kind TEXT NOT NULL,"
        " enqueued_at REAL NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " next_try REAL NOT NULL DEFAULT 0,"
        " last_error TEXT)",
        "CREATE TABLE dead_letters ("
        " doc_id TEXT PRIMARY KEY,"
        " kind TEXT NOT NULL,"
        " seq INTEGER NOT NULL,"
        " reason TEXT NOT NULL,"
        " attempts INTEGER NOT NULL,"
        " failed_at REAL NOT NULL,"
        " end_time REAL,"
        " codec INTEGER NOT NULL,"
        " doc BLOB NOT NULL)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        "CREATE TABLE checkpoints ("
        " pool TEXT NOT NULL, schedd TEXT NOT NULL, source TEXT NOT NULL,"
        " value TEXT NOT NULL, updated_at REAL NOT NULL,"
        " PRIMARY KEY (pool, schedd, source)) WITHOUT ROWID",
        # exact counts for the metrics without COUNT(*) scans, kept by triggers
        # (never use INSERT OR REPLACE on these tables: REPLACE skips delete triggers)
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO counters VALUES ('outbox', 0), ('dead', 0)",
        "CREATE TRIGGER outbox_ins AFTER INSERT ON outbox BEGIN"
        " UPDATE counters SET value = value + 1 WHERE name = 'outbox'; END",
        "CREATE TRIGGER outbox_del AFTER DELETE ON outbox BEGIN"
        " UPDATE counters SET value = value - 1 WHERE name = 'outbox'; END",
        "CREATE TRIGGER dead_ins AFTER INSERT ON dead_letters BEGIN"
        " UPDATE counters SET value = value + 1 WHERE name = 'dead'; END",
        "CREATE TRIGGER dead_del AFTER DELETE ON dead_letters BEGIN"
        " UPDATE counters SET value = value - 1 WHERE name = 'dead'; END",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _reason(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    if text == "file is not a database":
        return "not a SQLite database (corrupt, or another kind of file)"
    if "malformed" in text:
        return f"corrupt database ({text})"
    return text


# ---------------------------------------------------------------------------
# the store


class Store:
    """The durable local store.  Create with :meth:`Store.open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        max_bytes: int,
        outbox_enabled: bool,
        compress: bool,
        retry_base_s: float,
        retry_max_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self.max_bytes = int(max_bytes)
        self.outbox_enabled = outbox_enabled
        self.compress = compress
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._clock = clock
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._full = False
        self._pruned_total = 0
        self._full_total = 0
        self._stale_total = 0
        self._thinner_total = 0
        self._prune_futile_until = 0.0  # monotonic; see _make_room
        self._closed = False
        self.read_only = False  # see open_readonly()
        self._zdict: bytes | None = None
        self._load_zdict()

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        outbox_enabled: bool = True,
        synchronous: str = "FULL",
        compress: bool = True,
        check: bool = True,
        busy_timeout_s: float = 30.0,
        retry_base_s: float = 5.0,
        retry_max_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> "Store":
        """Open (creating if needed) the store at ``path``.

        Raises :class:`StoreError` with a one-line message for an unwritable
        location, a file that is not a (healthy) SQLite database, a database
        that is not an opos-monitor store, or a schema newer than this code.
        ``synchronous``: ``"FULL"`` (default; a returned commit survives power
        loss) or ``"NORMAL"`` (survives a process kill; the last commits may be
        lost on power loss).  ``check`` runs ``PRAGMA quick_check``.
        """
        p = Path(path)
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        _check_location(p)
        try:
            conn = sqlite3.connect(
                str(p), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"store {p}: cannot open: {_reason(exc)}") from None
        try:
            _configure(conn, synchronous.upper())
            if check:
                _quick_check(conn, p)
            _migrate(conn, p)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            reason = _reason(exc)
            if reason.startswith(("not a SQLite", "corrupt")):
                reason += "; move the file aside to start a new store"
            raise StoreError(f"store {p}: {reason}") from None
        return cls(
            conn, p, max_bytes=max_bytes, outbox_enabled=outbox_enabled, compress=compress,
            retry_base_s=retry_base_s, retry_max_s=retry_max_s, clock=clock,
        )

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> "Store":
        """Open an existing store for queries only (``failures``, ``explain``): needs read
        access to the file, never write access to it or its directory (a shifter's account
        in the daemon's group). Every write raises :class:`StoreError`.

        While the daemon runs, SQLite's ``-wal``/``-shm`` files exist and readers share them.
        When it is stopped they are gone, and a user who cannot create them reads the file as
        immutable (safe: nothing writes it; a daemon starting meanwhile is not seen).
        """
        p = Path(path)
        if not p.is_file():
            raise StoreError(f"store {p}: no such file (has the daemon run with this store.path?)")
        if not os.access(p, os.R_OK):
            raise StoreError(f"store {p}: not readable by this user (the daemon's group can read it; "
                             f"see docs/store.md)")
        quiet = not Path(f"{p}-wal").exists() and not os.access(p.parent, os.W_OK | os.X_OK)
        uri = f"file:{urllib.parse.quote(str(p))}?{'immutable=1' if quiet else 'mode=ro'}"
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            version = _schema_version(conn, p)
        except StoreError:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"store {p}: cannot open for reading: {_reason(exc)}") from None
        if version != SCHEMA_VERSION:
            conn.close()
            hint = ("upgrade opos-monitor" if version > SCHEMA_VERSION
                    else "the daemon migrates it when it next starts")
            raise StoreError(f"store {p}: schema version {version}, this opos-monitor reads {SCHEMA_VERSION}; {hint}")
        store = cls(conn, p, max_bytes=1, outbox_enabled=False, compress=True, retry_base_s=5.0,
                    retry_max_s=600.0, clock=time.time)
        store.read_only = True
        return store

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.read_only:
                self._conn.close()
                return
            try:
                self._conn.execute("PRAGMA optimize")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # another process may hold a read lock; the WAL stays valid
            finally:
                self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any error."""
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self.path}: already closed")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise self._wrap(exc) from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self.path}: already closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._wrap(exc) from exc

    def _wrap(self, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            self._full = True
            self._full_total += 1
            return StoreFull(f"store {self.path}: disk full ({exc})")
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return StoreError(f"store {self.path}: locked by another process for too long ({exc})")
        return StoreError(f"store {self.path}: {_reason(exc)}")

    # -- writing ---------------------------------------------------------

    def commit_batch(
        self,
        items: Sequence[StoredRecord],
        checkpoint: Checkpoint | Sequence[Checkpoint] | None = None,
    ) -> int:
        """Store ``items`` and move ``checkpoint`` in one durable transaction.

        Each record is upserted by ``doc_id`` (the last one wins if a batch
        repeats an id); a record whose document is unchanged is not rewritten
        nor re-enqueued, a non-final version (idle, running, held...) never
        replaces a stored final one (completed, removed): see ``stale_total``,
        and an event-log version never replaces a stored final version from
        the schedd's job ad: see ``thinner_total`` and :func:`write_verdict`.
        Only records written are enqueued in the outbox (when it is enabled);
        the checkpoint moves either way.  Returns the number of records
        written (new or changed).  Raises
        :class:`StoreFull` when there is no room (nothing written, the
        checkpoint does not move); other failures raise :class:`StoreError`
        (also nothing written).
        """
        rows = _prepare(items)
        cps = [checkpoint] if isinstance(checkpoint, Checkpoint) else list(checkpoint or ())
        if rows:
            # compress, outside the lock, only what is new or changed (re-delivery is cheap)
            with self._read() as conn:
                known = {kind: _stored_state(conn, _TABLE[kind], krows, self._dict_for)
                         for kind, krows in rows.items()}
            zdict = self._zdict
            for kind, krows in rows.items():
                for r in krows:
                    if write_verdict(known[kind].get(r.doc_id), r.version) in ("new", "changed"):
                        r.encode(self.compress, zdict)
        incoming = sum(len(r.blob) + _ROW_OVERHEAD for krows in rows.values() for r in krows if r.blob is not None)
        new_zdict: bytes | None = None
        with self._lock:
            if incoming:
                self._make_room(incoming)
            now = self._clock()
            stale = thinner = 0
            with self._tx() as conn:
                written: list[_Row] = []
                for kind, krows in rows.items():
                    state = _stored_state(conn, _TABLE[kind], krows, self._dict_for)
                    verdicts = [write_verdict(state.get(r.doc_id), r.version) for r in krows]
                    stale += verdicts.count("stale")
                    thinner += verdicts.count("thinner")
                    changed = [r for r, v in zip(krows, verdicts) if v in ("new", "changed")]
                    if not changed:
                        continue
                    for r in changed:
                        if r.blob is None:  # changed by another writer since the pre-check
                            r.encode(self.compress, self._zdict)
                    written += changed
                    _upsert(conn, _TABLE[kind], [r.sql() for r in changed])
                    if self.outbox_enabled:
                        _enqueue(conn, [(r.doc_id, kind) for r in changed], now)
                if cps:
                    conn.executemany(
                        "INSERT INTO checkpoints(pool, schedd, source, value, updated_at) VALUES (?,?,?,?,?)"
                        " ON CONFLICT(pool, schedd, source) DO UPDATE SET value = excluded.value,"
                        " updated_at = excluded.updated_at",
                        [(c.pool, c.schedd, c.source, str(c.value), now) for c in cps],
                    )
                if self.compress and self._zdict is None and written:
                    new_zdict = _ensure_zdict(conn, [r.doc for r in written])
            self._stale_total += stale
            self._thinner_total += thinner
            if new_zdict is not None:
                self._zdict = new_zdict
            if incoming:
                self._full = False
        return len(written)

    # -- checkpoints -----------------------------------------------------

    def checkpoint(self, pool: str, schedd: str, source: str) -> str | None:
        """The stored checkpoint value of one source, or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT value FROM checkpoints WHERE pool = ? AND schedd = ? AND source = ?", (pool, schedd, source)
            ).fetchone()
        return row[0] if row else None

    def checkpoints(self) -> dict[tuple[str, str, str], str]:
        """Every checkpoint: ``{(pool, schedd, source): value}``."""
        with self._read() as conn:
            rows = conn.execute("SELECT pool, schedd, source, value FROM checkpoints").fetchall()
        return {(p, s, src): v for p, s, src, v in rows}

    # -- outbox ----------------------------------------------------------

    def outbox_take(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` pending documents due now, oldest first (not removed: ack them).

        A read only: items stay pending until :meth:`outbox_ack`,
        :meth:`outbox_retry` or :meth:`outbox_dead`.  Meant for one shipper;
        two shippers taking at once would get the same items.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT o.seq, o.doc_id, o.kind, o.attempts, o.last_error,"
                " COALESCE(r.end_time, a.end_time), COALESCE(r.updated_at, a.updated_at),"
                " COALESCE(r.codec, a.codec), COALESCE(r.doc, a.doc)"
                " FROM outbox o"
                " LEFT JOIN records r ON o.kind = 'job' AND r.doc_id = o.doc_id"
                " LEFT JOIN attempts a ON o.kind = 'attempt' AND a.doc_id = o.doc_id"
                " WHERE o.next_try <= ? ORDER BY o.seq LIMIT ?",
                (self._clock(), int(limit)),
            ).fetchall()
        zdict = self._dict_for(r[7] for r in rows)
        orphans = [r[0] for r in rows if r[8] is None]
        if orphans:  # the record is gone (pruned while the outbox was disabled): nothing to ship
            with self._tx() as conn:
                _delete_seqs(conn, "outbox", orphans)
        return [
            OutboxItem(seq, doc_id, kind, end, upd, decode_doc(codec, blob, zdict), attempts, err)
            for seq, doc_id, kind, attempts, err, end, upd, codec, blob in rows
            if blob is not None
        ]

    def outbox_ack(self, seqs: Iterable[int]) -> int:
        """Remove delivered items by ``seq``; returns how many were removed.

        A document re-enqueued after the take has a new seq and stays pending.
        A dead letter for an acknowledged document is obsolete and removed.
        """
        seqs = list(seqs)
        if not seqs:
            return 0
        n = 0
        self._prune_futile_until = 0.0  # acked records can be pruned now
        with self._tx() as conn:
            for chunk in _chunks(seqs, _IN_CHUNK):
                conn.execute(
                    f"DELETE FROM dead_letters WHERE doc_id IN"
                    f" (SELECT doc_id FROM outbox WHERE seq IN ({_marks(len(chunk))}))",
                    chunk,
                )
                n += conn.execute(f"DELETE FROM outbox WHERE seq IN ({_marks(len(chunk))})", chunk).rowcount
        return n

    def outbox_retry(self, seqs: Iterable[int], error: str) -> int:
        """Count a failed delivery: attempts+1, last error, next try after exponential backoff."""
        seqs = list(seqs)
        if not seqs:
            return 0
        now = self._clock()
        n = 0
        with self._tx() as conn:
            for chunk in _chunks(seqs, _IN_CHUNK):
                rows = conn.execute(
                    f"SELECT seq, attempts FROM outbox WHERE seq IN ({_marks(len(chunk))})", chunk
                ).fetchall()
                conn.executemany(
                    "UPDATE outbox SET attempts = ?, last_error = ?, next_try = ? WHERE seq = ?",
                    [(a + 1, error, now + backoff_s(a + 1, self.retry_base_s, self.retry_max_s), s) for s, a in rows],
                )
                n += len(rows)
        return n

    def outbox_dead(self, seq: int, reason: str) -> bool:
        """Move item ``seq`` to the dead letters with the full reason and a copy of the document.

        Returns False when ``seq`` is no longer pending (acked, or superseded by
        a newer version of the document, which stays pending).
        """
        now = self._clock()
        with self._tx() as conn:
            row = conn.execute("SELECT doc_id, kind, attempts FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return False
            doc_id, kind, attempts = row
            rec = conn.execute(
                f"SELECT end_time, codec, doc FROM {_TABLE[kind]} WHERE doc_id = ?", (doc_id,)
            ).fetchone()
            conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            if rec is None:
                return False
            conn.execute("DELETE FROM dead_letters WHERE doc_id = ?", (doc_id,))
            conn.execute(
                "INSERT INTO dead_letters(doc_id, kind, seq, reason, attempts, failed_at, end_time, codec, doc)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (doc_id, kind, seq, str(reason), attempts + 1, now, rec[0], rec[1], rec[2]),
            )
        return True

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT doc_id, kind, seq, reason, attempts, failed_at, end_time, codec, doc"
                " FROM dead_letters ORDER BY failed_at DESC, seq DESC LIMIT ?",
                (int(limit),),
            ).fetchall()
        zdict = self._dict_for(r[7] for r in rows)
        return [DeadLetter(d, k, s, r, a, f, e, decode_doc(c, b, zdict)) for d, k, s, r, a, f, e, c, b in rows]

    def requeue_dead(self, doc_ids: Iterable[str] | None = None) -> int:
        """Put dead letters (all, or these ids) back in the outbox; returns how many.

        The latest stored version of each document is what will be shipped.
        """
        now = self._clock()
        with self._tx() as conn:
            if doc_ids is None:
                rows = conn.execute("SELECT doc_id, kind FROM dead_letters").fetchall()
            else:
                ids = list(doc_ids)
                rows = []
                for chunk in _chunks(ids, _IN_CHUNK):
                    rows += conn.execute(
                        f"SELECT doc_id, kind FROM dead_letters WHERE doc_id IN ({_marks(len(chunk))})", chunk
                    ).fetchall()
            _enqueue(conn, rows, now)
            conn.executemany("DELETE FROM dead_letters WHERE doc_id = ?", [(d,) for d, _ in rows])
        return len(rows)

    def requeue_range(self, since: float | None, until: float | None, *, kinds: Sequence[str] = KINDS) -> int:
        """Enqueue every stored record whose end time (else update time) is in [since, until)."""
        where, params = history_filter(failed_only=False, since=since, until=until)
        now = self._clock()
        n = 0
        with self._tx() as conn:
            for kind in kinds:
                ids = [r[0] for r in conn.execute(f"SELECT doc_id FROM {_TABLE[kind]}{where}", params)]
                _enqueue(conn, [(d, kind) for d in ids], now)
                n += len(ids)
        return n

    def pending_count(self) -> int:
        """Documents waiting in the outbox (cheap: a counter row kept by triggers)."""
        with self._read() as conn:
            return int(conn.execute("SELECT value FROM counters WHERE name = 'outbox'").fetchone()[0])

    def dead_count(self) -> int:
        """Dead letters (cheap)."""
        with self._read() as conn:
            return int(conn.execute("SELECT value FROM counters WHERE name = 'dead'").fetchone()[0])

    # -- size ------------------------------------------------------------

    @property
    def full(self) -> bool:
        """True since the last batch was refused for lack of room, until one is accepted."""
        return self._full

    @property
    def pruned_total(self) -> int:
        """History records pruned to stay under max_bytes (by this process)."""
        return self._pruned_total

    @property
    def stale_total(self) -> int:
        """Records not written because the stored version is final (completed/removed) and
        the incoming one is not: a late queue poll after the history record (by this process)."""
        return self._stale_total

    @property
    def thinner_total(self) -> int:
        """Event-log records not written because the stored version of the job is a final one
        from the schedd's job ad (history, queue, ad file), which is richer (by this process)."""
        return self._thinner_total

    @property
    def full_total(self) -> int:
        """Batches refused with StoreFull (by this process)."""
        return self._full_total

    def _load_zdict(self) -> None:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'zdict'").fetchone()
        if row is not None:
            self._zdict = bytes(row[0])

    def _dict_for(self, codecs: Iterable[int]) -> bytes | None:
        """The preset dictionary, (re)loaded if these codecs need it (another process may have made it)."""
        if self._zdict is None and CODEC_ZDICT in set(codecs):
            self._load_zdict()
        return self._zdict

    def size_bytes(self) -> int:
        """Size of the main database file (page_count * page_size; WAL not included)."""
        with self._read() as conn:
            return int(conn.execute("PRAGMA page_count").fetchone()[0]) * self._page_size

    def used_bytes(self) -> int:
        """Bytes in use: the file minus its free pages (what max_bytes limits)."""
        with self._read() as conn:
            return self._used(conn)

    def _used(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (int(pages) - int(free)) * self._page_size

    def _make_room(self, incoming: int) -> None:
        """Prune history until ``incoming`` more bytes fit, else raise StoreFull."""
        with self._read() as conn:
            used = self._used(conn)
        if used + incoming <= self.max_bytes:
            return
        # when a prune pass found nothing to delete (everything pending or dead), do not
        # rescan the whole history for every refused batch: wait for an ack, or 30 s
        # (acks by another process)
        if time.monotonic() >= self._prune_futile_until:
            used = self._prune(self.max_bytes * LOW_WATER - incoming)
        if used + incoming > self.max_bytes:
            self._prune_futile_until = time.monotonic() + 30.0
            self._full = True
            self._full_total += 1
            raise StoreFull(
                f"store {self.path}: full ({used} of {self.max_bytes} bytes in use, mostly records not yet"
                f" shipped or dead letters; {incoming} more needed)"
            )

    def _prune(self, target: float) -> int:
        """Delete unpinned history, successes before failures, oldest first, until used <= target."""
        pinned = "NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.doc_id = h.doc_id)"
        if self.outbox_enabled:
            pinned += " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.doc_id = h.doc_id)"
        tiers = [
            (table, cond)
            for cond in ("(h.category IS NULL OR h.category = 'none')", "h.category <> 'none'")
            for table in ("attempts", "records")
        ]
        with self._read() as conn:
            used = self._used(conn)
        for table, cond in tiers:
            while used > target:
                with self._tx() as conn:
                    ids = [
                        r[0]
                        for r in conn.execute(
                            f"SELECT h.doc_id FROM {table} h WHERE {cond} AND {pinned}"
                            f" ORDER BY h.event_time LIMIT {_PRUNE_CHUNK}"
                        )
                    ]
                    if ids:
                        conn.execute(f"DELETE FROM {table} WHERE doc_id IN ({_marks(len(ids))})", ids)
                        if not self.outbox_enabled:
                            conn.execute(f"DELETE FROM outbox WHERE doc_id IN ({_marks(len(ids))})", ids)
                    used = self._used(conn)
                self._pruned_total += len(ids)
                if not ids:
                    break
        with self._lock:
            if self.size_bytes() > self.max_bytes:  # e.g. max_bytes was lowered: give pages back
                # executescript steps the pragma to completion (execute() frees one page)
                self._conn.executescript("PRAGMA incremental_vacuum;")
        return used

    # -- history queries -------------------------------------------------

    def sites(self, since: float | None = None, limit: int = 500) -> list[str]:
        """Distinct sites of stored job records (ended or seen after ``since``), most records
        first: the sites worth declaring in the metrics at start-up."""
        where, params = ("WHERE site IS NOT NULL", []) if since is None else \
            ("WHERE site IS NOT NULL AND event_time >= ?", [float(since)])
        with self._read() as conn:
            rows = conn.execute(f"SELECT site, COUNT(*) AS n FROM records {where} GROUP BY site"
                                " ORDER BY n DESC, site LIMIT ?", [*params, int(limit)]).fetchall()
        return [r[0] for r in rows]

    def failures(
        self,
        since: float | None = None,
        *,
        site: str | None = None,
        category: str | None = None,
        schedd: str | None = None,
        owner: str | None = None,
        signature: str | None = None,
        until: float | None = None,
        kind: str = "job",
        limit: int = 100,
    ) -> list[FailureRow]:
        """Failed records (category other than ``none``), newest first."""
        where, params = history_filter(
            failed_only=True, since=since, until=until, site=site, category=category,
            schedd=schedd, owner=owner, signature=signature,
        )
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_SUMMARY} FROM {_TABLE[kind]}{where} ORDER BY event_time DESC, doc_id LIMIT ?",
                [*params, int(limit)],
            ).fetchall()
        return [FailureRow(r[0], kind, *r[1:]) for r in rows]

    def top_signatures(
        self,
        since: float | None = None,
        *,
        site: str | None = None,
        category: str | None = None,
        schedd: str | None = None,
        owner: str | None = None,
        signature: str | None = None,
        until: float | None = None,
        kind: str = "job",
        limit: int = 10,
    ) -> list[SignatureCount]:
        """The most frequent failure signatures under the same filters as :meth:`failures`.

        Failures without a signature are grouped by their rule (``signature_hash``
        None, ``rule`` set).  The explanation and rule are the newest failure's.
        """
        where, params = history_filter(
            failed_only=True, since=since, until=until, site=site, category=category,
            schedd=schedd, owner=owner, signature=signature,
        )
        table = _TABLE[kind]
        out: list[SignatureCount] = []
        with self._read() as conn:
            # 1. counts from the covering index; with exactly one max(), SQLite takes the
            #    bare columns (signature_hash, rule) from the newest row of each group
            groups = conn.execute(
                f"SELECT signature_hash, COALESCE(rule, category) AS r, COUNT(*) AS n, MAX(event_time) AS last"
                f" FROM {table}{where}"
                f" GROUP BY COALESCE(signature_hash, 'rule:' || COALESCE(rule, category))"
                f" ORDER BY n DESC, last DESC LIMIT ?",
                [*params, int(limit)],
            ).fetchall()
            # 2. the newest failure of each group, for its template and explanation
            for sig_hash, rule_key, n, last in groups:
                group = "signature_hash = ?" if sig_hash is not None else \
                    "signature_hash IS NULL AND COALESCE(rule, category) = ?"
                ex = conn.execute(
                    f"SELECT signature, category, explanation, rule FROM {table}{where}"
                    f"{' AND' if where else ' WHERE'} {group} AND event_time = ? LIMIT 1",
                    [*params, sig_hash if sig_hash is not None else rule_key, last],
                ).fetchone()
                signature, category, explanation, rule = ex
                out.append(SignatureCount(sig_hash, signature, category, n, explanation, last, rule))
        return out

    def job(self, key: str, schedd: str | None = None) -> list[StoredDoc]:
        """The stored documents of one job for ``explain``: the job record, then its attempts.

        ``key``: a GlobalJobId (``schedd#123.0#1718000000``), ``"cluster.proc"``
        or ``"cluster"`` (proc 0; optionally narrowed by ``schedd``), or a
        document id.
        """
        key = key.strip()
        params: list[Any]
        if "#" in key:
            cond, params = "global_job_id = ?", [key]
        elif re.fullmatch(r"[0-9a-f]{40}", key):
            cond, params = "doc_id = ?", [key]
        elif re.fullmatch(r"\d+(\.\d+)?", key):
            cond, params = "job_key = ?", [key if "." in key else key + ".0"]
        else:
            raise ValueError(f"{key!r} is not a GlobalJobId, cluster.proc or document id")
        if schedd:
            cond += " AND (schedd = ? OR schedd LIKE ? ESCAPE '\\')"
            params += [schedd, _escape_like(schedd) + ".%"]
        out: list[tuple[Any, ...]] = []
        with self._read() as conn:
            for kind in KINDS:
                for r in conn.execute(
                    f"SELECT doc_id, pool, schedd, global_job_id, status, category, end_time, updated_at, codec, doc"
                    f" FROM {_TABLE[kind]} WHERE {cond} ORDER BY updated_at",
                    params,
                ):
                    out.append((kind, *r))
        zdict = self._dict_for(r[9] for r in out)
        return [
            StoredDoc(d, kind, p, s, g, st, c, e, u, orjson.loads(decode_doc(codec, blob, zdict)))
            for kind, d, p, s, g, st, c, e, u, codec, blob in out
        ]

    def counts(self) -> dict[str, int]:
        """Rows per table (a full count: for the CLI and tests, not for every scrape)."""
        with self._read() as conn:
            return {
                t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("records", "attempts", "outbox", "dead_letters", "checkpoints")
            }


# ---------------------------------------------------------------------------
# module-private steps


def _check_location(p: Path) -> None:
    """Fail early, in words, when the store cannot live at ``p``."""
    if p.is_dir():
        raise StoreError(f"store {p}: is a directory (store.path must name a file)")
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"store {p}: cannot create directory {parent}: a path component is not a directory") from None
    except OSError as exc:
        raise StoreError(f"store {p}: cannot create directory {parent}: {_reason(exc)}") from None
    if not parent.is_dir():
        raise StoreError(f"store {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"store {p}: directory {parent} is not writable (SQLite needs it for the WAL files)")
    if p.exists() and not os.access(p, os.R_OK | os.W_OK):
        raise StoreError(f"store {p}: file is not readable and writable by this user")


def _configure(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only on a new, empty file
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"store: cannot use WAL journal mode here (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL back to 64 MiB after checkpoints
    conn.execute("PRAGMA foreign_keys = OFF")


def _quick_check(conn: sqlite3.Connection, p: Path) -> None:
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    if rows != ["ok"]:
        lines = [ln.strip() for r in rows for ln in str(r).splitlines() if ln.strip() and not ln.startswith("***")]
        detail = "; ".join(lines[:2]) + ("; ..." if len(lines) > 2 else "")
        raise StoreError(f"store {p}: failed the integrity check ({detail}); move the file aside to start a new store")


def _schema_version(conn: sqlite3.Connection, p: Path) -> int:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        others = sorted(tables - {"sqlite_sequence"})
        if others:
            raise StoreError(
                f"store {p}: not an opos-monitor store (an SQLite database with tables {', '.join(others[:5])})"
            )
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def _migrate(conn: sqlite3.Connection, p: Path) -> None:
    if _schema_version(conn, p) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(conn, p)  # again, under the write lock (another process may have migrated)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {p}: schema version {version} is newer than this opos-monitor supports"
                f" ({SCHEMA_VERSION}); upgrade opos-monitor or point store.path elsewhere"
            )
        if version == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (0)")
        for step in MIGRATIONS[version:]:
            for stmt in step:
                conn.execute(stmt)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@dataclass(slots=True)
class _Row:
    """One record on its way in: the columns, its document, and (once encoded) codec and blob."""

    kind: str
    doc_id: str
    status: str
    doc_hash: bytes
    columns: tuple[Any, ...]  # _COLS up to event_time
    doc: bytes
    source: str | None = None
    codec: int | None = None
    blob: bytes | None = None

    @property
    def version(self) -> Version:
        return Version(self.doc_hash, self.status, self.source)

    def encode(self, compress: bool, zdict: bytes | None) -> None:
        self.codec, self.blob = encode_doc(self.doc, compress, zdict)

    def sql(self) -> tuple[Any, ...]:
        return (*self.columns, self.doc_hash, self.codec, self.blob)


def _prepare(items: Sequence[StoredRecord]) -> dict[str, list[_Row]]:
    """Rows per kind: ids de-duplicated (the last one wins), documents hashed (not yet encoded)."""
    last: dict[tuple[str, str], StoredRecord] = {}
    for it in items:
        last[(it.kind, it.doc_id)] = it
    out: dict[str, list[_Row]] = {}
    for (kind, _), it in last.items():
        doc = bytes(it.doc)
        end = float(it.end_time) if it.end_time is not None and math.isfinite(it.end_time) else None
        columns = (
            it.doc_id, it.pool, it.schedd, it.global_job_id, job_key(it.global_job_id), it.owner, it.status,
            it.site, it.category, it.rule, it.signature, it.signature_hash, it.explanation, end,
            float(it.updated_at), end if end is not None else float(it.updated_at),
        )
        out.setdefault(kind, []).append(
            _Row(kind, it.doc_id, it.status, hashlib.blake2b(doc, digest_size=16).digest(), columns, doc,
                 it.source)
        )
    return out


def _stored_state(
    conn: sqlite3.Connection,
    table: str,
    rows: Sequence[_Row],
    zdict_for: Callable[[Iterable[int]], bytes | None],
) -> dict[str, Version]:
    """The stored :class:`Version` of each of these rows that has one, by doc_id.

    The table has no source column: the source is read from the stored document's
    ``opos.source``, and only where :func:`write_verdict` needs it (an event-log
    version of a job stored as final; elsewhere it is None and not looked at).
    """
    incoming = {r.doc_id: r.version for r in rows}
    out: dict[str, Version] = {}
    need: list[str] = []
    for chunk in _chunks(list(incoming), _IN_CHUNK):
        for d, h, st in conn.execute(
            f"SELECT doc_id, doc_hash, status FROM {table} WHERE doc_id IN ({_marks(len(chunk))})", chunk
        ):
            out[d] = Version(h, st, None)
            if _needs_stored_source(h, st, incoming[d]):
                need.append(d)
    for chunk in _chunks(need, _IN_CHUNK):
        docs = conn.execute(f"SELECT doc_id, codec, doc FROM {table} WHERE doc_id IN ({_marks(len(chunk))})",
                            chunk).fetchall()
        zdict = zdict_for(c for _, c, _ in docs)
        for d, codec, blob in docs:
            out[d] = out[d]._replace(source=_source_of(decode_doc(codec, blob, zdict)))
    return out


def _source_of(doc: bytes) -> str | None:
    """``opos.source`` of a stored JSON document (None if it has none)."""
    try:
        d = orjson.loads(doc)
    except orjson.JSONDecodeError:
        return None
    opos = d.get("opos") if isinstance(d, dict) else None
    src = opos.get("source") if isinstance(opos, dict) else None
    return src if isinstance(src, str) else None


def _ensure_zdict(conn: sqlite3.Connection, docs: Sequence[bytes]) -> bytes | None:
    """The store's preset dictionary, made from ``docs`` if it does not exist yet."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'zdict'").fetchone()
    if row is not None:
        return bytes(row[0])
    zdict = make_zdict(docs)
    if zdict is not None:
        conn.execute("INSERT INTO meta(key, value) VALUES ('zdict', ?)", (zdict,))
    return zdict


def _upsert(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    sets = ", ".join(f"{c} = excluded.{c}" for c in _COLS[1:])
    conn.executemany(
        f"INSERT INTO {table}({', '.join(_COLS)}) VALUES ({_marks(len(_COLS))})"
        f" ON CONFLICT(doc_id) DO UPDATE SET {sets}",
        rows,
    )


def _enqueue(conn: sqlite3.Connection, ids: Sequence[tuple[str, str]], now: float) -> None:
    """(Re-)enqueue documents: a fresh seq and attempt count for each (the old row, if any, goes)."""
    conn.executemany("DELETE FROM outbox WHERE doc_id = ?", [(d,) for d, _ in ids])
    conn.executemany("INSERT INTO outbox(doc_id, kind, enqueued_at) VALUES (?,?,?)", [(d, k, now) for d, k in ids])


def _delete_seqs(conn: sqlite3.Connection, table: str, seqs: Sequence[int]) -> None:
    for chunk in _chunks(list(seqs), _IN_CHUNK):
        conn.execute(f"DELETE FROM {table} WHERE seq IN ({_marks(len(chunk))})", chunk)
