"""Event-log source: tail HTCondor job event logs and turn their events into job records.

Reads the *text* format HTCondor writes to user logs (``log = ...`` in a submit file) and to a
schedd's global event log (``EVENT_LOG``): events ``NNN (cluster.proc.subproc) date time text``
followed by body lines and a ``...`` line.  The XML and JSON formats
(``EVENT_LOG_USE_XML``, ``EVENT_LOG_FORMAT_OPTIONS = JSON``) are not read: such a file is
reported and skipped.

Why an own reader rather than ``htcondor2.JobEventLog``: the bindings' reader hides its offset
(it is only reachable through pickling), cannot tell a rotated or truncated file from a grown
one, and blocks or raises on damaged input.  This reader works on byte offsets, so the offset
is the checkpoint; it never consumes an event whose ``...`` has not been written yet; it
reports garbage lines and truncated events with file and line and carries on.  The tests check
it against ``htcondor2.JobEventLog`` on real logs.

Layers, each usable on its own:

* :func:`parse_header` / :func:`parse_event` - one event's lines -> :class:`Event` (pure);
* :class:`EventReader` - a binary file from a byte offset -> complete events with the offset
  after each;
* :class:`JobTable` - events -> per-job state: a job ad synthesized with HTCondor attribute
  names (``JobStatus``, ``QDate``, ``ExitCode``, ``HoldReasonCode``, ``RemoveReason``,
  ``MemoryUsage``...) plus the job's events as dicts for
  :func:`opos_monitor.enrich.classify.classify` (``events=``);
* :class:`EventLogSource` - globs -> streams (one per live file), checkpointed through a
  :class:`~opos_monitor.sources.base.Handoff`, following rotation and truncation;
* :func:`read_log` - a whole file -> ``(JobRecord, events)`` pairs, for offline use.

See ``docs/sources-eventlog.md`` for the checkpoint format, how job state survives restarts,
and what a record built from a log can and cannot carry.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from functools import lru_cache
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

from ..classads import ReadError, parse_value
from ..records import JobRecord
from .base import Handoff, PollResult, SourceKey

__all__ = [
    "EVENT_NAMES",
    "Event",
    "EventLogSource",
    "EventLogSpec",
    "EventReader",
    "FileId",
    "JobState",
    "JobTable",
    "Position",
    "file_id",
    "parse_event",
    "parse_header",
    "read_log",
]

log = logging.getLogger(__name__)

SOURCE = "eventlog"
CHECKPOINT_VERSION = 1
HEAD_BYTES = 4096
MAX_DIGESTS = 4096  # per job: events recognised when a truncated file is read again

#: ULog event numbers -> the names used in event dicts (the classifier's vocabulary where it
#: has one: submitted, executed, evicted, terminated, shadow_exception, aborted, held,
#: released, job_disconnected, job_reconnected, job_reconnect_failed).
EVENT_NAMES = {
    0: "submitted", 1: "executed", 2: "executable_error", 3: "checkpointed", 4: "evicted",
    5: "terminated", 6: "image_size", 7: "shadow_exception", 8: "generic", 9: "aborted",
    10: "suspended", 11: "unsuspended", 12: "held", 13: "released", 14: "node_executed",
    15: "node_terminated", 16: "post_script_terminated", 17: "globus_submit",
    18: "globus_submit_failed", 19: "globus_resource_up", 20: "globus_resource_down",
    21: "remote_error", 22: "job_disconnected", 23: "job_reconnected", 24: "job_reconnect_failed",
    25: "grid_resource_up", 26: "grid_resource_down", 27: "grid_submit", 28: "job_ad_information",
    29: "job_status_unknown", 30: "job_status_known", 31: "job_stage_in", 32: "job_stage_out",
    33: "attribute_update", 34: "pre_skip", 35: "cluster_submit", 36: "cluster_remove",
    37: "factory_paused", 38: "factory_resumed", 39: "none", 40: "file_transfer",
    41: "reserve_space", 42: "release_space", 43: "file_complete", 44: "file_used",
    45: "file_removed", 46: "dataflow_job_skipped", 47: "common_files",
}

#: events that say something about the job's life; a job is reported once it has one, and
#: these (not image-size, ad-information or file-transfer events) are the events handed to
#: the classifier
LIFECYCLE = frozenset({0, 1, 2, 4, 5, 7, 9, 10, 11, 12, 13, 21, 22, 23, 24})
#: events after which a job is finished (it has left the queue)
TERMINAL = frozenset({5, 9})

ErrorCallback = Callable[[ReadError], None]


def _log_error(err: ReadError) -> None:
    log.warning("%s", err)


# ---------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class Event:
    """One event as read from a log.

    ``fields`` holds what the body says, under short names: ``reason``, ``code``,
    ``subcode``, ``host`` (a sinful string), ``slot``, ``exit_code``, ``signal``,
    ``core_file``, ``memory_mb``, ``rss_kb``, ``image_kb``, ``usage`` (the partitionable
    resources table as job attribute names: ``MemoryUsage``, ``RequestMemory``,
    ``MemoryProvisioned``...), ``ad`` (the attributes of a job-ad-information event)...
    """

    number: int
    cluster: int
    proc: int
    subproc: int
    time: float  # epoch seconds
    text: str  # the header line's text after the date ("Job was held.")
    fields: Mapping[str, Any]
    line: int = 0  # line number of the header (1-based)
    offset: int = 0  # byte offset of the header
    digest: str = ""  # hash of the event's raw text: re-reading the same event is recognised

    @property
    def type(self) -> str:
        return EVENT_NAMES.get(self.number, f"event_{self.number}")

    def to_dict(self) -> dict[str, Any]:
        """The event as the classifier takes it: ``{"type", "time", "reason", "code", ...}``."""
        d: dict[str, Any] = {"type": self.type, "number": self.number, "time": self.time,
                             "cluster": self.cluster, "proc": self.proc}
        for k, v in self.fields.items():
            if k not in ("ad", "usage", "props", "notes"):
                d[k] = v
        d.setdefault("reason", "")
        return d


_HEADER_RE = re.compile(
    r"(\d{3}) \((-?\d+)\.(-?\d+)\.(-?\d+)\) "
    r"(?:(\d{4})-(\d\d)-(\d\d)[ T]|(\d\d)/(\d\d) )(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?(?: (.*))?$"
)


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    cluster: int
    proc: int
    subproc: int
    time: float
    text: str


def parse_header(line: str, *, tz: Optional[tzinfo] = None, ref: Optional[float] = None) -> Optional[Header]:
    """``NNN (c.p.s) date time text`` -> :class:`Header`; None if the line is not a header.

    Dates: ``MM/DD HH:MM:SS`` (HTCondor's legacy default, without the year: it is the year of
    ``ref`` - epoch seconds, default now; the file's last write time when reading a file - or
    the year before when that would put the event more than a day after ``ref``),
    ``YYYY-MM-DD HH:MM:SS`` (``ISO_DATE``), optionally ``.mmm`` (``SUB_SECOND``) and ``Z``
    (``UTC``).  A time without ``Z`` is the writer's local time, read in ``tz`` (default: this
    process's local time zone, which is what HTCondor's own reader does).
    """
    m = _HEADER_RE.match(line)
    if m is None:
        return None
    g = m.groups()
    hms = int(g[9]), int(g[10]), int(g[11])
    zone = g[13] or ""
    if g[4] is not None:
        t = _epoch(int(g[4]), int(g[5]), int(g[6]), *hms, zone, tz)
    else:
        r = time.time() if ref is None else ref
        year = _local_year(r, tz)
        t = _epoch(year, int(g[7]), int(g[8]), *hms, zone, tz)
        if t is not None and t > r + 86400:
            t = _epoch(year - 1, int(g[7]), int(g[8]), *hms, zone, tz)
    if t is None:
        return None
    if g[12]:
        t += float(g[12])
    return Header(int(g[0]), int(g[1]), int(g[2]), int(g[3]), t, (g[14] or "").rstrip())


def _local_year(t: float, tz: Optional[tzinfo]) -> int:
    return datetime.fromtimestamp(t, tz).year if tz is not None else datetime.fromtimestamp(t).year


@lru_cache(maxsize=4096)
def _epoch(y: int, mo: int, d: int, h: int, mi: int, s: int, zone: str, tz: Optional[tzinfo]) -> Optional[float]:
    try:
        if zone == "Z":
            return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc).timestamp()
        if zone:
            sign = -1 if zone[0] == "-" else 1
            hh, mm = int(zone[1:3]), int(zone[-2:])
            return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc).timestamp() - sign * (hh * 3600 + mm * 60)
        if tz is not None:
            return datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()
        return datetime(y, mo, d, h, mi, s).timestamp()  # naive: local time, as HTCondor reads it
    except (ValueError, OverflowError):
        return None


# --- body parsers: (header text, body lines) -> fields --------------------------------------

_CODE_RE = re.compile(r"\s*Code (-?\d+) Subcode (-?\d+)\s*$")
_BYTES_RE = re.compile(r"\s*(-?[\d.]+)  -  (Run|Total) Bytes (Sent|Received) By (\w+)")
_RUSAGE_RE = re.compile(r"\s*Usr (\d+) (\d+):(\d+):(\d+), Sys (\d+) (\d+):(\d+):(\d+)  -  (Run|Total) (Remote|Local) Usage")
_TERM_RE = re.compile(r"\s*\((\d+)\) (?:Normal termination \(return value (-?\d+)\)|Abnormal termination \(signal (\d+)\))")
_CORE_RE = re.compile(r"\s*\((\d+)\) (?:No core file|Corefile in: (.*))")
_SIZE_RE = re.compile(r"\s*(-?\d+)\s+-\s+(\w+)")
_ATTR_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_TABLE_HEAD = ("Partitionable Resources", "Resources")
_COLUMNS = {"usage": "{}Usage", "request": "Request{}", "allocated": "{}Provisioned", "assigned": "Assigned{}"}


def _after(text: str, prefix: str) -> str:
    return text[len(prefix):].strip() if text.startswith(prefix) else text.strip()


def _value(text: str) -> Any:
    v = parse_value(text)
    return v if isinstance(v, (int, float, str, bool, list, dict)) or v is None else str(text).strip()


def _seconds(g: Sequence[str]) -> tuple[int, int]:
    usr = int(g[0]) * 86400 + int(g[1]) * 3600 + int(g[2]) * 60 + int(g[3])
    sys_ = int(g[4]) * 86400 + int(g[5]) * 3600 + int(g[6]) * 60 + int(g[7])
    return usr, sys_


def _table_columns(line: str) -> list[tuple[int, str]]:
    """Column label end positions (relative to the ':') of the usage table header."""
    colon = line.find(":")
    return [(m.end(), m.group().lower()) for m in re.finditer(r"\S+", line[colon + 1:])]


def _table_row(line: str, columns: list[tuple[int, str]], out: dict[str, Any]) -> None:
    """``   Memory (MB)  :  4  128  128`` -> MemoryUsage/RequestMemory/MemoryProvisioned."""
    label, _, rest = line.partition(":")
    name = re.sub(r"\s*\(.*\)\s*$", "", label.strip())
    if not name or not columns:
        return
    for m in re.finditer(r"\S+", rest):
        col = min(columns, key=lambda c: abs(c[0] - m.end()))[1]
        pattern = _COLUMNS.get(col)
        if pattern:
            out[pattern.format(name)] = _value(m.group())


def _run_block(body: Sequence[str]) -> dict[str, Any]:
    """The body shared by terminated and evicted events: termination, core, rusage, bytes,
    an optional reason line, the partitionable-resources table, the ToE tag."""
    f: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    columns: Optional[list[tuple[int, str]]] = None
    for raw in body:
        s = raw.strip()
        if not s:
            columns = None
            continue
        if columns is not None:
            if ":" in s:
                _table_row(raw, columns, usage)
                continue
            columns = None
        if s.startswith(_TABLE_HEAD):
            columns = _table_columns(raw)
            continue
        m = _TERM_RE.match(s)
        if m:
            if m.group(2) is not None:
                f["exit_code"] = int(m.group(2))
            else:
                f["signal"] = int(m.group(3))
            continue
        m = _CORE_RE.match(s)
        if m:
            if m.group(2):
                f["core_file"] = m.group(2).strip()
            continue
        m = _RUSAGE_RE.match(s)
        if m:
            usr, sys_ = _seconds(m.groups()[:8])
            key = f"{m.group(9).lower()}_{m.group(10).lower()}"
            f[key + "_user_s"], f[key + "_sys_s"] = usr, sys_
            continue
        m = _BYTES_RE.match(s)
        if m:
            f[f"{m.group(2).lower()}_bytes_{m.group(3).lower()}"] = float(m.group(1))
            continue
        if s in ("(0) CPU times", "(1) Job was checkpointed.") or s.startswith("(0) Job terminated and was requeued"):
            if "requeued" in s:
                f["requeued"] = True
            continue
        if s.startswith("Job terminated "):  # the time-of-exit tag
            f["toe"] = s
            continue
        if "reason" not in f:
            f["reason"] = _after(s, "Reason:")
    if usage:
        f["usage"] = usage
    return f


def _p_submit(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"host": _after(text, "Job submitted from host:")}
    notes = [s.strip() for s in body if s.strip()]
    if notes:
        f["notes"] = notes
    return f


def _p_execute(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"host": _after(text, "Job executing on host:")}
    props: dict[str, Any] = {}
    for raw in body:
        s = raw.strip()
        if s.startswith("SlotName:"):
            f["slot"] = s[9:].strip().strip('"')
            continue
        m = _ATTR_RE.match(s)
        if m:
            props[m.group(1)] = _value(m.group(2))
    if props:
        f["props"] = props
    return f


def _p_text_reason(text: str, body: Sequence[str]) -> dict[str, Any]:
    return {"reason": text.strip()}


def _p_evicted(text: str, body: Sequence[str]) -> dict[str, Any]:
    f = _run_block(body)
    m = re.search(r"Code (-?\d+) Subcode (-?\d+)", text)
    if m:
        f["code"], f["subcode"] = int(m.group(1)), int(m.group(2))
    return f


def _p_terminated(text: str, body: Sequence[str]) -> dict[str, Any]:
    f = _run_block(body)
    f.pop("reason", None)  # a terminate event has no reason line; stray text is not one
    return f


def _p_image_size(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {}
    m = re.search(r"(-?\d+)", text)
    if m:
        f["image_kb"] = int(m.group(1))
    names = {"memoryusage": "memory_mb", "residentsetsize": "rss_kb", "proportionalsetsize": "pss_kb"}
    for raw in body:
        m = _SIZE_RE.match(raw)
        if m and m.group(2).lower() in names:
            f[names[m.group(2).lower()]] = int(m.group(1))
    return f


def _first_line(body: Sequence[str]) -> str:
    for raw in body:
        s = raw.strip()
        if s:
            return s
    return ""


def _p_shadow_exception(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"reason": ""}
    for raw in body:
        s = raw.strip()
        m = _BYTES_RE.match(s)
        if m:
            f[f"{m.group(2).lower()}_bytes_{m.group(3).lower()}"] = float(m.group(1))
        elif s and not f["reason"]:
            f["reason"] = s
    return f


def _p_aborted(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"reason": ""}
    for raw in body:
        s = raw.strip()
        if not s:
            continue
        if s.startswith("Job terminated "):
            f["toe"] = s
        elif not f["reason"]:
            f["reason"] = s
    return f


def _p_held(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"reason": ""}
    for raw in body:
        m = _CODE_RE.match(raw)
        if m:
            f["code"], f["subcode"] = int(m.group(1)), int(m.group(2))
            continue
        s = raw.strip()
        if s and not f["reason"] and "code" not in f:
            f["reason"] = "" if s == "Reason unspecified" else s
    return f


def _p_released(text: str, body: Sequence[str]) -> dict[str, Any]:
    return {"reason": _first_line(body)}


def _p_remote_error(text: str, body: Sequence[str]) -> dict[str, Any]:
    """``Error from starter on slot1_2@fnal@vm:`` + message lines + ``Code N Subcode M``."""
    f: dict[str, Any] = {}
    m = re.match(r"(\w+) from (.*?) on (.*?):?\s*$", text.strip())
    if m:
        f["critical"] = m.group(1) == "Error"
        f["daemon"] = m.group(2).strip()
        f["slot"] = m.group(3).strip()
    lines = []
    for raw in body:
        c = _CODE_RE.match(raw)
        if c:
            f["code"], f["subcode"] = int(c.group(1)), int(c.group(2))
            break
        lines.append(raw[1:] if raw.startswith("\t") else raw)
    f["reason"] = "\n".join(lines).strip()
    return f


def _p_disconnected(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"reason": ""}
    for raw in body:
        s = raw.strip()
        if s.startswith("Trying to reconnect to "):
            name, _, addr = s[len("Trying to reconnect to "):].partition(" ")
            f["slot"], f["host"] = name, addr.strip()
        elif s and not f["reason"]:
            f["reason"] = s
    return f


def _p_reconnected(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"reason": "", "slot": _after(text, "Job reconnected to")}
    for raw in body:
        s = raw.strip()
        if s.startswith("startd address:"):
            f["host"] = s[len("startd address:"):].strip()
        elif s.startswith("starter address:"):
            f["starter"] = s[len("starter address:"):].strip()
    return f


def _p_reconnect_failed(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"reason": ""}
    for raw in body:
        s = raw.strip()
        m = re.match(r"Can not reconnect to (.*?), rescheduling job", s)
        if m:
            f["slot"] = m.group(1)
        elif s and not f["reason"]:
            f["reason"] = s
    return f


def _p_ad_information(text: str, body: Sequence[str]) -> dict[str, Any]:
    """The job attributes of a job-ad-information event (attributes describing the event
    that triggered it - EventTime, ReturnValue, SubmitHost... - are left out)."""
    ad: dict[str, Any] = {}
    f: dict[str, Any] = {"ad": ad}
    for raw in body:
        name, sep, value = raw.partition(" = ")
        if sep and name.lower() in _EVENT_ATTRS:
            if name == "TriggerEventTypeNumber":
                f["trigger"] = _value(value)
            continue
        m = _ATTR_RE.match(raw)
        if m and m.group(1).lower() not in _EVENT_ATTRS:
            ad[m.group(1)] = _value(m.group(2))
    return f


def _p_attribute_update(text: str, body: Sequence[str]) -> dict[str, Any]:
    s = text.strip()
    m = re.match(r"Changing job attribute (\w+) from (.*) to (.*)$", s) or re.match(r"Setting job attribute (\w+) to (.*)$", s)
    if m:
        return {"attribute": m.group(1), "value": m.group(m.lastindex or 2)}
    m = re.match(r"Removing job attribute (\w+)", s)
    return {"attribute": m.group(1), "value": None} if m else {"reason": s}


def _p_generic(text: str, body: Sequence[str]) -> dict[str, Any]:
    f: dict[str, Any] = {"info": text.strip()}
    m = re.search(r"\bid=(\S+)", text)
    if text.startswith("Global JobLog:") and m:
        f["log_id"] = m.group(1)
        seq = re.search(r"\bsequence=(\d+)", text)
        if seq:
            f["sequence"] = int(seq.group(1))
    return f


def _p_default(text: str, body: Sequence[str]) -> dict[str, Any]:
    return {"reason": text.strip()}


_BODY: dict[int, Callable[[str, Sequence[str]], dict[str, Any]]] = {
    0: _p_submit, 1: _p_execute, 2: _p_text_reason, 4: _p_evicted, 5: _p_terminated,
    6: _p_image_size, 7: _p_shadow_exception, 8: _p_generic, 9: _p_aborted, 12: _p_held,
    13: _p_released, 21: _p_remote_error, 22: _p_disconnected, 23: _p_reconnected,
    24: _p_reconnect_failed, 28: _p_ad_information, 33: _p_attribute_update,
}


def parse_event(lines: Sequence[str], *, tz: Optional[tzinfo] = None, ref: Optional[float] = None,
                line: int = 0, offset: int = 0, raw: Optional[bytes] = None) -> Optional[Event]:
    """One event's lines (header first, without the ``...`` line, newlines stripped) -> Event.

    Returns None when the first line is not an event header.  Body parsing never raises: a
    body that does not look as expected gives fewer fields.  ``raw``: the event's bytes, if
    at hand (for its digest).
    """
    if not lines:
        return None
    h = parse_header(lines[0], tz=tz, ref=ref)
    if h is None:
        return None
    body = lines[1:]
    try:
        fields = _BODY.get(h.number, _p_default)(h.text, body)
    except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the stream
        fields = {"reason": h.text, "parse_error": f"{type(exc).__name__}: {exc}"}
    if raw is None:
        raw = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(raw, digest_size=12).hexdigest()
    return Event(h.number, h.cluster, h.proc, h.subproc, h.time, h.text, fields, line, offset, digest)


# ---------------------------------------------------------------------------
# reading a file from a byte offset


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a file: byte offset and the number of the line that starts there."""

    offset: int = 0
    line: int = 1


