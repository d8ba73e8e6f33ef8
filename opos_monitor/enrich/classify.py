"""Failure classification: job ad (+ optional event-log events) -> Verdict.

The rules live in data (``rules.toml`` next to this module, optional extra sets
``rules_fife.toml`` and ``rules_cms.toml``); this module

* normalises a job ad into *facts* (status, the decisive code/subcode/reason,
  exit status, memory used vs requested, credential expiry vs failure time,
  event types, ...) with small pure functions - eager for the few every rule
  needs, lazy for the rest;
* compiles each rule's ``when`` table into a tuple of closures once, at load,
  with regexes precompiled and rules indexed by job status and code;
* evaluates the candidate rules in priority/file order - first match wins -
  and builds a :class:`Verdict` that quotes its evidence.

See ``docs/classifier.md`` for the rule language and the category meanings.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import signal as _signal
import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml  # type: ignore[no-redef]

try:  # Python >= 3.11
    from re import _constants as _sre_c
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

from .. import __version__
from . import holdcodes
from .signature import make_signature
from .site import casefold_view

__all__ = [
    "CATEGORIES",
    "Verdict",
    "Rule",
    "RuleSet",
    "RuleError",
    "classify",
    "load_ruleset",
    "default_ruleset",
    "job_status",
    "decisive_reason",
    "memory_facts",
    "credential_expired",
    "failure_time",
    "removed_by_user",
    "normalize_events",
    "run_rule_tests",
]

CATEGORIES = ("none", "site", "memory", "certificate", "code", "transfer", "policy", "user", "unknown")
_CATEGORY_SET = frozenset(CATEGORIES)

_HERE = Path(__file__).resolve().parent
_DEFAULT_RULES = _HERE / "rules.toml"
_OPTIONAL_SETS = {"fife": _HERE / "rules_fife.toml", "cms": _HERE / "rules_cms.toml"}

STATUS_NAMES = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held", 6: "transferring", 7: "suspended"}
STATUSES = frozenset(STATUS_NAMES.values()) | {"unknown"}

#: RemoveReason written by condor_rm / the python bindings (a person or a tool
#: acting for the owner), as opposed to a policy expression.
_USER_REMOVE_RE = re.compile(r"via condor_rm|\(by user [^)]*\)|Python-initiated action|removed by (?:the )?(?:user|owner)", re.I)

#: vacate codes that are failures of the attempt (not normal churn such as
#: draining or preemption); one of these becomes the decisive reason of a job
#: that was removed by its owner without having been held.
_FAILED_VACATE_CODES = frozenset({1002, 1003, 1005, 1006, 1007, 1008, 1011, 1012, 1020, 1021, 1024} | set(range(1026, 1037)))

_SIGNAL_NAMES = {int(s): s.name for s in _signal.Signals}

_PEAK_RE = re.compile(r"(?:Peak usage:|memory usage) (\d+(?:\.\d+)?) ?(?:megabytes|MB|Mb)\b", re.I)
_LIMIT_RE = re.compile(r"memory limit of (\d+(?:\.\d+)?) ?(?:megabytes|MB|Mb)", re.I)

#: event-log event names (short form, HTCondor's class names, ULog numbers)
_EVENT_ALIASES = {
    "submit": "submitted", "submitted": "submitted", "submitevent": "submitted", "0": "submitted",
    "execute": "executed", "executed": "executed", "executeevent": "executed", "1": "executed",
    "evicted": "evicted", "jobevictedevent": "evicted", "4": "evicted",
    "terminated": "terminated", "jobterminatedevent": "terminated", "5": "terminated",
    "shadow_exception": "shadow_exception", "shadowexceptionevent": "shadow_exception", "7": "shadow_exception",
    "aborted": "aborted", "jobabortedevent": "aborted", "removed": "aborted", "9": "aborted",
    "held": "held", "jobheldevent": "held", "12": "held",
    "released": "released", "jobreleaseevent": "released", "13": "released",
    "job_disconnected": "job_disconnected", "jobdisconnectedevent": "job_disconnected", "22": "job_disconnected",
    "job_reconnected": "job_reconnected", "jobreconnectedevent": "job_reconnected", "23": "job_reconnected",
    "job_reconnect_failed": "job_reconnect_failed", "jobreconnectfailedevent": "job_reconnect_failed",
    "24": "job_reconnect_failed",
}
_EVENT_REASON_PRIORITY = ("job_reconnect_failed", "shadow_exception", "held", "evicted", "job_disconnected", "aborted")


class RuleError(ValueError):
    """A rule file is invalid; the message names the file, rule and key."""


# --------------------------------------------------------------------------
# small pure helpers over the ad
# --------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    """A finite number from int/float/numeric string; None otherwise."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    x = _num(value)
    return int(x) if x is not None else None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "1"):
            return True
        if v in ("false", "0"):
            return False
    return None


