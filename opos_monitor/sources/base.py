"""What every source shares: its key, the hand-off it delivers to, and its poll result.

The one-way flow is  source -> JobRecord -> enrich -> sinks. A source never writes to a sink
itself: it hands a batch of records *and the checkpoint that batch reaches* to a ``Handoff``,
which enriches them and commits both durably in one step (the store's transaction). Only when
``commit`` returns does the source consider the batch delivered; if it raises, the source keeps
its old checkpoint and fetches the same records again next time (re-delivery is harmless:
records are upserted by a deterministic id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from ..records import JobRecord

SOURCE_KINDS = ("queue", "history", "epochs", "eventlog", "adfile")


@dataclass(frozen=True, slots=True)
class SourceKey:
    """Identifies one checkpointed stream: (pool, schedd, source kind)."""

    pool: str
    schedd: str
    source: str

    def __str__(self) -> str:
        return f"{self.pool}/{self.schedd}/{self.source}"


class Handoff(Protocol):
    """Where sources deliver. Implemented by the pipeline (enrich + store + metrics)."""

    def checkpoint(self, key: SourceKey) -> str | None:
        """The last committed checkpoint of this stream, or None before the first commit."""

    def commit(self, key: SourceKey, records: Sequence[JobRecord], checkpoint: str | None) -> None:
        """Durably take the records and advance the checkpoint together; raise on failure."""


@dataclass(slots=True)
class PollResult:
    """What one poll of one source did; feeds metrics and the `once` summary."""

    key: SourceKey
    ok: bool = True
    error: str | None = None
    duration_s: float = 0.0
    records: int = 0  # records handed off
    failures: int = 0  # of those, classified as failed (filled in by the pipeline)
    status_counts: Mapping[str, int] = field(default_factory=dict)  # queue sources: jobs by status
    gap: str | None = None  # description of a detected gap (history rotated past unread records…)
    lag_s: float | None = None  # history: now - newest record's time
    cred_expiring: int = 0  # queue: live jobs whose X.509 proxy expires within a day
    interrupted: bool = False  # a stop was requested: the poll handed off only part of what it found
    held_ids: Sequence[str] | None = None  # queue: GlobalJobId of every held job in the queue
    failed_now: Mapping[str, int | None] | None = None  # queue: held/removed jobs, GlobalJobId -> EnteredCurrentStatus