class EventReader:
    """Complete events of a binary file from ``start``.

    Iterating yields ``(event_or_None, position_after)``: ``None`` for stretches that are not
    job events (garbage, a stray ``...``) but that the reader has consumed, so the caller can
    advance its checkpoint past them.  An event is complete when its ``...`` line has been
    written; reading stops before an incomplete last event (or a last line without its
    newline), whose start is then in :attr:`pending`.  With ``final=True`` (the writer is
    known to be gone) an incomplete last event is read as it is and reported as truncated.
    ``limit``: read no further than this byte offset.

    Problems go to ``report`` as :class:`~opos_monitor.classads.ReadError` with the file name
    and line: garbage lines (one report per run of them), an event cut short by the next
    header (its writer died mid-event; it is read as far as it goes), a truncated last event.
    The file is read in chunks and split at ``...`` lines, so the common case costs one
    decode and one split per event.
    """

    CHUNK = 1 << 20

    def __init__(self, f: IO[bytes], start: Position, name: str, *, tz: Optional[tzinfo] = None,
                 ref: Optional[float] = None, report: Optional[ErrorCallback] = None, final: bool = False,
                 limit: Optional[int] = None) -> None:
        self.f, self.start, self.name = f, start, name
        self.tz, self.final, self.limit = tz, final, limit
        self.ref = ref if ref is not None else _mtime(f)
        self.report = report or _log_error
        self.pending: Optional[Position] = None
        self.garbage_lines = 0
        self.truncated_events = 0

    def _garbage(self, first: int, count: int, snippet: str) -> None:
        self.garbage_lines += count
        what = "not an event line" if count == 1 else f"{count} lines that are not events"
        self.report(ReadError(self.name, first, f"{what}; skipped", snippet[:200]))

    def _event(self, lines: list[str], at: Position, raw: Optional[bytes] = None) -> Optional[Event]:
        return parse_event(lines, tz=self.tz, ref=self.ref, line=at.line, offset=at.offset, raw=raw)

    def __iter__(self) -> Iterator[tuple[Optional[Event], Position]]:
        f = self.f
        f.seek(self.start.offset)
        base, line = self.start.offset, self.start.line  # file position and line of buf[0]
        buf = b""
        while True:
            want = self.CHUNK if self.limit is None else min(self.CHUNK, self.limit - base - len(buf))
            data = f.read(want) if want > 0 else b""
            if not data:
                break
            buf += data
            idx = 0
            for m in _SYNC_RE.finditer(buf):
                piece = buf[idx:m.start()]
                at = Position(base + idx, line)
                end = Position(base + m.end(), line + piece.count(b"\n") + 1)
                if piece[:1].isdigit() and _INNER_HEADER_RE.search(piece) is None:
                    ev = self._event(piece.decode("utf-8", "replace").split("\n")[:-1], at, piece)
                    if ev is not None:
                        yield ev, end
                        idx, line = m.end(), end.line
                        continue
                yield from self._careful(piece + m.group(), at)
                idx, line = m.end(), end.line
            buf = buf[idx:]
            base += idx
        # what is left has no '...': complete lines of an unfinished event, or garbage
        cut = buf.rfind(b"\n") + 1
        if cut:
            yield from self._careful(buf[:cut], Position(base, line))

    def _careful(self, data: bytes, at: Position) -> Iterator[tuple[Optional[Event], Position]]:
        """Line-by-line reading of a stretch that is not simply one event and its '...'."""
        cur: Optional[list[str]] = None
        cur_at = at
        garbage: Optional[tuple[int, int, str]] = None
        pos, ln = at.offset, at.line
        for raw in data.splitlines(keepends=True):
            line_at = Position(pos, ln)
            pos += len(raw)
            ln += 1
            s = raw.decode("utf-8", "replace").rstrip("\r\n")
            if s == "...":
                if garbage:
                    self._garbage(*garbage)
                    garbage = None
                if cur is not None:
                    yield self._event(cur, cur_at), Position(pos, ln)
                    cur = None
                else:
                    yield None, Position(pos, ln)
                continue
            if s[:1].isdigit() and _HEADER_RE.match(s):
                if garbage:
                    self._garbage(*garbage)
                    garbage = None
                    yield None, line_at
                if cur is not None:  # the previous event never got its '...'
                    self.truncated_events += 1
                    self.report(ReadError(self.name, cur_at.line,
                                          "event cut short (no '...' before the next event); read as far as it goes",
                                          cur[0][:200]))
                    yield self._event(cur, cur_at), line_at
                cur, cur_at = [s], line_at
                continue
            if cur is not None:
                cur.append(s)
            elif garbage is None:
                garbage = (line_at.line, 1, s)
            else:
                garbage = (garbage[0], garbage[1] + 1, garbage[2])
        if garbage:
            self._garbage(*garbage)
            if cur is None:
                yield None, Position(pos, ln)
        if cur is not None:
            if self.final:
                self.truncated_events += 1
                self.report(ReadError(self.name, cur_at.line, "last event truncated (no '...'); read as far as it goes",
                                      cur[0][:200]))
                yield self._event(cur, cur_at), Position(pos, ln)
            else:
                self.pending = cur_at


