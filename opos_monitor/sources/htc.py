"""Small shared helpers for the live HTCondor sources (schedd queue, history, job epochs).

* **Settings** – :func:`condor_params` turns :class:`~opos_monitor.config.HTCondorConfig` into
  the HTCondor client knobs (authentication methods, the read-only token, timeouts) and
  :func:`apply_params` applies them to ``htcondor2``.  HTCondor's parameters are process-global,
  so they are applied in exactly one place: at the start of every query worker process (see
  below); the daemon process itself never imports ``htcondor2``.
* **Token directory** – :class:`TokenDir` makes a private directory holding only the configured
  token (a symlink), so the client can never pick up another, more privileged token lying next
  to it (``SEC_TOKEN_DIRECTORY`` takes a directory, not a file).
* **Query isolation** – :class:`ProcessRunner` runs each query in a short-lived worker process
  (``forkserver`` start method, ``htcondor2`` preloaded).  Measured here: the ``htcondor2``
  bindings keep the GIL for the whole network call (a ``Schedd.query`` to an unresponsive
  schedd froze every other thread for 20 s; a ``Schedd.history`` to it hung for minutes), so
  threads alone can neither overlap queries nor enforce a timeout.  A worker that overruns
  its timeout is killed; the caller gets :class:`QueryTimeout`.  The worker also converts the
  ads to plain dicts / :class:`~opos_monitor.records.JobRecord` so that CPU work runs in
  parallel too.  :class:`InlineRunner` runs the same worker functions in-process against any
  client object (unit tests, debugging).
* **Selection and backoff** – :func:`schedd_selected` (allow/deny shell patterns) and
  :class:`Backoff` (exponential, per key, skip until the next-try time).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import multiprocessing
import operator
import os
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Protocol, Sequence, TypeVar

from .. import records
from ..classads import parse_value, plain_ad
from ..config import HTCondorConfig

__all__ = [
    "Backoff",
    "CollectorTarget",
    "InlineRunner",
    "JOB_ATTRS",
    "ProcessRunner",
    "QueryError",
    "QueryTimeout",
    "Runner",
    "ScheddTarget",
    "TokenDir",
    "ad_dict",
    "apply_params",
    "condor_params",
    "connect",
    "job_projection",
    "record_from_wire",
    "record_to_wire",
    "schedd_selected",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Modules a query worker needs; imported once in the forkserver, so each worker starts fast.
PRELOAD = ("htcondor2", "classad2", "orjson", "opos_monitor.records", "opos_monitor.classads",
           "opos_monitor.sources.htc", "opos_monitor.sources.schedd", "opos_monitor.sources.history")


# ---------------------------------------------------------------------------
# the job attributes the daemon asks schedds for (queue and history alike)

#: Inputs of the classifier, site attribution and signatures beyond JobRecord's own fields.
CLASSIFIER_ATTRS = (
    "GlobalJobId", "MyType", "JobStatus", "LastJobStatus", "EnteredCurrentStatus", "CompletionDate",
    "HoldReason", "HoldReasonCode", "HoldReasonSubCode",
    "LastHoldReason", "LastHoldReasonCode", "LastHoldReasonSubCode", "NumSystemHolds",
    "RemoveReason", "VacateReason", "VacateReasonCode", "VacateReasonSubCode",
    "ExitCode", "ExitBySignal", "ExitSignal", "ExitStatus", "ExitReason", "JobCoreDumped",
    "MemoryUsage", "ResidentSetSize", "ResidentSetSize_RAW", "RequestMemory", "MemoryProvisioned",
    "ImageSize", "DiskUsage", "RequestDisk",
    "X509UserProxyExpiration", "x509UserProxyExpiration",
    "GLIDEIN_Site", "JOB_GLIDEIN_Site", "MATCH_GLIDEIN_Site", "MATCH_EXP_JOB_GLIDEIN_Site",
    "MachineAttrGLIDEIN_Site0", "MATCH_EXP_JOB_GLIDEIN_ResourceName", "MATCH_EXP_JOBGLIDEIN_ResourceName",
    "JOB_GLIDEIN_ResourceName", "MachineAttrGLIDEIN_ResourceName0", "MachineAttrMachine0",
    "RemoteHost", "LastRemoteHost", "LastRemoteWallClockHost", "StartdName", "StartdSlot",
    "NumShadowExceptions", "NumShadowStarts", "NumJobStarts", "JobRunCount", "JobCurrentStartDate",
    "RemoteWallClockTime", "JobUniverse",
    "Chirp_CRAB3_Job_ExitCode", "Chirp_WMCore_cmsRun_ExitCode", "Chirp_WMCore_cmsRun1_ExitCode",
)
#: What engineers filter on in Kibana (FIFE / jobsub / POMS bookkeeping, the job itself).
CONTEXT_ATTRS = (
    "JobBatchName", "Cmd", "Args", "Arguments", "Iwd", "JobPrio", "NumJobMatches", "NumRestarts",
    "CumulativeSlotTime", "CommittedTime", "JobsubJobId", "Jobsub_Group", "JobsubClientKerberosPrincipal",
    "DESIRED_Sites", "DESIRED_usage_model", "FIFE_CATEGORIES", "POMS_TASK_ID", "POMS_CAMPAIGN_ID",
    "POMS4_CAMPAIGN_NAME", "POMS4_CAMPAIGN_STAGE_NAME", "CRAB_Id", "CRAB_Workflow",
)
#: Per-attempt (job epoch) records only.
EPOCH_ATTRS = ("EpochWriteDate", "RunInstanceID", "EpochAdType")


def _record_attrs() -> tuple[str, ...]:
    """Every attribute JobRecord reads (its field mapping in records.py)."""
    return tuple(a for names, _conv in records._FIELDS.values() for a in names)


def job_projection(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The projection for job queries: JobRecord's attributes, the classifier's inputs, context
    attributes, then ``extra`` (e.g. attributes a custom ruleset reads) – each once, first
    spelling wins (HTCondor attribute names are case-insensitive)."""
    seen: dict[str, str] = {}
    for name in (*_record_attrs(), *CLASSIFIER_ATTRS, *CONTEXT_ATTRS, *extra):
        seen.setdefault(name.lower(), name)
    return tuple(seen.values())


#: The one projection the schedd sources use (queue failures, history, epochs add EPOCH_ATTRS).
JOB_ATTRS = job_projection()


# ---------------------------------------------------------------------------
# settings


def condor_params(cfg: HTCondorConfig, token_dir: Path | None = None) -> dict[str, str]:
    """The HTCondor client knobs for ``cfg`` (knob name -> value, as text).

    ``token_dir`` is the directory holding the read-only tokens (see :class:`TokenDir`); without
    it, and without ``cfg.token_file``, HTCondor's own token search applies.
    """
    timeout = str(max(1, int(round(cfg.query_timeout_s))))
    params = {
        "SEC_CLIENT_AUTHENTICATION_METHODS": ",".join(cfg.auth_methods),
        "QUERY_TIMEOUT": timeout,  # collector queries
        "Q_QUERY_TIMEOUT": timeout,  # schedd job queue queries
    }
    if token_dir is not None:
        params["SEC_TOKEN_DIRECTORY"] = str(token_dir)
    elif cfg.token_file is not None:
        params["SEC_TOKEN_DIRECTORY"] = str(Path(cfg.token_file).parent)
    return params


def apply_params(params: Mapping[str, str]) -> Any:
    """Apply HTCondor client knobs to this process's ``htcondor2`` and return the module.

    Knobs are set as ``_CONDOR_<KNOB>`` environment variables and the configuration is
    reloaded, so they take effect exactly like HTCondor's own environment overrides (and stay
    in effect after any later ``reload_config``).  Call once per process.
    """
    for name, value in params.items():
        os.environ[f"_CONDOR_{name}"] = str(value)
    import htcondor2

    htcondor2.reload_config()
    return htcondor2


class TokenDir:
    """A private directory (mode 0700) holding only symlinks to the given token files.

    HTCondor reads every token in ``SEC_TOKEN_DIRECTORY`` and presents to a daemon the one its
    trust domain issued; pointing it at the tokens' own directory could make the client present
    a different (e.g. write-capable) token. The symlinks follow the files, so a token replaced
    on disk is picked up by the next query.
    """

    def __init__(self, *token_files: str | os.PathLike[str]) -> None:
        sources = []
        for token_file in token_files:
            src = Path(token_file).resolve()
            if not src.is_file():
                raise FileNotFoundError(f"token file {token_file} does not exist")
            sources.append(src)
        self.path = Path(tempfile.mkdtemp(prefix="opos-token-"))
        os.chmod(self.path, 0o700)
        for i, src in enumerate(sources):  # numbered: two domains' tokens may share a file name
            (self.path / f"{i:02d}-{src.name}").symlink_to(src)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "TokenDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# targets and clients


