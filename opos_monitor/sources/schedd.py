"""The live schedd source: discovery through the collectors, queue polls, and the poller that
drives queue, history and job epoch polls of every schedd with bounded concurrency.

* :class:`Discovery` asks each pool's collectors (in order, failing over) for its schedds,
  keeps those the pool's allow/deny patterns select, and remembers them: when no collector
  answers, the pool's discovery is reported down and the last known list is used; a schedd
  that stops being advertised (e.g. ``condor_off``) is still polled – and reported down – for
  ``forget_after_s`` so that it shows up as down rather than silently disappearing.
* :func:`poll_queue` counts a schedd's jobs by status and hands off the held and removed jobs
  (failures seen live) with checkpoint None.
* :class:`ScheddSources` polls everything: one discovery per pool, then per schedd the
  configured kinds (``queue``, ``history``, ``epochs``) in a thread pool of
  ``max_concurrent_schedds``; every HTCondor query runs in its own worker process with a
  timeout (see :mod:`opos_monitor.sources.htc` for why), and a failing source is skipped with
  exponential backoff without holding up the others.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from ..config import HTCondorConfig, PoolConfig
from ..records import STATUS_NAMES, JobRecord, status_name, to_int
from .base import Handoff, PollResult, SourceKey
from .history import EPOCHS, HISTORY, HistoryOptions, poll_history
from .htc import (JOB_ATTRS, Backoff, CollectorTarget, ProcessRunner, QueryError, QueryTimeout, Runner,
                  ScheddTarget, TokenDir, ad_dict, condor_params, job_projection, record_from_wire, record_to_wire,
                  schedd_selected)

__all__ = [
    "ALL_SCHEDDS",
    "DISCOVERY",
    "KINDS",
    "Discovery",
    "KnownSchedd",
    "ScheddSources",
    "poll_queue",
    "status_counts",
]

log = logging.getLogger(__name__)

DISCOVERY = "discovery"  # SourceKey.source of a pool's discovery result
ALL_SCHEDDS = "*"  # SourceKey.schedd of a pool's discovery result
KINDS = ("queue", "history", "epochs")
SCHEDD_AD_ATTRS = ("Name", "MyAddress", "CondorVersion", "MyType")
FAILED_LIVE = "JobStatus == 3 || JobStatus == 5"  # removed or held, still in the queue


# ---------------------------------------------------------------------------
# discovery


def fetch_schedd_ads(client: Any) -> list[dict[str, str]]:
    """Worker: the collector's Schedd ads (name, address, version) as plain dicts."""
    import htcondor2

    ads = client.query(htcondor2.AdType.Schedd, None, list(SCHEDD_AD_ATTRS))
    return [{k: str(ad[k]) for k in SCHEDD_AD_ATTRS if k in ad} for ad in ads]


@dataclass(slots=True)
class KnownSchedd:
    """A schedd discovery knows: where it is, and since when it is no longer advertised."""

    target: ScheddTarget
    missing_since: Optional[float] = None


@dataclass
class Discovery:
    """Schedds of every pool, from the collectors, with failover and a last-known list."""

    pools: Mapping[str, PoolConfig]
    runner: Runner
    forget_after_s: float = 86400.0
    timeout_s: Optional[float] = None
    clock: Callable[[], float] = time.time
    _known: dict[str, dict[str, KnownSchedd]] = field(default_factory=dict)

    def discover(self) -> list[PollResult]:
        """One discovery per pool; ``ok=False`` (with every collector's error) when none answered."""
        return [self.discover_pool(name) for name in self.pools]

    def discover_pool(self, pool: str) -> PollResult:
        t0 = time.monotonic()
        result = PollResult(SourceKey(pool, ALL_SCHEDDS, DISCOVERY))
        errors = []
        for address in self.pools[pool].collectors:
            try:
                ads = self.runner.call(CollectorTarget(pool, address), fetch_schedd_ads, timeout=self.timeout_s)
            except QueryError as exc:
                errors.append(str(exc))
                continue
            if errors:
                log.warning("pool %s: used collector %s after: %s", pool, address, "; ".join(errors))
            self._update(pool, ads)
            break
        else:
            kept = len(self._known.get(pool, {}))
            result.ok = False
            result.error = (f"pool {pool}: no collector answered ({'; '.join(errors)}); "
                            f"keeping the {kept} schedd(s) known from the last discovery")
            log.warning("%s", result.error)
        result.duration_s = time.monotonic() - t0
        return result

    def _update(self, pool: str, ads: Sequence[Mapping[str, str]]) -> None:
        cfg = self.pools[pool]
        now = self.clock()
        known = self._known.setdefault(pool, {})
        seen = set()
        for ad in ads:
            name, address = ad.get("Name"), ad.get("MyAddress")
            if not name or not address or not schedd_selected(name, cfg.schedds_allow, cfg.schedds_deny):
                continue
            seen.add(name)
            known[name] = KnownSchedd(ScheddTarget(pool, name, address, ad.get("CondorVersion", "")))
        for name, k in list(known.items()):
            if name in seen:
                continue
            if k.missing_since is None:
                k.missing_since = now
                log.warning("pool %s: schedd %s is no longer advertised by the collector", pool, name)
            elif now - k.missing_since > self.forget_after_s:
                log.warning("pool %s: forgetting schedd %s (not advertised for %.0f s)", pool, name,
                            now - k.missing_since)
                del known[name]

    def schedds(self) -> list[KnownSchedd]:
        """Every schedd to poll (advertised or recently missing), sorted by pool and name."""
        return [k for pool in sorted(self._known) for _, k in sorted(self._known[pool].items())]


# ---------------------------------------------------------------------------
# queue


def status_counts(codes: Sequence[Any]) -> dict[str, int]:
    """Jobs by status name (every known status present, zeros included)."""
    counts = {name: 0 for name in STATUS_NAMES.values()}
    for code in codes:
        name = status_name(code)
        counts[name] = counts.get(name, 0) + 1
    return counts


def expiring_soon(ads: Sequence[Mapping[str, Any]], before: float) -> int:
    """Idle, running or suspended jobs whose X.509 proxy expires before ``before`` (epoch s)."""
    n = 0
    for ad in ads:
        exp = ad.get("x509UserProxyExpiration")
        if ad.get("JobStatus") in (1, 2, 7) and isinstance(exp, (int, float)) and not isinstance(exp, bool) \
                and exp < before:
            n += 1
    return n


def fetch_queue(client: Any, projection: Sequence[str], pool: str, schedd: str,
                cred_window_s: float = 86400.0, known: Optional[Mapping[str, Optional[int]]] = None) -> tuple:
    """Worker: ``(counts, records, expiring, held, failed)`` — counts by status (every job);
    the held/removed jobs as ``record_to_wire``: all of them, or, given ``known`` (GlobalJobId
    -> EnteredCurrentStatus of the held/removed jobs already handed off), only those not in it
    with that same status time (and none is fetched when there are none); how many live jobs'
    proxies expire within ``cred_window_s``; ``held``: GlobalJobId of every held job;
    ``failed``: GlobalJobId -> EnteredCurrentStatus of every held/removed job now."""
    small = [dict(ad) for ad in client.query("true", list(_SMALL))]
    codes = [ad.get("JobStatus") for ad in small]
    held = [str(ad.get("GlobalJobId")) for ad in small if ad.get("JobStatus") == 5]
    failed = {str(ad.get("GlobalJobId")): to_int(ad.get("EnteredCurrentStatus")) for ad in small
              if ad.get("JobStatus") in (3, 5)}
    if known is None:
        constraint: Optional[str] = FAILED_LIVE
    else:
        new = [-1 if t is None else t for gid, t in failed.items() if gid not in known or known[gid] != t]
        constraint = None if not new else f"({FAILED_LIVE}) && EnteredCurrentStatus >= {min(new)}"
    records = []
    if constraint is not None:
        for ad in client.query(constraint, list(projection)):
            d = ad_dict(ad)
            gid = str(d.get("GlobalJobId"))
            if known is not None and gid in known and known[gid] == to_int(d.get("EnteredCurrentStatus")):
                continue  # handed off before, unchanged
            records.append(record_to_wire(JobRecord.from_ad(d, pool=pool, schedd=schedd, source="queue")))
    return status_counts(codes), records, expiring_soon(small, time.time() + cred_window_s), held, failed


_SMALL = ("JobStatus", "x509UserProxyExpiration", "GlobalJobId", "EnteredCurrentStatus")