_SYNC_RE = re.compile(rb"(?m)^\.\.\.\r?\n")
_INNER_HEADER_RE = re.compile(rb"\n\d{3} \(-?\d+\.-?\d+\.-?\d+\) ")


# ---------------------------------------------------------------------------
# per-job state


def _sinful_alias(addr: str) -> Optional[str]:
    """The host alias in a sinful string ``<1.2.3.4:9618?...&alias=host&...>``."""
    m = re.search(r"[?&]alias=([^&>]+)", addr or "")
    return m.group(1) if m else None


@dataclass(slots=True)
class JobState:
    """What the log has said about one job so far."""

    cluster: int
    proc: int
    ad: dict[str, Any]
    events: deque  # event dicts for the classifier (lifecycle events only, bounded)
    first: Position  # where its first event is, in the file ``first_file``
    first_file: int  # index of that file in the stream's file list
    digests: dict[str, None] = field(default_factory=dict)  # events already folded in (bounded)
    lifecycle: int = 0  # number of lifecycle events seen
    closed: bool = False
    submit_host: Optional[str] = None
    last_time: float = 0.0

    def event_dicts(self) -> tuple[dict[str, Any], ...]:
        return tuple(self.events)


#: attributes of a job-ad-information event that describe the event, not the job
_EVENT_ATTRS = frozenset(a.lower() for a in (
    "Cluster", "Proc", "Subproc", "EventTime", "EventTypeNumber", "MyType", "TriggerEventTypeName",
    "TriggerEventTypeNumber", "Size", "ReturnValue", "TerminatedNormally", "TerminatedBySignal",
    "TerminatedAndRequeued", "Checkpointed", "CoreFile", "RunLocalUsage", "RunRemoteUsage",
    "TotalLocalUsage", "TotalRemoteUsage", "SentBytes", "ReceivedBytes", "TotalSentBytes",
    "TotalReceivedBytes", "ExecuteHost", "ExecuteProps", "SlotName", "SubmitHost", "Reason",
    "ReasonCode", "ReasonSubCode", "Daemon", "ErrorMsg", "CriticalError", "Message", "LogNotes",
    "UserNotes", "Warnings", "Cpus", "Disk", "Memory", "GPUs", "Type", "Host", "Info",
    "StartdAddr", "StartdName", "StarterAddr", "DisconnectReason", "NumberOfPIDs", "Node",
    "EventDescription", "EventHead", "ToE", "TimeExecuteUsage", "TimeSlotBusyUsage", "Info",
))
_PROVISIONED = {"cpus": "CpusProvisioned", "disk": "DiskProvisioned", "memory": "MemoryProvisioned", "gpus": "GPUsProvisioned"}
_STATUS_BY_EVENT = {0: 1, 1: 2, 4: 1, 5: 4, 7: 1, 9: 3, 10: 7, 11: 2, 12: 5, 13: 1, 24: 1}


