"""Ad-file source: replay job ads from files through the same pipeline as the live sources.

For offline troubleshooting and backfill: ``condor_q -long`` / ``condor_history -long`` dumps,
``-json`` output, JSON lines, and raw schedd history files (``***`` banners), read with the
streaming reader :func:`opos_monitor.classads.read_ads` (it detects the format).  Every ad
becomes a :class:`~opos_monitor.records.JobRecord` with ``source="adfile"``; the pool and
schedd are the configured ones, else the schedd part of the ad's ``GlobalJobId``
(``schedd#cluster.proc#qdate``).

Records are handed to the :class:`~opos_monitor.sources.base.Handoff` in batches, each with the
checkpoint it reaches: the file's identity (device, inode, size, a hash of its first bytes) and
the number of ads consumed.  A replay interrupted midway (crash, failed commit) resumes after
the last committed ad, so nothing is handed off twice and nothing is skipped; a file that only
grew (a live history file) is resumed after its last consumed ad; a file that changed
otherwise (rewritten, replaced, rotated history) is replayed from the start and the change is
reported as the poll's ``gap``.  The reader does not expose byte offsets, so resuming re-reads
(without handing off) the ads already consumed: about 65 us per ad.

Malformed input never stops a replay: the reader reports each bad line or object with file and
line and carries on; an ad without any identity (no ``GlobalJobId``, no ``ClusterId``) is
reported and skipped.  Both are counted in :attr:`AdFileSource.stats`.

A long-format file still being written (its last ad not yet followed by a banner or a blank
line, and modified less than ``settle_s`` ago) keeps its last ad back until it is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ..classads import ReadError, read_ads
from ..records import JobRecord, to_int, to_str
from .base import Handoff, PollResult, SourceKey

__all__ = ["AdFileCheckpoint", "AdFileSource", "ReplayStats", "has_identity", "record_of_ad", "replay", "schedd_of"]

log = logging.getLogger(__name__)

SOURCE = "adfile"
CHECKPOINT_VERSION = 1
HEAD_BYTES = 65536
TAIL_BYTES = 4096

ErrorCallback = Callable[[ReadError], None]


def _log_error(err: ReadError) -> None:
    log.warning("%s", err)


# ---------------------------------------------------------------------------
# pure helpers


def schedd_of(ad: Mapping[str, Any]) -> Optional[str]:
    """The schedd part of the ad's GlobalJobId (``jobsub01.fnal.gov#123.0#1700000000``)."""
    gid = _get(ad, "GlobalJobId")
    if isinstance(gid, str) and "#" in gid:
        return gid.split("#", 1)[0] or None
    return None


def _get(ad: Mapping[str, Any], name: str) -> Any:
    if name in ad:
        return ad[name]
    low = name.lower()
    for k, v in ad.items():
        if k.lower() == low:
            return v
    return None


def has_identity(ad: Mapping[str, Any]) -> bool:
    """A GlobalJobId, or at least a ClusterId: enough for a record id that is not shared."""
    return bool(to_str(_get(ad, "GlobalJobId"))) or to_int(_get(ad, "ClusterId")) is not None


def record_of_ad(ad: Mapping[str, Any], *, pool: str, schedd: Optional[str]) -> JobRecord:
    """The ad's record: configured schedd, else the GlobalJobId's, else "unknown"."""
    return JobRecord.from_ad(ad, pool=pool, schedd=schedd or schedd_of(ad) or "unknown", source=SOURCE)