def poll_queue(runner: Runner, target: ScheddTarget, handoff: Handoff, *, projection: Sequence[str] = JOB_ATTRS,
               batch_size: int = 1000, timeout_s: Optional[float] = None,
               should_stop: Callable[[], bool] = lambda: False,
               known: Optional[Mapping[str, Optional[int]]] = None) -> PollResult:
    """Poll one schedd's queue: fills ``status_counts``, ``held_ids``, ``failed_now`` and
    ``records`` (held + removed jobs handed off, checkpoint None: all of them, or, given
    ``known`` (the previous complete poll's ``failed_now``), only new or changed ones). A failed
    query raises QueryError. Once ``should_stop()`` is true no further batch is handed off
    (``interrupted``; the next poll sees the queue again)."""
    t0 = time.monotonic()
    key = SourceKey(target.pool, target.name, "queue")
    counts, wire, expiring, held, failed = runner.call(target, fetch_queue, tuple(projection), target.pool,
                                                       target.name, 86400.0, known, timeout=timeout_s)
    records = [record_from_wire(v) for v in wire]
    del wire
    done, interrupted = 0, False
    for i in range(0, len(records), batch_size):
        if should_stop():
            interrupted = True
            break
        handoff.commit(key, records[i:i + batch_size], None)
        done = min(len(records), i + batch_size)
    return PollResult(key, status_counts=counts, records=done, duration_s=time.monotonic() - t0,
                      cred_expiring=expiring, interrupted=interrupted, held_ids=held, failed_now=failed)


# ---------------------------------------------------------------------------
# everything, for every schedd


class _LockedHandoff:
    """Serialises hand-offs from the poller's threads (the pipeline's Handoff need not be thread-safe)."""

    def __init__(self, inner: Handoff) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def checkpoint(self, key: SourceKey) -> Optional[str]:
        with self._lock:
            return self._inner.checkpoint(key)

    def commit(self, key: SourceKey, records: Sequence[JobRecord], checkpoint: Optional[str]) -> None:
        with self._lock:
            self._inner.commit(key, records, checkpoint)


def _connectivity(exc: QueryError) -> bool:
    """Whether a query error says the schedd itself cannot be reached (so its other sources would fail too)."""
    text = str(exc).lower()
    return isinstance(exc, QueryTimeout) or any(s in text for s in ("connect", "secman", "did not respond",
                                                                      "worker died", "no route", "refused"))