def _set_status(ad: dict[str, Any], status: int, t: float) -> None:
    prev = ad.get("JobStatus")
    if prev != status:
        if prev is not None:
            ad["LastJobStatus"] = prev
        ad["JobStatus"] = status
        ad["EnteredCurrentStatus"] = int(t)


def _leave_slot(ad: dict[str, Any]) -> None:
    host = ad.pop("RemoteHost", None)
    if host:
        ad["LastRemoteHost"] = host


def _count(ad: dict[str, Any], attr: str) -> None:
    ad[attr] = int(ad.get(attr) or 0) + 1


def _apply_usage(ad: dict[str, Any], f: Mapping[str, Any]) -> None:
    for k, v in (f.get("usage") or {}).items():
        if not k.startswith(("TimeExecute", "TimeSlotBusy")) and v is not None:
            ad[k] = v


def _on_submit(st: JobState, ev: Event) -> None:
    st.ad["QDate"] = int(ev.time)
    st.ad.setdefault("NumJobStarts", 0)  # as condor_submit sets it
    st.submit_host = ev.fields.get("host") or st.submit_host


def _on_execute(st: JobState, ev: Event) -> None:
    ad, f = st.ad, ev.fields
    t = int(ev.time)
    ad.setdefault("JobStartDate", t)
    ad["JobCurrentStartDate"] = t
    ad["JobCurrentStartExecutingDate"] = t
    _count(ad, "NumJobStarts")
    if f.get("slot"):
        ad["RemoteHost"] = f["slot"]
    if f.get("host"):
        ad["StartdIpAddr"] = f["host"]
    for k, v in (f.get("props") or {}).items():
        if k.lower() in _PROVISIONED:
            ad[_PROVISIONED[k.lower()]] = v