def _str(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return ""
    return value if isinstance(value, str) else str(value)


def job_status(view: Any) -> str:
    """``idle|running|removed|completed|held|transferring|suspended|unknown``.

    ``JobStatus`` when present; otherwise inferred from what the ad carries
    (an exit status means completed, a RemoveReason removed, a HoldReason held).
    """
    st = _int(view.get("JobStatus"))
    if st is not None:
        return STATUS_NAMES.get(st, "unknown")
    if view.get("RemoveReason") is not None:
        return "removed"
    if view.get("ExitCode") is not None or view.get("ExitBySignal") is not None:
        return "completed"
    if view.get("HoldReasonCode") is not None or view.get("HoldReason") is not None:
        return "held"
    return "unknown"


def removed_by_user(view: Any) -> bool:
    """True when RemoveReason says a person/tool (condor_rm, bindings) removed it."""
    return bool(_USER_REMOVE_RE.search(_str(view.get("RemoveReason"))))


def decisive_reason(status: str, view: Any) -> tuple[int | None, int | None, str, str | None, str | None]:
    """The code, subcode and reason text that decide the category.

    Returns ``(code, subcode, reason, code_attr, reason_attr)``:

    * held - ``HoldReasonCode/HoldReasonSubCode/HoldReason``;
    * removed - root cause wins: the hold the job was in (``HoldReason``, or
      ``LastHoldReason`` when ``LastJobStatus`` was 5 or a person removed it)
      unless that hold was itself the owner's; else a policy ``RemoveReason``;
      else a failed last attempt (``VacateReasonCode`` in the failure set);
      else the ``RemoveReason``;
    * idle/running - the last ``VacateReason`` if any (for the explanation);
    * completed and others - no reason text.
    """
    if status == "held":
        return (
            _int(view.get("HoldReasonCode")),
            _int(view.get("HoldReasonSubCode")),
            _str(view.get("HoldReason")),
            "HoldReasonCode",
            "HoldReason",
        )
    if status == "removed":
        remove_reason = _str(view.get("RemoveReason"))
        by_user = bool(_USER_REMOVE_RE.search(remove_reason))
        policy = bool(remove_reason) and not by_user
        if view.get("HoldReason") is not None or view.get("HoldReasonCode") is not None:
            prefix, held_at_removal = "", True
        elif view.get("LastHoldReason") is not None or view.get("LastHoldReasonCode") is not None:
            prefix, held_at_removal = "Last", _int(view.get("LastJobStatus")) == 5
        else:
            prefix, held_at_removal = None, False
        if prefix is not None:
            code = _int(view.get(prefix + "HoldReasonCode"))
            if code not in holdcodes.USER_HOLD_CODES and (held_at_removal or not policy):
                return (
                    code,
                    _int(view.get(prefix + "HoldReasonSubCode")),
                    _str(view.get(prefix + "HoldReason")),
                    prefix + "HoldReasonCode",
                    prefix + "HoldReason",
                )
        if not policy:
            vcode = _int(view.get("VacateReasonCode"))
            if vcode in _FAILED_VACATE_CODES:
                return (vcode, _int(view.get("VacateReasonSubCode")), _str(view.get("VacateReason")),
                        "VacateReasonCode", "VacateReason")
        return None, None, remove_reason, None, "RemoveReason"
    if status in ("idle", "running"):
        vcode = _int(view.get("VacateReasonCode"))
        if vcode is not None:
            return (vcode, _int(view.get("VacateReasonSubCode")), _str(view.get("VacateReason")),
                    "VacateReasonCode", "VacateReason")
    return None, None, "", None, None


def memory_facts(view: Any, reason: str = "") -> tuple[float | None, float | None, float | None]:
    """``(used_mb, requested_mb, limit_mb_from_text)``.

    Used: ``MemoryUsage`` (MB) when numeric, else ``(ResidentSetSize+1023)/1024``
    (the expression HTCondor itself puts in MemoryUsage), else the usage quoted
    in the reason ("Peak usage: N megabytes", "memory usage N MB").  Requested: ``RequestMemory``
    when numeric, else ``MemoryProvisioned``, else the limit quoted in the
    reason ("memory limit of N megabytes" / "N Mb").
    """
    used = _num(view.get("MemoryUsage"))
    if used is None:
        rss = _num(view.get("ResidentSetSize_RAW"))
        if rss is None:
            rss = _num(view.get("ResidentSetSize"))
        if rss is not None:
            used = float((int(rss) + 1023) // 1024)
    limit = None
    if reason and "emory" in reason:
        m = _LIMIT_RE.search(reason)
        if m:
            limit = float(m.group(1))
        if used is None:
            m = _PEAK_RE.search(reason)
            if m:
                used = float(m.group(1))
    requested = _num(view.get("RequestMemory"))
    if requested is None:
        requested = _num(view.get("MemoryProvisioned"))
    if requested is None:
        requested = limit
    return used, requested, limit


def failure_time(status: str, view: Any, now: float | None = None) -> float | None:
    """When the job failed: EnteredCurrentStatus for held/removed, CompletionDate
    for completed jobs, else ``now``."""
    if status in ("held", "removed"):
        t = _num(view.get("EnteredCurrentStatus"))
        if t:
            return t
    elif status == "completed":
        t = _num(view.get("CompletionDate")) or _num(view.get("EnteredCurrentStatus"))
        if t:
            return t
    return now


def credential_expired(proxy_expiration: float | None, at: float | None) -> bool:
    """True when an X.509 proxy had expired by ``at`` (both epoch seconds)."""
    return proxy_expiration is not None and proxy_expiration > 0 and at is not None and proxy_expiration <= at


def normalize_events(events: Iterable[Mapping[str, Any]] | None) -> tuple[frozenset[str], str, str]:
    """``(event_types, decisive_event_type, decisive_event_reason)``."""
    if not events:
        return frozenset(), "", ""
    types: set[str] = set()
    last_reason: dict[str, str] = {}
    for ev in events:
        raw = ev.get("type", ev.get("MyType", ev.get("EventTypeNumber", "")))
        kind = _EVENT_ALIASES.get(str(raw).strip().lower(), str(raw).strip().lower())
        if not kind:
            continue
        types.add(kind)
        reason = ev.get("reason") or ev.get("Reason") or ev.get("HoldReason") or ev.get("ReasonString") or ""
        if reason:
            last_reason[kind] = _str(reason)
    for kind in _EVENT_REASON_PRIORITY:
        if kind in types:
            return frozenset(types), kind, last_reason.get(kind, "")
    return frozenset(types), "", ""


#: full application exit codes chirped into the job ad by CMS CRAB / WMAgent
#: wrappers (an exit status only holds 8 bits)
_CHIRP_EXIT_ATTRS = ("Chirp_CRAB3_Job_ExitCode", "Chirp_WMCore_cmsRun_ExitCode", "Chirp_WMCore_cmsRun1_ExitCode")


def chirp_exit_code(view: Any) -> int | None:
    """First non-zero application exit code chirped into the ad, if any."""
    for name in _CHIRP_EXIT_ATTRS:
        code = _int(view.get(name))
        if code:
            return code
    return None


def _quote(text: str, limit: int = 240) -> str:
    one = " ".join(text.split())
    if len(one) > limit:
        one = one[: limit - 1] + "\u2026"
    return f'"{one}"'


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    try:
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------
# facts
# --------------------------------------------------------------------------
_LC = "\x00lc"


class Facts(dict):
    """Per-ad fact table; derived facts are computed on first use."""

    __slots__ = ("view", "events", "now")

    def __missing__(self, key: str) -> Any:
        fn = _DERIVED.get(key)
        if fn is not None:
            value = fn(self)
        elif key.endswith(_LC):  # lower-cased text of a fact, for regex checks
            value = _str(self[key[: -len(_LC)]]).lower()
        elif key.startswith("attr."):
            value = self.view.get(key[5:])
        else:
            value = None
        self[key] = value
        return value


def _d_exit_failed(f: Facts) -> bool:
    return bool(f["exit_by_signal"]) or f["exit_code"] not in (None, 0)


def _d_memory(f: Facts) -> tuple[float | None, float | None, float | None]:
    m = memory_facts(f.view, f["reason"])
    f["memory_usage_mb"], f["request_memory_mb"], f["memory_limit_mb"] = m
    used, req = m[0], m[1]
    f["memory_ratio"] = used / req if used is not None and req else None
    return m


def _d_memory_field(index: int) -> Callable[[Facts], Any]:
    def get(f: Facts) -> Any:
        return _d_memory(f)[index]

    return get


def _d_memory_ratio(f: Facts) -> float | None:
    _d_memory(f)
    return f["memory_ratio"]


def _d_failure_time(f: Facts) -> float | None:
    return failure_time(f["status"], f.view, f.now)


def _d_proxy_expiration(f: Facts) -> float | None:
    return _num(f.view.get("X509UserProxyExpiration"))


def _d_cred_expired(f: Facts) -> bool:
    return credential_expired(f["proxy_expiration"], f["failure_time"])


def _d_cred_expired_by_h(f: Facts) -> float | None:
    exp, at = f["proxy_expiration"], f["failure_time"]
    return (at - exp) / 3600.0 if exp is not None and at is not None else None


def _d_events(f: Facts) -> frozenset[str]:
    types, kind, reason = normalize_events(f.events)
    f["event_type"], f["event_reason"] = kind, reason
    return types


def _d_event_field(name: str) -> Callable[[Facts], Any]:
    def get(f: Facts) -> Any:
        f["events"]  # noqa: B018 - fills event_type/event_reason
        return f[name]

    return get


def _d_code_label(f: Facts) -> str:
    code = f["code"]
    if code is None:
        return f["reason_attr"] or "no reason code"
    sub = f["subcode"]
    return f"{f['code_attr']} {code}/{sub}" if sub not in (None, 0) else f"{f['code_attr']} {code}"


def _d_signal_label(f: Facts) -> str:
    """``ExitSignal 11 (SIGSEGV)``, or for a wrapper's 128+N exit code
    ``ExitCode 139 (128+11, SIGSEGV)``."""
    sig = f["exit_signal"]
    if sig is not None:
        return f"ExitSignal {sig} ({_SIGNAL_NAMES.get(sig, 'unknown signal')})"
    code = f["exit_code"]
    if code is not None and 128 < code < 160:
        n = code - 128
        return f"ExitCode {code} (128+{n}, {_SIGNAL_NAMES.get(n, 'unknown signal')})"
    return f"ExitCode {code}"


def _d_runtime(f: Facts) -> float | None:
    start = _num(f.view.get("JobCurrentStartDate"))
    end = f["failure_time"]
    if start and end and end >= start:
        return end - start
    return _num(f.view.get("RemoteWallClockTime"))


_DERIVED: dict[str, Callable[[Facts], Any]] = {
    "exit_failed": _d_exit_failed,
    "memory_usage_mb": _d_memory_field(0),
    "request_memory_mb": _d_memory_field(1),
    "memory_limit_mb": _d_memory_field(2),
    "memory_ratio": _d_memory_ratio,
    "failure_time": _d_failure_time,
    "failure_time_iso": lambda f: _iso(f["failure_time"]),
    "proxy_expiration": _d_proxy_expiration,
    "proxy_expiration_iso": lambda f: _iso(f["proxy_expiration"]),
    "cred_expired": _d_cred_expired,
    "cred_expired_by_h": _d_cred_expired_by_h,
    "removed_by_user": lambda f: f["status"] == "removed" and removed_by_user(f.view),
    "remove_reason": lambda f: _str(f.view.get("RemoveReason")),
    "remove_reason_q": lambda f: _quote(f["remove_reason"]),
    "vacate_code": lambda f: _int(f.view.get("VacateReasonCode")),
    "vacate_reason": lambda f: _str(f.view.get("VacateReason")),
    "vacate_reason_q": lambda f: _quote(f["vacate_reason"]),
    "vacate_code_name": lambda f: holdcodes.code_name(f["vacate_code"]),
    "events": _d_events,
    "event_type": _d_event_field("event_type"),
    "event_reason": _d_event_field("event_reason"),
    "event_reason_q": lambda f: _quote(f["event_reason"]),
    "num_shadow_exceptions": lambda f: _int(f.view.get("NumShadowExceptions")),
    "num_job_starts": lambda f: _int(f.view.get("NumJobStarts")),
    "runtime_s": _d_runtime,
    "code_name": lambda f: holdcodes.code_name(f["code"]) if f["code"] is not None else "no code",
    "code_label": _d_code_label,
    "code_default_category": lambda f: holdcodes.default_category(f["code"]),
    "reason_q": lambda f: _quote(f["reason"]) if f["reason"] else "(no reason text)",
    "signal_name": lambda f: _SIGNAL_NAMES.get(f["exit_signal"], f"signal {f['exit_signal']}"),
    "signal_label": _d_signal_label,
    "job_universe": lambda f: _int(f.view.get("JobUniverse")),
    "chirp_exit_code": lambda f: chirp_exit_code(f.view),
}

_EAGER = ("status", "code", "subcode", "reason", "code_attr", "subcode_attr", "reason_attr",
          "exit_code", "exit_by_signal", "exit_signal")
KNOWN_FACTS = frozenset(_EAGER) | frozenset(_DERIVED)


def _facts(view: Any, events: Any, now: float | None) -> Facts:
    f = Facts()
    f.view, f.events, f.now = view, events, now
    status = job_status(view)
    code, subcode, reason, code_attr, reason_attr = decisive_reason(status, view)
    f["status"] = status
    f["code"] = code
    f["subcode"] = subcode
    f["reason"] = reason
    f["code_attr"] = code_attr
    f["subcode_attr"] = code_attr[:-4] + "SubCode" if code_attr else None
    f["reason_attr"] = reason_attr
    if status == "completed":
        by_signal = _bool(view.get("ExitBySignal")) or False
        f["exit_by_signal"] = by_signal
        f["exit_signal"] = _int(view.get("ExitSignal")) if by_signal else None
        f["exit_code"] = None if by_signal else _int(view.get("ExitCode"))
    else:
        f["exit_by_signal"] = False
        f["exit_signal"] = None
        f["exit_code"] = None
    return f


# evidence: which attributes a fact came from.  Each source adds
# (attribute, value) pairs to ``out`` (first one wins).
_Evidence = Callable[["Facts", dict], None]


def _ev_code(f: Facts, out: dict) -> None:
    attr = f["code_attr"]
    if attr:
        out.setdefault(attr, f["code"])
        if f["subcode"] is not None:
            out.setdefault(f["subcode_attr"], f["subcode"])


def _ev_attrs(*names: str) -> _Evidence:
    def ev(f: Facts, out: dict) -> None:
        get = f.view.get
        for name in names:
            if name not in out:
                v = get(name)
                if v is not None:
                    out[name] = v

    ev.names = names  # type: ignore[attr-defined]
    return ev


_ev_memory = _ev_attrs("MemoryUsage", "ResidentSetSize", "RequestMemory", "MemoryProvisioned")
_ev_exit = _ev_attrs("ExitBySignal", "ExitSignal", "ExitCode")


def _ev_cred(f: Facts, out: dict) -> None:
    get = f.view.get
    out.setdefault("X509UserProxyExpiration", get("X509UserProxyExpiration"))
    if f["status"] == "completed" and get("CompletionDate") is not None:
        out.setdefault("CompletionDate", get("CompletionDate"))
    elif get("EnteredCurrentStatus") is not None:
        out.setdefault("EnteredCurrentStatus", get("EnteredCurrentStatus"))


def _ev_events(f: Facts, out: dict) -> None:
    if f["events"]:
        out.setdefault("events", tuple(sorted(f["events"])))
        if f["event_reason"]:
            out.setdefault("event_reason", f["event_reason"])


_ev_remove = _ev_attrs("RemoveReason")
_ev_vacate = _ev_attrs("VacateReasonCode", "VacateReason")

_EVIDENCE: dict[str, _Evidence] = {
    "code": _ev_code, "subcode": _ev_code, "code_label": _ev_code, "code_name": _ev_code,
    "memory_usage_mb": _ev_memory, "request_memory_mb": _ev_memory, "memory_ratio": _ev_memory,
    "memory_limit_mb": _ev_memory,
    "cred_expired": _ev_cred, "proxy_expiration": _ev_cred, "proxy_expiration_iso": _ev_cred,
    "cred_expired_by_h": _ev_cred, "failure_time": _ev_cred, "failure_time_iso": _ev_cred,
    "exit_code": _ev_exit, "exit_signal": _ev_exit, "exit_by_signal": _ev_exit, "exit_failed": _ev_exit,
    "signal_name": _ev_exit, "signal_label": _ev_exit,
    "removed_by_user": _ev_remove, "remove_reason": _ev_remove, "remove_reason_q": _ev_remove,
    "vacate_code": _ev_vacate, "vacate_reason": _ev_vacate, "vacate_reason_q": _ev_vacate,
    "vacate_code_name": _ev_vacate,
    "events": _ev_events, "event_type": _ev_events, "event_reason": _ev_events, "event_reason_q": _ev_events,
    "num_shadow_exceptions": _ev_attrs("NumShadowExceptions"), "num_job_starts": _ev_attrs("NumJobStarts"),
    "runtime_s": _ev_attrs("JobCurrentStartDate", "RemoteWallClockTime"), "job_universe": _ev_attrs("JobUniverse"),
    "chirp_exit_code": _ev_attrs(*_CHIRP_EXIT_ATTRS),
}


# --------------------------------------------------------------------------
# verdict
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Verdict:
    """The classification of one job."""

    category: str
    rule: str
    explanation: str
    action: str
    runbook: str | None
    confidence: float
    version: str
    evidence: tuple[tuple[str, Any], ...] = ()
    removed_by_user: bool = False
    signature: str | None = None
    signature_hash: str | None = None

    @property
    def failed(self) -> bool:
        return self.category != "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "rule": self.rule,
            "explanation": self.explanation,
            "action": self.action,
            "runbook": self.runbook,
            "confidence": self.confidence,
            "version": self.version,
            "evidence": {k: _jsonable(v) for k, v in self.evidence},
            "removed_by_user": self.removed_by_user,
            "signature": self.signature,
            "signature_hash": self.signature_hash,
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, frozenset, set)):
        return [_jsonable(v) for v in value]
    return str(value)


