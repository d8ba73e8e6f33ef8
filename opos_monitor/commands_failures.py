"""`opos-monitor failures`: the shifter's question from the terminal — what failed, where, why.

Reads the local store (the embedded failure history). Prints the top failure signatures with
counts, then the newest failed jobs; `--json` prints one JSON object per failed job instead.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from .sinks.store import FailureRow, SignatureCount, Store

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """`24h`, `30m`, `7d` (ago) or an ISO date/time (UTC unless it says otherwise)."""
    if not text:
        return None
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip().lower())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: use a duration like 24h, 30m, 7d or an ISO time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def row_json(r: FailureRow) -> dict[str, Any]:
    return {
        "job": r.global_job_id, "pool": r.pool, "schedd": r.schedd, "owner": r.owner, "status": r.status,
        "site": r.site, "category": r.category, "rule": r.rule, "signature": r.signature,
        "signature_hash": r.signature_hash, "explanation": r.explanation,
        "time": _when(r.time),
    }


def render(console: Console, sigs: list[SignatureCount], rows: list[FailureRow], filters: str) -> None:
    top = Table(title=f"Top failure signatures{filters}", title_justify="left", expand=True)
    for col, kw in (("count", {"justify": "right"}), ("category", {}), ("signature / rule", {"overflow": "fold"}),
                    ("last seen (UTC)", {"no_wrap": True})):
        top.add_column(col, **kw)
    for s in sigs:
        top.add_row(str(s.count), s.category, s.signature or f"[{s.rule}] {s.explanation or ''}", _when(s.last_seen))
    console.print(top)
    jobs = Table(title=f"Newest failed jobs{filters}", title_justify="left", expand=True)
    for col, kw in (("time (UTC)", {"no_wrap": True}), ("job", {"overflow": "fold"}), ("site", {}),
                    ("category", {}), ("explanation", {"overflow": "fold", "ratio": 3})):
        jobs.add_column(col, **kw)
    for r in rows:
        job = r.global_job_id.split("#")
        label = f"{job[1]}@{job[0]}" if len(job) >= 2 else r.global_job_id
        jobs.add_row(_when(r.time), label, r.site or "-", r.category, r.explanation or "")
    console.print(jobs)
    if not rows:
        console.print("no failures match")


def run(store_path: Any, *, since: str | None, site: str | None, category: str | None, schedd: str | None,
        owner: str | None, signature: str | None, limit: int, as_json: bool, max_bytes: int) -> int:
    t0 = parse_since(since)
    store = Store.open_readonly(store_path)
    try:
        filters = dict(site=site, category=category, schedd=schedd, owner=owner, signature=signature)
        rows = store.failures(t0, limit=limit, **filters)
        if as_json:
            out = sys.stdout.buffer
            for r in rows:
                out.write(orjson.dumps(row_json(r)) + b"\n")
            out.flush()
            return 0
        sigs = store.top_signatures(t0, limit=10, **filters)
    finally:
        store.close()
    shown = ", ".join(f"{k}={v}" for k, v in {"since": since, **filters}.items() if v)
    console = Console()
    if not console.is_terminal:  # piped or logged: don't squeeze the reasons into 80 columns
        console.width = max(console.width, 160)
    render(console, sigs, rows, f" ({shown})" if shown else "")
    return 0