def _on_evicted(st: JobState, ev: Event) -> None:
    ad, f = st.ad, ev.fields
    _leave_slot(ad)
    ad["LastVacateTime"] = int(ev.time)
    if f.get("reason"):
        ad["VacateReason"] = f["reason"]
    if f.get("code") is not None:
        ad["VacateReasonCode"], ad["VacateReasonSubCode"] = f["code"], f.get("subcode", 0)
    _apply_usage(ad, f)


def _on_terminated(st: JobState, ev: Event) -> None:
    ad, f = st.ad, ev.fields
    _leave_slot(ad)
    ad["CompletionDate"] = int(ev.time)
    if "exit_code" in f:
        ad["ExitBySignal"] = False
        ad["ExitCode"] = f["exit_code"]
        ad.pop("ExitSignal", None)
    elif "signal" in f:
        ad["ExitBySignal"] = True
        ad["ExitSignal"] = f["signal"]
        ad.pop("ExitCode", None)
        ad["JobCoreDumped"] = bool(f.get("core_file"))
    if "total_remote_user_s" in f:
        ad["RemoteUserCpu"] = float(f["total_remote_user_s"])
        ad["RemoteSysCpu"] = float(f["total_remote_sys_s"])
    _apply_usage(ad, f)


def _on_image_size(st: JobState, ev: Event) -> None:
    ad, f = st.ad, ev.fields
    for k, attr in (("image_kb", "ImageSize"), ("memory_mb", "MemoryUsage"), ("rss_kb", "ResidentSetSize"),
                    ("pss_kb", "ProportionalSetSize")):
        if f.get(k) is not None:
            ad[attr] = f[k]


def _on_shadow_exception(st: JobState, ev: Event) -> None:
    _leave_slot(st.ad)
    _count(st.ad, "NumShadowExceptions")


def _on_aborted(st: JobState, ev: Event) -> None:
    """Removed: as the schedd does, a held job's hold becomes its last hold (LastJobStatus 5
    then tells the classifier it was held when removed)."""
    _leave_slot(st.ad)
    if st.ad.get("JobStatus") == 5:
        _hold_to_last(st.ad)
    if ev.fields.get("reason"):
        st.ad["RemoveReason"] = ev.fields["reason"]


def _hold_to_last(ad: dict[str, Any]) -> None:
    for attr in ("HoldReason", "HoldReasonCode", "HoldReasonSubCode"):
        if attr in ad:
            ad["Last" + attr] = ad.pop(attr)


def _on_held(st: JobState, ev: Event) -> None:
    ad, f = st.ad, ev.fields
    _leave_slot(ad)
    _count(ad, "NumHolds")
    ad["HoldReason"] = f.get("reason", "")
    ad["HoldReasonCode"] = f.get("code", 0)
    ad["HoldReasonSubCode"] = f.get("subcode", 0)


def _on_released(st: JobState, ev: Event) -> None:
    _hold_to_last(st.ad)
    if ev.fields.get("reason"):
        st.ad["ReleaseReason"] = ev.fields["reason"]


def _on_reconnect_failed(st: JobState, ev: Event) -> None:
    _leave_slot(st.ad)


_HOLD_ATTRS = frozenset({"holdreason", "holdreasoncode", "holdreasonsubcode"})


def _on_ad_information(st: JobState, ev: Event) -> None:
    """Merge the job attributes; hold attributes only from the ad of a hold (a remote-error
    event writes its own HoldReasonCode, which is not the job's)."""
    ad = ev.fields.get("ad") or {}
    if ev.fields.get("trigger") != 12:
        ad = {k: v for k, v in ad.items() if k.lower() not in _HOLD_ATTRS}
    st.ad.update(ad)


def _on_attribute_update(st: JobState, ev: Event) -> None:
    name = ev.fields.get("attribute")
    if name:
        if ev.fields.get("value") is None:
            st.ad.pop(name, None)
        else:
            st.ad[name] = _value(str(ev.fields["value"]))


_APPLY: dict[int, Callable[[JobState, Event], None]] = {
    0: _on_submit, 1: _on_execute, 4: _on_evicted, 5: _on_terminated, 6: _on_image_size,
    7: _on_shadow_exception, 9: _on_aborted, 12: _on_held, 13: _on_released,
    24: _on_reconnect_failed, 28: _on_ad_information, 33: _on_attribute_update,
}


class JobTable:
    """Per-job state of one stream, bounded: the least recently updated jobs are dropped
    first when there are more than ``max_jobs`` (a dropped job that logs again later starts
    with a fresh, partial state)."""

    def __init__(self, *, max_jobs: int = 100_000, max_events: int = 64) -> None:
        self.jobs: OrderedDict[tuple[int, int], JobState] = OrderedDict()
        self.max_jobs = max_jobs
        self.max_events = max_events
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, cluster: int, proc: int) -> Optional[JobState]:
        return self.jobs.get((cluster, proc))

    def apply(self, ev: Event, file_index: int = 0) -> Optional[JobState]:
        """Fold one event into its job's state; returns the state, or None when the event is
        not about a job (the global log's header) or was seen before (re-read after a
        truncation)."""
        if ev.cluster < 0 or ev.proc < 0:
            return None
        key = (ev.cluster, ev.proc)
        st = self.jobs.get(key)
        if st is not None and ev.digest not in st.digests and (
                (ev.number == 0 and st.lifecycle) or (st.closed and ev.number in LIFECYCLE)
                or (ev.number == 1 and st.ad.get("JobStatus") == 5)):
            # another job with the same id: a new submit (the schedd's cluster ids started
            # over), life after the job left the queue, or a held job starting to run without
            # a release - HTCondor does neither; a second schedd's shadows writing this log do
            st = None
        if st is None:
            st = JobState(ev.cluster, ev.proc, {"ClusterId": ev.cluster, "ProcId": ev.proc},
                          deque(maxlen=self.max_events), Position(ev.offset, ev.line), file_index)
            self.jobs[key] = st
            while len(self.jobs) > self.max_jobs:
                self.jobs.popitem(last=False)
                self.dropped += 1
        else:
            if ev.digest in st.digests:
                return None
            self.jobs.move_to_end(key)
        st.digests[ev.digest] = None
        if len(st.digests) > MAX_DIGESTS:
            del st.digests[next(iter(st.digests))]
        fold(st, ev)
        return st

    def open_jobs(self) -> Iterator[JobState]:
        """Jobs whose life in the log is not over (a state made only of ad-information or
        image-size events is not a job we report, and does not count)."""
        return (st for st in self.jobs.values() if not st.closed and st.lifecycle)


