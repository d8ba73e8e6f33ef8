"""In-process stand-ins for a schedd and a collector, faithful where the sources depend on it.

``FakeSchedd.history`` follows the schedd's remote history semantics (checked against the real
pool by the integration tests): records come newest first; ``since`` (an expression) stops the
scan at the first record it is true for, which is not returned; ``constraint`` filters;
``match`` caps the results; ``scan_limit`` emulates ``HISTORY_HELPER_MAX_HISTORY``; expressions
are evaluated by ``classad2`` exactly as the schedd's helper evaluates them.  ``rotate(keep)``
drops the oldest records, like history rotation.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional

import classad2

from opos_monitor.sources.htc import CollectorTarget, ScheddTarget


def job_ad(cluster: int, proc: int, *, schedd: str = "sch@host", qdate: int = 1_700_000_000, status: int = 4,
           t: Optional[int] = None, **attrs: Any) -> dict[str, Any]:
    """A small but realistic job ad."""
    t = qdate + 60 + cluster if t is None else t
    ad = {
        "ClusterId": cluster, "ProcId": proc, "QDate": qdate, "JobStatus": status, "Owner": "novapro",
        "GlobalJobId": f"{schedd}#{cluster}.{proc}#{qdate}", "EnteredCurrentStatus": t,
        "CompletionDate": t if status in (3, 4) else 0, "RequestMemory": 2000, "ExitCode": 0,
        "AccountingGroup": "group_nova.production",
    }
    ad.update(attrs)
    return ad


def _truth(expr: Optional[str], cad: "classad2.ClassAd") -> bool:
    if expr is None:
        return True
    v = classad2.ExprTree(str(expr)).eval(cad)
    return v is True or (isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0)


class FakeSchedd:
    """A schedd's queue, history and epoch history in memory."""

    def __init__(self, name: str = "sch@host", *, epochs: bool = True) -> None:
        self.name = name
        self.records: list[dict[str, Any]] = []  # history, oldest first (file order)
        self.epoch_records: list[dict[str, Any]] = []
        self.queue: list[dict[str, Any]] = []
        self.epochs_configured = epochs
        self.scan_limit: Optional[int] = None
        self.down: Optional[str] = None
        self.delay_s = 0.0
        self.scanned = 0
        self.history_calls: list[dict[str, Any]] = []
        self.on_history: Optional[Any] = None  # hook(self) called before each history query

    # --- writing -------------------------------------------------------------
    def complete(self, ads: Iterable[dict[str, Any]]) -> None:
        self.records.extend(ads)

    def rotate(self, keep: int) -> None:
        """Keep only the newest ``keep`` history records."""
        self.records = self.records[-keep:] if keep else []

    # --- the schedd's API (htcondor2.Schedd signatures) ------------------------
    def query(self, constraint: Any = "true", projection: Any = (), *args: Any, **kw: Any) -> list[dict[str, Any]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.down:
            raise RuntimeError(self.down)
        out = []
        for ad in self.queue:
            if _truth(str(constraint), classad2.ClassAd(ad)):
                out.append(self._project(ad, projection))
        return out

    def history(self, constraint: Any = None, projection: Any = (), match: int = -1, since: Any = None) -> list:
        self._check()
        return self._scan(self.records, constraint, projection, match, since)

    def jobEpochHistory(self, constraint: Any = None, projection: Any = (), match: int = -1, since: Any = None) -> list:
        if not self.epochs_configured:
            raise RuntimeError("JOB_EPOCH_HISTORY undefined in remote configuration. No such related history to be queried.")
        self._check()
        return self._scan(self.epoch_records, constraint, projection, match, since)

    # --- internals -------------------------------------------------------------
    def _check(self) -> None:
        """Delay, failure and the test hook: before the scan picks its list of records."""
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.down:
            raise RuntimeError(self.down)
        if self.on_history is not None:
            self.on_history(self)

    def _scan(self, records: list, constraint: Any, projection: Any, match: int, since: Any) -> list:
        self.history_calls.append({"constraint": None if constraint is None else str(constraint),
                                   "since": None if since is None else str(since), "match": match})
        out = []
        for n, ad in enumerate(reversed(records)):
            if self.scan_limit is not None and n >= self.scan_limit:
                break
            self.scanned += 1
            cad = classad2.ClassAd(ad)
            if since is not None and _truth(str(since), cad):
                break
            if constraint is None or _truth(str(constraint), cad):
                out.append(self._project(ad, projection))
                if 0 < match <= len(out):
                    break
        return out

    @staticmethod
    def _project(ad: dict[str, Any], projection: Any) -> dict[str, Any]:
        if not projection:
            return dict(ad)
        low = {k.lower(): k for k in ad}
        return {low[p.lower()]: ad[low[p.lower()]] for p in projection if p.lower() in low}


class FakeCollector:
    def __init__(self, schedds: Iterable[FakeSchedd] = (), pool_port: int = 9618) -> None:
        self.schedds = list(schedds)
        self.down: Optional[str] = None
        self.port = pool_port

    def query(self, ad_type: Any = None, constraint: Any = None, projection: Any = ()) -> list[dict[str, Any]]:
        if self.down:
            raise RuntimeError(self.down)
        return [{"Name": s.name, "MyAddress": f"<127.0.0.1:{self.port}?sock={s.name}>", "MyType": "Scheduler",
                 "CondorVersion": "$CondorVersion: 23.9.6 $"} for s in self.schedds]


class FakeGrid:
    """Resolves targets to fakes (pass ``grid.connect`` to ``InlineRunner``)."""

    def __init__(self) -> None:
        self.schedds: dict[str, FakeSchedd] = {}
        self.collectors: dict[str, FakeCollector] = {}

    def add_pool(self, address: str, *schedds: FakeSchedd) -> FakeCollector:
        for s in schedds:
            self.schedds[s.name] = s
        self.collectors[address] = FakeCollector(schedds)
        return self.collectors[address]

    def connect(self, target: Any) -> Any:
        if isinstance(target, CollectorTarget):
            return self.collectors[target.address]
        assert isinstance(target, ScheddTarget)
        return self.schedds[target.name]


class RecordingHandoff:
    """A Handoff keeping every commit: records by id (with delivery counts) and checkpoints."""

    def __init__(self) -> None:
        self.checkpoints: dict[Any, str] = {}
        self.delivered: dict[tuple[str, str], Any] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.commits: list[tuple[Any, int, Optional[str]]] = []
        self.fail_on_commit: Optional[int] = None  # raise on this commit number (1-based)

    def checkpoint(self, key: Any) -> Optional[str]:
        return self.checkpoints.get(key)

    def commit(self, key: Any, records: Any, checkpoint: Optional[str]) -> None:
        if self.fail_on_commit is not None and len(self.commits) + 1 == self.fail_on_commit:
            self.fail_on_commit = None
            raise OSError("disk full (injected)")
        self.commits.append((key, len(records), checkpoint))
        for r in records:
            rid = (key.source, r.global_job_id if key.source != "epochs"
                   else f"{r.global_job_id}#{r.attrs.get('NumShadowStarts')}")
            self.delivered[rid] = r
            self.counts[rid] = self.counts.get(rid, 0) + 1
        if checkpoint is not None:
            self.checkpoints[key] = checkpoint

    def duplicates(self) -> dict[Any, int]:
        return {k: n for k, n in self.counts.items() if n > 1}

    def ids(self, source: str = "history") -> set[str]:
        return {rid for src, rid in self.delivered if src == source}
