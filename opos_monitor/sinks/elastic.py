"""Elasticsearch / OpenSearch sink: ships the store's outbox with the official clients' bulk helpers.

One pass (:meth:`ElasticSink.ship_once`) takes due documents from the outbox
(:meth:`Store.outbox_take`), turns each into bulk actions, sends them with
``helpers.streaming_bulk`` (elasticsearch-py 8/9, or opensearch-py for ``kind = "opensearch"``)
with ``raise_on_error=False, raise_on_exception=False``, and settles every document from its
own per-item result:

* 2xx -> acknowledged (removed from the outbox); a 409 version conflict means a newer (or the
  same) version is already indexed -> acknowledged too;
* 429, 5xx, a whole-request failure, a connection error or timeout, or no result at all ->
  retried later with the store's exponential backoff, never dropped;
* a 400 mapping / parse reject (``mapper_parsing_exception``, ``document_parsing_exception``,
  ``illegal_argument_exception`` ...) -> dead letter with the full reason (never retried in a
  loop; ``opos-monitor replay`` re-sends it after a fix).

Documents:

* ``_id`` is the store's deterministic document id and the op type is ``index``, so a re-sent
  document overwrites itself; ``version_type=external_gte`` with the time the daemon observed
  the version (microseconds) keeps a late, older copy from overwriting a newer one.
* index ``<prefix>-YYYY.MM`` (UTC) of the record's end time, else of its last update.  When
  that month differs from months the document may have been indexed under before (from its
  QDate to its end, or to now while it runs), the same bulk deletes those copies (a live job
  shipped in May and finished in June lives only in June's index).
* :func:`shape_document` types the document for the index template (see
  :mod:`opos_monitor.sinks.es_schema` and ``docs/record-schema.md``).

TLS verification is on unless the config turns it off; secrets come from
:func:`opos_monitor.config.read_secret` and are never logged.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

import orjson
import structlog

from opos_monitor.config import ConfigError, ElasticsearchConfig, read_secret
from opos_monitor.logsetup import redact_text
from opos_monitor.sinks import es_schema
from opos_monitor.sinks.es_schema import KEYWORD_LIMIT, RAW_FIELDS, RAW_OBJECT, RAW_UNINDEXED

__all__ = [
    "ElasticSink",
    "ShipStats",
    "SinkError",
    "classify_result",
    "describe_error",
    "doc_version",
    "es_setup_main",
    "index_name",
    "item_actions",
    "make_client",
    "retry_reason",
    "shape_document",
    "stale_indices",
]

log = structlog.get_logger("opos_monitor.sinks.elastic")

#: bytes per bulk request at most (Elasticsearch refuses bodies over http.max_content_length, 100 MB)
MAX_CHUNK_BYTES = 10 * 1024 * 1024
#: months back from the newest the stale-copy sweep looks at
MAX_SWEEP_MONTHS = 13
#: 400 error types that are about the cluster's state, not the document: retried, not dead-lettered
RETRYABLE_400 = frozenset({
    "index_closed_exception",
    "cluster_block_exception",
    "validation_exception",  # e.g. "this action would add [1] shards, but this cluster currently has [1000]/[1000]"
    "index_not_found_exception",
    "resource_already_exists_exception",
    "process_cluster_event_timeout_exception",
    "media_type_header_exception",
})
_MAX_DEPTH = 16  # nested raw values deeper than this are kept unindexed (flattened's depth_limit is 20)


class SinkError(Exception):
    """The cluster cannot be used as configured; the message says why, in one line."""


# ---------------------------------------------------------------------------------------------
# pure helpers: names, versions, document shape


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def index_name(prefix: str, t: float) -> str:
    """``<prefix>-YYYY.MM`` of epoch seconds ``t`` (UTC)."""
    d = _utc(t)
    return f"{prefix}-{d.year:04d}.{d.month:02d}"


def doc_version(updated_at: float) -> int:
    """The external version of a document: when the daemon observed it, in microseconds."""
    return max(1, int(round(updated_at * 1_000_000)))


def _iso(t: float) -> str:
    return _utc(t).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH_MAX = 253402300800  # year 10000


def _fits_keyword(v: Any) -> tuple[bool, Any]:
    cls = v.__class__
    return (cls is str or cls is int or cls is float), v


def _fits_reason(v: Any) -> tuple[bool, Any]:
    return v.__class__ is str, v


def _fits_int(lim: int) -> Any:
    def fits(v: Any) -> tuple[bool, Any]:
        cls = v.__class__
        if cls is int:
            return -lim <= v < lim, v
        if cls is float:
            return math.isfinite(v) and -lim <= v < lim, v
        return False, v
    return fits


def _fits_double(v: Any) -> tuple[bool, Any]:
    cls = v.__class__
    return (cls is int or (cls is float and math.isfinite(v))), v


def _fits_boolean(v: Any) -> tuple[bool, Any]:
    return v.__class__ is bool, v


def _fits_epoch(v: Any) -> tuple[bool, Any]:
    cls = v.__class__
    if cls is int:
        return 0 <= v < _EPOCH_MAX, v
    if cls is float and math.isfinite(v) and v == int(v):
        return 0 <= v < _EPOCH_MAX, int(v)
    return False, v


_FITS = {
    "keyword": _fits_keyword,
    "reason": _fits_reason,
    "long": _fits_int(2**63),
    "integer": _fits_int(2**31),
    "double": _fits_double,
    "boolean": _fits_boolean,
    "epoch": _fits_epoch,
}


def _conform(kind: str, v: Any) -> tuple[bool, Any]:
    """Does ``v`` fit the field ``kind`` (see es_schema.RAW_FIELDS)?  Returns (fits, value to index)."""
    return _FITS[kind](v)


def _indexable(v: Any, depth: int = 0) -> bool:
    """Can ``v`` live in the flattened ``raw`` field (no term over the keyword limit, not too deep)?"""
    cls = v.__class__
    if cls is str:
        return len(v) <= KEYWORD_LIMIT
    if cls is dict:
        return depth < _MAX_DEPTH and all(_indexable(x, depth + 1) for x in v.values())
    if cls is list:
        return depth < _MAX_DEPTH and all(_indexable(x, depth + 1) for x in v)
    return True


_CANON = {name.lower(): name for name in RAW_FIELDS}
#: attribute name as written -> (canonical name, kind) or None; memoised (bounded)
_NAME_CACHE: dict[str, tuple[str, str] | None] = {name: (name, kind) for name, kind in RAW_FIELDS.items()}
_NAME_CACHE_MAX = 100_000
_SCALARS = (int, float, bool, type(None))
_MISS = object()
_I64 = 2**63


def _known(name: str) -> tuple[str, str] | None:
    try:
        return _NAME_CACHE[name]
    except KeyError:
        canon = _CANON.get(name.lower())
        hit = (canon, RAW_FIELDS[canon]) if canon is not None else None
        if len(_NAME_CACHE) < _NAME_CACHE_MAX:
            _NAME_CACHE[name] = hit
        return hit


def shape_document(
    doc: Mapping[str, Any],
    *,
    kind: str = "job",
    end_time: float | None = None,
    updated_at: float | None = None,
) -> dict[str, Any]:
    """The document as indexed: the shape the index template (es_schema) expects.

    * known HTCondor attributes (es_schema.RAW_FIELDS; names matched case-insensitively,
      written with their canonical spelling) stay at the top level when the value fits the
      field's type;
    * every other raw attribute, and a known one whose value does not fit (``MemoryUsage`` as
      the expression ``((ResidentSetSize + 1023) / 1024)``), goes under ``raw`` (one
      flattened field) with its name as is;
    * a raw value too big to index (a string over es_schema.KEYWORD_LIMIT characters, or a
      nested value deeper than 16) goes whole under ``raw_unindexed``;
    * ``opos`` gets ``kind`` (job/attempt), ``updated_at``, ``end_time`` and ``timestamp``
      (end time, else last update: the data view's time field); classifier evidence too big
      to index moves from ``opos.evidence`` to ``opos.evidence_unindexed``.

    Nothing is dropped or truncated: every input value is in the output exactly once.
    """
    out: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    unindexed: dict[str, Any] = {}
    limit = KEYWORD_LIMIT
    cache = _NAME_CACHE
    for name, value in doc.items():
        if name == "opos":
            continue
        known = cache.get(name, _MISS)
        if known is _MISS:
            known = _known(name)
        cls = value.__class__
        if known is not None and value is not None:
            canon, fkind = known  # type: ignore[misc]
            if canon not in out:
                # the common cases inline (same verdicts as _conform), the rest through it
                if fkind == "keyword" and cls is str or fkind == "reason" and cls is str:
                    out[canon] = value
                    continue
                if cls is int and (fkind == "long" or fkind == "double") and -_I64 <= value < _I64:
                    out[canon] = value
                    continue
                fits, v = _conform(fkind, value)
                if fits:
                    out[canon] = v
                    continue
        if cls is str:
            if len(value) <= limit:
                raw[name] = value
            else:
                unindexed[name] = value
        elif cls in _SCALARS or _indexable(value):
            raw[name] = value
        else:
            unindexed[name] = value
    if raw:
        out[RAW_OBJECT] = raw
    if unindexed:
        out[RAW_UNINDEXED] = unindexed
    opos = dict(doc.get("opos") or {})
    evidence = opos.get("evidence")
    if isinstance(evidence, dict) and not _indexable(evidence):
        opos["evidence"] = {k: v for k, v in evidence.items() if _indexable(v, 1)}
        opos["evidence_unindexed"] = {k: v for k, v in evidence.items() if not _indexable(v, 1)}
    opos["kind"] = kind
    if updated_at is not None:
        opos["updated_at"] = _iso(updated_at)
    if end_time is not None:
        opos["end_time"] = _iso(end_time)
    ts = end_time if end_time is not None else updated_at
    if ts is not None:
        opos["timestamp"] = _iso(ts)
    out["opos"] = opos
    return out


def _months(start: float, end: float) -> list[tuple[int, int]]:
    a, b = _utc(start), _utc(end)
    out = []
    y, m = a.year, a.month
    while (y, m) <= (b.year, b.month):
        out.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _submitted(doc: Mapping[str, Any]) -> float | None:
    q = doc.get("QDate")
    if (q.__class__ is int or q.__class__ is float) and q > 0:
        return float(q)
    iso = (doc.get("opos") or {}).get("q_date")
    if isinstance(iso, str):
        try:
            return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def stale_indices(prefix: str, doc: Mapping[str, Any], *, end_time: float | None, updated_at: float) -> list[str]:
    """Indices an earlier version of this document may be in, other than its index now.

    An earlier version was indexed by its end time, or, while the job was alive, by when it
    was observed; both lie between the job's submission (QDate) and this version's end time
    (a job is only observed alive before it ends, and its end time only moves forward: held,
    then completed), or now while the job is still alive.  The newest ``MAX_SWEEP_MONTHS``
    months of that range are swept.  A record first seen long after its job ended (a backfill)
    therefore costs no extra deletes.
    """
    target = index_name(prefix, end_time if end_time is not None else updated_at)
    last = end_time if end_time is not None else updated_at
    first = _submitted(doc)
    if first is None or first > last:
        first = last
    names = [f"{prefix}-{y:04d}.{m:02d}" for y, m in _months(first, last)[-MAX_SWEEP_MONTHS:]]
    return [n for n in names if n != target]


Action = tuple[dict[str, Any], Any]


def item_actions(item: Any, prefix: str, *, as_text: bool = False) -> list[Action]:
    """The bulk actions of one outbox item: index it, delete its stale copies.

    ``item`` is a :class:`~opos_monitor.sinks.store.OutboxItem`; the body is JSON bytes (or
    text with ``as_text``, what opensearch-py's helper needs).  Raises ValueError when the
    stored document is not a JSON object.
    """
    doc = orjson.loads(item.doc)
    if not isinstance(doc, dict):
        raise ValueError("stored document is not a JSON object")
    shaped = shape_document(doc, kind=item.kind, end_time=item.end_time, updated_at=item.updated_at)
    body: Any = orjson.dumps(shaped)
    if as_text:
        body = body.decode()
    index = index_name(prefix, item.end_time if item.end_time is not None else item.updated_at)
    actions: list[Action] = [({"index": {
        "_index": index, "_id": item.doc_id,
        "version": doc_version(item.updated_at), "version_type": "external_gte",
    }}, body)]
    for old in stale_indices(prefix, doc, end_time=item.end_time, updated_at=item.updated_at):
        actions.append(({"delete": {"_index": old, "_id": item.doc_id}}, None))
    return actions


# ---------------------------------------------------------------------------------------------
# results


def describe_error(op: str, result: Mapping[str, Any]) -> str:
    """The full reason of a failed action, as one readable line plus the error JSON."""
    status = result.get("status")
    err = result.get("error")
    where = f"{op} {result.get('_index')}/{result.get('_id')}"
    if isinstance(err, dict):
        parts = [f"{err.get('type')}: {err.get('reason')}"]
        cause = err.get("caused_by")
        depth = 0
        while isinstance(cause, dict) and depth < 10:
            parts.append(f"caused by {cause.get('type')}: {cause.get('reason')}")
            cause = cause.get("caused_by")
            depth += 1
        text = f"{where}: HTTP {status} " + "; ".join(parts)
        return text + "\n" + orjson.dumps(err, default=str).decode()
    return redact_text(f"{where}: HTTP {status} {err}")


def retry_reason(op: str, result: Mapping[str, Any]) -> str:
    """Why an action will be retried, the same text for every document that failed the same
    way (so a failed bulk is put back in one store transaction, not one per document)."""
    status = result.get("status")
    err = result.get("error")
    if isinstance(err, dict):
        text = f"{err.get('type')}: {err.get('reason')}"
    else:
        text = str(err)
    return redact_text(f"{op}: HTTP {status} {text}")[:2000]


def _error_type(result: Mapping[str, Any]) -> str:
    err = result.get("error")
    if isinstance(err, dict):
        return str(err.get("type"))
    exc = result.get("exception")
    if exc is not None:
        return type(exc).__name__
    return "error"


def classify_result(op: str, ok: bool, result: Mapping[str, Any]) -> str:
    """What one action's result means: ``ok``, ``superseded``, ``retry`` or ``dead``.

    ``op`` is the operation sent (index / delete); ``ok`` and ``result`` are what the bulk
    helper yielded.  Whole-request failures (the helper marks them with ``exception``) are
    always retried, whatever their status: they say nothing about the document.
    """
    status = result.get("status")
    if not isinstance(status, int):  # connection errors in opensearch-py: "N/A"
        return "retry"
    if ok and 200 <= status < 300:
        return "ok"
    if "exception" in result or 200 <= status < 300:
        return "retry"
    etype = _error_type(result)
    if op == "delete":
        if status == 404:
            return "ok"  # nothing to delete there
        if status == 429 or status >= 500:
            return "retry"
        return "ok"  # cannot be fixed by retrying (e.g. a closed index); the new copy is what matters
    if status == 409 and etype == "version_conflict_engine_exception":
        return "superseded"
    if status == 400 and etype not in RETRYABLE_400:
        return "dead"
    return "retry"


@dataclass
class ShipStats:
    """What one or more shipping passes did."""

    taken: int = 0  # outbox items taken
    acked: int = 0  # delivered (includes superseded)
    superseded: int = 0  # a newer version was already indexed
    retried: int = 0  # put back with backoff
    dead: int = 0  # moved to dead letters
    stale_deleted: int = 0  # copies removed from other months' indices
    batches: int = 0
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)  # error type -> actions
    last_error: str | None = None
    request_failed: bool = False  # a bulk request failed as a whole (connection, timeout, 429/5xx, auth)

    def add(self, other: "ShipStats") -> None:
        for f in ("taken", "acked", "superseded", "retried", "dead", "stale_deleted", "batches"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.seconds += other.seconds
        self.errors.update(other.errors)
        self.last_error = other.last_error or self.last_error
        self.request_failed = self.request_failed or other.request_failed

    @property
    def docs_per_s(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0


def _settle(
    items: Sequence[Any],
    plans: Sequence[list[Action]],
    results: Sequence[tuple[bool, dict[str, Any]] | None],
    transport_error: str | None,
    stats: ShipStats,
) -> tuple[list[int], dict[str, list[int]], list[tuple[int, str]]]:
    """Decide every item from its actions' results: (ack seqs, {error: retry seqs}, [(seq, reason)] dead)."""
    ack: list[int] = []
    retry: dict[str, list[int]] = defaultdict(list)
    dead: list[tuple[int, str]] = []
    pos = 0
    for item, plan in zip(items, plans):
        verdict, reason = "ok", None
        superseded = False
        deleted = 0
        for header, _ in plan:
            (op, meta), = header.items()
            res = results[pos] if pos < len(results) else None
            pos += 1
            if res is None:
                verdict, reason = "retry", transport_error or "no result for this action"
                continue
            ok, info = res
            (got_op, result), = info.items()
            if "exception" in result:
                stats.request_failed = True
            if result.get("_id") not in (None, meta.get("_id")):
                verdict, reason = "retry", f"bulk result out of step: expected id {meta.get('_id')}, got {result.get('_id')}"
                continue
            what = classify_result(op, ok, result)
            if what != "ok":
                stats.errors[_error_type(result)] += 1
            if what == "superseded":
                superseded = True
            elif what == "retry" and verdict != "dead":
                verdict, reason = "retry", retry_reason(op, result)
            elif what == "dead":
                verdict, reason = "dead", describe_error(op, result)
            elif op == "delete" and what == "ok" and result.get("status") == 200:
                deleted += 1
        if verdict == "ok":
            ack.append(item.seq)
            stats.superseded += superseded
            stats.stale_deleted += deleted
        elif verdict == "retry":
            retry[(reason or "retry")].append(item.seq)
        else:
            dead.append((item.seq, reason or "rejected"))
    return ack, retry, dead


# ---------------------------------------------------------------------------------------------
# clients


class _Compat:
    """Which media type the Elasticsearch client sends: 0 = plain JSON, N = compatible-with=N."""

    def __init__(self) -> None:
        self.major = 0


_VND = re.compile(r"application/vnd\.elasticsearch\+([a-z\-]+);\s*compatible-with=\d+")


def _rewrite_media_types(headers: Any, major: int) -> Any:
    h = headers.copy()
    for key in ("accept", "content-type"):
        v = h.get(key)
        if v and "vnd.elasticsearch+" in v:
            if major == 0:
                h[key] = _VND.sub(r"application/\1", v)
            else:
                h[key] = _VND.sub(rf"application/vnd.elasticsearch+\1; compatible-with={major}", v)
    return h


def _compat_node_class(compat: _Compat) -> type:
    """A urllib3 node that sends the negotiated media types.

    elasticsearch-py N always asks for ``compatible-with=N``; an N-1 server refuses that, an
    N+1 server accepts it.  The sink first talks plain JSON (every server since 7.x answers
    it), reads the server's major version, then sends ``compatible-with=min(server, client)``
    (plain JSON for 7.x).
    """
    from elastic_transport import Urllib3HttpNode

    class OposCompatNode(Urllib3HttpNode):  # type: ignore[misc, valid-type]
        def perform_request(self, method: str, target: str, body: Any = None, headers: Any = None,
                            **kw: Any) -> Any:
            if headers is not None:
                headers = _rewrite_media_types(headers, compat.major)
            return super().perform_request(method, target, body=body, headers=headers, **kw)

    return OposCompatNode


def _auth(cfg: ElasticsearchConfig) -> tuple[tuple[str, str] | None, Any]:
    password = read_secret(cfg.password, cfg.password_file)
    api_key = read_secret(cfg.api_key, cfg.api_key_file)
    basic = None
    if cfg.username:
        if password is None:
            raise ConfigError("elasticsearch.username is set but no password or password_file")
        basic = (cfg.username, password)
    elif password is not None:
        raise ConfigError("elasticsearch.password is set but no username")
    key: Any = None
    if api_key:
        key = tuple(api_key.split(":", 1)) if ":" in api_key else api_key
    return basic, key


def make_client(cfg: ElasticsearchConfig, *, compat: _Compat | None = None, connections: int = 10) -> Any:
    """An ``elasticsearch.Elasticsearch`` (kind elasticsearch) or ``opensearchpy.OpenSearch``.

    Transport-level retries are limited to trying another node after a connection error; 429
    and 5xx answers come back to the sink, which retries through the store's backoff.
    """
    basic, api_key = _auth(cfg)
    ca = str(cfg.ca_certs) if cfg.ca_certs else None
    if cfg.kind == "opensearch":
        try:
            from opensearchpy import OpenSearch
        except ImportError:
            raise ConfigError("elasticsearch.kind = \"opensearch\" needs the opensearch-py package"
                              " (pip install 'opos-monitor[opensearch]')") from None
        headers = {}
        if api_key is not None:
            import base64

            token = api_key if isinstance(api_key, str) else base64.b64encode(":".join(api_key).encode()).decode()
            headers["Authorization"] = f"ApiKey {token}"
        return OpenSearch(
            hosts=list(cfg.urls), http_auth=basic, headers=headers or None, verify_certs=cfg.verify_certs,
            ca_certs=ca, ssl_show_warn=False, timeout=cfg.request_timeout_s, max_retries=max(1, len(cfg.urls) - 1),
            retry_on_status=(), retry_on_timeout=False, pool_maxsize=connections,
        )
    from elasticsearch import Elasticsearch

    kw: dict[str, Any] = {}
    if basic is not None:
        kw["basic_auth"] = basic
    if api_key is not None:
        kw["api_key"] = api_key
    if ca:
        kw["ca_certs"] = ca
    try:  # orjson for action lines and bulk responses, when this client version has it
        from elasticsearch.serializer import OrjsonSerializer

        fast = OrjsonSerializer()
        kw["serializers"] = {"application/json": fast, "application/vnd.elasticsearch+json": fast}
    except ImportError:
        pass
    return Elasticsearch(
        hosts=list(cfg.urls), verify_certs=cfg.verify_certs, ssl_show_warn=False,
        request_timeout=cfg.request_timeout_s, max_retries=max(1, len(cfg.urls) - 1), retry_on_status=(),
        retry_on_timeout=False, connections_per_node=connections,
        node_class=_compat_node_class(compat or _Compat()), **kw,
    )


def _body(resp: Any) -> Any:
    return getattr(resp, "body", resp)


def _safe(exc: BaseException) -> str:
    """An exception as one line for logs and last_error, secrets masked."""
    text = str(exc) or exc.__class__.__name__
    return redact_text(f"{exc.__class__.__name__}: {text}")[:2000]


# ---------------------------------------------------------------------------------------------
# the sink


class ElasticSink:
    """Ships the store's outbox to Elasticsearch or OpenSearch.

    ``ElasticSink(cfg)`` with an :class:`~opos_monitor.config.ElasticsearchConfig`; ``client``
    may be given (tests).  ``threads > 1`` sends bulk requests in parallel
    (``helpers.parallel_bulk``).  Call :meth:`ship_pending` periodically (one caller at a
    time), :meth:`setup` once (``opos-monitor es-setup``), :meth:`close` at shutdown.
    """

    def __init__(self, cfg: ElasticsearchConfig, *, client: Any = None, threads: int | None = None) -> None:
        self.cfg = cfg
        self.flavor: str = cfg.kind
        self.threads = max(1, int(threads if threads is not None else getattr(cfg, "threads", 1)))
        self._compat = _Compat()
        self._client = client if client is not None else make_client(cfg, compat=self._compat,
                                                                     connections=max(10, self.threads * 2))
        self.server_version: str | None = None
        if cfg.kind == "elasticsearch" and not cfg.verify_certs:
            log.warning("elasticsearch.tls_verification_disabled", hint="set elasticsearch.verify_certs = true")

    @classmethod
    def from_config(cls, cfg: Any, **kw: Any) -> "ElasticSink":
        """From the whole :class:`~opos_monitor.config.Config` or its ``elasticsearch`` section."""
        return cls(getattr(cfg, "elasticsearch", cfg), **kw)

    @property
    def client(self) -> Any:
        return self._client

    # -- connection --------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        """Ask the server who it is; choose the media types; returns the ``GET /`` answer.

        Raises :class:`SinkError` for a server of the wrong kind or too old a version, and the
        client's connection / API errors when it cannot be reached.
        """
        try:
            info = _body(self._client.info())
        except Exception as exc:
            if exc.__class__.__name__ == "UnsupportedProductError":
                raise SinkError(
                    "the server at elasticsearch.urls is not Elasticsearch (OpenSearch?); for OpenSearch"
                    " set elasticsearch.kind = \"opensearch\""
                ) from None
            raise
        version = info.get("version", {}) if isinstance(info, dict) else {}
        number = str(version.get("number", "0"))
        distribution = version.get("distribution", "elasticsearch")
        try:
            major = int(number.split(".")[0])
        except ValueError:
            major = 0
        if self.flavor == "elasticsearch":
            if distribution == "opensearch":
                raise SinkError("the server is OpenSearch; set elasticsearch.kind = \"opensearch\"")
            if major < 7:
                raise SinkError(f"Elasticsearch {number} is too old (7.14 or newer is needed)")
            from elasticsearch import __versionstr__

            client_major = int(__versionstr__.split(".")[0])
            self._compat.major = 0 if major == 7 else min(major, client_major)
        elif distribution != "opensearch":
            log.warning("elasticsearch.kind_opensearch_but_server_is_not", server_version=number)
        self.server_version = number
        return info

    def _ensure_connected(self) -> None:
        if self.server_version is None:
            self.connect()

    def _helpers(self) -> Any:
        if self.flavor == "opensearch":
            from opensearchpy import helpers
        else:
            from elasticsearch import helpers
        return helpers

    # -- shipping ------------------------------------------------------------------

    def _bulk(self, actions: Iterator[Action]) -> Iterator[tuple[bool, dict[str, Any]]]:
        helpers = self._helpers()
        common: dict[str, Any] = {
            "chunk_size": self.cfg.bulk_docs,
            "max_chunk_bytes": MAX_CHUNK_BYTES,
            "raise_on_error": False,
            "raise_on_exception": False,
            "expand_action_callback": _identity,
        }
        if self.threads > 1:
            return helpers.parallel_bulk(self._client, actions, thread_count=self.threads, queue_size=self.threads,
                                         **common)
        return helpers.streaming_bulk(self._client, actions, max_retries=0, yield_ok=True, **common)

    def ship_once(self, store: Any, limit: int | None = None) -> ShipStats:
        """Ship up to ``limit`` due outbox documents (default ``2 * bulk_docs * threads``) and settle
        each with the store: ack, retry with backoff, or dead letter.  Never raises for cluster
        trouble: it is in the stats (``last_error``, ``errors``) and in the outbox's
        ``last_error``."""
        stats = ShipStats()
        started = time.perf_counter()
        try:
            self._ensure_connected()
        except SinkError:
            raise
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreachable: nothing taken, try again next time
            stats.request_failed = True
            stats.last_error = _safe(exc)
            stats.errors[exc.__class__.__name__] += 1
            stats.seconds = time.perf_counter() - started
            log.warning("elasticsearch.unreachable", error=stats.last_error)
            return stats
        items = store.outbox_take(limit or self.cfg.bulk_docs * self.threads * 2)
        stats.taken = len(items)
        if not items:
            stats.seconds = time.perf_counter() - started
            return stats
        stats.batches = 1
        # actions are made lazily, as the helper fills its chunks: with threads > 1 the next
        # chunk is prepared while the previous ones are on the wire
        plans: list[list[Action] | None] = [None] * len(items)
        undecodable: list[tuple[int, str]] = []
        as_text = self.flavor == "opensearch"
        prefix = self.cfg.index_prefix

        def actions() -> Iterator[Action]:
            for i, it in enumerate(items):
                try:
                    plan = item_actions(it, prefix, as_text=as_text)
                except (ValueError, orjson.JSONDecodeError) as exc:
                    undecodable.append((it.seq, f"document {it.doc_id} cannot be shipped: {exc}"))
                    plan = []
                plans[i] = plan
                yield from plan

        results: list[tuple[bool, dict[str, Any]] | None] = []
        transport_error = None
        try:
            for res in self._bulk(actions()):
                results.append(res)
        except Exception as exc:  # noqa: BLE001 - connection errors escape the helper; the rest is retried
            stats.request_failed = True
            transport_error = _safe(exc)
            stats.errors[exc.__class__.__name__] += 1
        shippable = [it for it, plan in zip(items, plans) if plan]
        unplanned = [it.seq for it, plan in zip(items, plans) if plan is None]
        ack, retry, dead = _settle(shippable, [p for p in plans if p], results, transport_error, stats)
        dead += undecodable
        if unplanned:  # the bulk stopped before these were even prepared
            retry[transport_error or "not sent"].extend(unplanned)
        store.outbox_ack(ack)
        for reason, seqs in retry.items():
            store.outbox_retry(seqs, reason)
        for seq, reason in dead:
            store.outbox_dead(seq, reason)
        stats.acked = len(ack)
        stats.retried = sum(len(s) for s in retry.values())
        stats.dead = len(dead)
        if retry:
            stats.last_error = next(iter(retry))
        if transport_error:
            stats.last_error = transport_error
        stats.seconds = time.perf_counter() - started
        self._log_pass(stats, dead, items)
        return stats

    def _log_pass(self, stats: ShipStats, dead: list[tuple[int, str]], items: Sequence[Any]) -> None:
        by_seq = {it.seq: it.doc_id for it in items}
        for seq, reason in dead:
            log.error("elasticsearch.dead_letter", doc_id=by_seq.get(seq), reason=reason.split("\n", 1)[0])
        if stats.retried:
            log.warning("elasticsearch.retry_later", retried=stats.retried, acked=stats.acked,
                        errors=dict(stats.errors), last_error=(stats.last_error or "").split("\n", 1)[0])
        else:
            log.debug("elasticsearch.shipped", acked=stats.acked, dead=stats.dead, seconds=round(stats.seconds, 3))

    def ship_pending(self, store: Any, *, max_batches: int | None = None, max_seconds: float | None = None,
                     on_pass: Callable[[ShipStats], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> ShipStats:
        """Ship until the outbox has nothing due, a pass makes no progress (the cluster is in
        trouble: wait for the next call), a budget runs out, or ``should_stop()`` (checked
        before each pass: a shutdown lets the bulk in flight finish).  ``on_pass`` gets each
        pass's stats (e.g. to feed the metrics: ``Metrics.observe_es``)."""
        total = ShipStats()
        deadline = time.monotonic() + max_seconds if max_seconds is not None else None
        n = 0
        while should_stop is None or not should_stop():
            s = self.ship_once(store)
            if on_pass is not None and (s.taken or s.request_failed):
                on_pass(s)
            total.add(s)
            n += 1
            if s.taken == 0 or s.acked + s.dead == 0:
                break
            if max_batches is not None and n >= max_batches:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        return total

    # -- setup -----------------------------------------------------------------------------

    def setup(self, *, retention_days: int = es_schema.DEFAULT_RETENTION_DAYS,
              update_existing: bool = True) -> list[es_schema.SetupAction]:
        """Install the index template and the ILM / ISM policy (idempotent)."""
        self._ensure_connected()
        return es_schema.setup(self._client, self.cfg, flavor=self.flavor,  # type: ignore[arg-type]
                               retention_days=retention_days, update_existing=update_existing)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001
            pass


def _identity(action: Action) -> Action:
    return action


def es_setup_main(cfg: Any, *, retention_days: int | None = None, out: TextIO | None = None) -> int:
    """``opos-monitor es-setup``: install the template and the retention policy; print what was done.

    ``cfg`` is the whole Config or its ``elasticsearch`` section.  Returns 0 on success, 1 when
    the cluster cannot be reached or refuses, 2 for a configuration problem.
    """
    out = out or sys.stdout
    es_cfg = getattr(cfg, "elasticsearch", cfg)
    days = retention_days or getattr(es_cfg, "retention_days", None) or es_schema.DEFAULT_RETENTION_DAYS
    target = ", ".join(redact_text(u) for u in es_cfg.urls)
    if not getattr(es_cfg, "enabled", True):
        print("note: elasticsearch.enabled is false; installing anyway", file=out)
    try:
        sink = ElasticSink(es_cfg)
    except ConfigError as exc:
        print(f"es-setup: configuration: {exc}", file=out)
        return 2
    try:
        info = sink.connect()
        name = "OpenSearch" if es_cfg.kind == "opensearch" else "Elasticsearch"
        print(f"{name} {sink.server_version} at {target} ({info.get('cluster_name', '?')})", file=out)
        for action in sink.setup(retention_days=days):
            print(f"  {action}", file=out)
    except (SinkError, ConfigError) as exc:
        print(f"es-setup: {exc}", file=out)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the operator, not a traceback
        print(f"es-setup: {target}: {_safe(exc)}", file=out)
        return 1
    finally:
        sink.close()
    print(f"index pattern {es_schema.index_pattern(es_cfg.index_prefix)}; records kept {days} days", file=out)
    return 0