def fold(st: JobState, ev: Event) -> None:
    """Apply one event to a job's state (ad attributes, status, event list)."""
    handler = _APPLY.get(ev.number)
    if handler is not None:
        handler(st, ev)
    status = _STATUS_BY_EVENT.get(ev.number)
    if status is not None:
        _set_status(st.ad, status, ev.time)
    if ev.number in LIFECYCLE:
        st.lifecycle += 1
        st.events.append(ev.to_dict())
    if ev.number in TERMINAL:
        st.closed = True
    elif ev.number == 0:
        st.closed = False
    st.last_time = max(st.last_time, ev.time)


def record_of(st: JobState, *, pool: str, schedd: Optional[str]) -> JobRecord:
    """The job's record: its synthesized ad through :meth:`JobRecord.from_ad`.

    The schedd is the configured one, else the submit host's alias, else "unknown".  The id
    is exact when a job-ad-information event carried ``GlobalJobId``
    (``EVENT_LOG_JOB_AD_INFORMATION_ATTRS`` / ``job_ad_information_attrs``).  Otherwise
    ``from_ad`` synthesizes ``schedd#cluster.proc#QDate`` with QDate the submit event's time:
    usually the real GlobalJobId when ``schedd`` is the schedd's ``Name``, but the submit event
    can be written a second after the job's QDate (then the id is one second off).
    """
    name = schedd or _sinful_alias(st.submit_host or "") or "unknown"
    return JobRecord.from_ad(dict(st.ad), pool=pool, schedd=name, source=SOURCE)


# ---------------------------------------------------------------------------
# file identity, rotation


@dataclass(frozen=True, slots=True)
class FileId:
    """Which file a checkpoint is about: device, inode and a fingerprint of its first
    ``head_len`` bytes (the global event log's header line, rewritten in place by HTCondor,
    counts only by its ``id=``)."""

    dev: int
    ino: int
    head: str
    head_len: int

    def same_inode(self, st: os.stat_result) -> bool:
        return st.st_dev == self.dev and st.st_ino == self.ino


def fingerprint(data: bytes) -> str:
    if data.startswith(b"008 (") and b"Global JobLog:" in data.split(b"\n", 1)[0]:
        first, _, rest = data.partition(b"\n")
        m = re.search(rb"\bid=(\S+)", first)
        data = (m.group(1) if m else b"") + b"\n" + rest
    return hashlib.sha1(data).hexdigest()


def file_id(f: IO[bytes], st: os.stat_result, head_len: Optional[int] = None) -> FileId:
    """The identity of an open file; ``head_len`` bytes (default: up to HEAD_BYTES)."""
    n = min(st.st_size, HEAD_BYTES) if head_len is None else head_len
    data = os.pread(f.fileno(), n, 0) if n > 0 else b""  # pread: a reader on ``f`` keeps its place
    return FileId(st.st_dev, st.st_ino, fingerprint(data), len(data))


def _matches(f: IO[bytes], st: os.stat_result, fid: FileId) -> bool:
    """Is this open file the one ``fid`` describes (same inode, same first bytes)?"""
    if not fid.same_inode(st) or st.st_size < fid.head_len:
        return False
    return file_id(f, st, fid.head_len).head == fid.head


def rotated_siblings(path: str) -> list[str]:
    """Files next to ``path`` that rotation makes: ``path.old``, ``path.1``, ``path.2``..."""
    out = []
    for p in glob.glob(glob.escape(path) + ".*"):
        suffix = p[len(path) + 1:]
        if suffix == "old" or suffix.isdigit():
            out.append(p)
    return out


def live_paths(patterns: Iterable[str]) -> list[str]:
    """Expand globs; leave out rotated files (``X.old``, ``X.N``) of a live file ``X`` that is
    matched too - the stream of ``X`` follows its rotations itself."""
    found: dict[str, None] = {}
    for pat in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [os.path.expanduser(pat)]
        for p in matches:
            if os.path.isfile(p):
                found[os.path.abspath(p)] = None
    live = set(found)
    out = []
    for p in found:
        base, _, suffix = p.rpartition(".")
        if (suffix == "old" or suffix.isdigit()) and base in live:
            continue
        out.append(p)
    return out