@dataclass(frozen=True, slots=True)
class ScheddTarget:
    """A schedd as discovered: what a worker needs to reach it."""

    pool: str
    name: str
    address: str
    version: str = ""

    def location(self) -> dict[str, str]:
        """The location ad ``htcondor2.Schedd`` takes (as a plain dict)."""
        return {"Name": self.name, "MyAddress": self.address, "CondorVersion": self.version, "MyType": "Scheduler"}


@dataclass(frozen=True, slots=True)
class CollectorTarget:
    """One collector of a pool."""

    pool: str
    address: str

    @property
    def name(self) -> str:
        return f"collector {self.address}"


def connect(target: ScheddTarget | CollectorTarget) -> Any:
    """An ``htcondor2`` client object for ``target`` (call inside a worker)."""
    import classad2
    import htcondor2

    if isinstance(target, CollectorTarget):
        return htcondor2.Collector(target.address)
    return htcondor2.Schedd(classad2.ClassAd(target.location()))


def ad_dict(ad: Any) -> dict[str, Any]:
    """A job ad (``classad2.ClassAd`` or mapping) as a dict of plain values.

    For ``classad2`` ads this goes through ``printJson`` + orjson (≈ 50 µs per 76-attribute
    ad here, against ≈ 150-250 µs for item-by-item conversion); expressions come back as
    :class:`~opos_monitor.classads.Expr`, ``error`` as ``ERROR``, ``undefined`` as None.
    Reals keep the 15 significant digits HTCondor's text formats carry (as in history files).
    """
    if isinstance(ad, dict):
        return plain_ad(ad)
    to_json = getattr(ad, "printJson", None)
    if to_json is None:
        return plain_ad(ad)
    text = to_json()
    try:
        import orjson

        d = orjson.loads(text)
    except Exception:  # noqa: BLE001 - anything odd: the slow, exact path
        return plain_ad(ad)
    if "Expr(" in text:
        for k, v in d.items():  # values are replaced, keys stay: safe while iterating
            cls = v.__class__
            if cls is str:
                if v[:6] == "/Expr(" and v[-2:] == ")/":
                    d[k] = parse_value(v[6:-2])
            elif cls is list or cls is dict:
                d[k] = _json_expr(v)
    return d