@dataclass(frozen=True, slots=True)
class AdFileCheckpoint:
    """How far a file's replay got: its identity and the ads consumed."""

    dev: int
    ino: int
    size: int  # file size when the checkpoint was taken
    head: str  # sha1 of the first head_len bytes
    head_len: int
    ads: int  # ads consumed (handed off or skipped as unusable), in file order
    complete: bool = True  # False: the last ad was held back (the file was still being written)

    def dumps(self) -> str:
        return json.dumps({"v": CHECKPOINT_VERSION, "dev": self.dev, "inode": self.ino, "size": self.size,
                           "head": self.head, "head_len": self.head_len, "ads": self.ads,
                           "complete": self.complete}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def loads(cls, text: Optional[str]) -> Optional["AdFileCheckpoint"]:
        if not text:
            return None
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("v") != CHECKPOINT_VERSION:
                raise ValueError("unknown checkpoint version")
            return cls(int(d["dev"]), int(d["inode"]), int(d["size"]), str(d["head"]), int(d["head_len"]),
                       int(d["ads"]), bool(d.get("complete", True)))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable ad-file checkpoint %r (%s); replaying the file from the start", text[:200], exc)
            return None


def _head(fd: int, n: int) -> str:
    return hashlib.sha1(os.pread(fd, n, 0) if n > 0 else b"").hexdigest()


def _last_ad_complete(fd: int, size: int) -> bool:
    """Does a long-format file end with an ad separator (a ``***`` banner or a blank line)?
    JSON formats are judged by the reader (a cut object is reported, not yielded)."""
    head = os.pread(fd, 512, 0).lstrip()
    if head[:1] in (b"{", b"["):
        return True
    tail = os.pread(fd, min(size, TAIL_BYTES), max(0, size - TAIL_BYTES)).replace(b"\r\n", b"\n")
    if not tail.strip():
        return True
    if tail.endswith(b"\n\n"):
        return True
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return tail.endswith(b"\n") and last.startswith(b"***")


# ---------------------------------------------------------------------------
# the source


@dataclass(slots=True)
class ReplayStats:
    """What the last poll of one file did."""

    ads: int = 0  # ads read past the checkpoint
    records: int = 0  # records handed off
    resumed_after: int = 0  # ads consumed before (re-read, not handed off)
    problems: int = 0  # malformed lines/objects reported by the reader
    unusable: int = 0  # ads without identity, reported and skipped
    held_back: bool = False  # last ad kept back: the file is still being written
    changed: bool = False  # the file was not the checkpoint's any more: replayed from the start


@dataclass(slots=True)
class _File:
    path: str
    key: SourceKey
    stats: ReplayStats = field(default_factory=ReplayStats)


class AdFileSource:
    """Replays ad files; one checkpointed stream per file.

    ``poll()`` reads each file past its checkpoint and hands the records off in batches of
    ``batch_size``.  Key per file: ``SourceKey(pool, <absolute path>, "adfile")``.
    """

    kind = SOURCE

    def __init__(self, handoff: Handoff, paths: Iterable[Union[str, "os.PathLike[str]"]], *,
                 pool: Optional[str] = None, schedd: Optional[str] = None, batch_size: int = 5000,
                 settle_s: float = 10.0, errors: Optional[ErrorCallback] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.handoff = handoff
        self.pool = pool or SOURCE
        self.schedd = schedd
        self.batch_size = max(1, int(batch_size))
        self.settle_s = settle_s
        self.report = errors or _log_error
        self.clock = clock
        self.files = [
            _File(p, SourceKey(self.pool, p, SOURCE))
            for p in dict.fromkeys(os.path.abspath(os.path.expanduser(os.fspath(x))) for x in paths)
        ]

    @property
    def stats(self) -> dict[str, ReplayStats]:
        """Per file: what its last poll did."""
        return {f.path: f.stats for f in self.files}

    def poll(self) -> list[PollResult]:
        return [self._poll_file(f) for f in self.files]

    # --- one file ---------------------------------------------------------------------------

    def _poll_file(self, fl: _File) -> PollResult:
        t0 = time.monotonic()
        res = PollResult(fl.key)
        fl.stats = ReplayStats()
        try:
            with open(fl.path, "rb") as f:
                self._replay(fl, f, res)
        except FileNotFoundError:
            res.ok, res.error = False, f"no such file: {fl.path}"
        except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the others
            res.ok, res.error = False, f"{type(exc).__name__}: {exc}"
            log.warning("ad file %s: %s", fl.path, res.error)
        res.duration_s = time.monotonic() - t0
        return res

    def _replay(self, fl: _File, f: io.BufferedReader, res: PollResult) -> None:
        fd = f.fileno()
        st = os.fstat(fd)
        ckpt = AdFileCheckpoint.loads(self.handoff.checkpoint(fl.key))
        skip = 0
        if ckpt is not None:
            if st.st_size < ckpt.size or _head(fd, ckpt.head_len) != ckpt.head:
                fl.stats.changed = True
                res.gap = (f"changed since the checkpoint (size {st.st_size}, was {ckpt.size}, or its first bytes "
                           f"differ): replayed from the start; the {ckpt.ads} ads consumed before may be handed off again")
                log.warning("ad file %s: %s", fl.path, res.gap)
            elif st.st_size == ckpt.size and ckpt.complete:
                return  # nothing new
            else:
                skip = ckpt.ads
        fl.stats.resumed_after = skip
        recent_unterminated = (not _last_ad_complete(fd, st.st_size)) and (self.clock() - st.st_mtime) < self.settle_s

        def report(err: ReadError) -> None:
            fl.stats.problems += 1
            self.report(err)

        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace")
        batch: list[JobRecord] = []
        counts: Counter[str] = Counter()
        consumed = skip
        pending: Optional[tuple[int, dict[str, Any]]] = None  # one ad of lookahead, for holding back the last

        def take(index: int, ad: dict[str, Any]) -> None:
            nonlocal consumed
            fl.stats.ads += 1
            if has_identity(ad):
                rec = record_of_ad(ad, pool=self.pool, schedd=self.schedd)
                batch.append(rec)
                counts[rec.status] += 1
            else:
                fl.stats.unusable += 1
                report(ReadError(fl.path, 0, f"ad #{index + 1} has no GlobalJobId and no ClusterId; skipped",
                                 ", ".join(list(ad)[:8])))
            consumed = index + 1

        for i, ad in enumerate(read_ads(text, fl.path, report)):
            if i < skip:
                continue
            if pending is not None:
                take(*pending)
                if len(batch) >= self.batch_size:
                    self._commit(fl, batch, self._checkpoint(fd, st, consumed, False), res)
            pending = (i, ad)
        text.detach()
        # the size stays the one seen before reading: a file that grew meanwhile is read on next time
        grew = os.fstat(fd).st_size != st.st_size
        complete = True
        if pending is not None:
            if recent_unterminated or grew:  # its last ad may still be being written
                complete = False
                fl.stats.held_back = True
            else:
                take(*pending)
        if (batch or consumed != skip or ckpt is None or fl.stats.changed or ckpt.complete != complete
                or st.st_size != ckpt.size):
            self._commit(fl, batch, self._checkpoint(fd, st, consumed, complete), res)
        res.status_counts = dict(counts)

    @staticmethod
    def _checkpoint(fd: int, st: os.stat_result, ads: int, complete: bool) -> str:
        n = min(st.st_size, HEAD_BYTES)
        return AdFileCheckpoint(st.st_dev, st.st_ino, st.st_size, _head(fd, n), n, ads, complete).dumps()

    def _commit(self, fl: _File, batch: list[JobRecord], checkpoint: str, res: PollResult) -> None:
        self.handoff.commit(fl.key, list(batch), checkpoint)
        fl.stats.records += len(batch)
        res.records += len(batch)
        batch.clear()


def replay(handoff: Handoff, paths: Sequence[Union[str, "os.PathLike[str]"]], **kw: Any) -> list[PollResult]:
    """One-shot replay of files (``opos-monitor replay``): an :class:`AdFileSource` polled once."""
    return AdFileSource(handoff, paths, **kw).poll()
