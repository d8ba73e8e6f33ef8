"""A test endpoint that speaks the Elasticsearch / OpenSearch REST calls opos-monitor makes.

This is **not** Elasticsearch.  No Elasticsearch or OpenSearch server can be installed on the
test machine, so the tests run the official clients (elasticsearch-py 8/9, opensearch-py)
against this threaded HTTP server on 127.0.0.1 (random port).  It behaves like a real server
where the clients and the sink look:

* ``GET /`` answers like the server it pretends to be (Elasticsearch 8.x / 9.x or OpenSearch
  2.x); Elasticsearch mode checks the ``compatible-with=N`` media types the 8.x/9.x clients
  send (9.x servers accept 9 and 8, 8.x servers 8 and 7, as the real ones do) and sends
  ``X-Elastic-Product: Elasticsearch``; OpenSearch mode refuses the Elasticsearch media types
  (406) and sends no product header, so the wrong client fails here as it would for real.
* ``_bulk`` (NDJSON; ``index`` / ``create`` / ``delete``; internal, ``external`` and
  ``external_gte`` versions) with per-item results; documents are stored by index and id.
* indices are auto-created from the best matching composable template (``_index_template``);
  documents are checked against the mapping: numeric / date / boolean parsing (with
  ``ignore_malformed`` and ``coerce``), object vs concrete values, ``dynamic`` true / false /
  strict (with dynamic templates and dynamic mapping of new fields), keyword ``ignore_above``
  and Lucene's 32766-byte term limit, ``flattened`` (ES) / ``flat_object`` (OpenSearch), and
  the total-fields limit - so a mapping reject is a real one.
* ``_ilm/policy`` (Elasticsearch), ``_plugins/_ism/policies`` (OpenSearch: an update without
  ``if_seq_no``/``if_primary_term`` is a 409, as in ISM), ``<index>/_doc/<id>``, ``_refresh``,
  and a minimal ``_search`` / ``_count`` (match_all, term(s), ids, exists, range, bool).
* index create / exists / mapping get and put, alias exists (what ``condor_adstash`` calls).

Faults, settable at runtime (:class:`Faults`): ``down()`` / ``up()`` (the listener is closed
and open connections dropped, so clients get "connection refused"), ``delay_s`` (slow),
``fail_requests`` (whole-request 429 / 5xx), ``fail_items`` (item-level 429 / 5xx),
``reject_ids`` (400 mapping error for chosen document ids: poison records),
``apply_then_delay_s`` + ``on_bulk`` (a bulk is applied and its answer held back, for killing
the shipper mid-bulk).

Run standalone (benchmarks): ``python tests/sinks/es_endpoint.py [--flavor opensearch]``
prints ``http://127.0.0.1:PORT`` and serves until killed.
"""

from __future__ import annotations

import base64
import fnmatch
import gzip
import itertools
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

TERM_LIMIT = 32766  # Lucene's maximum term length in bytes
DEFAULT_FIELD_LIMIT = 1000


class _Fail(Exception):
    """An error answer: HTTP status and the error object."""

    def __init__(self, status: int, etype: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.error = {"type": etype, "reason": reason, **extra}


def _error_body(status: int, error: dict[str, Any]) -> dict[str, Any]:
    root = {k: v for k, v in error.items() if k in ("type", "reason", "index", "index_uuid")}
    return {"error": {"root_cause": [root], **error}, "status": status}


# ---------------------------------------------------------------------------------------------
# faults


@dataclass
class Faults:
    """What the endpoint does wrong, changed by the test at any time."""

    delay_s: float = 0.0  # every request waits this long before it is handled
    apply_then_delay_s: float = 0.0  # a bulk is applied, then its answer waits this long
    on_bulk: Callable[[int], None] | None = None  # called with the item count after a bulk is applied
    reject_ids: dict[str, str] = field(default_factory=dict)  # doc id -> reason (400 mapping error)
    _requests: deque = field(default_factory=deque)  # (status, type, path_part) for the next requests
    _items: list = field(default_factory=list)  # [status, type, remaining, every, seen]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_requests(self, status: int, count: int = 1, path: str = "_bulk", etype: str | None = None) -> None:
        """The next ``count`` requests whose path contains ``path`` fail whole with ``status``."""
        etype = etype or _default_type(status)
        with self.lock:
            self._requests.extend([(status, etype, path)] * count)

    def fail_items(self, status: int, count: int, every: int = 1, etype: str | None = None) -> None:
        """Of the next bulk items, every ``every``-th fails with ``status`` until ``count`` failed."""
        with self.lock:
            self._items.append([status, etype or _default_type(status), count, max(1, every), 0])

    def clear(self) -> None:
        with self.lock:
            self._requests.clear()
            self._items.clear()
            self.reject_ids.clear()
            self.delay_s = 0.0
            self.apply_then_delay_s = 0.0
            self.on_bulk = None

    def _request_fault(self, path: str) -> tuple[int, str] | None:
        with self.lock:
            if self._requests and self._requests[0][2] in path:
                status, etype, _ = self._requests.popleft()
                return status, etype
        return None

    def _item_fault(self) -> tuple[int, str] | None:
        with self.lock:
            while self._items and self._items[0][2] <= 0:
                self._items.pop(0)
            if not self._items:
                return None
            f = self._items[0]
            f[4] += 1
            if f[4] % f[3] == 0:
                f[2] -= 1
                return f[0], f[1]
        return None


def _default_type(status: int) -> str:
    return {
        429: "es_rejected_execution_exception",
        500: "internal_server_error",
        502: "bad_gateway",
        503: "unavailable_shards_exception",
        504: "timeout_exception",
    }.get(status, "exception")


# ---------------------------------------------------------------------------------------------
# indices and documents


@dataclass
class Doc:
    version: int
    seq_no: int
    source: dict[str, Any]
    writes: int = 1


@dataclass
class Index:
    name: str
    mappings: dict[str, Any]
    settings: dict[str, Any]
    docs: dict[str, Doc] = field(default_factory=dict)
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex[:22])
    seq: itertools.count = field(default_factory=itertools.count)

    @property
    def field_limit(self) -> int:
        return int(self.settings.get("index.mapping.total_fields.limit", DEFAULT_FIELD_LIMIT))


def flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"index": {"number_of_shards": 1}}`` and ``{"number_of_shards": 1}`` -> ``{"index.number_of_shards": 1}``."""
    out: dict[str, Any] = {}
    for k, v in (settings or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_settings(v, key + "."))
        else:
            out[key if key.startswith("index.") else "index." + key] = v
    return out


class State:
    """Everything the endpoint holds; one lock."""

    def __init__(self, flavor: str, version: str) -> None:
        self.flavor = flavor
        self.version = version
        self.lock = threading.RLock()
        self.indices: dict[str, Index] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.ilm: dict[str, dict[str, Any]] = {}
        self.ism: dict[str, dict[str, Any]] = {}
        self.ism_seq = itertools.count()
        self.requests: deque = deque(maxlen=5000)
        self.bulk_requests = 0
        self.bulk_items = 0

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    # -- templates -------------------------------------------------------

    def template_for(self, index: str) -> dict[str, Any] | None:
        best = None
        for name, t in self.templates.items():
            if any(fnmatch.fnmatchcase(index, p) for p in t.get("index_patterns", [])):
                if best is None or t.get("priority", 0) > best.get("priority", 0):
                    best = t
        return best

    def create_index(self, name: str, body: dict[str, Any] | None = None) -> Index:
        t = self.template_for(name) or {}
        tt = t.get("template", {})
        mappings = orjson.loads(orjson.dumps(tt.get("mappings", {})))
        settings = flat_settings(tt.get("settings", {}))
        if body:
            mappings = _merge_mappings(mappings, body.get("mappings", {}))
            settings.update(flat_settings(body.get("settings", {})))
        validate_mappings(self.flavor, mappings)
        idx = Index(name, mappings, settings)
        self.indices[name] = idx
        return idx

    def resolve(self, expr: str | None) -> list[Index]:
        if not expr or expr in ("_all", "*"):
            return list(self.indices.values())
        out = []
        for part in expr.split(","):
            if "*" in part:
                out += [i for n, i in self.indices.items() if fnmatch.fnmatchcase(n, part)]
            elif part in self.indices:
                out.append(self.indices[part])
            else:
                raise _Fail(404, "index_not_found_exception", f"no such index [{part}]", index=part)
        return out


def _merge_mappings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if k == "properties":
            props = dict(out.get("properties", {}))
            for name, m in v.items():
                if name in props and "properties" in props[name] and "properties" in m:
                    props[name] = _merge_mappings(props[name], m)
                else:
                    props[name] = m
            out["properties"] = props
        else:
            out[k] = v
    return out


_KNOWN_TYPES = {
    "keyword", "text", "long", "integer", "short", "byte", "double", "float", "half_float",
    "scaled_float", "boolean", "date", "date_nanos", "object", "nested", "ip", "binary",
    "match_only_text", "wildcard", "constant_keyword", "unsigned_long",
}


def validate_mappings(flavor: str, mappings: dict[str, Any], path: str = "") -> None:
    """Refuse field types the pretended server does not have (flattened vs flat_object)."""
    own = {"flattened"} if flavor == "elasticsearch" else {"flat_object"}
    for name, m in mappings.get("properties", {}).items():
        t = m.get("type", "object")
        if t not in _KNOWN_TYPES and t not in own:
            raise _Fail(400, "mapper_parsing_exception",
                        f"No handler for type [{t}] declared on field [{path}{name}]")
        if "properties" in m:
            validate_mappings(flavor, m, f"{path}{name}.")


def count_fields(mapping: dict[str, Any]) -> int:
    n = 0
    for m in mapping.get("properties", {}).values():
        n += 1 + len(m.get("fields", {}))
        if "properties" in m:
            n += count_fields(m)
    return n


# ---------------------------------------------------------------------------------------------
# document checks against the mapping


class DocError(Exception):
    def __init__(self, etype: str, reason: str, caused_by: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.error: dict[str, Any] = {"type": etype, "reason": reason}
        if caused_by:
            self.error["caused_by"] = caused_by


_ISO = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:[.,]\d{1,9})?)?)?)?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?$"
)
_ISO_FAST = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z\Z")
_INT_RANGES = {
    "long": (-(2**63), 2**63 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "short": (-(2**15), 2**15 - 1),
    "byte": (-128, 127),
    "unsigned_long": (0, 2**64 - 1),
}


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "long"
    if isinstance(v, float):
        return "double"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    return "string"


class Checker:
    """Checks one document against an index mapping, collecting dynamic mappings for new fields."""

    def __init__(self, state_flavor: str, major: int, doc_id: str) -> None:
        self.flavor = state_flavor
        self.parse_type = (
            "document_parsing_exception" if state_flavor == "elasticsearch" and major >= 8 else "mapper_parsing_exception"
        )
        self.doc_id = doc_id
        self.new_fields: list[tuple[list[str], dict[str, Any]]] = []

    # -- errors -----------------------------------------------------------

    def _parse_error(self, path: str, ftype: str, value: Any, cause: str, ctype: str = "illegal_argument_exception") -> DocError:
        preview = value if not isinstance(value, (dict, list)) else orjson.dumps(value).decode()
        return DocError(
            self.parse_type,
            f"[1:2] failed to parse field [{path}] of type [{ftype}] in document with id '{self.doc_id}'."
            f" Preview of field's value: '{preview}'",
            {"type": ctype, "reason": cause},
        )

    def _immense(self, path: str, value: str) -> DocError:
        n = len(value.encode("utf-8"))
        return DocError(
            "illegal_argument_exception",
            f"Document contains at least one immense term in field=\"{path}\" (whose UTF8 encoding is longer than"
            f" the max length {TERM_LIMIT}), all of which were skipped.  Please correct the analyzer to not produce"
            f" such terms.  The prefix of the first immense term is: '{value[:30]}...', original message: bytes can"
            f" be at most {TERM_LIMIT} in length; got {n}",
        )

    # -- walking ------------------------------------------------------------

    def check_root(self, mappings: dict[str, Any], doc: dict[str, Any]) -> None:
        self._object(mappings, doc, [], mappings.get("dynamic", True), mappings.get("dynamic_templates", []))

    def _object(self, m: dict[str, Any], obj: dict[str, Any], path: list[str], dynamic: Any, dts: list) -> None:
        props = m.get("properties", {})
        fast = self._fast
        for k, v in obj.items():
            fm = props.get(k)
            if fm is not None and fast(fm, v):
                continue
            if k == "":
                raise DocError(self.parse_type, "field name cannot be an empty string")
            p = path + [k]
            if fm is None:
                fm = self._dynamic(p, v, dynamic, dts)
                if fm is None:
                    continue
            self._value(fm, v, p, dynamic, dts)

    @staticmethod
    def _fast(fm: dict[str, Any], v: Any) -> bool:
        """Obviously valid (the full check would say the same): skip it."""
        cls = v.__class__
        if v is None:
            return True
        t = fm.get("type")
        if cls is str:
            if t == "date":
                return _ISO_FAST.match(v) is not None and "date_optional_time" in fm.get("format", "date_optional_time") \
                    and "01" <= v[5:7] <= "12" and "01" <= v[8:10] <= "28"
            return len(v) <= 8191 and (t == "keyword" or t == "text") and "fields" not in fm
        if cls is int and t == "date":
            return v >= 0 and "epoch_" in fm.get("format", "epoch_millis")
        if cls is int:
            r = _INT_RANGES.get(t)  # type: ignore[arg-type]
            return (r is not None and r[0] <= v <= r[1]) or t == "double" or t == "float"
        if cls is float:
            return (t == "double" or t == "float") and v == v and abs(v) != float("inf")
        if cls is bool:
            return t == "boolean"
        return False

    def _dynamic(self, p: list[str], v: Any, dynamic: Any, dts: list) -> dict[str, Any] | None:
        d = str(dynamic).lower()
        if d == "strict":
            where = ".".join(p[:-1]) or "_doc"
            raise DocError("strict_dynamic_mapping_exception",
                           f"[1:2] mapping set to strict, dynamic introduction of [{p[-1]}] within [{where}] is not allowed")
        if d in ("false", "runtime") or v is None:
            return None
        sample = v
        if isinstance(v, list):
            sample = next((x for x in v if x is not None), None)
            if sample is None:
                return None
        fm = self._dynamic_template(p, sample, dts)
        if fm is None:
            jt = _json_type(sample)
            if jt == "object":
                fm = {"type": "object", "properties": {}}
            elif jt == "string":
                fm = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
            elif jt == "double":
                fm = {"type": "float"}
            else:
                fm = {"type": jt}
        self.new_fields.append((p, fm))
        return fm

    def _dynamic_template(self, p: list[str], sample: Any, dts: list) -> dict[str, Any] | None:
        jt = _json_type(sample)
        name, full = p[-1], ".".join(p)
        for entry in dts:
            (_, t), = entry.items()
            mmt = t.get("match_mapping_type")
            if mmt not in (None, "*", jt):
                continue
            regex = t.get("match_pattern") == "regex"

            def hit(pattern: Any, value: str) -> bool:
                pats = pattern if isinstance(pattern, list) else [pattern]
                return any(re.search(x, value) if regex else fnmatch.fnmatchcase(value, x) for x in pats)

            if "match" in t and not hit(t["match"], name):
                continue
            if "unmatch" in t and hit(t["unmatch"], name):
                continue
            if "path_match" in t and not hit(t["path_match"], full):
                continue
            if "path_unmatch" in t and hit(t["path_unmatch"], full):
                continue
            text = orjson.dumps(t.get("mapping", {})).decode()
            text = text.replace("{name}", name).replace("{dynamic_type}", "keyword" if jt == "string" else jt)
            fm = orjson.loads(text)
            if jt == "object" and "type" not in fm:
                fm["type"] = "object"
            fm.setdefault("type", {"string": "text", "double": "float"}.get(jt, jt))
            return fm
        return None

    def _value(self, fm: dict[str, Any], v: Any, p: list[str], dynamic: Any, dts: list) -> None:
        if v is None:
            return
        t = fm.get("type", "object")
        cls = v.__class__
        # fast paths for the common, obviously valid values (same verdict as the full checks)
        if cls is str and len(v) <= 8191 and t in ("keyword", "text") and not fm.get("fields"):
            return
        if cls is int and t in _INT_RANGES and _INT_RANGES[t][0] <= v <= _INT_RANGES[t][1]:
            return
        if (cls is int or cls is float) and t in ("double", "float") and v == v and abs(v) != float("inf"):
            return
        if cls is bool and t == "boolean":
            return
        path = ".".join(p)
        if t in ("object", "nested"):
            if fm.get("enabled", True) is False:
                return
            for item in (v if isinstance(v, list) else [v]):
                if item is None:
                    continue
                if not isinstance(item, dict):
                    raise DocError(self.parse_type,
                                   f"[1:2] object mapping for [{path}] tried to parse field [{p[-1]}] as object,"
                                   f" but found a concrete value")
                self._object(fm, item, p, fm.get("dynamic", dynamic), dts)
            return
        if t == "flattened":
            self._flattened(v, path, 1, int(fm.get("depth_limit", 20)), int(fm.get("ignore_above", 2**31 - 1)))
            return
        if t == "flat_object":
            self._flattened(v, path, 1, 20, 2**31 - 1)
            return
        for item in _leaves(v):
            if isinstance(item, dict):
                raise self._parse_error(path, t, item, f"Can't get text on a START_OBJECT at 1:2", "illegal_state_exception")
            self._scalar(fm, t, item, path)

    def _flattened(self, v: Any, path: str, depth: int, limit: int, ignore_above: int) -> None:
        if depth > limit:
            raise DocError("illegal_argument_exception",
                           f"The provided [flattened] field [{path}] exceeds the maximum depth limit of [{limit}].")
        if isinstance(v, dict):
            for x in v.values():
                cls = x.__class__
                if (cls is str and len(x) <= 8191) or cls is int or cls is bool or x is None:
                    continue
                self._flattened(x, path, depth + 1, limit, ignore_above)
        elif isinstance(v, list):
            for x in v:
                self._flattened(x, path, depth, limit, ignore_above)
        elif v is not None:
            s = v if isinstance(v, str) else orjson.dumps(v).decode()
            if len(s) > ignore_above:
                return
            if len(s.encode("utf-8")) > TERM_LIMIT:
                raise self._immense(path, s)

    def _scalar(self, fm: dict[str, Any], t: str, v: Any, path: str) -> None:
        if v is None:
            return
        malformed_ok = bool(fm.get("ignore_malformed", False))
        try:
            if t in _INT_RANGES:
                self._integer(t, v, path, fm.get("coerce", True))
            elif t in ("double", "float", "half_float", "scaled_float"):
                self._float(t, v, path)
            elif t == "boolean":
                if not (isinstance(v, bool) or v in ("true", "false", "")):
                    raise self._parse_error(path, t, v, f"Failed to parse value [{v}] as only [true] or [false] are allowed.")
            elif t in ("date", "date_nanos"):
                self._date(fm, v, path)
            elif t in ("keyword", "wildcard", "constant_keyword"):
                s = _text(v)
                if len(s) <= int(fm.get("ignore_above", 2**31 - 1)) and len(s.encode("utf-8")) > TERM_LIMIT:
                    raise self._immense(path, s)
            elif t in ("text", "match_only_text"):
                pass
        except DocError:
            if malformed_ok and t not in ("keyword", "boolean"):
                return
            raise
        for sub_name, sub in fm.get("fields", {}).items():
            self._scalar(sub, sub.get("type", "keyword"), v, f"{path}.{sub_name}")

    def _integer(self, t: str, v: Any, path: str, coerce: bool) -> None:
        lo, hi = _INT_RANGES[t]
        if isinstance(v, bool):
            raise self._parse_error(path, t, v, "Current token (VALUE_TRUE) not numeric, can not use numeric value accessors")
        if isinstance(v, int):
            n = v
        elif isinstance(v, float) and coerce:
            if v != v or v in (float("inf"), float("-inf")):
                raise self._parse_error(path, t, v, f"Value [{v}] is out of range for a {t}")
            n = int(v)
        elif isinstance(v, str) and coerce:
            s = v.strip()
            try:
                n = int(s)
            except ValueError:
                try:
                    n = int(float(s))
                except (ValueError, OverflowError):
                    raise self._parse_error(path, t, v, f'For input string: "{v}"', "number_format_exception") from None
        else:
            raise self._parse_error(path, t, v, f'For input string: "{v}"', "number_format_exception")
        if not lo <= n <= hi:
            raise self._parse_error(path, t, v, f"Value [{v}] is out of range for {'an' if t == 'integer' else 'a'} {t}")

    def _float(self, t: str, v: Any, path: str) -> None:
        if isinstance(v, bool):
            raise self._parse_error(path, t, v, "Current token (VALUE_TRUE) not numeric")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise self._parse_error(path, t, v, f'For input string: "{v}"', "number_format_exception") from None
        if f != f or f in (float("inf"), float("-inf")):
            raise self._parse_error(path, t, v, f"[{t}] supports only finite values, but got [{v}]")

    def _date(self, fm: dict[str, Any], v: Any, path: str) -> None:
        formats = str(fm.get("format", "strict_date_optional_time||epoch_millis")).split("||")
        for f in formats:
            if f in ("epoch_second", "epoch_millis"):
                if isinstance(v, bool):
                    continue
                if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
                    if f == "epoch_millis" and v < 0:
                        continue
                    return
                if isinstance(v, str) and re.fullmatch(r"-?\d+(\.\d+)?", v.strip()):
                    return
            elif f in ("strict_date_optional_time", "date_optional_time", "strict_date_time", "date_time"):
                if isinstance(v, str) and _iso_ok(v):
                    return
        raise self._parse_error(path, "date", v, f"failed to parse date field [{v}] with format [{'||'.join(formats)}]")


def _iso_ok(s: str) -> bool:
    m = _ISO.match(s)
    if not m:
        return False
    y, mo, d, h, mi, sec = (int(x) if x else None for x in m.groups()[:6])
    try:
        datetime(y, mo or 1, d or 1, h or 0, mi or 0, sec or 0)
    except ValueError:
        return False
    return True


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return orjson.dumps(v).decode()


def _leaves(v: Any) -> Iterable[Any]:
    if isinstance(v, list):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


def _add_field(mapping: dict[str, Any], path: list[str], fm: dict[str, Any]) -> None:
    node = mapping
    for part in path[:-1]:
        node = node.setdefault("properties", {}).setdefault(part, {"type": "object", "properties": {}})
    node.setdefault("properties", {}).setdefault(path[-1], fm)


# ---------------------------------------------------------------------------------------------
# search (the minimum tests need)


def _get_path(src: dict[str, Any], field_path: str) -> list[Any]:
    if field_path.endswith(".keyword"):
        field_path = field_path[: -len(".keyword")]
    vals: list[Any] = [src]
    for part in field_path.split("."):
        nxt = []
        for v in vals:
            if isinstance(v, dict) and part in v:
                x = v[part]
                nxt += x if isinstance(x, list) else [x]
        vals = nxt
        if not vals:
            # dotted keys inside a flattened object
            direct = src.get(field_path)
            return [direct] if direct is not None else []
    return [v for v in vals if v is not None]


def _matches(q: dict[str, Any] | None, d_id: str, src: dict[str, Any]) -> bool:
    if not q:
        return True
    (kind, body), = q.items()
    if kind == "match_all":
        return True
    if kind == "match_none":
        return False
    if kind == "ids":
        return d_id in body.get("values", [])
    if kind in ("term", "match", "match_phrase"):
        (f, val), = body.items()
        if isinstance(val, dict):
            val = val.get("value", val.get("query"))
        return f == "_id" and d_id == val or any(_eq(x, val) for x in _get_path(src, f))
    if kind == "terms":
        (f, vals), = body.items()
        return any(_eq(x, v) for x in _get_path(src, f) for v in vals)
    if kind == "exists":
        return bool(_get_path(src, body["field"]))
    if kind == "range":
        (f, cond), = body.items()
        xs = _get_path(src, f)
        ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        return any(all(_cmp(ops[o], x, b) for o, b in cond.items() if o in ops) for x in xs)
    if kind == "bool":
        def many(key: str) -> list[dict[str, Any]]:
            v = body.get(key, [])
            return v if isinstance(v, list) else [v]
        if not all(_matches(c, d_id, src) for c in many("must") + many("filter")):
            return False
        if any(_matches(c, d_id, src) for c in many("must_not")):
            return False
        should = many("should")
        if should and not (many("must") or many("filter")) or "minimum_should_match" in body:
            need = int(body.get("minimum_should_match", 1))
            return sum(_matches(c, d_id, src) for c in should) >= need
        return True
    raise _Fail(400, "parsing_exception", f"unknown query [{kind}] (this test endpoint supports only a few)")


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b or str(a).lower() == str(b).lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return str(a) == str(b)


def _cmp(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    try:
        return op(a, b)
    except TypeError:
        return op(str(a), str(b))


# ---------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.endpoint._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.endpoint._conns.discard(self.connection)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        ep = self.server.endpoint
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.headers.get("Content-Encoding", "").lower() == "gzip" and body:
                body = gzip.decompress(body)
        except (OSError, ValueError):
            self.close_connection = True
            return
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        ep._log(method, url.path, self.headers)
        ctype_out = "application/json"
        try:
            if ep.faults.delay_s:
                time.sleep(ep.faults.delay_s)
            ctype_out = ep._negotiate(self.headers, bool(body))
            ep._authenticate(self.headers, url.path)
            fault = ep.faults._request_fault(url.path)
            if fault:
                raise _Fail(fault[0], fault[1], f"injected fault: {fault[1]}")
            status, out = ep._route(method, unquote(url.path), params, body)
        except _Fail as f:
            status, out = f.status, _error_body(f.status, f.error)
        except Exception as exc:  # noqa: BLE001 - a bug here must show as a 500, not a hang
            status, out = 500, _error_body(500, {"type": "test_endpoint_bug", "reason": repr(exc)})
        payload = b"" if out is None else orjson.dumps(out)
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype_out)
            if ep.state.flavor == "elasticsearch":
                self.send_header("X-Elastic-Product", "Elasticsearch")
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="security", charset="UTF-8"')
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], endpoint: "TestEndpoint") -> None:
        self.endpoint = endpoint
        super().__init__(addr, _Handler)


class TestEndpoint:
    """The in-process test endpoint.  ``with TestEndpoint() as ep: ep.url ...``"""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        flavor: str = "elasticsearch",
        version: str | None = None,
        *,
        basic_auth: tuple[str, str] | None = None,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        if flavor not in ("elasticsearch", "opensearch"):
            raise ValueError("flavor must be elasticsearch or opensearch")
        self.state = State(flavor, version or ("9.1.0" if flavor == "elasticsearch" else "2.17.0"))
        self.faults = Faults()
        self.basic_auth = basic_auth
        self.api_key = api_key
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # -- lifecycle ------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def start(self) -> "TestEndpoint":
        return self.up()

    def up(self) -> "TestEndpoint":
        """Open the listener (on the same port as before, if it was up already once)."""
        if self._server is not None:
            return self
        for _ in range(50):
            try:
                self._server = _Server(("127.0.0.1", self._port), self)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"test endpoint cannot listen on 127.0.0.1:{self._port}")
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="es-test-endpoint", daemon=True
        )
        self._thread.start()
        return self

    def down(self) -> None:
        """Close the listener and drop open connections: clients get connection errors."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        self._conns.clear()

    def stop(self) -> None:
        self.faults.clear()
        self.down()

    def __enter__(self) -> "TestEndpoint":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at ----------------------------------------------------

    def docs(self, pattern: str = "*") -> dict[tuple[str, str], Doc]:
        """Every stored document by (index, id)."""
        with self.state.lock:
            return {
                (i.name, d_id): d
                for i in self.state.indices.values()
                if fnmatch.fnmatchcase(i.name, pattern)
                for d_id, d in i.docs.items()
            }

    def id_counts(self, pattern: str = "*") -> Counter:
        """How many indices hold each document id (1 everywhere = no duplicates)."""
        return Counter(d_id for (_, d_id) in self.docs(pattern))

    def doc(self, doc_id: str) -> tuple[str, Doc] | None:
        for (index, d_id), d in self.docs().items():
            if d_id == doc_id:
                return index, d
        return None

    def index_names(self) -> list[str]:
        with self.state.lock:
            return sorted(self.state.indices)

    def mapping(self, index: str) -> dict[str, Any]:
        with self.state.lock:
            return self.state.indices[index].mappings

    def requests(self, path_part: str = "") -> list[dict[str, Any]]:
        return [r for r in list(self.state.requests) if path_part in r["path"]]

    def reset(self) -> None:
        """Forget documents, indices and recorded requests (templates and policies stay)."""
        with self.state.lock:
            self.state.indices.clear()
            self.state.requests.clear()
            self.state.bulk_requests = self.state.bulk_items = 0

    # -- protocol ----------------------------------------------------------------

    def _log(self, method: str, path: str, headers: Any) -> None:
        self.state.requests.append({
            "method": method,
            "path": path,
            "accept": headers.get("Accept", ""),
            "content_type": headers.get("Content-Type", ""),
            "authorization": headers.get("Authorization", ""),
            "user_agent": headers.get("User-Agent", ""),
        })

    def _negotiate(self, headers: Any, has_body: bool) -> str:
        """The response content type; raises for media types the pretended server refuses."""
        accept = headers.get("Accept", "") or ""
        ctype = headers.get("Content-Type", "") or ""
        if self.state.flavor == "opensearch":
            for v in (accept, ctype):
                if "vnd.elasticsearch" in v:
                    raise _Fail(406, "media_type_header_exception", f"Content-Type header [{v}] is not supported")
            return "application/json; charset=UTF-8"
        versions = {}
        for name, v in (("Accept", accept), ("Content-Type", ctype)):
            m = re.search(r"compatible-with=(\d+)", v)
            if "vnd.elasticsearch" in v and m:
                versions[name] = int(m.group(1))
        if not versions:
            return "application/json"
        major = self.state.major
        allowed = (major, major - 1)
        bad = "Accept, Content-Type" if has_body else "Accept"
        if has_body and len(versions) == 1 and ctype:
            raise _Fail(400, "media_type_header_exception", f"Invalid media-type value on headers [{bad}]",
                        caused_by={"type": "status_exception",
                                   "reason": "A compatible version is required on both Content-Type and Accept headers"
                                             " if either one has requested a compatible version."
                                             f" Accept={accept}, Content-Type={ctype}"})
        for name, v in versions.items():
            if v not in allowed:
                raise _Fail(400, "media_type_header_exception", f"Invalid media-type value on headers [{bad}]",
                            caused_by={"type": "status_exception",
                                       "reason": f"{name} version must be either version {allowed[0]} or {allowed[1]},"
                                                 f" but found {v}. {name}={accept if name == 'Accept' else ctype}"})
        if len(set(versions.values())) > 1:
            raise _Fail(400, "media_type_header_exception", f"Invalid media-type value on headers [{bad}]",
                        caused_by={"type": "status_exception",
                                   "reason": "Content-Type and Accept version requested have to match."})
        return f"application/vnd.elasticsearch+json;compatible-with={next(iter(versions.values()))}"

    def _authenticate(self, headers: Any, path: str) -> None:
        if self.basic_auth is None and self.api_key is None:
            return
        got = headers.get("Authorization", "") or ""
        ok = False
        if self.basic_auth is not None:
            user, pw = self.basic_auth
            ok = got == "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
        if not ok and self.api_key is not None:
            ok = got == f"ApiKey {self.api_key}"
        if not ok:
            what = "unable to authenticate user" if got else "missing authentication credentials"
            raise _Fail(401, "security_exception", f"{what} for REST request [{path}]",
                        header={"WWW-Authenticate": ['Basic realm="security", charset="UTF-8"', "ApiKey"]})

    # -- routing -------------------------------------------------------------------

    def _route(self, method: str, path: str, params: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        st = self.state
        es = st.flavor == "elasticsearch"
        if not parts:
            if method in ("GET", "HEAD"):
                return 200, self._info()
        elif parts[-1] == "_bulk" and method in ("POST", "PUT"):
            return self._bulk(parts[0] if len(parts) == 2 else None, body, params)
        elif parts[0] == "_index_template" and len(parts) <= 2:
            return self._template(method, parts[1] if len(parts) == 2 else None, body)
        elif parts[0] == "_ilm" and len(parts) == 3 and parts[1] == "policy" and es:
            return self._ilm(method, parts[2], body)
        elif parts[:3] == ["_plugins", "_ism", "policies"] and len(parts) == 4 and not es:
            return self._ism(method, parts[3], body, params)
        elif parts[-1] == "_refresh":
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        elif parts[-1] in ("_search", "_count") and method in ("GET", "POST"):
            return self._search(parts[-1], parts[0] if len(parts) == 2 else None, body, params)
        elif parts[0] == "_alias" or (len(parts) == 2 and parts[1] == "_alias"):
            return 404, _error_body(404, {"type": "aliases_not_found_exception", "reason": "aliases missing"})
        elif len(parts) == 2 and parts[1] == "_mapping":
            return self._mapping(method, parts[0], body)
        elif len(parts) == 3 and parts[1] == "_doc" and method == "GET":
            return self._get_doc(parts[0], parts[2])
        elif len(parts) == 3 and parts[1] in ("_doc", "_create") and method in ("PUT", "POST", "DELETE"):
            return self._write_doc(method, parts[1], parts[0], parts[2], body, params)
        elif len(parts) == 1 and not parts[0].startswith("_"):
            return self._index(method, parts[0], body)
        raise _Fail(400, "illegal_argument_exception" if es else "invalid_request",
                    f"no handler found for uri [{path}] and method [{method}]")

    def _info(self) -> dict[str, Any]:
        st = self.state
        version: dict[str, Any] = {"number": st.version, "build_type": "docker", "build_snapshot": False,
                                   "lucene_version": "10.2.2" if st.flavor == "elasticsearch" else "9.12.0"}
        if st.flavor == "opensearch":
            version["distribution"] = "opensearch"
            version["minimum_wire_compatibility_version"] = "7.10.0"
            tagline = "The OpenSearch Project: https://opensearch.org/"
        else:
            version["build_flavor"] = "default"
            tagline = "You Know, for Search"
        return {"name": "es-test-endpoint", "cluster_name": "opos-test", "cluster_uuid": "test-endpoint",
                "version": version, "tagline": tagline}

    # -- bulk ------------------------------------------------------------------------

    def _bulk(self, path_index: str | None, body: bytes, params: dict[str, str]) -> tuple[int, Any]:
        started = time.perf_counter()
        lines = body.split(b"\n")
        ops: list[tuple[str, dict[str, Any], Any]] = []
        i = 0
        try:
            while i < len(lines):
                line = lines[i].strip()
                i += 1
                if not line:
                    continue
                action = orjson.loads(line)
                if not isinstance(action, dict) or len(action) != 1:
                    raise _Fail(400, "illegal_argument_exception", "Malformed action/metadata line")
                (op, meta), = action.items()
                if op not in ("index", "create", "delete", "update"):
                    raise _Fail(400, "illegal_argument_exception", f"Malformed action/metadata line [{i}], expected one of"
                                f" [create, delete, index, update] but found [{op}]")
                src = None
                if op != "delete":
                    if i >= len(lines) or not lines[i].strip():
                        raise _Fail(400, "illegal_argument_exception", "The bulk request must be terminated by a newline")
                    src = orjson.loads(lines[i])
                    i += 1
                ops.append((op, meta, src))
        except orjson.JSONDecodeError as exc:
            raise _Fail(400, "x_content_parse_exception", f"[1:1] Unexpected character: {exc}") from None
        items = []
        with self.state.lock:
            self.state.bulk_requests += 1
            self.state.bulk_items += len(ops)
            for op, meta, src in ops:
                items.append({op: self._bulk_item(op, meta, src, path_index)})
        hook = self.faults.on_bulk
        if hook is not None:
            hook(len(ops))
        if self.faults.apply_then_delay_s:
            time.sleep(self.faults.apply_then_delay_s)
        errors = any("error" in next(iter(it.values())) for it in items)
        return 200, {"took": int((time.perf_counter() - started) * 1000), "errors": errors, "items": items}

    def _bulk_item(self, op: str, meta: dict[str, Any], src: Any, path_index: str | None) -> dict[str, Any]:
        st = self.state
        index = meta.get("_index") or path_index
        d_id = meta.get("_id")
        if index is None:
            return _item_error(None, d_id, 400, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
        if op == "update":
            return _item_error(index, d_id, 400, "illegal_argument_exception", "update is not supported by this test endpoint")
        if d_id is None:
            if op == "delete":
                return _item_error(index, None, 400, "action_request_validation_exception", "Validation Failed: 1: id is missing;")
            d_id = uuid.uuid4().hex[:20]
        if len(str(d_id).encode()) > 512:
            return _item_error(index, d_id, 400, "action_request_validation_exception",
                               f"Validation Failed: 1: id [{d_id}] is too long, must be no longer than 512 bytes;")
        fault = self.faults._item_fault()
        if fault:
            return _item_error(index, d_id, fault[0], fault[1], f"injected item fault: {fault[1]}")
        if d_id in self.faults.reject_ids:
            return _item_error(index, d_id, 400, "document_parsing_exception" if st.flavor == "elasticsearch" and st.major >= 8
                               else "mapper_parsing_exception", self.faults.reject_ids[d_id])
        idx = st.indices.get(index)
        version = meta.get("version")
        vtype = meta.get("version_type", "internal")
        if op == "delete":
            if idx is None:
                return _item_error(index, d_id, 404, "index_not_found_exception", f"no such index [{index}]")
            cur = idx.docs.get(d_id)
            if cur is None:
                return {"_index": index, "_id": d_id, "_version": 1, "result": "not_found", "status": 404,
                        "_shards": _shards(), "_seq_no": next(idx.seq), "_primary_term": 1}
            conflict = _version_conflict(cur.version, version, vtype, d_id)
            if conflict:
                return _item_error(index, d_id, 409, "version_conflict_engine_exception", conflict)
            del idx.docs[d_id]
            return {"_index": index, "_id": d_id, "_version": version if vtype != "internal" and version else cur.version + 1,
                    "result": "deleted", "status": 200, "_shards": _shards(), "_seq_no": next(idx.seq), "_primary_term": 1}
        if not isinstance(src, dict):
            return _item_error(index, d_id, 400, "mapper_parsing_exception", "failed to parse, document is empty")
        if idx is None:
            try:
                idx = st.create_index(index)
            except _Fail as f:
                return _item_error(index, d_id, f.status, f.error["type"], f.error["reason"])
        cur = idx.docs.get(d_id)
        if op == "create" and cur is not None:
            return _item_error(index, d_id, 409, "version_conflict_engine_exception",
                               f"[{d_id}]: version conflict, document already exists (current version [{cur.version}])")
        if cur is not None:
            conflict = _version_conflict(cur.version, version, vtype, d_id)
            if conflict:
                return _item_error(index, d_id, 409, "version_conflict_engine_exception", conflict)
        checker = Checker(st.flavor, st.major, d_id)
        try:
            checker.check_root(idx.mappings, src)
        except DocError as e:
            return _item_error(index, d_id, 400, e.error["type"], e.error["reason"], e.error.get("caused_by"))
        if checker.new_fields:
            trial = orjson.loads(orjson.dumps(idx.mappings))
            for p, fm in checker.new_fields:
                _add_field(trial, p, fm)
            n = count_fields(trial)
            if n > idx.field_limit:
                return _item_error(index, d_id, 400, "illegal_argument_exception",
                                   f"Limit of total fields [{idx.field_limit}] has been exceeded while adding new fields"
                                   f" [{n - count_fields(idx.mappings)}]")
            idx.mappings = trial
        new_version = version if vtype in ("external", "external_gte") and version is not None else (cur.version + 1 if cur else 1)
        idx.docs[d_id] = Doc(new_version, next(idx.seq), src, (cur.writes + 1) if cur else 1)
        return {"_index": index, "_id": d_id, "_version": new_version, "result": "updated" if cur else "created",
                "_shards": _shards(), "_seq_no": idx.docs[d_id].seq_no, "_primary_term": 1, "status": 200 if cur else 201}

    # -- templates and policies ---------------------------------------------------------

    def _template(self, method: str, name: str | None, body: bytes) -> tuple[int, Any]:
        st = self.state
        with st.lock:
            if method == "PUT" and name:
                t = orjson.loads(body)
                if not t.get("index_patterns"):
                    raise _Fail(400, "action_request_validation_exception", "Validation Failed: 1: index patterns are missing;")
                settings = flat_settings(t.get("template", {}).get("settings", {}))
                if st.flavor == "opensearch":
                    bad = [k for k in settings if k.startswith("index.lifecycle.")]
                    if bad:
                        raise _Fail(400, "illegal_argument_exception",
                                    f"unknown setting [{bad[0]}] please check that any required plugins are installed,"
                                    f" or check the breaking changes documentation for removed settings")
                validate_mappings(st.flavor, t.get("template", {}).get("mappings", {}))
                st.templates[name] = t
                return 200, {"acknowledged": True}
            if method == "GET":
                names = [name] if name else sorted(st.templates)
                found = [{"name": n, "index_template": st.templates[n]} for n in names if n in st.templates]
                if name and not found:
                    raise _Fail(404, "resource_not_found_exception", f"index template matching [{name}] not found")
                return 200, {"index_templates": found}
            if method == "DELETE" and name:
                if st.templates.pop(name, None) is None:
                    raise _Fail(404, "resource_not_found_exception", f"index_template [{name}] missing")
                return 200, {"acknowledged": True}
        raise _Fail(405, "method_not_allowed", f"method [{method}] not allowed")

    def _ilm(self, method: str, name: str, body: bytes) -> tuple[int, Any]:
        st = self.state
        with st.lock:
            if method == "PUT":
                p = orjson.loads(body)
                if "policy" not in p or "phases" not in p["policy"]:
                    raise _Fail(400, "x_content_parse_exception", "[1:2] [put_lifecycle_request] failed to parse field [policy]")
                old = st.ilm.get(name)
                st.ilm[name] = {"version": (old["version"] + 1) if old else 1,
                                "modified_date": datetime.now(timezone.utc).isoformat(), "policy": p["policy"]}
                return 200, {"acknowledged": True}
            if method == "GET":
                if name not in st.ilm:
                    raise _Fail(404, "resource_not_found_exception", f"Lifecycle policy not found: {name}")
                return 200, {name: st.ilm[name]}
            if method == "DELETE":
                if st.ilm.pop(name, None) is None:
                    raise _Fail(404, "resource_not_found_exception", f"Lifecycle policy not found: {name}")
                return 200, {"acknowledged": True}
        raise _Fail(405, "method_not_allowed", f"method [{method}] not allowed")

    def _ism(self, method: str, name: str, body: bytes, params: dict[str, str]) -> tuple[int, Any]:
        st = self.state
        with st.lock:
            cur = st.ism.get(name)
            if method == "PUT":
                p = orjson.loads(body).get("policy")
                if not isinstance(p, dict) or "states" not in p:
                    raise _Fail(400, "illegal_argument_exception", "Required [policy] is missing or has no states")
                if cur is not None:
                    if "if_seq_no" not in params or "if_primary_term" not in params:
                        raise _Fail(409, "version_conflict_engine_exception",
                                    f"[{name}]: version conflict, document already exists (current version [{cur['_version']}])")
                    if int(params["if_seq_no"]) != cur["_seq_no"] or int(params["if_primary_term"]) != cur["_primary_term"]:
                        raise _Fail(409, "version_conflict_engine_exception",
                                    f"[{name}]: version conflict, required seqNo [{params['if_seq_no']}], primary term"
                                    f" [{params['if_primary_term']}]. current document has seqNo [{cur['_seq_no']}]"
                                    f" and primary term [{cur['_primary_term']}]")
                stored = {**p, "policy_id": name, "last_updated_time": int(time.time() * 1000),
                          "schema_version": 21, "error_notification": None}
                entry = {"_id": name, "_version": (cur["_version"] + 1) if cur else 1, "_seq_no": next(st.ism_seq),
                         "_primary_term": 1, "policy": stored}
                st.ism[name] = entry
                return (200 if cur else 201), {**entry, "policy": {"policy": stored}}
            if method == "GET":
                if cur is None:
                    raise _Fail(404, "status_exception", "Policy not found")
                return 200, cur
            if method == "DELETE":
                if st.ism.pop(name, None) is None:
                    raise _Fail(404, "status_exception", "Policy not found")
                return 200, {"_id": name, "result": "deleted"}
        raise _Fail(405, "method_not_allowed", f"method [{method}] not allowed")

    # -- indices ---------------------------------------------------------------------------

    def _index(self, method: str, name: str, body: bytes) -> tuple[int, Any]:
        st = self.state
        with st.lock:
            if method == "HEAD":
                return (200 if name in st.indices else 404), None
            if method == "PUT":
                if name in st.indices:
                    raise _Fail(400, "resource_already_exists_exception", f"index [{name}/{st.indices[name].uuid}] already exists",
                                index=name)
                st.create_index(name, orjson.loads(body) if body else None)
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}
            if method == "DELETE":
                for idx in st.resolve(name):
                    del st.indices[idx.name]
                return 200, {"acknowledged": True}
            if method == "GET":
                return 200, {i.name: {"mappings": i.mappings, "settings": i.settings, "aliases": {}} for i in st.resolve(name)}
        raise _Fail(405, "method_not_allowed", f"method [{method}] not allowed")

    def _mapping(self, method: str, expr: str, body: bytes) -> tuple[int, Any]:
        st = self.state
        with st.lock:
            try:
                targets = st.resolve(expr)
            except _Fail:
                if method == "GET" and "*" in expr:
                    return 200, {}
                raise
            if method == "GET":
                return 200, {i.name: {"mappings": i.mappings} for i in targets}
            if method == "PUT":
                update = orjson.loads(body)
                validate_mappings(st.flavor, update)
                for i in targets:
                    for name, m in update.get("properties", {}).items():
                        old = i.mappings.get("properties", {}).get(name)
                        if old is not None and old.get("type", "object") != m.get("type", "object"):
                            raise _Fail(400, "illegal_argument_exception",
                                        f"mapper [{name}] cannot be changed from type [{old.get('type', 'object')}]"
                                        f" to [{m.get('type', 'object')}]")
                for i in targets:
                    i.mappings = _merge_mappings(i.mappings, {k: v for k, v in update.items() if k == "properties"})
                return 200, {"acknowledged": True}
        raise _Fail(405, "method_not_allowed", f"method [{method}] not allowed")

    def _write_doc(self, method: str, kind: str, index: str, d_id: str, body: bytes,
                   params: dict[str, str]) -> tuple[int, Any]:
        op = "delete" if method == "DELETE" else ("create" if kind == "_create" or params.get("op_type") == "create" else "index")
        meta: dict[str, Any] = {"_index": index, "_id": d_id}
        if "version" in params:
            meta["version"] = int(params["version"])
            meta["version_type"] = params.get("version_type", "internal")
        with self.state.lock:
            item = self._bulk_item(op, meta, orjson.loads(body) if body else None, None)
        if "error" in item:
            return item["status"], _error_body(item["status"], item["error"])
        return item["status"], item

    def _get_doc(self, index: str, d_id: str) -> tuple[int, Any]:
        st = self.state
        with st.lock:
            idx = st.indices.get(index)
            if idx is None:
                raise _Fail(404, "index_not_found_exception", f"no such index [{index}]", index=index)
            d = idx.docs.get(d_id)
            if d is None:
                return 404, {"_index": index, "_id": d_id, "found": False}
            return 200, {"_index": index, "_id": d_id, "_version": d.version, "_seq_no": d.seq_no,
                         "_primary_term": 1, "found": True, "_source": d.source}

    def _search(self, what: str, expr: str | None, body: bytes, params: dict[str, str]) -> tuple[int, Any]:
        q = orjson.loads(body) if body else {}
        st = self.state
        with st.lock:
            try:
                targets = st.resolve(expr)
            except _Fail:
                if expr and "*" in expr:
                    targets = []
                else:
                    raise
            hits = [(i.name, d_id, d) for i in targets for d_id, d in i.docs.items()
                    if _matches(q.get("query"), d_id, d.source)]
        shards = {"total": max(1, len(targets)), "successful": max(1, len(targets)), "skipped": 0, "failed": 0}
        if what == "_count":
            return 200, {"count": len(hits), "_shards": shards}
        size = int(q.get("size", params.get("size", 10)))
        return 200, {
            "took": 1, "timed_out": False, "_shards": shards,
            "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": 1.0 if hits else None,
                     "hits": [{"_index": n, "_id": d_id, "_score": 1.0, "_version": d.version, "_source": d.source}
                              for n, d_id, d in hits[:size]]},
        }


def _shards() -> dict[str, int]:
    return {"total": 2, "successful": 1, "failed": 0}


def _item_error(index: str | None, d_id: Any, status: int, etype: str, reason: str,
                caused_by: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"type": etype, "reason": reason}
    if index is not None:
        err["index"] = index
        err["index_uuid"] = "test-endpoint"
    if caused_by:
        err["caused_by"] = caused_by
    return {"_index": index, "_id": d_id, "status": status, "error": err}


def _version_conflict(current: int, version: Any, vtype: str, d_id: str) -> str | None:
    if version is None or vtype == "internal":
        return None
    v = int(version)
    if vtype == "external" and v <= current:
        return f"[{d_id}]: version conflict, current version [{current}] is higher or equal to the one provided [{v}]"
    if vtype == "external_gte" and v < current:
        return f"[{d_id}]: version conflict, current version [{current}] is higher than the one provided [{v}]"
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavor", choices=("elasticsearch", "opensearch"), default="elasticsearch")
    ap.add_argument("--version", default=None)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    import gc

    gc.disable()  # millions of long-lived JSON objects, no cycles: collections would only stall the server
    ep = TestEndpoint(a.flavor, a.version, port=a.port).start()
    print(ep.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    ep.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