def _json_expr(v: Any) -> Any:
    if v.__class__ is str:
        if v[:6] == "/Expr(" and v[-2:] == ")/":
            return parse_value(v[6:-2])
        return v
    if isinstance(v, list):
        return [_json_expr(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_expr(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------
# records across the process boundary

_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(records.JobRecord))
_record_values = operator.attrgetter(*_RECORD_FIELDS)


def record_to_wire(record: records.JobRecord) -> tuple:
    """A JobRecord as a plain tuple of its field values (pickles ~2x faster than the object)."""
    return _record_values(record)


def record_from_wire(values: tuple) -> records.JobRecord:
    """The JobRecord back from :func:`record_to_wire` (same code version on both sides)."""
    return records.JobRecord(*values)


# ---------------------------------------------------------------------------
# running queries


class QueryError(Exception):
    """A query failed; the message names the target and HTCondor's reason."""


class QueryTimeout(QueryError):
    """A query did not finish within its timeout (its worker was killed)."""


class Runner(Protocol):
    """Runs ``fn(client, *args)`` against a target's client, with a timeout."""

    def call(self, target: Any, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        ...


def _describe(target: Any) -> str:
    return getattr(target, "name", None) or str(target)


class InlineRunner:
    """Runs worker functions in this process against clients from ``connect`` (no timeout).

    For unit tests (``connect`` returns fakes) and for debugging; a real daemon uses
    :class:`ProcessRunner`.
    """

    def __init__(self, connect: Callable[[Any], Any]) -> None:
        self._connect = connect

    def call(self, target: Any, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        try:
            client = self._connect(target)
            return fn(client, *args)
        except QueryError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
            raise QueryError(f"{_describe(target)}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _worker_main(conn: Any, env: Mapping[str, str], params: Mapping[str, str], target: Any,
                 fn: Callable[..., Any], args: tuple) -> None:
    """Entry point of a query worker process: apply settings, connect, run, send the result."""
    try:
        os.environ.update(env)
        apply_params(params)
        result = ("ok", fn(connect(target), *args))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised here
        result = ("error", _reason(exc), traceback.format_exc(limit=4))
    try:
        conn.send(result)
    finally:
        conn.close()


class ProcessRunner:
    """Runs each query in a fresh worker process (forkserver) and enforces a timeout.

    ``params`` are the HTCondor client knobs (:func:`condor_params`), applied in every worker;
    ``env`` is set in the worker's environment first (e.g. ``CONDOR_CONFIG``: workers descend
    from the forkserver, whose environment is the daemon's when the server started).
    The forkserver is started on first use with :data:`PRELOAD` imported, so a worker costs a
    fork plus HTCondor's authentication handshake (≈ 30-80 ms here).
    """

    def __init__(self, params: Mapping[str, str], timeout_s: float, *, env: Mapping[str, str] | None = None,
                 preload: Sequence[str] = PRELOAD) -> None:
        self.params = dict(params)
        self.env = dict(env or {})
        self.timeout_s = float(timeout_s)
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(preload))
        self._lock = threading.Lock()
        self._live: set[Any] = set()

    def call(self, target: Any, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        timeout = self.timeout_s if timeout is None else float(timeout)
        recv, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_worker_main, args=(send, self.env, self.params, target, fn, args),
                                 name=f"opos-query {_describe(target)}", daemon=True)
        with self._lock:
            proc.start()
            self._live.add(proc)
        send.close()
        try:
            return self._result(proc, recv, target, timeout)
        finally:
            recv.close()
            self._reap(proc)

    def _result(self, proc: Any, recv: Any, target: Any, timeout: float) -> Any:
        try:
            ready = recv.poll(timeout)
            message = recv.recv() if ready else None
        except (EOFError, OSError):
            proc.join(2)
            raise QueryError(f"{_describe(target)}: query worker died (exit code {proc.exitcode})") from None
        if message is None:
            raise QueryTimeout(f"{_describe(target)}: no answer within {timeout:g} s (query abandoned)")
        if message[0] == "ok":
            return message[1]
        log.debug("query worker for %s failed:\n%s", _describe(target), message[2])
        raise QueryError(f"{_describe(target)}: {message[1]}")

    def _reap(self, proc: Any) -> None:
        proc.join(0.5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        with self._lock:
            self._live.discard(proc)
        if proc.exitcode is not None:
            proc.close()

    def close(self) -> None:
        """Kill any worker still running (e.g. at shutdown)."""
        with self._lock:
            live = list(self._live)
        for proc in live:
            if proc.is_alive():
                proc.kill()


# ---------------------------------------------------------------------------
# selection and backoff


def schedd_selected(name: str, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> bool:
    """Whether a schedd ``name`` is watched: matches an allow pattern (or none are given) and
    no deny pattern. Patterns are shell-style (``jobsub0*``), case-sensitive; deny wins."""
    if allow and not any(fnmatch.fnmatchcase(name, p) for p in allow):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in deny)


@dataclass(slots=True)
class _BackoffState:
    failures: int = 0
    next_try: float = 0.0
    last_error: str = ""


@dataclass
class Backoff:
    """Exponential backoff per key: after failure *n* the key is skipped for
    ``min(max_s, base_s * 2**(n-1))`` seconds; a success resets it."""

    base_s: float = 30.0
    max_s: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _state: dict[Hashable, _BackoffState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, key: Hashable) -> float:
        """Seconds until ``key`` may be tried again (0 when it may be tried now)."""
        with self._lock:
            st = self._state.get(key)
            return max(0.0, st.next_try - self.clock()) if st else 0.0

    def failures(self, key: Hashable) -> int:
        with self._lock:
            st = self._state.get(key)
            return st.failures if st else 0

    def last_error(self, key: Hashable) -> str:
        with self._lock:
            st = self._state.get(key)
            return st.last_error if st else ""

    def failure(self, key: Hashable, error: str) -> float:
        """Record a failure; returns the delay before the next try."""
        with self._lock:
            st = self._state.setdefault(key, _BackoffState())
            st.failures += 1
            delay = min(self.max_s, self.base_s * 2.0 ** min(st.failures - 1, 30))
            st.next_try = self.clock() + delay
            st.last_error = error
            return delay

    def success(self, key: Hashable) -> None:
        with self._lock:
            self._state.pop(key, None)
