"""The hand-off every source delivers to: enrich, then commit durably, then tell observers.

    source --records+checkpoint--> Pipeline.commit
        -> Enricher.derive (site, category, rule, signature, explanation) per record
        -> Store.commit_batch (records, outbox, checkpoint: one SQLite transaction)
        -> observers (metrics counters, black-hole detector) — only after the commit returned

If the store refuses (full, disk error) ``commit`` raises and the source keeps its checkpoint.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .enrich.derive import Enricher
from .records import JobRecord
from .sinks.store import Checkpoint, Store, StoredRecord, stored_from
from .sources.base import SourceKey
from .sources.history import attempt_of

#: Called after a batch is durably committed: (key, the records, their derived dicts).
Observer = Callable[[SourceKey, Sequence[JobRecord], Sequence[Mapping[str, Any]]], None]


@dataclass(slots=True)
class KeyTotals:
    """What one stream delivered during this process's life (for `once` and logs)."""

    records: int = 0
    failures: int = 0
    batches: int = 0
    by_category: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Implements ``sources.base.Handoff`` over an Enricher and a Store."""

    def __init__(self, store: Store, enricher: Enricher, observers: Iterable[Observer] = ()) -> None:
        self.store = store
        self.enricher = enricher
        self.observers = list(observers)
        self._lock = threading.Lock()
        self.totals: dict[SourceKey, KeyTotals] = {}

    def checkpoint(self, key: SourceKey) -> str | None:
        return self.store.checkpoint(key.pool, key.schedd, key.source)

    def commit(self, key: SourceKey, records: Sequence[JobRecord], checkpoint: str | None,
               events: Sequence[Sequence[Mapping[str, Any]] | None] | None = None) -> None:
        now = time.time()
        derived = [self.enricher.derive(r.attrs, events[i] if events else None, now=now)
                   for i, r in enumerate(records)]
        items = [self._stored(r, d, now) for r, d in zip(records, derived)]
        cp = Checkpoint(key.pool, key.schedd, key.source, checkpoint) if checkpoint is not None else None
        self.store.commit_batch(items, cp)
        self._count(key, derived)
        for observe in self.observers:
            observe(key, records, derived)

    def commit_with_events(self, key: SourceKey, records: Sequence[JobRecord],
                           events: Sequence[Sequence[Mapping[str, Any]] | None], checkpoint: str | None) -> None:
        """The event-log source's hand-off: ``events[i]`` are the events of ``records[i]``."""
        self.commit(key, records, checkpoint, events=events)

    @staticmethod
    def _stored(record: JobRecord, derived: Mapping[str, Any], now: float) -> StoredRecord:
        attempt = attempt_of(record) if record.source == "epochs" else None
        return stored_from(record, derived, derived.get("site"), attempt=attempt, updated_at=now)

    def _count(self, key: SourceKey, derived: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            t = self.totals.setdefault(key, KeyTotals())
            t.batches += 1
            t.records += len(derived)
            for d in derived:
                cat = d["category"]
                t.by_category[cat] = t.by_category.get(cat, 0) + 1
                if cat != "none":
                    t.failures += 1