# --------------------------------------------------------------------------
# rule language
# --------------------------------------------------------------------------
_OPS = ("_not_in", "_in", "_not_re", "_re", "_eq", "_ne", "_ge", "_gt", "_le", "_lt", "_present", "_any")
_FORMATTER = string.Formatter()


def _split_key(key: str) -> tuple[str, str]:
    for op in _OPS:
        if key.endswith(op) and len(key) > len(op):
            return key[: -len(op)], op[1:]
    return key, ""


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_ESCAPE_RE = re.compile(r"\\.|[^\\]+", re.S)


def _lowercase_pattern(pattern: str) -> str:
    """The pattern lower-cased outside escape sequences (``\\S``, ``\\D``, ``\\B``
    keep their meaning).  Matching it against lower-cased text is a
    case-insensitive match that, unlike ``re.IGNORECASE``, keeps the regex
    engine's literal-prefix and first-character optimisations."""
    return "".join(tok if tok.startswith("\\") else tok.lower() for tok in _ESCAPE_RE.findall(pattern))


def _required_literals(pattern: str) -> tuple[str, ...] | None:
    """Substrings one of which must occur for ``pattern`` to match, or None.

    For every top-level alternative the longest run of plain characters it
    must match is taken; if each alternative has one of 3+ characters, a text
    containing none of them cannot match and the regex need not run.  (A C
    substring search per literal is several times cheaper than a regex scan
    of a long reason text.)"""
    try:
        data = list(_sre_parse.parse(pattern).data)
    except Exception:  # pragma: no cover - compile() already validated it
        return None
    while len(data) == 1 and data[0][0] is _sre_c.SUBPATTERN and not data[0][1][1] and not data[0][1][2]:
        data = list(data[0][1][3])
    branches = [list(b) for b in data[0][1][1]] if len(data) == 1 and data[0][0] is _sre_c.BRANCH else [data]
    literals: list[str] = []
    for branch in branches:
        best, run = "", []
        for op, av in branch + [(None, None)]:
            if op is _sre_c.LITERAL:
                run.append(chr(av))
                continue
            if len(run) > len(best):
                best = "".join(run)
            run = []
        if len(best) < 3:
            return None
        literals.append(best)
    unique = sorted(set(literals), key=len)
    minimal = [lit for i, lit in enumerate(unique) if not any(o in lit for o in unique[:i])]
    return tuple(minimal)


def _regex_check(key: str, rx: re.Pattern[str], negate: bool) -> Callable[[Facts], bool]:
    search = rx.search
    literals = _required_literals(rx.pattern)
    if literals is None:
        if negate:
            return lambda f: search(f[key]) is None
        return lambda f: search(f[key]) is not None

    def check(f: Facts) -> bool:
        text = f[key]
        for lit in literals:
            if lit in text:
                return (search(text) is None) if negate else (search(text) is not None)
        return negate

    return check


def _compile_check(fact: str, op: str, value: Any, where: str) -> Callable[[Facts], bool]:
    if fact not in KNOWN_FACTS and not fact.startswith("attr."):
        raise RuleError(f"{where}: unknown fact {fact!r} (known: {', '.join(sorted(KNOWN_FACTS))}, attr.<Name>)")
    if op == "":
        op = "in" if isinstance(value, list) else "eq"
    if op in ("in", "not_in", "any"):
        if not isinstance(value, list):
            raise RuleError(f"{where}: {fact}_{op} needs a list")
        values = frozenset(_hashable(v) for v in value)
        if op == "in":
            return lambda f, k=fact, s=values: f[k] in s
        if op == "not_in":
            return lambda f, k=fact, s=values: f[k] not in s
        return lambda f, k=fact, s=values: bool(f[k] and s.intersection(f[k]))
    if op in ("re", "not_re"):
        if not isinstance(value, str):
            raise RuleError(f"{where}: {fact}_{op} needs a regex string")
        try:
            re.compile(value)
            rx = re.compile(_lowercase_pattern(value))
        except re.error as exc:
            raise RuleError(f"{where}: bad regex for {fact}_{op}: {exc}") from None
        return _regex_check(fact + _LC, rx, negate=(op == "not_re"))
    if op == "eq":
        return lambda f, k=fact, v=value: f[k] == v
    if op == "ne":
        return lambda f, k=fact, v=value: f[k] != v
    if op == "present":
        if not isinstance(value, bool):
            raise RuleError(f"{where}: {fact}_present needs true/false")
        if value:
            return lambda f, k=fact: f[k] not in (None, "")
        return lambda f, k=fact: f[k] in (None, "")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RuleError(f"{where}: {fact}_{op} needs a number")
    x = float(value)
    if op == "ge":
        return lambda f, k=fact, x=x: (v := f[k]) is not None and v >= x
    if op == "gt":
        return lambda f, k=fact, x=x: (v := f[k]) is not None and v > x
    if op == "le":
        return lambda f, k=fact, x=x: (v := f[k]) is not None and v <= x
    return lambda f, k=fact, x=x: (v := f[k]) is not None and v < x


