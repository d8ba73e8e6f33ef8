"""Prometheus metrics: held state, updated by the pipeline, read by a custom collector.

The pipeline pushes what it learns into a :class:`MetricsState` (thread-safe, one small lock,
every update O(labels touched)); a :class:`StateCollector` turns a snapshot of that state into
metric families on each scrape, registered in an explicit :class:`OposRegistry` (a
``CollectorRegistry``) whose :meth:`OposRegistry.render_text` writes the same text as
``generate_latest`` straight from the snapshot, about 20x faster (what /metrics serves).
A scrape never talks to HTCondor, the store or Elasticsearch: its cost depends only on the
number of label combinations, never on the number of jobs.

Labels are bounded (``docs/metrics.md`` lists every series):

* ``pool``, ``schedd`` come from the configuration / collector discovery; ``source`` is a
  source kind (``queue``, ``history``, ``epochs``, ``eventlog``, ``adfile``);
* ``status`` is one of the JobStatus names (anything else is counted as ``unknown``);
* ``category`` is one of the classifier's categories (anything else is ``unknown``);
* ``site`` is capped: at most ``max_sites`` distinct names (default 500); the sites seen after
  the cap is reached are folded into ``other`` (and counted in
  ``opos_site_label_overflows_total``); a missing site is ``unknown``;
* ``sink`` names a shipping target (``elasticsearch``, ``opensearch``).

Never a job id, owner, host name or reason text. Label values are pre-initialised so alerts on
absence and ``rate()`` work: every status and held category for each known schedd, and every
failure category for each (pool, schedd, site) as soon as the site is declared
(:meth:`MetricsState.set_sites`) or first seen.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..enrich.blackhole import Flag
from ..enrich.classify import CATEGORIES
from ..records import STATUS_NAMES
from ..sources.base import PollResult

__all__ = [
    "DEFAULT_MAX_SITES",
    "ES_LATENCY_BUCKETS",
    "FAILURE_CATEGORIES",
    "JOB_STATUSES",
    "MetricsState",
    "OposRegistry",
    "Simple",
    "StateCollector",
    "TextRenderer",
    "make_registry",
]

#: Job statuses exported by ``opos_jobs`` (records.STATUS_NAMES plus ``unknown``).
JOB_STATUSES: tuple[str, ...] = tuple(STATUS_NAMES.values()) + ("unknown",)
_STATUS_SET = frozenset(JOB_STATUSES)
#: Categories of ``opos_job_failures_total`` (every category but ``none``).
FAILURE_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c != "none")
_CATEGORY_SET = frozenset(CATEGORIES)
#: Source kinds read incrementally (checkpointed): their gaps counters are pre-initialised.
INCREMENTAL_SOURCES = frozenset({"history", "epochs", "eventlog"})
DEFAULT_MAX_SITES = 500
OTHER_SITE = "other"
UNKNOWN_SITE = "unknown"
#: Bucket bounds (seconds) of ``opos_sink_request_duration_seconds``: bulk requests.
ES_LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Key2 = tuple[str, str]  # (pool, schedd)
Key3 = tuple[str, str, str]  # (pool, schedd, source) or (pool, schedd, site)
Key4 = tuple[str, str, str, str]  # (pool, schedd, site, category)


# --------------------------------------------------------------------------- pure helpers
def status_label(status: str | None) -> str:
    """A job status as the ``status`` label: a known JobStatus name, else ``unknown``."""
    s = (status or "").strip().lower()
    return s if s in _STATUS_SET else "unknown"


def category_label(category: str | None) -> str:
    """A classifier category as the ``category`` label: a known category, else ``unknown``."""
    c = (category or "").strip().lower()
    return c if c in _CATEGORY_SET else "unknown"


def fold_counts(counts: Mapping[str, int], label: Callable[[str | None], str], keys: Iterable[str]) -> dict[str, int]:
    """Counts keyed by bounded label values: every key in ``keys`` present (0 when absent),
    unexpected keys folded by ``label`` (e.g. into ``unknown``) and summed."""
    out = dict.fromkeys(keys, 0)
    for k, v in counts.items():
        lk = label(k)
        out[lk] = out.get(lk, 0) + int(v)
    return out


def blackhole_counts(flags: Iterable[Flag], site_label: Callable[[str | None], str]) -> tuple[dict[str, int], set[str]]:
    """From black-hole flags: flagged hosts per site, and the set of sites flagged as a whole."""
    hosts: dict[str, int] = {}
    sites: set[str] = set()
    for f in flags:
        site = site_label(f.site)
        if f.kind == "host":
            hosts[site] = hosts.get(site, 0) + 1
        elif f.kind == "site":
            sites.add(site)
    return hosts, sites


@dataclass(slots=True)
class _Summary:
    count: int = 0
    total: float = 0.0


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last = +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, v: float) -> None:
        i = 0
        for i, b in enumerate(self.bounds):  # noqa: B007 - a dozen bounds: a loop beats bisect's setup
            if v <= b:
                break
        else:
            i = len(self.bounds)
        self.counts[i] += 1
        self.total += v

    def buckets(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for b, c in zip(self.bounds + (float("inf"),), self.counts):
            acc += c
            out.append(("+Inf" if b == float("inf") else repr(float(b)), acc))
        return out


@dataclass(slots=True)
class _Sink:
    sent: int = 0
    rejected: int = 0
    retries: int = 0
    requests: int = 0
    errors: int = 0
    last_success: float | None = None
    latency: _Histogram = field(default_factory=lambda: _Histogram(ES_LATENCY_BUCKETS))


# --------------------------------------------------------------------------- state
class MetricsState:
    """The latest state the daemon knows, as the metrics need it. Thread-safe.

    ``clock`` (default ``time.time``) stamps successful polls and ES requests; tests pass a fake.
    """

    def __init__(
        self,
        *,
        max_sites: int = DEFAULT_MAX_SITES,
        credential_window_s: float = 86400.0,
        version: str = __version__,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_sites < 1:
            raise ValueError("max_sites must be >= 1")
        self.max_sites = int(max_sites)
        self.credential_window_s = float(credential_window_s)
        self.version = version
        self._clock = clock
        self._lock = threading.Lock()
        self._schedds: dict[Key2, None] = {}  # insertion-ordered set
        self._sites: dict[str, None] = {}  # distinct site label values (excluding other/unknown)
        self._declared_sites: dict[str, None] = {}  # pre-initialised across every schedd
        self._site_overflows = 0
        # queue
        self._jobs: dict[Key2, dict[str, int]] = {}
        self._held: dict[Key2, dict[str, int]] = {}
        self._cred: dict[Key2, int] = {}
        # finished jobs
        self._outcomes: dict[Key3, int] = {}
        self._failures: dict[Key4, int] = {}
        # sources
        self._up: dict[Key3, int] = {}
        self._last_success: dict[Key3, float] = {}
        self._poll: dict[Key3, _Summary] = {}
        self._last_duration: dict[Key3, float] = {}
        self._errors: dict[Key3, int] = {}
        self._records: dict[Key3, int] = {}
        self._lag: dict[Key3, float] = {}
        self._gaps: dict[Key3, int] = {}
        self._missed: dict[Key3, int] = {}
        # black holes: per site label, hosts flagged / site flagged (sites seen stay at 0)
        self._bh_hosts: dict[str, int] = {}
        self._bh_sites: dict[str, int] = {}
        # store
        self._store: tuple[int, int, int, int, int | None] | None = None  # pending, dead, bytes, full, max
        self._store_kept: dict[str, int] = {}  # verdict -> records the store kept its version of
        # sinks
        self._sinks: dict[str, _Sink] = {}

    # ------------------------------------------------------------ label bounding (lock held)
    def _site(self, site: str | None) -> str:
        s = (site or "").strip()
        if not s or s.lower() == UNKNOWN_SITE:
            return UNKNOWN_SITE
        if s in self._sites or s == OTHER_SITE:
            return s
        if len(self._sites) >= self.max_sites:
            self._site_overflows += 1
            return OTHER_SITE
        self._sites[s] = None
        return s

    def site_label(self, site: str | None) -> str:
        """The ``site`` label value this site gets (registers it when under the cap)."""
        with self._lock:
            return self._site(site)

    def _init_schedd(self, pool: str, schedd: str) -> None:
        key = (pool, schedd)
        if key in self._schedds:
            return
        self._schedds[key] = None
        self._jobs.setdefault(key, dict.fromkeys(JOB_STATUSES, 0))
        self._held.setdefault(key, dict.fromkeys(CATEGORIES, 0))
        self._cred.setdefault(key, 0)
        for site in self._declared_sites:
            self._init_site_counters(pool, schedd, site)

    def _init_site_counters(self, pool: str, schedd: str, site: str) -> None:
        k3 = (pool, schedd, site)
        if k3 in self._outcomes:
            return
        self._outcomes[k3] = 0
        for c in FAILURE_CATEGORIES:
            self._failures[(pool, schedd, site, c)] = 0

    def _init_source(self, key: Key3) -> None:
        if key in self._up:
            return
        self._init_schedd(key[0], key[1])
        self._up[key] = 0
        self._poll[key] = _Summary()
        self._errors[key] = 0
        self._records[key] = 0
        self._missed[key] = 0
        if key[2] in INCREMENTAL_SOURCES:
            self._gaps[key] = 0

    # ------------------------------------------------------------ updates
    def set_schedds(self, pool: str, schedds: Iterable[str], sources: Iterable[str] = ("queue", "history")) -> None:
        """Declare the schedds of ``pool`` (known from config or discovery) and the sources each
        is polled with: pre-initialises their series (``opos_source_up`` at 0 until the first
        poll succeeds, job and held counts at 0, failure counters for the declared sites).

        Additive: a schedd missing from a later call keeps its series (so a schedd that drops out
        of the collector still shows ``opos_source_up 0`` and alerts); use :meth:`forget_schedd`.
        """
        srcs = tuple(sources)
        with self._lock:
            for s in schedds:
                self._init_schedd(pool, s)
                for src in srcs:
                    self._init_source((pool, s, src))

    def forget_schedd(self, pool: str, schedd: str) -> None:
        """Drop every series of one schedd (it was removed from the configuration)."""
        with self._lock:
            self._schedds.pop((pool, schedd), None)
            for table in (self._jobs, self._held, self._cred):
                table.pop((pool, schedd), None)
            for table in (
                self._outcomes, self._up, self._last_success, self._poll, self._last_duration,
                self._errors, self._records, self._lag, self._gaps, self._missed, self._failures,
            ):
                for k in [k for k in table if k[0] == pool and k[1] == schedd]:
                    del table[k]

    def set_sites(self, sites: Iterable[str]) -> None:
        """Declare sites (e.g. from the pool's startds or the site table) so their failure
        counters exist at 0 for every known schedd before the first job finishes there.
        Declared sites count toward ``max_sites``."""
        with self._lock:
            for s in sites:
                label = self._site(s)
                if label in self._declared_sites:
                    continue
                self._declared_sites[label] = None
                for pool, schedd in self._schedds:
                    self._init_site_counters(pool, schedd, label)

    def observe_poll(self, result: PollResult, *, now: float | None = None) -> None:
        """One poll of one source finished (ok or not): up, last success, duration, errors,
        records, lag and gaps. ``lag_s`` None keeps the previous lag, except after a successful
        poll that handed off nothing (caught up): then the lag is 0. Queue polls'
        ``status_counts`` (when given) update ``opos_jobs`` too."""
        k = result.key
        key = (k.pool, k.schedd, k.source)
        t = self._clock() if now is None else float(now)
        with self._lock:
            self._init_source(key)
            self._up[key] = 1 if result.ok else 0
            summ = self._poll[key]
            summ.count += 1
            summ.total += max(0.0, float(result.duration_s))
            self._last_duration[key] = max(0.0, float(result.duration_s))
            if result.ok:
                self._last_success[key] = t
            else:
                self._errors[key] += 1
            self._records[key] += max(0, int(result.records))
            if result.gap:
                self._gaps[key] = self._gaps.get(key, 0) + 1
            if result.lag_s is not None:
                self._lag[key] = max(0.0, float(result.lag_s))
            elif result.ok and not result.records and not result.interrupted and key in self._lag:
                # a successful poll with nothing new: the reader is caught up (a quiet schedd
                # must not keep the lag of its last backlog batch for ever)
                self._lag[key] = 0.0
            if result.ok and result.status_counts:
                self._jobs[(k.pool, k.schedd)] = fold_counts(result.status_counts, status_label, JOB_STATUSES)

    def set_queue(
        self,
        pool: str,
        schedd: str,
        status_counts: Mapping[str, int],
        held_by_category: Mapping[str, int] | None = None,
        cred_expiring: int = 0,
    ) -> None:
        """The schedd's queue as of its latest poll: jobs by status, held jobs by failure
        category, and jobs whose credential expires within ``credential_window_s``."""
        jobs = fold_counts(status_counts, status_label, JOB_STATUSES)
        held = fold_counts(held_by_category or {}, category_label, CATEGORIES)
        with self._lock:
            self._init_schedd(pool, schedd)
            key = (pool, schedd)
            self._jobs[key] = jobs
            self._held[key] = held
            self._cred[key] = max(0, int(cred_expiring))

    def observe_finished(self, pool: str, schedd: str, site: str | None, category: str | None, n: int = 1) -> None:
        """``n`` job outcomes (completed, removed or held) at ``site`` classified as ``category``:
        always counted in ``opos_job_outcomes_total``, and in ``opos_job_failures_total`` unless
        the category is ``none``."""
        cat = category_label(category)
        with self._lock:
            self._init_schedd(pool, schedd)
            s = self._site(site)
            self._init_site_counters(pool, schedd, s)
            self._outcomes[(pool, schedd, s)] += n
            if cat != "none":
                self._failures[(pool, schedd, s, cat)] += n

    def set_blackholes(self, flags: Iterable[Flag]) -> None:
        """The detector's current flags (``flagged_hosts() + flagged_sites()``): hosts flagged
        per site, and sites flagged as a whole. Sites seen before stay exported at 0."""
        with self._lock:
            hosts, sites = blackhole_counts(flags, self._site)
            known = set(self._declared_sites) | set(self._bh_hosts) | set(hosts) | sites
            self._bh_hosts = {s: hosts.get(s, 0) for s in sorted(known)}
            self._bh_sites = {s: int(s in sites) for s in sorted(known)}

    def set_store(self, pending: int, dead: int, size_bytes: int, full: bool, max_bytes: int | None = None,
                  kept: Mapping[str, int] | None = None) -> None:
        """The durable store: records waiting to be shipped, dead letters, size, full flag, and
        ``kept``: records not written because the stored version wins, by verdict (``stale``: a
        non-final version of a finished job; ``thinner``: the event log's record of a job the
        schedd reported final), counted since start-up."""
        with self._lock:
            self._store = (int(pending), int(dead), int(size_bytes), 1 if full else 0, max_bytes)
            if kept is not None:
                self._store_kept = {v: int(kept.get(v, 0)) for v in STORE_KEPT_VERDICTS}

    def observe_es(
        self,
        sent: int,
        rejected: int,
        retries: int,
        latency_s: float | None,
        *,
        sink: str = "elasticsearch",
        ok: bool = True,
        now: float | None = None,
    ) -> None:
        """One bulk request to a sink: documents accepted, documents rejected, retries it took,
        its latency; ``ok`` False when the request itself failed (connection, 5xx, 429)."""
        t = self._clock() if now is None else float(now)
        with self._lock:
            s = self._sinks.get(sink)
            if s is None:
                s = self._sinks[sink] = _Sink()
            s.sent += max(0, int(sent))
            s.rejected += max(0, int(rejected))
            s.retries += max(0, int(retries))
            s.requests += 1
            if latency_s is not None:
                s.latency.observe(max(0.0, float(latency_s)))
            if ok:
                s.last_success = t
            else:
                s.errors += 1

    def declare_sink(self, sink: str) -> None:
        """Pre-initialise a sink's counters at 0 (call at start-up when shipping is enabled)."""
        with self._lock:
            self._sinks.setdefault(sink, _Sink())

    def observe_missed_run(self, pool: str, schedd: str, source: str) -> None:
        """The scheduler skipped a poll of this source (the previous one was still running)."""
        key = (pool, schedd, source)
        with self._lock:
            self._init_source(key)
            self._missed[key] += 1

    # ------------------------------------------------------------ read
    def snapshot(self) -> "_Snapshot":
        """A consistent copy of the state (taken under the lock, in O(series))."""
        with self._lock:
            return _Snapshot(
                version=self.version,
                credential_window_s=self.credential_window_s,
                max_sites=self.max_sites,
                site_overflows=self._site_overflows,
                sites_in_use=len(self._sites),
                jobs={k: dict(v) for k, v in self._jobs.items()},
                held={k: dict(v) for k, v in self._held.items()},
                cred=dict(self._cred),
                outcomes=dict(self._outcomes),
                failures=dict(self._failures),
                up=dict(self._up),
                last_success=dict(self._last_success),
                poll={k: (v.count, v.total) for k, v in self._poll.items()},
                last_duration=dict(self._last_duration),
                errors=dict(self._errors),
                records=dict(self._records),
                lag=dict(self._lag),
                gaps=dict(self._gaps),
                missed=dict(self._missed),
                bh_hosts=dict(self._bh_hosts),
                bh_sites=dict(self._bh_sites),
                store=self._store,
                store_kept=dict(self._store_kept),
                sinks={
                    n: (s.sent, s.rejected, s.retries, s.requests, s.errors, s.last_success,
                        s.latency.buckets(), s.latency.total)
                    for n, s in self._sinks.items()
                },
            )


@dataclass(frozen=True, slots=True)
class _Snapshot:
    version: str
    credential_window_s: float
    max_sites: int
    site_overflows: int
    sites_in_use: int
    jobs: dict[Key2, dict[str, int]]
    held: dict[Key2, dict[str, int]]
    cred: dict[Key2, int]
    outcomes: dict[Key3, int]
    failures: dict[Key4, int]
    up: dict[Key3, int]
    last_success: dict[Key3, float]
    poll: dict[Key3, tuple[int, float]]
    last_duration: dict[Key3, float]
    errors: dict[Key3, int]
    records: dict[Key3, int]
    lag: dict[Key3, float]
    gaps: dict[Key3, int]
    missed: dict[Key3, int]
    bh_hosts: dict[str, int]
    bh_sites: dict[str, int]
    store: tuple[int, int, int, int, int | None] | None
    store_kept: dict[str, int]
    sinks: dict[str, tuple]


# --------------------------------------------------------------------------- families
# Gauges and counters (all but two families) are described once as ``Simple`` data and turned
# either into prometheus_client metric families (the Collector, for any registry/encoder) or
# straight into text by ``TextRenderer`` (the fast /metrics path, byte-identical to
# ``generate_latest``). The summary and the histogram are small; they stay prometheus_client
# objects on both paths.
@dataclass(frozen=True, slots=True)
class Simple:
    """A gauge or counter family: name (counters without ``_total``), help, type, label names,
    and label values -> value, in exposition order."""

    name: str
    doc: str
    type: str  # "gauge" or "counter"
    labels: tuple[str, ...]
    data: Mapping[tuple[str, ...], float]


_SRC = ("pool", "schedd", "source")
STORE_KEPT_VERDICTS = ("stale", "thinner")


def to_metric(f: Simple) -> Metric:
    cls = CounterMetricFamily if f.type == "counter" else GaugeMetricFamily
    m = cls(f.name, f.doc, labels=list(f.labels))
    for key, v in f.data.items():
        m.add_metric(list(key), v)
    return m


def _nested(data: Mapping[Key2, Mapping[str, int]]) -> dict[tuple[str, ...], int]:
    return {(pool, schedd, k): v for (pool, schedd), counts in data.items() for k, v in counts.items()}


def queue_families(s: _Snapshot) -> Iterator[Simple]:
    yield Simple("opos_jobs", "Jobs in the schedd's queue by status, as of the latest queue poll.", "gauge",
                 ("pool", "schedd", "status"), _nested(s.jobs))
    yield Simple("opos_jobs_held", "Held jobs in the schedd's queue by failure category of the hold.", "gauge",
                 ("pool", "schedd", "category"), _nested(s.held))
    yield Simple("opos_jobs_credential_expiring",
                 "Queued jobs whose X.509 proxy expires within opos_credential_expiring_window_seconds (or has expired).",
                 "gauge", ("pool", "schedd"), s.cred)
    yield Simple("opos_credential_expiring_window_seconds",
                 "How close to expiry a job's credential must be to count in opos_jobs_credential_expiring.", "gauge",
                 (), {(): s.credential_window_s})


def outcome_families(s: _Snapshot) -> Iterator[Simple]:
    yield Simple("opos_job_outcomes",
                 "Job outcomes observed (completed, removed or held), failed or not; the denominator of failure ratios.",
                 "counter", ("pool", "schedd", "site"), s.outcomes)
    yield Simple("opos_job_failures", "Failed job outcomes by site and failure category (every category but none).",
                 "counter", ("pool", "schedd", "site", "category"), s.failures)
    yield Simple("opos_site_label_overflows",
                 "Observations whose site was folded into site=\"other\" because the distinct-site cap was reached.",
                 "counter", (), {(): s.site_overflows})
    yield Simple("opos_site_labels", "Distinct site label values in use (excluding other and unknown).", "gauge",
                 (), {(): s.sites_in_use})
    yield Simple("opos_site_labels_max", "Cap on distinct site label values; beyond it sites become \"other\".",
                 "gauge", (), {(): s.max_sites})
    yield Simple("opos_blackhole_hosts",
                 "Execute hosts currently flagged as black holes (many quick failures in the window), per site.",
                 "gauge", ("site",), {(k,): v for k, v in s.bh_hosts.items()})
    yield Simple("opos_blackhole_site", "1 when the whole site is flagged as a black hole, else 0.", "gauge",
                 ("site",), {(k,): v for k, v in s.bh_sites.items()})


def source_families(s: _Snapshot) -> Iterator["Simple | Metric"]:
    yield Simple("opos_source_up", "1 when the latest poll of this source succeeded, 0 when it failed or none has yet.",
                 "gauge", _SRC, s.up)
    yield Simple("opos_source_last_success_timestamp_seconds", "Unix time of the latest successful poll of this source.",
                 "gauge", _SRC, s.last_success)
    summ = SummaryMetricFamily("opos_source_poll_duration_seconds", "Time taken by polls of this source.",
                               labels=list(_SRC))
    for k, (count, total) in s.poll.items():
        summ.add_metric(list(k), count_value=count, sum_value=total)
    yield summ
    yield Simple("opos_source_last_poll_duration_seconds", "Duration of the latest poll of this source.", "gauge",
                 _SRC, s.last_duration)
    yield Simple("opos_source_errors", "Polls of this source that failed.", "counter", _SRC, s.errors)
    yield Simple("opos_source_records", "Job records this source handed to the pipeline.", "counter", _SRC, s.records)
    yield Simple("opos_source_lag_seconds",
                 "How far reading of this incremental source (history, epochs, event log) is behind (0 when caught up).",
                 "gauge", _SRC, s.lag)
    yield Simple("opos_source_gaps",
                 "Gaps detected in this incremental source: records rotated away or truncated before they were read.",
                 "counter", _SRC, s.gaps)
    yield Simple("opos_scheduler_missed_runs",
                 "Polls of this source the scheduler skipped because the previous one was still running.",
                 "counter", _SRC, s.missed)


def store_families(s: _Snapshot) -> Iterator[Simple]:
    if s.store is None:
        return
    pending, dead, size, full, max_bytes = s.store
    yield Simple("opos_store_pending_records", "Records in the local store's outbox waiting to be shipped.", "gauge",
                 (), {(): pending})
    yield Simple("opos_store_dead_letter_records",
                 "Records the sink rejected permanently, kept in the store's dead letters.", "gauge", (), {(): dead})
    yield Simple("opos_store_size_bytes", "Size of the local store on disk.", "gauge", (), {(): size})
    if max_bytes is not None:
        yield Simple("opos_store_max_bytes", "Configured size limit of the local store.", "gauge", (),
                     {(): max_bytes})
    yield Simple("opos_store_full", "1 when the store refused the latest batch for lack of room, else 0.", "gauge",
                 (), {(): full})
    if s.store_kept:
        yield Simple("opos_store_kept_records",
                     "Records not written because the stored version of the job wins: stale (a non-final version "
                     "of a finished job) or thinner (the event log's record of a job the schedd reported final).",
                     "counter", ("verdict",), {(r,): n for r, n in s.store_kept.items()})


def sink_families(s: _Snapshot) -> Iterator["Simple | Metric"]:
    lab = ("sink",)
    rows = s.sinks
    yield Simple("opos_sink_documents_sent", "Documents the sink accepted.", "counter", lab,
                 {(n,): r[0] for n, r in rows.items()})
    yield Simple("opos_sink_documents_rejected", "Documents the sink rejected (per-item bulk errors).", "counter", lab,
                 {(n,): r[1] for n, r in rows.items()})
    yield Simple("opos_sink_retries", "Bulk request retries (429, 5xx, connection errors).", "counter", lab,
                 {(n,): r[2] for n, r in rows.items()})
    yield Simple("opos_sink_request_errors", "Bulk requests that failed as a whole.", "counter", lab,
                 {(n,): r[4] for n, r in rows.items()})
    yield Simple("opos_sink_last_success_timestamp_seconds",
                 "Unix time of the latest successful bulk request to the sink.", "gauge", lab,
                 {(n,): r[5] for n, r in rows.items() if r[5] is not None})
    lat = HistogramMetricFamily("opos_sink_request_duration_seconds", "Latency of bulk requests to the sink.",
                                labels=list(lab))
    for name, r in rows.items():
        lat.add_metric([name], r[6], r[7])
    yield lat


def build_families(s: _Snapshot) -> Iterator[Simple]:
    yield Simple("opos_build_info", "Always 1; the version label carries the opos-monitor version.", "gauge",
                 ("version",), {(s.version,): 1})


FAMILIES: tuple[Callable[[_Snapshot], Iterator["Simple | Metric"]], ...] = (
    build_families, queue_families, outcome_families, source_families, store_families, sink_families,
)


def state_families(s: _Snapshot) -> Iterator["Simple | Metric"]:
    for fam in FAMILIES:
        yield from fam(s)


# --------------------------------------------------------------------------- text rendering
def escape_label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def format_value(v: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    d = float(v)
    if _MINUS_INF < d < 1e6:  # repr already agrees with Go here (NaN fails the test)
        return repr(d)
    return floatToGoString(d)


_MINUS_INF = float("-inf")


class _One:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric]


class TextRenderer:
    """Renders families as Prometheus text format 0.0.4, byte-identical to ``generate_latest``,
    caching each series' ``name{labels} `` prefix (series are few and long-lived)."""

    def __init__(self) -> None:
        self._prefixes: dict[str, dict[tuple[str, ...], str]] = {}

    def simple(self, f: Simple) -> str:
        sname = f.name + "_total" if f.type == "counter" else f.name
        doc = f.doc.replace("\\", r"\\").replace("\n", r"\n")
        out = [f"# HELP {sname} {doc}\n# TYPE {sname} {f.type}\n"]
        cache = self._prefixes.get(sname)
        if cache is None or len(cache) > 2 * len(f.data) + 1024:  # bound: forget series long gone
            cache = self._prefixes[sname] = {}
        order = sorted(range(len(f.labels)), key=f.labels.__getitem__)
        for key, v in f.data.items():
            prefix = cache.get(key)
            if prefix is None:
                if key:
                    pairs = ",".join(f'{f.labels[i]}="{escape_label_value(key[i])}"' for i in order)
                    prefix = f"{sname}{{{pairs}}} "
                else:
                    prefix = sname + " "
                cache[key] = prefix
            out.append(prefix + format_value(v) + "\n")
        return "".join(out)

    def render(self, families: Iterable["Simple | Metric"]) -> str:
        parts = []
        for f in families:
            if isinstance(f, Simple):
                parts.append(self.simple(f))
            else:
                parts.append(generate_latest(_One(f)).decode("utf-8"))
        return "".join(parts)


# --------------------------------------------------------------------------- collector, registry
class StateCollector:
    """A prometheus_client collector yielding metric families from a :class:`MetricsState`."""

    def __init__(self, state: MetricsState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        for f in state_families(self.state.snapshot()):
            yield to_metric(f) if isinstance(f, Simple) else f

    def describe(self) -> list[Metric]:
        # Names only (no samples): lets the registry detect clashes without reading the state.
        return [Metric(m.name, m.documentation, m.type) for m in self.collect()]


class OposRegistry(CollectorRegistry):
    """An explicit registry holding the state collector, with a fast text exposition.

    ``generate_latest(registry)`` and every prometheus_client encoder work as usual;
    :meth:`render_text` produces the same bytes as ``generate_latest(registry)`` several times
    faster (the state is rendered straight from its snapshot), and is what /metrics serves.
    """

    def __init__(self, state: MetricsState) -> None:
        super().__init__()
        self.state = state
        self._order: list[object] = []
        self._renderer = TextRenderer()
        self._render_lock = threading.Lock()
        self.state_collector = StateCollector(state)
        self.register(self.state_collector)

    def register(self, collector) -> None:  # type: ignore[no-untyped-def]
        super().register(collector)
        with self._lock:
            self._order.append(collector)

    def unregister(self, collector) -> None:  # type: ignore[no-untyped-def]
        super().unregister(collector)
        with self._lock:
            self._order.remove(collector)

    def render_text(self) -> bytes:
        with self._lock:
            collectors = list(self._order)
        parts = []
        for c in collectors:
            if c is self.state_collector:
                with self._render_lock:  # the prefix cache is not shared between threads
                    parts.append(self._renderer.render(state_families(self.state.snapshot())).encode("utf-8"))
            else:
                parts.append(generate_latest(c))  # type: ignore[arg-type]
        return b"".join(parts)


def make_registry(state: MetricsState, *, process: bool = True) -> OposRegistry:
    """An explicit registry holding the state collector (and the process/platform collectors,
    which read /proc for the daemon's own CPU, memory and file descriptors)."""
    registry = OposRegistry(state)
    if process:
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry
