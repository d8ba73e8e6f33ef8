"""Everything one process needs, built from a Config: store, enrich pipeline, sources, metrics.

``once`` and the daemon (``run``) both use a :class:`Runtime`; the daemon only adds scheduling,
the HTTP endpoints, signals and systemd notification around it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, OrderedDict
from typing import Any, Mapping, Sequence

from .config import Config
from .enrich.blackhole import BlackHoleDetector
from .enrich.derive import Enricher
from .logsetup import get_logger
from .pipeline import Pipeline
from .records import JobRecord
from .sinks.metrics import MetricsState
from .sinks.store import Store
from .sources.base import PollResult, SourceKey
from .sources.schedd import KnownSchedd, ScheddSources

log = get_logger("opos_monitor.runtime")

#: Outcomes that ended up to this long before start-up still count (a poll in flight at a restart).
_COUNT_GRACE_S = 120.0

#: Sites of records stored within this window are declared in the metrics at start-up.
_SITES_LOOKBACK_S = 30 * 86400.0

#: How many counted job ids to remember (see Runtime._counted).
_COUNTED_MAX = 200_000

#: Attributes that give a finished job's runtime and execute host (for black-hole detection).
_HOST_ATTRS = ("LastRemoteHost", "RemoteHost", "StartdName")


def shard_of(pool: str, schedd: str, shards: int) -> int:
    """The replica (0..shards-1) that polls this schedd: a stable hash, the same in every process."""
    digest = hashlib.sha1(f"{pool}/{schedd}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


class Runtime:
    """Store + pipeline + schedd/event-log/ad-file sources + metrics state for one config."""

    def __init__(self, cfg: Config, *, metrics: MetricsState | None = None, schedd_kinds: Sequence[str] | None = None,
                 runner: Any = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or MetricsState()
        self.store = Store.open(cfg.store_path, max_bytes=cfg.store.max_bytes,
                                outbox_enabled=cfg.elasticsearch.enabled)
        c = cfg.classifier
        self.blackholes = BlackHoleDetector(threshold=c.blackhole_threshold, window_s=c.blackhole_window_s,
                                            max_runtime_s=c.blackhole_max_runtime_s)
        self.enricher = Enricher.create(c.rulesets, cfg.sites.corrections)
        self.pipeline = Pipeline(self.store, self.enricher, observers=[self._observe])
        kinds = tuple(schedd_kinds or cfg.sources.schedd_sources)
        try:
            self.schedds = ScheddSources(cfg.pools, cfg.htcondor, self.pipeline, kinds=kinds, runner=runner,
                                         extra_attrs=("JobCurrentStartDate", "LastJobStatus"))
            self.eventlogs = self._eventlog_source()
            self.sink = self._es_sink()
        except BaseException:  # e.g. a missing token file: leave the store closed cleanly
            self.store.close()
            raise
        # (pool, schedd) -> GlobalJobId -> failure category of each held job handed off; queue
        # polls hand off only newly held jobs, so the held-by-category gauge is counted here
        self._held_cats: dict[tuple[str, str], dict[str, str]] = {}
        # GlobalJobIds whose failure was already counted (held seen in the queue, then removed
        # in history: one outcome). Bounded; after a restart counters start again anyway.
        self._counted: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # request_stop(): no new batch, shipping pass or poll
        self.last_progress = time.monotonic()
        # Outcomes that ended before this process started (a first history read, the held jobs
        # already in the queue after a restart) are stored and shipped but not counted: counters
        # start at 0 with the process, and counting a backlog would look like a burst of new
        # failures to rate()/increase() and page for old news.
        self.count_after = time.time() - _COUNT_GRACE_S
        if cfg.elasticsearch.enabled:
            self.metrics.declare_sink(cfg.elasticsearch.kind)
        self.metrics.set_sites(self.known_sites())
        self.refresh_store_metrics()

    # -- sources ------------------------------------------------------------------------------

    def _eventlog_source(self) -> Any:
        if not self.cfg.sources.eventlogs:
            return None
        from .sources.eventlog import EventLogSource

        return EventLogSource(self.pipeline, self.cfg.sources.eventlogs)

    def discover(self) -> list[PollResult]:
        results = self.schedds.discovery.discover()
        for r in results:
            if not r.ok and r.error and "failed communication" in r.error.lower():
                r.error += self._auth_hint()
                log.error("discovery failed", pool=r.key.pool, error=r.error)
            self.metrics.observe_poll(r)
        by_pool: dict[str, list[str]] = {}
        for known in self.known_schedds():
            by_pool.setdefault(known.target.pool, []).append(known.target.name)
        for pool, names in by_pool.items():
            self.metrics.set_schedds(pool, names, self.schedds.kinds)
        return results

    def _auth_hint(self) -> str:
        h = self.cfg.htcondor
        tokens = h.tokens()
        token = (f"the read-only token(s) {', '.join(map(str, tokens))}" if tokens
                 else "no token file (htcondor.token_file unset)")
        return (f" — HTCondor gives no reason for this; when the collector is up it usually means authentication "
                f"was refused: methods {','.join(h.auth_methods)}, {token}. Check the token is valid for this pool "
                f"(condor_token_list on the pool; see deploy/condor/README.md).")

    def known_schedds(self) -> list[KnownSchedd]:
        """The schedds this replica polls (its shard of everything discovered)."""
        i, n = self.cfg.shard_index
        return [k for k in self.schedds.discovery.schedds() if shard_of(k.target.pool, k.target.name, n) == i]

    def poll_schedd(self, known: KnownSchedd, kinds: Sequence[str]) -> list[PollResult]:
        """Poll some sources of one schedd and account for the results."""
        results = self.schedds.poll_schedd(known, kinds)
        for r in results:
            self._account(r)
        return results

    def poll_all(self, kinds: Sequence[str] | None = None) -> list[PollResult]:
        """Discovery, then every schedd's sources (bounded concurrency), then event logs."""
        results = self.discover()
        kinds = tuple(kinds or self.schedds.kinds)
        futures = [self.schedds.executor.submit(self.poll_schedd, k, kinds) for k in self.known_schedds()]
        for f in futures:
            results.extend(f.result())
        results.extend(self.poll_eventlogs())
        return results

    def poll_eventlogs(self) -> list[PollResult]:
        if self.eventlogs is None or self.stopping.is_set():
            return []
        results = self.eventlogs.poll()
        for r in results:
            self._account(r)
        return results

    def replay_adfiles(self) -> list[PollResult]:
        if not self.cfg.sources.adfiles or self.stopping.is_set():
            return []
        from .sources.adfile import replay

        results = replay(self.pipeline, self.cfg.sources.adfiles)
        for r in results:
            self._account(r)
        return results

    # -- shipping -----------------------------------------------------------------------------

    def _es_sink(self) -> Any:
        if not self.cfg.elasticsearch.enabled:
            return None
        from .sinks.elastic import ElasticSink

        return ElasticSink.from_config(self.cfg)

    def _observe_pass(self, stats: Any) -> None:
        kind = self.cfg.elasticsearch.kind
        self.metrics.observe_es(stats.acked, stats.dead, stats.retried,
                                stats.seconds / stats.batches if stats.batches else None,
                                sink=kind, ok=not stats.request_failed)

    def ship_pending(self, max_seconds: float = 300.0) -> None:
        """Ship until nothing is due, a pass makes no progress, or ``max_seconds`` pass
        (the sink's own loop; each pass feeds the metrics)."""
        if self.sink is None:
            return
        try:
            self.sink.ship_pending(self.store, max_seconds=max_seconds, on_pass=self._observe_pass,
                                   should_stop=self.stopping.is_set)
        except Exception as exc:  # noqa: BLE001 - wrong server kind etc.: nothing was acked
            self.metrics.observe_es(0, 0, 0, None, sink=self.cfg.elasticsearch.kind, ok=False)
            log.warning("shipping failed; will retry", sink=self.cfg.elasticsearch.kind, error=str(exc))
        self.refresh_store_metrics()

    # -- accounting -----------------------------------------------------------------------------

    def _account(self, r: PollResult) -> None:
        self.metrics.observe_poll(r)
        if r.records or r.interrupted:
            log.info("poll finished", source=str(r.key), records=r.records, seconds=round(r.duration_s, 3),
                     interrupted=r.interrupted)
        if r.ok:
            self.last_progress = time.monotonic()
        if r.key.source == "queue" and r.ok and r.held_ids is not None:
            self.metrics.set_queue(r.key.pool, r.key.schedd, r.status_counts,
                                   self._held_by_category((r.key.pool, r.key.schedd), r.held_ids), r.cred_expiring)
        if r.gap:
            log.warning("history gap", source=str(r.key), gap=r.gap)
        self.refresh_store_metrics()

    def _observe(self, key: SourceKey, records: Sequence[JobRecord], derived: Sequence[Mapping[str, Any]]) -> None:
        """After a durable commit: queue tallies, finished-job counters, black-hole feed."""
        if key.source == "queue":
            self._tally_queue(key, records, derived)
        elif key.source not in ("history", "eventlog", "adfile"):
            return
        flagged_before = len(self.blackholes.flagged_hosts())
        for rec, d in zip(records, derived):
            if rec.status not in ("completed", "removed", "held") or not self._first_count(rec.global_job_id):
                continue
            end = rec.completion_date or rec.entered_current_status
            if end is not None and end.timestamp() >= self.count_after:
                self.metrics.observe_finished(rec.pool, rec.schedd, d.get("site"), d.get("category"))
            if end is not None:
                host = next((rec.attrs.get(a) for a in _HOST_ATTRS if rec.attrs.get(a)), None)
                self.blackholes.observe(end.timestamp(), host, d.get("site"), d.get("category") != "none",
                                        rec.remote_wall_clock_time_s)
        flags = self.blackholes.flagged_hosts() + self.blackholes.flagged_sites()
        if flags or flagged_before:
            self.metrics.set_blackholes(flags)

    def _first_count(self, gid: str) -> bool:
        """True the first time a job's outcome is seen (a held job later removed counts once)."""
        with self._lock:
            if gid in self._counted:
                self._counted.move_to_end(gid)
                return False
            self._counted[gid] = None
            if len(self._counted) > _COUNTED_MAX:
                self._counted.popitem(last=False)
            return True

    def _tally_queue(self, key: SourceKey, records: Sequence[JobRecord], derived: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            cats = self._held_cats.setdefault((key.pool, key.schedd), {})
            for rec, d in zip(records, derived):
                if rec.status == "held":
                    cats[rec.global_job_id] = d.get("category", "unknown")
                else:
                    cats.pop(rec.global_job_id, None)

    def _held_by_category(self, key2: tuple[str, str], held_ids: Sequence[str]) -> dict[str, int]:
        """Held jobs in the queue now, by the category of their hold (jobs held but never handed
        off, e.g. when their commit failed, count as ``unknown`` until the next full poll)."""
        with self._lock:
            cats = self._held_cats.setdefault(key2, {})
            now = set(held_ids)
            for gid in [g for g in cats if g not in now]:  # released, removed or gone
                del cats[gid]
            return dict(Counter(cats.get(g, "unknown") for g in held_ids))

    def known_sites(self) -> list[str]:
        """Sites to declare in the metrics at start-up (failure counters at 0 from the first
        scrape, so the first failure at a site shows in ``increase()``): the targets of the
        site corrections and the sites of the last 30 days' stored records."""
        sites = dict.fromkeys(self.cfg.sites.corrections.values())
        try:
            sites.update(dict.fromkeys(self.store.sites(since=time.time() - _SITES_LOOKBACK_S,
                                                        limit=self.metrics.max_sites // 2)))
        except Exception as exc:  # noqa: BLE001 - a convenience: never stop start-up over it
            log.warning("could not list the stored sites", error=str(exc))
        return [s for s in sites if s]

    def refresh_store_metrics(self) -> None:
        s = self.store
        self.metrics.set_store(s.pending_count(), s.dead_count(), s.size_bytes(), s.full, s.max_bytes,
                               kept={"stale": s.stale_total, "thinner": s.thinner_total})

    # -- life -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful shutdown, step 1: running polls and shipping end after the batch they are
        committing (its checkpoint is stored with it); nothing new starts."""
        self.stopping.set()
        self.schedds.stop()

    def close(self) -> None:
        """Step 2: abandon queries still in flight (their records are fetched again after the
        checkpoint next time), close the sink and the store."""
        self.stopping.set()
        self.schedds.close()
        if self.sink is not None:
            self.sink.close()
        self.store.close()