def _all_of(group: tuple[Callable[[Facts], bool], ...]) -> Callable[[Facts], bool]:
    def check(f: Facts) -> bool:
        for c in group:
            if not c(f):
                return False
        return True

    return check


def _any_of(groups: tuple[tuple[Callable[[Facts], bool], ...], ...]) -> Callable[[Facts], bool]:
    alls = tuple(_all_of(g) for g in groups)

    def check(f: Facts) -> bool:
        for a in alls:
            if a(f):
                return True
        return False

    return check


def _none_of(group: tuple[Callable[[Facts], bool], ...]) -> Callable[[Facts], bool]:
    a = _all_of(group)
    return lambda f: not a(f)


# checks are pure, so their order is free: cheap comparisons run before
# combinations, and those before regex searches
_COST_CHEAP, _COST_GROUP, _COST_REGEX = 0, 1, 2


def _compile_when(when: Mapping[str, Any], where: str, refs: list[str]) -> tuple[Callable[[Facts], bool], ...]:
    checks: list[tuple[int, Callable[[Facts], bool]]] = []
    for key, value in when.items():
        if key == "any":
            if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
                raise RuleError(f"{where}: 'any' needs a non-empty list of condition tables")
            groups = tuple(_compile_when(t, f"{where}.any", refs) for t in value)
            checks.append((_COST_GROUP, _any_of(groups)))
        elif key == "not":
            if not isinstance(value, dict) or not value:
                raise RuleError(f"{where}: 'not' needs a condition table")
            checks.append((_COST_GROUP, _none_of(_compile_when(value, f"{where}.not", refs))))
        elif key == "attr" and isinstance(value, dict):
            # TOML dotted keys: attr.Owner = "x" / attr.NumJobStarts_gt = 3
            for sub, subvalue in value.items():
                fact, op = _split_key(sub)
                refs.append(f"attr.{fact}")
                cost = _COST_REGEX if op in ("re", "not_re") else _COST_CHEAP
                checks.append((cost, _compile_check(f"attr.{fact}", op, subvalue, f"{where}.attr.{sub}")))
        else:
            fact, op = _split_key(key)
            refs.append(fact)
            cost = _COST_REGEX if op in ("re", "not_re") else _COST_CHEAP
            checks.append((cost, _compile_check(fact, op, value, f"{where}.{key}")))
    checks.sort(key=lambda c: c[0])
    return tuple(c for _, c in checks)


class _Template:
    __slots__ = ("parts", "fields")

    def __init__(self, text: str, where: str) -> None:
        parts: list[tuple[str, str | None, str]] = []
        fields: list[str] = []
        try:
            for literal, field, spec, conv in _FORMATTER.parse(text):
                if conv:
                    raise RuleError(f"{where}: conversions (!{conv}) are not supported")
                if field is not None:
                    if field not in KNOWN_FACTS and not field.startswith("attr."):
                        raise RuleError(f"{where}: unknown field {{{field}}} in template")
                    fields.append(field)
                parts.append((literal, field, spec or ""))
        except ValueError as exc:
            raise RuleError(f"{where}: bad template: {exc}") from None
        self.parts = tuple(parts)
        self.fields = tuple(fields)

    def render(self, f: Facts) -> str:
        out: list[str] = []
        for literal, field, spec in self.parts:
            out.append(literal)
            if field is None:
                continue
            value = f[field]
            if value is None or value == "":
                out.append("?")
                continue
            if isinstance(value, float) and value.is_integer() and not spec:
                value = int(value)
            try:
                out.append(format(value, spec))
            except (ValueError, TypeError):
                out.append(str(value))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    category: str
    priority: int
    order: int
    source: str
    checks: tuple[Callable[[Facts], bool], ...]
    statuses: frozenset[str] | None
    codes: frozenset[Any] | None
    explain: _Template
    action: str
    runbook: str | None
    confidence: float
    refs: tuple[str, ...]
    tests: tuple[Mapping[str, Any], ...]
    description: str = ""
    evidence_fns: tuple[_Evidence, ...] = ()

    def matches(self, f: Facts) -> bool:
        if self.statuses is not None and f["status"] not in self.statuses:
            return False
        if self.codes is not None and f["code"] not in self.codes:
            return False
        for check in self.checks:
            if not check(f):
                return False
        return True


def _index_values(when: Mapping[str, Any], fact: str) -> tuple[frozenset[Any] | None, str | None]:
    """Values of a top-level ``fact`` / ``fact_in`` / ``fact_eq`` condition and
    the key it came from (rules are indexed by status and code)."""
    for key in (fact, f"{fact}_in", f"{fact}_eq"):
        if key in when:
            value = when[key]
            values = frozenset(_hashable(v) for v in value) if isinstance(value, list) else frozenset([value])
            return values, key
    return None, None


