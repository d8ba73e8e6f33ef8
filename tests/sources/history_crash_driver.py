"""One history poll of one dev-pool schedd into a real SQLite store, as a separate process the
crash test can SIGKILL.

    python history_crash_driver.py STORE ACK_LOG POOL SCHEDD [--hang-at N] [--page P] [--batch B]
                                   [--no-backfill] [--marker PATH]

The hand-off is the store (``Store.commit_batch(items, checkpoint)``).  With ``--hang-at N`` the
N-th commit announces itself in the marker file and then blocks *before* the store commits:
the records are fetched but not acknowledged, which is where the test kills the process.
After each acknowledged commit the records' GlobalJobIds (and test tags) are appended to
``ACK_LOG``, so a record acknowledged twice would show up twice there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devpool_jobs import POOLS, process_runner  # noqa: E402

from opos_monitor.sinks.store import Checkpoint, Store, stored_from  # noqa: E402
from opos_monitor.sources.history import HISTORY, HistoryOptions, poll_history  # noqa: E402
from opos_monitor.sources.htc import ScheddTarget, job_projection  # noqa: E402
from opos_monitor.sources.schedd import fetch_schedd_ads  # noqa: E402


class StoreHandoff:
    def __init__(self, store: Store, ack_log: Path, hang_at: int | None, marker: Path | None) -> None:
        self.store, self.ack_log, self.hang_at, self.marker = store, ack_log, hang_at, marker
        self.commits = 0

    def checkpoint(self, key):
        return self.store.checkpoint(key.pool, key.schedd, key.source)

    def commit(self, key, records, checkpoint):
        self.commits += 1
        if self.commits == self.hang_at:
            self.marker.write_text(f"{len(records)}\n")
            time.sleep(3600)  # fetched, never acknowledged: the test kills us here
        items = [stored_from(r, None, r.glidein_site) for r in records]
        cp = Checkpoint(key.pool, key.schedd, key.source, checkpoint) if checkpoint is not None else None
        self.store.commit_batch(items, cp)
        with open(self.ack_log, "a", encoding="utf-8") as fh:
            fh.writelines(f"{r.global_job_id}\t{r.attrs.get('OposTestTag', '')}\n" for r in records)
            fh.flush()
            os.fsync(fh.fileno())


def locate(runner, pool: str, name: str) -> ScheddTarget:
    from opos_monitor.sources.htc import CollectorTarget

    for ad in runner.call(CollectorTarget(pool, POOLS[pool]), fetch_schedd_ads):
        if ad["Name"] == name:
            return ScheddTarget(pool, name, ad["MyAddress"], ad.get("CondorVersion", ""))
    raise SystemExit(f"schedd {name} not found in pool {pool}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("ack_log")
    p.add_argument("pool")
    p.add_argument("schedd")
    p.add_argument("--hang-at", type=int)
    p.add_argument("--page", type=int, default=500)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--no-backfill", action="store_true")
    p.add_argument("--marker")
    args = p.parse_args()
    runner = process_runner(60)
    target = locate(runner, args.pool, args.schedd)
    store = Store.open(args.store, max_bytes=2 * 1024**3, synchronous="NORMAL")
    handoff = StoreHandoff(store, Path(args.ack_log), args.hang_at, Path(args.marker) if args.marker else None)
    opts = HistoryOptions(page_size=args.page, batch_size=args.batch, backfill=not args.no_backfill,
                          projection=job_projection(("OposTestTag",)))
    res = poll_history(runner, target, handoff, HISTORY, opts)
    store.close()
    print(f"records={res.records} gap={res.gap!r} commits={handoff.commits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
