"""JobRecord: the one normalized shape every source produces.

``JobRecord.from_ad(ad, pool=..., schedd=..., source=...)`` reads a job ad
(any mapping: from :mod:`opos_monitor.classads`, ``classad2``, JSON) with
case-insensitive attribute names and turns the attributes the daemon uses into
typed fields.  Conversions never raise: a value of the wrong type that can be
read ("4096" where an int is expected) is converted, anything else (an
expression, ``error``, garbage) becomes ``None`` and stays in ``attrs``.
Times are timezone-aware UTC datetimes; zero or negative epoch values mean
"never" and become ``None``.

``to_doc()`` is the Elasticsearch document: raw attributes under their
HTCondor names plus an ``opos`` object with what the daemon derives.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Mapping, Optional

from opos_monitor.classads import ERROR, Expr, plain_ad

__all__ = ["JobRecord", "STATUS_NAMES", "status_name"]

STATUS_NAMES = {
    1: "idle",
    2: "running",
    3: "removed",
    4: "completed",
    5: "held",
    6: "transferring_output",
    7: "suspended",
}
_INT64 = 2**63


def status_name(code: Any) -> str:
    """JobStatus code (int or numeric string) to its name; "unknown" otherwise."""
    return STATUS_NAMES.get(to_int(code), "unknown")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# tolerant conversions


def to_int(v: Any) -> Optional[int]:
    """int from an int, an integral float or a numeric string; else None."""
    if v.__class__ is int:
        return v
    if isinstance(v, (bool, Enum)) or v is None or isinstance(v, Expr):
        return None
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return int(v) if math.isfinite(v) and v == int(v) else None
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            f = to_float(s)
            return int(f) if f is not None and f == int(f) else None
    return None


def to_float(v: Any) -> Optional[float]:
    """Finite float from a number or numeric string; else None."""
    if isinstance(v, (bool, Enum)) or v is None or isinstance(v, Expr):
        return None
    if isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:
            return None
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def to_bool(v: Any) -> Optional[bool]:
    """bool from a bool, 0/1, or "true"/"false" (any case); else None."""
    if isinstance(v, bool):
        return v
    if v.__class__ is int and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and not isinstance(v, Expr):
        return {"true": True, "false": False}.get(v.strip().lower())
    return None


def to_str(v: Any) -> Optional[str]:
    """A string value; numbers as text; expressions, error, undefined → None."""
    if v is None or v is ERROR or isinstance(v, (Expr, bool, Enum)):
        return None
    if isinstance(v, str):
        return str(v)
    if isinstance(v, (int, float)):
        return str(v)
    return None


def to_time(v: Any) -> Optional[datetime]:
    """UTC datetime from epoch seconds; zero, negative or absurd → None."""
    f = to_float(v)
    if f is None or f <= 0:
        return None
    try:
        return datetime.fromtimestamp(f, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


# field name -> (attribute names tried in order, converter)
_FIELDS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "cluster_id": (("ClusterId",), to_int),
    "proc_id": (("ProcId",), to_int),
    "owner": (("Owner",), to_str),
    "user": (("User",), to_str),
    "accounting_group": (("AccountingGroup", "AcctGroup"), to_str),
    "job_status_code": (("JobStatus",), to_int),
    "universe": (("JobUniverse",), to_int),
    "q_date": (("QDate",), to_time),
    "job_start_date": (("JobStartDate",), to_time),
    "job_current_start_date": (("JobCurrentStartDate",), to_time),
    "job_current_start_executing_date": (("JobCurrentStartExecutingDate",), to_time),
    "completion_date": (("CompletionDate",), to_time),
    "entered_current_status": (("EnteredCurrentStatus",), to_time),
    "last_match_time": (("LastMatchTime",), to_time),
    "last_vacate_time": (("LastVacateTime",), to_time),
    "request_memory_mb": (("RequestMemory",), to_int),
    "resident_set_size_kb": (("ResidentSetSize",), to_int),
    "request_disk_kb": (("RequestDisk",), to_int),
    "disk_usage_kb": (("DiskUsage",), to_int),
    "request_cpus": (("RequestCpus",), to_int),
    "request_gpus": (("RequestGPUs",), to_int),
    "remote_wall_clock_time_s": (("RemoteWallClockTime",), to_float),
    "remote_user_cpu_s": (("RemoteUserCpu",), to_float),
    "remote_sys_cpu_s": (("RemoteSysCpu",), to_float),
    "exit_code": (("ExitCode",), to_int),
    "exit_by_signal": (("ExitBySignal",), to_bool),
    "exit_signal": (("ExitSignal",), to_int),
    "job_core_dumped": (("JobCoreDumped",), to_bool),
    "hold_reason": (("HoldReason",), to_str),
    "hold_reason_code": (("HoldReasonCode",), to_int),
    "hold_reason_subcode": (("HoldReasonSubCode",), to_int),
    "last_hold_reason": (("LastHoldReason",), to_str),
    "last_hold_reason_code": (("LastHoldReasonCode",), to_int),
    "last_hold_reason_subcode": (("LastHoldReasonSubCode",), to_int),
    "remove_reason": (("RemoveReason",), to_str),
    "release_reason": (("ReleaseReason",), to_str),
    "vacate_reason": (("VacateReason",), to_str),
    "vacate_reason_code": (("VacateReasonCode",), to_int),
    "vacate_reason_subcode": (("VacateReasonSubCode",), to_int),
    "job_run_count": (("JobRunCount",), to_int),
    "num_shadow_starts": (("NumShadowStarts",), to_int),
    "num_holds": (("NumHolds",), to_int),
    "num_job_starts": (("NumJobStarts",), to_int),
    "num_shadow_exceptions": (("NumShadowExceptions",), to_int),
    "num_job_completions": (("NumJobCompletions",), to_int),
    "remote_host": (("RemoteHost",), to_str),
    "last_remote_host": (("LastRemoteHost",), to_str),
    "match_exp_job_glidein_site": (("MATCH_EXP_JOB_GLIDEIN_Site",), to_str),
    "glidein_site_attr": (("GLIDEIN_Site",), to_str),
    "machine_attr_glidein_site0": (("MachineAttrGLIDEIN_Site0",), to_str),
    "match_exp_job_glidein_resource_name": (("MATCH_EXP_JOB_GLIDEIN_ResourceName",), to_str),
    "x509_user_proxy": (("x509userproxy",), to_str),
    "x509_user_proxy_subject": (("x509userproxysubject",), to_str),
    "x509_user_proxy_vo_name": (("x509UserProxyVOName",), to_str),
    "x509_user_proxy_first_fqan": (("x509UserProxyFirstFQAN",), to_str),
    "x509_user_proxy_fqan": (("x509UserProxyFQAN",), to_str),
    "x509_user_proxy_email": (("x509UserProxyEmail",), to_str),
    "x509_user_proxy_expiration": (("x509UserProxyExpiration",), to_time),
    "scitokens_file": (("ScitokensFile",), to_str),
    "oauth_services_needed": (("OAuthServicesNeeded",), to_str),
    "auth_token_subject": (("AuthTokenSubject",), to_str),
    "auth_token_issuer": (("AuthTokenIssuer",), to_str),
    "auth_token_scopes": (("AuthTokenScopes",), to_str),
    "auth_token_id": (("AuthTokenId",), to_str),
}
_LOWER_FIELDS = {f: tuple(a.lower() for a in names) for f, (names, _) in _FIELDS.items()}
_SITE_SOURCES = ("match_exp_job_glidein_site", "glidein_site_attr", "machine_attr_glidein_site0")
_TIME_FIELDS = tuple(f for f, (_, conv) in _FIELDS.items() if conv is to_time) + ("hold_time", "removal_time")


@dataclass(slots=True)
class JobRecord:
    """A job as the daemon sees it: typed fields plus the raw attributes."""

    pool: str
    schedd: str
    source: str
    global_job_id: str
    synthetic_id: bool = False
    cluster_id: Optional[int] = None
    proc_id: Optional[int] = None
    owner: Optional[str] = None
    user: Optional[str] = None
    accounting_group: Optional[str] = None
    status: str = "unknown"
    job_status_code: Optional[int] = None
    universe: Optional[int] = None
    # times (UTC)
    q_date: Optional[datetime] = None
    job_start_date: Optional[datetime] = None
    job_current_start_date: Optional[datetime] = None
    job_current_start_executing_date: Optional[datetime] = None
    completion_date: Optional[datetime] = None
    entered_current_status: Optional[datetime] = None
    hold_time: Optional[datetime] = None
    removal_time: Optional[datetime] = None
    last_match_time: Optional[datetime] = None
    last_vacate_time: Optional[datetime] = None
    # resources
    request_memory_mb: Optional[int] = None
    memory_usage_mb: Optional[int] = None
    resident_set_size_kb: Optional[int] = None
    request_disk_kb: Optional[int] = None
    disk_usage_kb: Optional[int] = None
    request_cpus: Optional[int] = None
    request_gpus: Optional[int] = None
    remote_wall_clock_time_s: Optional[float] = None
    remote_user_cpu_s: Optional[float] = None
    remote_sys_cpu_s: Optional[float] = None
    cpu_time_s: Optional[float] = None
    # exit
    exit_code: Optional[int] = None
    exit_by_signal: Optional[bool] = None
    exit_signal: Optional[int] = None
    job_core_dumped: Optional[bool] = None
    # hold / remove / vacate
    hold_reason: Optional[str] = None
    hold_reason_code: Optional[int] = None
    hold_reason_subcode: Optional[int] = None
    last_hold_reason: Optional[str] = None
    last_hold_reason_code: Optional[int] = None
    last_hold_reason_subcode: Optional[int] = None
    remove_reason: Optional[str] = None
    release_reason: Optional[str] = None
    vacate_reason: Optional[str] = None
    vacate_reason_code: Optional[int] = None
    vacate_reason_subcode: Optional[int] = None
    # attempts
    job_run_count: Optional[int] = None
    num_shadow_starts: Optional[int] = None
    num_holds: Optional[int] = None
    num_job_starts: Optional[int] = None
    num_shadow_exceptions: Optional[int] = None
    num_job_completions: Optional[int] = None
    # where it ran
    remote_host: Optional[str] = None
    last_remote_host: Optional[str] = None
    startd_name: Optional[str] = None
    startd_slot: Optional[str] = None
    execute_host: Optional[str] = None
    glidein_site: Optional[str] = None
    match_exp_job_glidein_site: Optional[str] = None
    glidein_site_attr: Optional[str] = None
    machine_attr_glidein_site0: Optional[str] = None
    match_exp_job_glidein_resource_name: Optional[str] = None
    # credentials
    x509_user_proxy: Optional[str] = None
    x509_user_proxy_subject: Optional[str] = None
    x509_user_proxy_vo_name: Optional[str] = None
    x509_user_proxy_first_fqan: Optional[str] = None
    x509_user_proxy_fqan: Optional[str] = None
    x509_user_proxy_email: Optional[str] = None
    x509_user_proxy_expiration: Optional[datetime] = None
    scitokens_file: Optional[str] = None
    oauth_services_needed: Optional[str] = None
    auth_token_subject: Optional[str] = None
    auth_token_issuer: Optional[str] = None
    auth_token_scopes: Optional[str] = None
    auth_token_id: Optional[str] = None
    # everything, as read
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_ad(cls, ad: Mapping[str, Any], *, pool: str, schedd: str, source: str) -> "JobRecord":
        """Build a record from a job ad (attribute names case-insensitive).

        ``ad`` may come from :mod:`opos_monitor.classads`, JSON, or the
        HTCondor bindings (``classad2.ClassAd``: its values are made plain).
        """
        attrs = plain_ad(ad)
        low = dict(zip(map(str.lower, attrs), attrs.values()))
        kw: dict[str, Any] = {}
        for name, lnames in _LOWER_FIELDS.items():
            conv = _FIELDS[name][1]
            for ln in lnames:
                v = conv(low.get(ln))
                if v is not None:
                    kw[name] = v
                    break
        kw["status"] = STATUS_NAMES.get(kw.get("job_status_code"), "unknown")  # type: ignore[arg-type]
        kw["memory_usage_mb"] = _memory_usage_mb(low)
        kw["cpu_time_s"] = _sum_or_none(kw.get("remote_user_cpu_s"), kw.get("remote_sys_cpu_s"))
        kw.update(_status_times(kw))
        kw.update(_execute_slot(low, kw))
        kw["glidein_site"] = next((s for s in map(kw.get, _SITE_SOURCES) if _real_site(s)), None)
        gid = to_str(low.get("globaljobid"))
        if gid:
            kw["global_job_id"] = gid
        else:
            kw["global_job_id"] = _synthetic_id(schedd, kw)
            kw["synthetic_id"] = True
        return cls(pool=pool, schedd=schedd, source=source, attrs=attrs, **kw)

    def doc_id(self) -> str:
        """Deterministic document id: sha1 hex of the GlobalJobId."""
        return hashlib.sha1(self.global_job_id.encode("utf-8", "surrogatepass")).hexdigest()

    def attempt_doc_id(self, attempt: int) -> str:
        """Deterministic id for one run attempt (e.g. a job epoch) of this job."""
        key = f"{self.global_job_id}#attempt{int(attempt)}"
        return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()

    def to_doc(self, derived: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """The Elasticsearch document: raw attributes plus the ``opos`` object."""
        doc = dict(self.attrs)
        for k, v in doc.items():
            cls = v.__class__
            if cls is str or (cls is int and -_INT64 <= v < _INT64) or cls is bool or v is None:
                continue
            doc[k] = json_value(v)
        if "opos" in doc:  # keep a raw attribute that happens to be called opos
            doc["opos_attr"] = doc.pop("opos")
        opos: dict[str, Any] = {
            "pool": self.pool,
            "schedd": self.schedd,
            "source": self.source,
            "status": self.status,
            "global_job_id": self.global_job_id,
            "synthetic_id": self.synthetic_id,
            "glidein_site": self.glidein_site,
            "execute_host": self.execute_host,
            "memory_usage_mb": self.memory_usage_mb,
            "request_memory_mb": self.request_memory_mb,
            "cpu_time_s": self.cpu_time_s,
            "remote_wall_clock_time_s": self.remote_wall_clock_time_s,
        }
        for name in _TIME_FIELDS:
            t = getattr(self, name)
            opos[name] = iso_utc(t) if t is not None else None
        if derived:
            opos.update({k: json_value(v) for k, v in derived.items()})
        doc["opos"] = {k: v for k, v in opos.items() if v is not None}
        return doc


# ---------------------------------------------------------------------------
# helpers


def iso_utc(t: datetime) -> str:
    """ISO-8601 in UTC with a Z suffix (what Elasticsearch date fields read)."""
    if t.tzinfo is not timezone.utc:
        t = t.astimezone(timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


def json_value(v: Any) -> Any:
    """A raw attribute value made JSON-serialisable without losing text.

    Expressions become their text, ``error`` the string "error", integers
    beyond 64 bits their decimal text, NaN and infinities null.
    """
    cls = v.__class__
    if cls is str or cls is bool or v is None:
        return v
    if cls is int:
        return v if -_INT64 <= v < _INT64 else str(v)
    if cls is float:
        return v if math.isfinite(v) else None
    if v is ERROR:
        return "error"
    if isinstance(v, str):  # Expr and other str subclasses: the text
        return str(v)
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v) if -_INT64 <= v < _INT64 else str(v)
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, datetime):
        return iso_utc(v)
    if isinstance(v, Mapping):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    return str(v)


def _memory_usage_mb(low: Mapping[str, Any]) -> Optional[int]:
    """MemoryUsage (MB); else ResidentSetSize (KiB) rounded up to MB."""
    m = to_int(low.get("memoryusage"))
    if m is None:
        f = to_float(low.get("memoryusage"))
        m = int(math.ceil(f)) if f is not None else None
    if m is not None:
        return m
    rss = to_int(low.get("residentsetsize"))
    return (rss + 1023) // 1024 if rss is not None else None


def _sum_or_none(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None and b is None:
        return None
    return (a or 0.0) + (b or 0.0)


def _status_times(kw: Mapping[str, Any]) -> dict[str, Any]:
    """When the job went on hold / was removed, if that is its current status."""
    entered = kw.get("entered_current_status")
    status = kw.get("status")
    return {
        "hold_time": entered if status == "held" else None,
        "removal_time": entered if status == "removed" else None,
    }


def _execute_slot(low: Mapping[str, Any], kw: Mapping[str, Any]) -> dict[str, Any]:
    """startd name, slot and machine from StartdName/StartdSlot or (Last)RemoteHost.

    A remote host looks like ``slot1_3@node.example.org`` or, for glideins,
    ``slot1_3@glidein_123_456@node.example.org``.
    """
    host = kw.get("remote_host") or kw.get("last_remote_host")
    slot = name = machine = None
    if host:
        if "@" in host:
            slot, _, name = host.partition("@")
        else:
            name = host
        machine = name.rpartition("@")[2] or None
    name = to_str(low.get("startdname")) or name
    slot = to_str(low.get("startdslot")) or slot
    return {"startd_name": name or None, "startd_slot": slot or None, "execute_host": machine}


def _real_site(s: Optional[str]) -> bool:
    """A site name, not an empty or unexpanded ``$$(...)`` macro."""
    return bool(s) and not s.startswith("$$(")  # type: ignore[union-attr]


def _synthetic_id(schedd: str, kw: Mapping[str, Any]) -> str:
    """``schedd#cluster.proc#QDate`` like GlobalJobId ("?" where unknown)."""
    q = kw.get("q_date")
    qdate = int(q.timestamp()) if q is not None else "?"
    cluster = kw.get("cluster_id")
    proc = kw.get("proc_id")
    return f"{schedd}#{'?' if cluster is None else cluster}.{'?' if proc is None else proc}#{qdate}"
