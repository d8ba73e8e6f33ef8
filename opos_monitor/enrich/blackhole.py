"""Black-hole detection: worker nodes (and sites) that fail many jobs quickly.

A "black hole" is an execute host that accepts job after job and fails each
within seconds (broken CVMFS mount, dead container runtime, full scratch disk),
draining a whole campaign while the rest of the pool is fine.  The detector is
fed one observation per finished job attempt and keeps, per host and per site,
the times of *quick failures* (failed with a runtime below ``max_runtime_s``;
an unknown runtime counts as quick - such attempts never really started) and of
all other outcomes, over a sliding window.

A host is flagged when it has at least ``threshold`` quick failures inside the
window (and, optionally, quick failures make up at least
``min_failure_fraction`` of its outcomes).  A site is flagged the same way with
``site_threshold`` (default ``5 * threshold``).

Everything is explicit-time and pure: no clock is read, the "current" time is
the latest observation time unless a query passes ``now``.  Memory is bounded:
at most ``max_keys`` hosts and sites are tracked (least recently seen are
forgotten first) and each keeps at most ``max_events`` timestamps per kind.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["BlackHoleDetector", "Flag"]


@dataclass(frozen=True, slots=True)
class Flag:
    """A flagged host or site."""

    kind: str  # "host" or "site"
    key: str  # host name or site name
    site: str  # the site (for a site flag, the site itself)
    quick_failures: int
    other: int  # successes and slow failures in the window
    first: float  # time of the oldest quick failure in the window
    last: float  # time of the newest quick failure in the window

    @property
    def failure_fraction(self) -> float:
        total = self.quick_failures + self.other
        return self.quick_failures / total if total else 0.0


class _Track:
    __slots__ = ("site", "quick", "other")

    def __init__(self, site: str) -> None:
        self.site = site
        self.quick: list[float] = []
        self.other: list[float] = []


def _add(times: list[float], t: float, cap: int) -> None:
    if not times or t >= times[-1]:
        times.append(t)
    else:
        bisect.insort(times, t)
    if len(times) > cap:
        del times[: len(times) - cap]


def _prune(times: list[float], cutoff: float) -> None:
    i = bisect.bisect_right(times, cutoff)
    if i:
        del times[:i]


class BlackHoleDetector:
    """Sliding-window counter of quick failures per host and per site."""

    def __init__(
        self,
        threshold: int = 5,
        window_s: float = 3600.0,
        max_runtime_s: float = 600.0,
        *,
        site_threshold: int | None = None,
        min_failure_fraction: float = 0.0,
        max_keys: int = 100_000,
        max_events: int | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        if not 0.0 <= min_failure_fraction <= 1.0:
            raise ValueError("min_failure_fraction must be within [0, 1]")
        self.threshold = int(threshold)
        self.window_s = float(window_s)
        self.max_runtime_s = float(max_runtime_s)
        self.site_threshold = int(site_threshold) if site_threshold is not None else 5 * self.threshold
        self.min_failure_fraction = float(min_failure_fraction)
        self.max_keys = int(max_keys)
        cap = max_events if max_events is not None else max(4 * max(self.threshold, self.site_threshold), 64)
        self.max_events = int(cap)
        self._hosts: OrderedDict[str, _Track] = OrderedDict()
        self._sites: OrderedDict[str, _Track] = OrderedDict()
        self._now = float("-inf")

    # ------------------------------------------------------------------ feed
    def is_quick_failure(self, failed: bool, runtime_s: float | None) -> bool:
        return bool(failed) and (runtime_s is None or runtime_s < self.max_runtime_s)

    def observe(
        self, time: float, host: str | None, site: str | None, failed: bool, runtime_s: float | None
    ) -> bool:
        """Record one finished attempt; True if its host is (now) flagged."""
        t = float(time)
        if t > self._now:
            self._now = t
        quick = self.is_quick_failure(failed, runtime_s)
        site_key = site or "unknown"
        self._record(self._sites, site_key, site_key, t, quick)
        if not host:
            return False
        track = self._record(self._hosts, host.lower(), site_key, t, quick)
        return self._flag("host", host.lower(), track, self.threshold, self._now) is not None

    def _record(self, table: OrderedDict[str, _Track], key: str, site: str, t: float, quick: bool) -> _Track:
        track = table.get(key)
        if track is None:
            track = _Track(site)
            table[key] = track
            if len(table) > self.max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
            track.site = site
        _add(track.quick if quick else track.other, t, self.max_events)
        cutoff = self._now - self.window_s
        _prune(track.quick, cutoff)
        _prune(track.other, cutoff)
        return track

    # ----------------------------------------------------------------- query
    def _flag(self, kind: str, key: str, track: _Track, threshold: int, now: float) -> Flag | None:
        cutoff = now - self.window_s
        lo = bisect.bisect_right(track.quick, cutoff)
        hi = bisect.bisect_right(track.quick, now)
        quick = hi - lo
        if quick < threshold:
            return None
        other = bisect.bisect_right(track.other, now) - bisect.bisect_right(track.other, cutoff)
        if self.min_failure_fraction and quick / (quick + other) < self.min_failure_fraction:
            return None
        return Flag(kind, key, track.site, quick, other, track.quick[lo], track.quick[hi - 1])

    def _now_or(self, now: float | None) -> float:
        return self._now if now is None else float(now)

    def flagged_hosts(self, now: float | None = None) -> list[Flag]:
        """Hosts with >= threshold quick failures in the window ending at ``now``."""
        t = self._now_or(now)
        flags = (self._flag("host", k, tr, self.threshold, t) for k, tr in self._hosts.items())
        return sorted((f for f in flags if f), key=lambda f: (-f.quick_failures, f.key))

    def flagged_sites(self, now: float | None = None) -> list[Flag]:
        """Sites with >= site_threshold quick failures in the window."""
        t = self._now_or(now)
        flags = (self._flag("site", k, tr, self.site_threshold, t) for k, tr in self._sites.items())
        return sorted((f for f in flags if f), key=lambda f: (-f.quick_failures, f.key))

    def is_black_hole(self, host: str, now: float | None = None) -> bool:
        track = self._hosts.get(host.lower())
        return track is not None and self._flag("host", host.lower(), track, self.threshold, self._now_or(now)) is not None

    def prune(self, now: float | None = None) -> None:
        """Forget everything older than the window; drop empty hosts/sites."""
        cutoff = self._now_or(now) - self.window_s
        for table in (self._hosts, self._sites):
            for key in list(table):
                track = table[key]
                _prune(track.quick, cutoff)
                _prune(track.other, cutoff)
                if not track.quick and not track.other:
                    del table[key]

    def __len__(self) -> int:
        """Number of hosts currently tracked."""
        return len(self._hosts)

    @property
    def sites_tracked(self) -> int:
        return len(self._sites)
