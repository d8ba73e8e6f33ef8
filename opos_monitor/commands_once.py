"""`opos-monitor once`: one poll of every configured source, then a summary per schedd."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from .config import Config
from .sources.base import PollResult


def summarize(results: Sequence[PollResult], totals: dict[Any, Any]) -> list[dict[str, Any]]:
    """One row per (pool, schedd): jobs by status, new records per source, failures, duration, errors."""
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {
        "jobs": {}, "records": {}, "failures": 0, "duration_s": 0.0, "errors": [], "gaps": []})
    for r in results:
        row = rows[(r.key.pool, r.key.schedd)]
        row["duration_s"] += r.duration_s
        if r.status_counts:
            row["jobs"] = dict(r.status_counts)
        if r.records:
            row["records"][r.key.source] = row["records"].get(r.key.source, 0) + r.records
        if not r.ok and r.error:
            row["errors"].append(f"{r.key.source}: {r.error}")
        if r.gap:
            row["gaps"].append(f"{r.key.source}: {r.gap}")
    for key, t in totals.items():
        if key.source != "queue":
            rows[(key.pool, key.schedd)]["failures"] += t.failures
    return [{"pool": p, "schedd": s, **v} for (p, s), v in sorted(rows.items())]


def render(console: Console, rows: list[dict[str, Any]], elapsed: float) -> None:
    t = Table(title=f"opos-monitor once ({elapsed:.1f} s)", title_justify="left")
    for col in ("pool", "schedd", "jobs by status", "new records", "failures", "duration", "problems"):
        t.add_column(col, overflow="fold")
    for r in rows:
        jobs = " ".join(f"{k}={v}" for k, v in sorted(r["jobs"].items()) if v) or "-"
        recs = " ".join(f"{k}={v}" for k, v in sorted(r["records"].items())) or "-"
        problems = "; ".join(r["errors"] + r["gaps"]) or ""
        t.add_row(r["pool"], r["schedd"], jobs, recs, str(r["failures"]), f"{r['duration_s']:.1f} s",
                  f"[red]{problems}[/red]" if problems else "")
    console.print(t)


def run(cfg: Config, *, as_json: bool = False) -> int:
    from .runtime import Runtime

    console = Console(stderr=as_json)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    t0 = time.monotonic()
    rt = Runtime(cfg)
    try:
        with console.status("polling schedds…", spinner="dots"):
            results = rt.poll_all()
            results.extend(rt.replay_adfiles())
        if rt.sink is not None:
            with console.status("shipping to Elasticsearch…", spinner="dots"):
                rt.ship_pending()
        rows = summarize(results, rt.pipeline.totals)
    finally:
        rt.close()
    elapsed = time.monotonic() - t0
    if as_json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps({"elapsed_s": elapsed, "schedds": rows}, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        render(console, rows, elapsed)
    down = [r for r in results if not r.ok]
    return 1 if down and len(down) == len(results) else 0