# ---------------------------------------------------------------------------
# checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a stream is: the file (identity) and position up to which events are committed,
    and where replay must start after a restart to rebuild the state of jobs still open."""

    file: FileId
    pos: Position
    replay_file: Optional[FileId] = None
    replay_pos: Optional[Position] = None

    def dumps(self) -> str:
        d: dict[str, Any] = {"v": CHECKPOINT_VERSION, **_fid_dict(self.file), "offset": self.pos.offset, "line": self.pos.line}
        if self.replay_file is not None and self.replay_pos is not None:
            d["replay"] = {**_fid_dict(self.replay_file), "offset": self.replay_pos.offset, "line": self.replay_pos.line}
        return json.dumps(d, separators=(",", ":"), sort_keys=True)

    @classmethod
    def loads(cls, text: Optional[str]) -> Optional["Checkpoint"]:
        if not text:
            return None
        try:
            d = json.loads(text)
            if d.get("v") != CHECKPOINT_VERSION:
                raise ValueError(f"checkpoint version {d.get('v')!r}")
            r = d.get("replay")
            return cls(_fid_of(d), Position(int(d["offset"]), int(d.get("line", 1))),
                       _fid_of(r) if r else None, Position(int(r["offset"]), int(r.get("line", 1))) if r else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("unreadable event-log checkpoint %r (%s); starting the file over", text[:200], exc)
            return None


def _fid_dict(fid: FileId) -> dict[str, Any]:
    return {"dev": fid.dev, "inode": fid.ino, "head": fid.head, "head_len": fid.head_len}


def _fid_of(d: Mapping[str, Any]) -> FileId:
    return FileId(int(d["dev"]), int(d["inode"]), str(d["head"]), int(d["head_len"]))


# ---------------------------------------------------------------------------
# the source


@dataclass(frozen=True, slots=True)
class EventLogSpec:
    """One configured log: a path or glob, and optionally the pool and schedd its jobs belong
    to (``schedd`` should be the schedd's ``Name``, e.g. ``jobsub01.fnal.gov``, so synthesized
    ids are the real GlobalJobIds as far as the submit event's time allows)."""

    pattern: str
    pool: Optional[str] = None
    schedd: Optional[str] = None

    @classmethod
    def of(cls, item: Union[str, "os.PathLike[str]", Mapping[str, Any], "EventLogSpec"]) -> "EventLogSpec":
        if isinstance(item, EventLogSpec):
            return item
        if isinstance(item, Mapping):
            return cls(str(item.get("path") or item["pattern"]), item.get("pool"), item.get("schedd"))
        return cls(os.fspath(item))


@dataclass(slots=True)
class _Segment:
    """A file to read in this poll: open handle, identity, where to start."""

    path: str
    f: IO[bytes]
    st: os.stat_result
    fid: FileId
    start: Position
    stop: Optional[int] = None  # replay only: read up to this offset


@dataclass(slots=True)
class _Stream:
    path: str
    spec: EventLogSpec
    key: SourceKey
    table: JobTable
    files: list[FileId] = field(default_factory=list)  # file index -> identity (for replay positions)
    committed: Optional[str] = None
    loaded: bool = False  # table rebuilt for ``committed``
    pending_reported: Optional[tuple[int, int]] = None
    last_stat: Optional[tuple[int, int, int, int]] = None
    garbage_lines: int = 0
    truncated_events: int = 0

    def index_of(self, fid: FileId) -> int:
        for i, known in enumerate(self.files):
            if known.dev == fid.dev and known.ino == fid.ino:
                self.files[i] = fid  # the fingerprint may cover more bytes now
                return i
        self.files.append(fid)
        return len(self.files) - 1


class EventLogSource:
    """Tails job event logs; one checkpointed stream per live file matched by the globs.

    ``poll()`` reads every stream's new complete events, folds them into per-job state and
    hands the records of the jobs they touched to ``handoff`` in batches of at most
    ``batch_events`` events, each with the checkpoint that batch reaches.  Key per stream:
    ``SourceKey(pool, <absolute log path>, "eventlog")``.

    When ``handoff`` has a ``commit_with_events(key, records, events, checkpoint)`` method
    it is called instead of ``commit``, with ``events[i]`` the event dicts of ``records[i]``
    (for ``classify(record.attrs, events[i])``).  :meth:`events_of` gives the events of a job
    still in the table.

    ``settle_s``: an incomplete last event in a file not written for this long is read as it
    is (its writer is gone) instead of being waited for.
    """

    kind = SOURCE

    def __init__(self, handoff: Handoff, logs: Iterable[Union[str, Mapping[str, Any], EventLogSpec]], *,
                 pool: Optional[str] = None, schedd: Optional[str] = None, tz: Optional[tzinfo] = None,
                 batch_events: int = 5000, max_jobs: int = 100_000, settle_s: float = 300.0,
                 errors: Optional[ErrorCallback] = None, clock: Callable[[], float] = time.time) -> None:
        self.handoff = handoff
        self.specs = [EventLogSpec.of(x) for x in logs]
        self.pool, self.schedd, self.tz = pool, schedd, tz
        self.batch_events = max(1, int(batch_events))
        self.max_jobs = max_jobs
        self.settle_s = settle_s
        self.report = errors or _log_error
        self.clock = clock
        self.streams: dict[str, _Stream] = {}

    # --- public -----------------------------------------------------------------------------

    def poll(self) -> list[PollResult]:
        """One pass over every configured log; one result per stream."""
        results = []
        seen: set[str] = set()
        for spec in self.specs:
            paths = live_paths([spec.pattern])
            if not paths and not glob.has_magic(spec.pattern):
                missing = os.path.abspath(os.path.expanduser(spec.pattern))
                key = SourceKey(spec.pool or self.pool or SOURCE, missing, SOURCE)
                results.append(PollResult(key, ok=False, error=f"no such file: {missing}"))
                continue
            for path in paths:
                if path in seen:
                    continue
                seen.add(path)
                stream = self.streams.get(path)
                if stream is None:
                    pool = spec.pool or self.pool or SOURCE
                    stream = _Stream(path, spec, SourceKey(pool, path, SOURCE), JobTable(max_jobs=self.max_jobs))
                    self.streams[path] = stream
                results.append(self._poll_stream(stream))
        for gone in set(self.streams) - seen:
            del self.streams[gone]  # the file went away; its checkpoint stays in the store
        return results

    def events_of(self, path: str, cluster: int, proc: int) -> tuple[dict[str, Any], ...]:
        """Event dicts of a job still in the stream's table (empty when unknown)."""
        stream = self.streams.get(os.path.abspath(path))
        st = stream.table.get(cluster, proc) if stream else None
        return st.event_dicts() if st else ()

    # --- one stream -------------------------------------------------------------------------

    def _poll_stream(self, s: _Stream) -> PollResult:
        t0 = time.monotonic()
        res = PollResult(s.key)
        opened: list[IO[bytes]] = []
        try:
            if s.loaded and s.last_stat is not None and s.last_stat == _stat_key(s.path):
                return res  # nothing changed since the last poll
            if not s.loaded:
                s.committed = self.handoff.checkpoint(s.key)
                s.table = JobTable(max_jobs=self.max_jobs)
                s.files = []
                self._replay(s, Checkpoint.loads(s.committed), opened)
                s.loaded = True
            stat_before = _stat_key(s.path)
            segments, gap = self._plan(s, Checkpoint.loads(s.committed), opened)
            res.gap = gap
            if gap:
                log.warning("event log %s: %s", s.path, gap)
            newest = 0.0
            for seg in segments:
                newest = max(newest, self._read_segment(s, seg, res))
            if newest:
                res.lag_s = max(0.0, self.clock() - newest)
            s.last_stat = stat_before if s.pending_reported is None else None
        except Exception as exc:  # noqa: BLE001 - one stream's failure must not stop the others
            res.ok, res.error = False, f"{type(exc).__name__}: {exc}"
            s.loaded = False  # rebuild the job table from the committed checkpoint next time
            s.last_stat = None
            log.warning("event log %s: %s", s.path, res.error)
        finally:
            for f in opened:
                f.close()
            res.duration_s = time.monotonic() - t0
        return res

    def _open(self, path: str, opened: list[IO[bytes]]) -> Optional[tuple[IO[bytes], os.stat_result]]:
        try:
            f = open(path, "rb")
        except OSError:
            return None
        opened.append(f)
        return f, os.fstat(f.fileno())

    def _find(self, s: _Stream, fid: FileId, opened: list[IO[bytes]]) -> Optional[tuple[str, IO[bytes], os.stat_result]]:
        """The file ``fid`` describes: the live path or one of its rotated siblings."""
        for p in [s.path, *rotated_siblings(s.path)]:
            got = self._open(p, opened)
            if got and _matches(got[0], got[1], fid):
                return p, got[0], got[1]
        return None

    def _newer_siblings(self, s: _Stream, after: os.stat_result, exclude: set[tuple[int, int]],
                        opened: list[IO[bytes]]) -> list[tuple[str, IO[bytes], os.stat_result]]:
        """Rotated files written after ``after`` (oldest first): rotations not read yet."""
        out = []
        for p in rotated_siblings(s.path):
            got = self._open(p, opened)
            if not got:
                continue
            f, st = got
            if (st.st_dev, st.st_ino) in exclude or st.st_mtime < after.st_mtime:
                continue
            out.append((p, f, st))
        return sorted(out, key=lambda x: x[2].st_mtime)

    def _plan(self, s: _Stream, ckpt: Optional[Checkpoint], opened: list[IO[bytes]]) -> tuple[list[_Segment], Optional[str]]:
        """The files to read this poll, in order, and a gap description if data may be lost."""
        cur = self._open(s.path, opened)
        if ckpt is None:
            if cur is None:
                return [], None
            return [_Segment(s.path, cur[0], cur[1], file_id(cur[0], cur[1]), Position())], None
        if cur is not None and ckpt.file.same_inode(cur[1]):
            f, st = cur
            if st.st_size < ckpt.pos.offset:
                return [_Segment(s.path, f, st, file_id(f, st), Position())], (
                    f"truncated: the file is {st.st_size} bytes, shorter than the checkpoint offset "
                    f"{ckpt.pos.offset}; read again from the start (events read before are recognised and "
                    "not counted twice; events written after the checkpoint and cut away are lost)")
            if not _matches(f, st, ckpt.file):
                return [_Segment(s.path, f, st, file_id(f, st), Position())], (
                    "rewritten in place (or replaced by a file that got the same inode): its first bytes changed "
                    "since the checkpoint; read again from the start")
            return [_Segment(s.path, f, st, file_id(f, st), ckpt.pos)], None
        # the live path is another file now (or gone): the one we were reading was rotated away
        segments: list[_Segment] = []
        gap = None
        exclude = {(cur[1].st_dev, cur[1].st_ino)} if cur else set()
        old = self._find(s, ckpt.file, opened)
        if old is None:
            gap = (f"rotated: the file read up to offset {ckpt.pos.offset} (inode {ckpt.file.ino}) is gone; "
                   "events written to it after that offset are lost")
        else:
            p, f, st = old
            segments.append(_Segment(p, f, st, file_id(f, st), ckpt.pos))
            exclude.add((st.st_dev, st.st_ino))
            for p2, f2, st2 in self._newer_siblings(s, st, exclude, opened):
                segments.append(_Segment(p2, f2, st2, file_id(f2, st2), Position()))
        if cur is not None:
            segments.append(_Segment(s.path, cur[0], cur[1], file_id(cur[0], cur[1]), Position()))
        return segments, gap

    def _replay(self, s: _Stream, ckpt: Optional[Checkpoint], opened: list[IO[bytes]]) -> None:
        """Rebuild the state of jobs still open at the checkpoint by re-reading their events
        (from the checkpoint's replay point up to its position), handing nothing off."""
        if ckpt is None:
            return
        end = self._find(s, ckpt.file, opened)
        if end is None:
            return  # the checkpoint's file is gone: nothing to rebuild from
        s.index_of(ckpt.file)
        if ckpt.replay_file is None or ckpt.replay_pos is None:
            return
        segments: list[_Segment] = []
        if ckpt.replay_file.dev == ckpt.file.dev and ckpt.replay_file.ino == ckpt.file.ino:
            segments.append(_Segment(end[0], end[1], end[2], ckpt.file, ckpt.replay_pos, ckpt.pos.offset))
        else:
            start = self._find(s, ckpt.replay_file, opened)
            if start is None:
                log.warning("event log %s: the file where open jobs started is gone; their state is rebuilt "
                            "from the start of the checkpoint's file only", s.path)
            else:
                p, f, st = start
                segments.append(_Segment(p, f, st, ckpt.replay_file, ckpt.replay_pos))
                exclude = {(st.st_dev, st.st_ino), (end[2].st_dev, end[2].st_ino)}
                for p2, f2, st2 in self._newer_siblings(s, st, exclude, opened):
                    if st2.st_mtime <= end[2].st_mtime:
                        segments.append(_Segment(p2, f2, st2, file_id(f2, st2), Position()))
            segments.append(_Segment(end[0], end[1], end[2], ckpt.file, Position(), ckpt.pos.offset))
        quiet: ErrorCallback = lambda err: None  # noqa: E731 - problems were reported when first read
        for seg in segments:
            idx = s.index_of(seg.fid)
            for ev, _pos in EventReader(seg.f, seg.start, seg.path, tz=self.tz, report=quiet, limit=seg.stop,
                                        final=seg.stop is None):
                if ev is not None:
                    s.table.apply(ev, idx)

    def _read_segment(self, s: _Stream, seg: _Segment, res: PollResult) -> float:
        """Read one file from its start, committing batches; returns the newest event time."""
        if _unsupported_format(seg.f):
            self.report(ReadError(seg.path, 1, "not a text event log (XML and JSON event logs are not read); skipped", ""))
            return 0.0
        idx = s.index_of(seg.fid)
        # a rotated file will not be written again: an incomplete last event there is final
        final = seg.path != s.path or (self.clock() - seg.st.st_mtime) > self.settle_s
        reader = EventReader(seg.f, seg.start, seg.path, tz=self.tz, report=self.report, final=final)
        touched: dict[int, JobState] = {}  # by identity: a reused id in the batch is another job
        pos = committed = seg.start
        in_batch = 0
        newest = 0.0
        for ev, after in reader:
            if ev is not None:
                if in_batch >= self.batch_events and ev.number != 28:  # keep an ad-info event with its trigger
                    self._commit(s, seg, touched, pos, res)
                    committed, in_batch = pos, 0
                in_batch += 1
                newest = max(newest, ev.time)
                st = s.table.apply(ev, idx)
                if st is not None and st.lifecycle:
                    touched[id(st)] = st
            pos = after
        s.garbage_lines += reader.garbage_lines
        s.truncated_events += reader.truncated_events
        if pos != committed or touched or _other_file(s.committed, seg.fid):
            self._commit(s, seg, touched, pos, res)
        if reader.pending is not None:
            mark = (seg.fid.ino, reader.pending.offset)
            if s.pending_reported != mark:
                self.report(ReadError(seg.path, reader.pending.line,
                                      "last event incomplete (no '...' yet); waiting for the rest", ""))
            s.pending_reported = mark
        else:
            s.pending_reported = None
        return newest

    def _commit(self, s: _Stream, seg: _Segment, touched: dict[int, JobState], pos: Position,
                res: PollResult) -> None:
        schedd = s.spec.schedd or self.schedd
        states = list(touched.values())
        records = [record_of(st, pool=s.key.pool, schedd=schedd) for st in states]
        fid = seg.fid
        if fid.head_len < HEAD_BYTES:  # a young file: let the fingerprint cover what is there now
            fid = file_id(seg.f, os.fstat(seg.f.fileno()))
            s.index_of(fid)
        rfile, rpos = self._replay_point(s)
        text = Checkpoint(fid, pos, rfile, rpos).dumps()
        with_events = getattr(self.handoff, "commit_with_events", None)
        if with_events is not None:
            with_events(s.key, records, [st.event_dicts() for st in states], text)
        else:
            self.handoff.commit(s.key, records, text)
        s.committed = text
        res.records += len(records)
        touched.clear()

    def _replay_point(self, s: _Stream) -> tuple[Optional[FileId], Optional[Position]]:
        """Where the earliest still-open job's first event is."""
        best: Optional[tuple[int, int, int]] = None
        for st in s.table.open_jobs():
            cand = (st.first_file, st.first.offset, st.first.line)
            if best is None or cand < best:
                best = cand
        if best is None:
            return None, None
        return s.files[best[0]], Position(best[1], best[2])


def _mtime(f: IO[bytes]) -> float:
    try:
        return os.fstat(f.fileno()).st_mtime
    except (OSError, AttributeError, ValueError):  # not a real file (e.g. BytesIO)
        return time.time()


def _stat_key(path: str) -> Optional[tuple[int, int, int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _other_file(committed: Optional[str], fid: FileId) -> bool:
    """Is the committed checkpoint about another file than ``fid`` (or absent)?"""
    ck = Checkpoint.loads(committed)
    return ck is None or ck.file.dev != fid.dev or ck.file.ino != fid.ino


def _unsupported_format(f: IO[bytes]) -> bool:
    head = os.pread(f.fileno(), 64, 0).lstrip()
    return head.startswith((b"<?xml", b"<c>", b"{", b"["))


# ---------------------------------------------------------------------------
# offline


def read_log(path: Union[str, "os.PathLike[str]"], *, pool: str = SOURCE, schedd: Optional[str] = None,
             tz: Optional[tzinfo] = None, errors: Optional[ErrorCallback] = None,
             max_jobs: int = 1_000_000) -> list[tuple[JobRecord, tuple[dict[str, Any], ...]]]:
    """Every job in a whole log as ``(record, events)``, in order of first appearance.

    A job whose cluster id was reused (a new submit event for the same id) appears once per
    submit.  The last event is read even without its ``...`` (reported as truncated).
    """
    name = os.fspath(path)
    table = JobTable(max_jobs=max_jobs)
    done: list[JobState] = []
    with open(name, "rb") as f:
        st_ = os.fstat(f.fileno())
        reader = EventReader(f, Position(), name, tz=tz, report=errors, final=True)
        for ev, _ in reader:
            if ev is None:
                continue
            before = table.get(ev.cluster, ev.proc)
            st = table.apply(ev)
            if before is not None and st is not None and st is not before:
                done.append(before)
    states = done + list(table.jobs.values())
    states.sort(key=lambda x: (x.first_file, x.first.offset))
    return [(record_of(st, pool=pool, schedd=schedd), st.event_dicts()) for st in states if st.lifecycle]