def _compile_rule(raw: Mapping[str, Any], order: int, source: str, default_priority: int) -> Rule:
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid:
        raise RuleError(f"{source}: rule #{order + 1} has no id")
    where = f"{source}: rule {rid}"
    category = raw.get("category")
    if category not in _CATEGORY_SET:
        raise RuleError(f"{where}: category {category!r} is not one of {', '.join(CATEGORIES)}")
    known = {"id", "category", "priority", "when", "explain", "action", "runbook", "confidence", "test", "description"}
    extra = set(raw) - known
    if extra:
        raise RuleError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    when = raw.get("when", {})
    if not isinstance(when, dict):
        raise RuleError(f"{where}: 'when' must be a table")
    statuses, status_key = _index_values(when, "status")
    if statuses is not None and not statuses <= STATUSES:
        raise RuleError(f"{where}: unknown status in {sorted(statuses)}; use {', '.join(sorted(STATUSES))}")
    codes, code_key = _index_values(when, "code")
    refs: list[str] = ["code"] if codes is not None else []
    # the status and code conditions are enforced by the index (RuleSet.candidates)
    indexed = {status_key, code_key}
    checks = _compile_when({k: v for k, v in when.items() if k not in indexed}, f"{where}.when", refs)
    explain = raw.get("explain")
    if not isinstance(explain, str) or not explain:
        raise RuleError(f"{where}: 'explain' template is required")
    template = _Template(explain, f"{where}.explain")
    refs.extend(template.fields)
    confidence = raw.get("confidence", 0.8)
    if not isinstance(confidence, (int, float)) or not 0.0 <= float(confidence) <= 1.0:
        raise RuleError(f"{where}: confidence must be within [0, 1]")
    tests = raw.get("test", [])
    if not isinstance(tests, list) or not tests:
        raise RuleError(f"{where}: every rule needs at least one [[rule.test]] case")
    for i, case in enumerate(tests):
        if not isinstance(case, dict) or not isinstance(case.get("ad"), dict) or "expect" not in case:
            raise RuleError(f"{where}: test #{i + 1} needs 'ad' (a table) and 'expect'")
        if case["expect"] not in _CATEGORY_SET:
            raise RuleError(f"{where}: test #{i + 1} expects unknown category {case['expect']!r}")
    priority = raw.get("priority", default_priority)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise RuleError(f"{where}: priority must be an integer")
    action = raw.get("action", "")
    runbook = raw.get("runbook")
    return Rule(
        id=rid,
        category=category,
        priority=priority,
        order=order,
        source=source,
        checks=checks,
        statuses=statuses,
        codes=codes,
        explain=template,
        action=str(action),
        runbook=str(runbook) if runbook else None,
        confidence=float(confidence),
        refs=tuple(dict.fromkeys(refs)),
        tests=tuple(tests),
        description=str(raw.get("description", "")),
        evidence_fns=_evidence_fns(refs),
    )


def _evidence_fns(refs: Iterable[str]) -> tuple[_Evidence, ...]:
    fns: dict[Any, _Evidence] = {}
    for ref in refs:
        fn = _EVIDENCE.get(ref)
        if fn is None and ref.startswith("attr."):
            fns[ref] = _ev_attrs(ref[5:])
        elif fn is not None:
            fns.setdefault(fn, fn)
    return tuple(fns.values())


class RuleSet:
    """An ordered, indexed, immutable list of compiled rules."""

    def __init__(self, rules: Sequence[Rule], version: str, names: Sequence[str] = ("default",)) -> None:
        ids: dict[str, str] = {}
        for r in rules:
            if r.id in ids:
                raise RuleError(f"duplicate rule id {r.id!r} in {r.source} and {ids[r.id]}")
            ids[r.id] = r.source
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda r: (-r.priority, r.order)))
        self.version = version
        self.names = tuple(names)
        self.classifier_version = f"{version}+opos{__version__}"
        self._candidates: dict[tuple[str, Any], tuple[Rule, ...]] = {}
        self._lock = threading.Lock()
        self._verdicts: dict[tuple[Any, ...], Verdict] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.rules)

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def candidates(self, status: str, code: Any) -> tuple[Rule, ...]:
        key = (status, code)
        found = self._candidates.get(key)
        if found is None:
            found = tuple(
                r
                for r in self.rules
                if (r.statuses is None or status in r.statuses) and (r.codes is None or code in r.codes)
            )
            with self._lock:
                if len(self._candidates) < 8192:
                    self._candidates[key] = found
        return found

    def verdict(self, rule: Rule, f: Facts) -> Verdict:
        explanation = rule.explain.render(f)
        evidence = _evidence(rule, f)
        by_user = bool(f["removed_by_user"]) if f["status"] == "removed" else False
        sig = sig_hash = None
        if rule.category != "none" and f["reason"]:
            sig, sig_hash = make_signature(f["reason"])
        key = (rule.id, explanation, evidence, by_user, sig_hash)
        try:
            cached = self._verdicts.get(key)
        except TypeError:  # unhashable evidence value
            cached, key = None, None  # type: ignore[assignment]
        if cached is not None:
            return cached
        v = Verdict(rule.category, rule.id, explanation, rule.action, rule.runbook, rule.confidence,
                    self.classifier_version, evidence, by_user, sig, sig_hash)
        if key is not None:
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[key] = v
        return v


def _evidence(rule: Rule, f: Facts) -> tuple[tuple[str, Any], ...]:
    """JobStatus, the decisive reason, then what the rule looked at."""
    out: dict[str, Any] = {}
    status_raw = f.view.get("JobStatus")
    if status_raw is not None:
        out["JobStatus"] = status_raw
    if f["reason"]:
        out[f["reason_attr"]] = f["reason"]
    for src in rule.evidence_fns:
        src(f, out)
    if f["status"] == "removed" and "RemoveReason" not in out:
        rr = f.view.get("RemoveReason")
        if rr is not None:
            out["RemoveReason"] = rr
    return tuple(out.items())


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------
def _read_rules_file(path: Path, order_base: int, default_priority: int) -> tuple[list[Rule], str, str]:
    try:
        with path.open("rb") as fh:
            data = _toml.load(fh)
    except FileNotFoundError:
        raise RuleError(f"{path}: no such rules file") from None
    except _toml.TOMLDecodeError as exc:
        raise RuleError(f"{path}: invalid TOML: {exc}") from None
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise RuleError(f"{path.name}: top-level 'version' string is required")
    name = str(data.get("name", path.stem))
    prio = data.get("default_priority", default_priority)
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RuleError(f"{path.name}: no [[rule]] entries")
    rules = [_compile_rule(r, order_base + i, path.name, prio) for i, r in enumerate(raw_rules)]
    return rules, version, name


_RULESET_CACHE: dict[tuple[str, ...], RuleSet] = {}
_CACHE_LOCK = threading.Lock()


def _resolve_source(name: str | Path) -> Path:
    if isinstance(name, Path):
        return name
    key = name.strip().lower()
    if key in _OPTIONAL_SETS:
        return _OPTIONAL_SETS[key]
    if key in ("default", ""):
        return _DEFAULT_RULES
    return Path(name)


def load_ruleset(*extra: str | Path, base: bool = True) -> RuleSet:
    """Compile the default rules plus optional sets (``"fife"``, ``"cms"`` or
    paths to TOML files).  ``base=False`` loads only the given files."""
    sources = ([_DEFAULT_RULES] if base else []) + [_resolve_source(e) for e in extra]
    if not sources:
        raise RuleError("no rule files given")
    rules: list[Rule] = []
    versions: list[str] = []
    names: list[str] = []
    for i, src in enumerate(sources):
        loaded, version, name = _read_rules_file(src, order_base=i * 100_000, default_priority=500)
        rules.extend(loaded)
        versions.append(version if i == 0 else f"{name}-{version}")
        names.append(name)
    return RuleSet(rules, "+".join(versions), names)


def default_ruleset() -> RuleSet:
    return _ruleset_for(None)


_SPEC_CACHE: dict[Any, RuleSet] = {}


def _ruleset_for(spec: Any) -> RuleSet:
    """RuleSet for ``None`` (defaults), ``"fife"``, ``"fife+cms"``, a path or a
    sequence of those; compiled once and cached."""
    if isinstance(spec, RuleSet):
        return spec
    hashable = spec if spec is None or isinstance(spec, (str, Path)) else tuple(str(s) for s in spec)
    rs = _SPEC_CACHE.get(hashable)
    if rs is not None:
        return rs
    if spec is None:
        key: tuple[str, ...] = ()
    elif isinstance(spec, (str, Path)):
        key = tuple(p.strip() for p in re.split(r"[+,]", str(spec)) if p.strip() and p.strip().lower() != "default")
    else:
        key = tuple(str(s) for s in spec)
    with _CACHE_LOCK:
        rs = _RULESET_CACHE.get(key)
        if rs is None:
            rs = load_ruleset(*key)
            _RULESET_CACHE[key] = rs
        _SPEC_CACHE[hashable] = rs
    return rs


# --------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------
def classify(
    ad: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]] | None = None,
    *,
    now: float | None = None,
    ruleset: RuleSet | str | Sequence[str] | None = None,
) -> Verdict:
    """Classify one job ad.

    ``events``: optional event-log events as dicts (``{"type": "held", "reason":
    ..., "time": ...}``; HTCondor event class names and ULog numbers are
    accepted as types).  ``now``: epoch seconds used as the failure time when
    the ad carries none.  ``ruleset``: a :class:`RuleSet`, or optional set
    names to add to the defaults (``"fife"``, ``"cms"``, ``"fife+cms"``).
    """
    rs = ruleset if isinstance(ruleset, RuleSet) else _ruleset_for(ruleset)
    if type(ad) is not dict and not isinstance(ad, Mapping):
        ad = getattr(ad, "attrs", ad)  # a JobRecord: classify its raw attributes
    f = _facts(casefold_view(ad), events, now)
    for rule in rs.candidates(f["status"], f["code"]):
        for check in rule.checks:
            if not check(f):
                break
        else:
            return rs.verdict(rule, f)
    # the default rules end with a catch-all; a custom set may not
    return Verdict("unknown", "no-rule-matched", f"no rule matched; {f['code_label']}: {f['reason_q']}",
                   "inspect the job ad", None, 0.0, rs.classifier_version, _evidence_fallback(f), False)


def _evidence_fallback(f: Facts) -> tuple[tuple[str, Any], ...]:
    out = []
    if f.view.get("JobStatus") is not None:
        out.append(("JobStatus", f.view.get("JobStatus")))
    if f["reason"]:
        out.append((f["reason_attr"], f["reason"]))
    return tuple(out)


def run_rule_tests(ruleset: RuleSet | None = None) -> list[str]:
    """Run every rule's inline ``[[rule.test]]`` cases; return failure messages.

    A case passes when the verdict has the expected category *and* was decided
    by the rule that carries the case (or by ``expect_rule`` when given)."""
    rs = ruleset or default_ruleset()
    failures: list[str] = []
    for rule in rs.rules:
        for i, case in enumerate(rule.tests):
            v = classify(case["ad"], case.get("events"), now=case.get("now"), ruleset=rs)
            want_rule = case.get("expect_rule", rule.id)
            if v.category != case["expect"] or v.rule != want_rule:
                failures.append(
                    f"{rule.source}: {rule.id} test #{i + 1}: expected {case['expect']}/{want_rule}, "
                    f"got {v.category}/{v.rule}: {v.explanation}"
                )
    return failures