class ScheddSources:
    """Discovery plus queue/history/epoch polls of every schedd of every configured pool.

    ``poll()`` returns one :class:`PollResult` per pool discovery (``schedd="*"``,
    ``source="discovery"``) and one per (schedd, kind).  Two polls of one source never overlap:
    a poll due while the previous one still runs returns an empty ok result.  Hand-offs are serialised; the
    ``handoff`` sees records in commit order per source.  ``close()`` stops the threads and
    removes the private token directory.  ``worker_env`` is set in every query worker's
    environment (e.g. ``{"CONDOR_CONFIG": "/dev/null"}``); ``extra_attrs`` extend the job
    projection (e.g. attributes a custom ruleset reads).
    """

    def __init__(self, pools: Mapping[str, PoolConfig], htcondor: HTCondorConfig, handoff: Handoff, *,
                 kinds: Sequence[str] = ("queue", "history"), runner: Optional[Runner] = None,
                 history: Optional[HistoryOptions] = None, backoff: Optional[Backoff] = None,
                 forget_after_s: float = 86400.0, extra_attrs: Sequence[str] = (),
                 worker_env: Optional[Mapping[str, str]] = None, clock: Callable[[], float] = time.time) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown source kind(s) {sorted(unknown)}; known: {KINDS}")
        self.kinds = tuple(k for k in KINDS if k in kinds)
        self.timeout_s = htcondor.query_timeout_s
        self._token_dir = TokenDir(*htcondor.tokens()) if (runner is None and htcondor.tokens()) else None
        self.runner = runner or ProcessRunner(
            condor_params(htcondor, self._token_dir.path if self._token_dir else None), htcondor.query_timeout_s,
            env=worker_env)
        self.projection = job_projection(extra_attrs)
        history = history or HistoryOptions()
        if history.projection == JOB_ATTRS:  # the default: add extra_attrs
            history = replace(history, projection=self.projection)
        self.history = history
        self.backoff = backoff or Backoff()
        self.handoff = _LockedHandoff(handoff)
        self.discovery = Discovery(pools, self.runner, forget_after_s, self.timeout_s, clock)
        self.clock = clock
        self._busy: set[SourceKey] = set()  # sources being polled now (never two polls of one source)
        self._busy_lock = threading.Lock()
        self.stopping = threading.Event()  # set by stop(): polls hand off no new batch
        # queue: held/removed jobs (GlobalJobId -> EnteredCurrentStatus) handed off by the last
        # complete poll of each schedd; the next poll fetches full ads only of the others
        self._queue_known: dict[SourceKey, Mapping[str, Optional[int]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=htcondor.max_concurrent_schedds, thread_name_prefix="opos-schedd")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The bounded thread pool (``max_concurrent_schedds``) polls run in; callers that drive
        ``poll_schedd`` themselves should submit to it to keep the bound."""
        return self._pool

    def poll(self, kinds: Optional[Sequence[str]] = None) -> list[PollResult]:
        """Discover, then poll every known schedd (``kinds`` default: the configured ones)."""
        kinds = self.kinds if kinds is None else tuple(k for k in KINDS if k in kinds)
        results = self.discovery.discover()
        futures = [self._pool.submit(self.poll_schedd, known, kinds) for known in self.discovery.schedds()]
        for f in futures:
            results.extend(f.result())
        return results

    def poll_schedd(self, known: KnownSchedd, kinds: Sequence[str]) -> list[PollResult]:
        """Poll one schedd's sources in order; once one finds the schedd unreachable, the rest
        are reported down with the same error (and back off) instead of each timing out."""
        results = []
        down: Optional[str] = None
        for kind in kinds:
            key = SourceKey(known.target.pool, known.target.name, kind)
            if down is not None:
                self.backoff.failure(key, down)
                results.append(PollResult(key, ok=False, error=down))
                continue
            result, unreachable = self._poll_one(known, kind, key)
            if unreachable:
                down = result.error
            results.append(result)
        return results

    def _poll_one(self, known: KnownSchedd, kind: str, key: SourceKey) -> tuple[PollResult, bool]:
        """One source of one schedd: ``(result, schedd unreachable)``."""
        if self.stopping.is_set():
            return PollResult(key, interrupted=True), False
        wait = self.backoff.wait_s(key)
        if wait > 0:
            return PollResult(key, ok=False, error=(
                f"{known.target.name}: not polled for {wait:.0f} s more (backoff after "
                f"{self.backoff.failures(key)} failure(s)); last error: {self.backoff.last_error(key)}")), False
        with self._busy_lock:
            if key in self._busy:  # e.g. a long catch-up still running when the next poll is due
                log.info("%s: previous poll still running, skipped", key)
                return PollResult(key), False
            self._busy.add(key)
        t0 = time.monotonic()
        try:
            result = self._run(known.target, kind)
        except QueryError as exc:
            error = self._with_note(known, str(exc))
            delay = self.backoff.failure(key, error)
            log.warning("%s down: %s (next try in %.0f s)", key, error, delay)
            return PollResult(key, ok=False, error=error, duration_s=time.monotonic() - t0), _connectivity(exc)
        except Exception as exc:  # noqa: BLE001 - a hand-off failure: report it, the schedd is fine
            log.exception("%s: hand-off failed", key)
            return PollResult(key, ok=False, error=f"{known.target.name}: hand-off failed: {exc}",
                              duration_s=time.monotonic() - t0), False
        finally:
            with self._busy_lock:
                self._busy.discard(key)
        self.backoff.success(key)
        return result, False

    def _run(self, target: ScheddTarget, kind: str) -> PollResult:
        if kind == "queue":
            key = SourceKey(target.pool, target.name, "queue")
            known = self._queue_known.pop(key, None)  # dropped unless this poll completes
            result = poll_queue(self.runner, target, self.handoff, projection=self.projection,
                                batch_size=self.history.batch_size, timeout_s=self.timeout_s,
                                should_stop=self.stopping.is_set, known=known)
            if not result.interrupted and result.failed_now is not None:
                self._queue_known[key] = result.failed_now
            return result
        stream = HISTORY if kind == "history" else EPOCHS
        return poll_history(self.runner, target, self.handoff, stream, self.history, self.clock,
                            should_stop=self.stopping.is_set)

    def stop(self) -> None:
        """Ask running polls to end after the batch they are handing off (graceful shutdown);
        polls started afterwards do nothing. Queries in flight are abandoned by ``close()``."""
        self.stopping.set()

    @staticmethod
    def _with_note(known: KnownSchedd, error: str) -> str:
        if known.missing_since is None:
            return error
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(known.missing_since))
        return f"{error} (not advertised by the collector since {since})"

    def close(self) -> None:
        """Stop: polls hand off nothing more, queries still running are abandoned (their
        workers killed, so no thread stays blocked on one), then the threads end."""
        self.stopping.set()
        close = getattr(self.runner, "close", None)
        if close:
            close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._token_dir is not None:
            self._token_dir.close()

    def __enter__(self) -> "ScheddSources":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
