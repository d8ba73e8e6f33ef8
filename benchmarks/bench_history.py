#!/usr/bin/env python3
"""Schedd history throughput: opos-monitor's history poll against condor_adstash, same run.

    .venv/bin/python benchmarks/bench_history.py [--jobs 20000] [--repeat 3] [--schedd jobsub01@vm] [--configs 10000:1,...]

Needs root and the dev pool (``deploy/dev-pool/devpool up``; brought up if it is not).  It
fills one schedd's history with ``--jobs`` noop jobs completed after a checkpoint, then reads
everything since that checkpoint, alternating the tools ``--repeat`` times:

* **opos** – ``poll_history`` (query worker processes, pages, every record through
  ``JobRecord.from_ad``, handed to a hand-off that only counts);
* **adstash** – the chroot's ``condor_adstash --standalone --schedd_history --interface null``
  from the same checkpoint (its ``ClusterId``/``ProcId`` checkpoint file), once with its default
  cap (``--schedd_history_max_ads 10000``) and once with the cap lifted above the backlog.

It prints records read, wall time and records/s for each, and the ratio opos/adstash.  The
adstash wall time includes its start-up; its run on an empty backlog is printed too.
For jobsub02 the schedd's ``MAX_HISTORY_LOG`` is raised for the run (test-only config file,
removed after); the other schedds keep the default rotation, which holds ~28,000 noop jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sources"))  # the dev-pool helpers the integration tests use
sys.path.insert(0, str(ROOT / "deploy" / "dev-pool"))

import devpool_jobs as dp  # noqa: E402

from opos_monitor.sources.history import HISTORY, Checkpoint, HistoryOptions, poll_history  # noqa: E402

ADSTASH_CKPT = "/tmp/opos-bench-adstash-ckpt.json"  # inside the chroot
ADSTASH_LOG = "/tmp/opos-bench-adstash.log"


class CountingHandoff:
    """Takes records and checkpoints without storing anything: measures the source alone."""

    def __init__(self, checkpoint: str | None) -> None:
        self.cp = checkpoint
        self.records = 0

    def checkpoint(self, key):
        return self.cp

    def commit(self, key, records, checkpoint):
        self.records += len(records)


def start_checkpoint(runner, target) -> str:
    """Our checkpoint at the newest record of the schedd's history now (nothing handed off)."""
    h = CountingHandoff(None)
    h.commit = lambda key, records, cp: setattr(h, "cp", cp)  # type: ignore[method-assign]
    poll_history(runner, target, h, HISTORY, HistoryOptions(backfill=False))
    if h.cp is None:
        raise SystemExit("the schedd's history is empty: run a job first")
    return h.cp


def adstash_checkpoint(schedd: str, opos_cp: str) -> str:
    newest = Checkpoint.from_json(opos_cp, HISTORY).newest
    return json.dumps({schedd: {"ClusterId": newest[0], "ProcId": newest[1]}})


def run_opos(runner, target, cp: str, page_size: int, prefetch: int) -> tuple[int, float]:
    h = CountingHandoff(cp)
    t0 = time.perf_counter()
    res = poll_history(runner, target, h, HISTORY, HistoryOptions(page_size=page_size, prefetch=prefetch))
    elapsed = time.perf_counter() - t0
    if res.gap:
        print(f"  (opos reported a gap: {res.gap})")
    return h.records, elapsed


def checkpoint_behind(runner, target, n: int) -> str:
    """Our checkpoint ``n`` records behind the newest (a steady-state backlog)."""
    from opos_monitor.sources.history import Entry, fetch_index

    idx = [Entry(*e) for e in runner.call(target, fetch_index, "history", None, n + 2)]
    return Checkpoint("history", idx[n].key, idx[n + 1].key, idx[n].t).to_json()


def run_adstash(schedd: str, ckpt_json: str, max_ads: int) -> tuple[int, float]:
    (dp.CHROOT / ADSTASH_CKPT.lstrip("/")).write_text(ckpt_json)
    log = dp.CHROOT / ADSTASH_LOG.lstrip("/")
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = dp.devpool("root", "condor_adstash", "--standalone", "--schedd_history", "--interface", "null",
                      "--collectors", dp.POOLS["fermigrid"], "--schedds", schedd, "--checkpoint_file", ADSTASH_CKPT,
                      "--log_file", ADSTASH_LOG, "--log_level", "WARNING", "--schedd_history_max_ads", str(max_ads),
                      "--schedd_history_timeout", "900", check=False, timeout=1800)
    elapsed = time.perf_counter() - t0
    text = proc.stdout + proc.stderr + (log.read_text() if log.exists() else "")
    m = re.search(r"response count: (\d+)", text)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"condor_adstash failed ({proc.returncode}):\n{text[-3000:]}")
    return int(m.group(1)), elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--schedd", default="jobsub01@vm", help="a fermigrid schedd (default jobsub01@vm)")
    p.add_argument("--small", type=int, default=500, help="steady-state backlog measured too (default 500)")
    d = HistoryOptions()
    p.add_argument("--configs", default=f"{d.page_size}:{d.prefetch}",
                   help="comma-separated opos configurations PAGE_SIZE:PREFETCH to measure (default: the defaults)")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the dev pool runs in a chroot)")
    dp.devpool("up", timeout=900)
    import catalogue

    htcondor2 = catalogue.use_host_env()
    # jobsub02 (a local-name schedd) can get a bigger history of its own; the other schedds keep
    # the default rotation (3 x 20 MB, ~28,000 noop jobs: enough for the default 20,000)
    knobs = {"JOBSUB02.MAX_HISTORY_LOG": "1000000000"} if args.schedd.startswith("jobsub02@") else {}
    runner = dp.process_runner(900)
    with dp.runtime_config("bench", knobs, [("fermigrid", args.schedd)]):
        target = dp.target(htcondor2, "fermigrid", args.schedd)
        cp = start_checkpoint(runner, target)
        ad_cp = adstash_checkpoint(args.schedd, cp)
        empty_ad = run_adstash(args.schedd, ad_cp, 10_000)
        tag = dp.new_tag("bench")
        t0 = time.perf_counter()
        dp.submit_noop(args.schedd, args.jobs, tag)
        dp.wait_left_queue(htcondor2, "fermigrid", args.schedd, tag, timeout=1800)
        print(f"{args.jobs} noop jobs completed on {args.schedd} in {time.perf_counter() - t0:.0f} s; "
              f"history backlog since the checkpoint: {args.jobs} (+ any other jobs that finished meanwhile)")
        configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
        opos_names = [f"opos (page {size}, ahead {ahead})" for size, ahead in configs]
        runs: dict[str, list[tuple[int, float]]] = {name: [] for name in opos_names}
        runs.update({"adstash (cap 10000)": [], "adstash (no cap)": []})
        for _ in range(args.repeat):
            for name, (size, ahead) in zip(opos_names, configs):
                runs[name].append(run_opos(runner, target, cp, size, ahead))
            runs["adstash (cap 10000)"].append(run_adstash(args.schedd, ad_cp, 10_000))
            runs["adstash (no cap)"].append(run_adstash(args.schedd, ad_cp, args.jobs * 2))
        small_cp = checkpoint_behind(runner, target, args.small)
        small_ad = adstash_checkpoint(args.schedd, small_cp)
        small = {"opos": [], "adstash": []}
        for _ in range(args.repeat):
            small["opos"].append(run_opos(runner, target, small_cp, *configs[0]))
            small["adstash"].append(run_adstash(args.schedd, small_ad, 10_000))
    runner.close()
    print(f"\nsteady state: a backlog of {args.small} records (one poll), medians of {args.repeat}:")
    for name, rs in small.items():
        n, s = int(statistics.median(r[0] for r in rs)), statistics.median(r[1] for r in rs)
        print(f"  {name:8} {n:6d} records in {s:5.2f} s")
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; medians of {args.repeat} runs "
          f"(adstash on an empty backlog: {empty_ad[1]:.2f} s start-up)")
    print(f"{'tool':30} {'records':>8} {'of new':>7} {'wall s':>8} {'records/s':>10}")
    med = {}
    for name, rs in runs.items():
        n = int(statistics.median(r[0] for r in rs))
        s = statistics.median(r[1] for r in rs)
        med[name] = (n, s)
        print(f"{name:30} {n:8d} {n / args.jobs:7.0%} {s:8.2f} {n / s:10.0f}")
    for opos in opos_names:
        opos_rate = med[opos][0] / med[opos][1]
        for name in ("adstash (cap 10000)", "adstash (no cap)"):
            n, s = med[name]
            print(f"ratio {opos} / {name}: records/s {opos_rate / (n / s):.2f}x; "
                  f"records read {med[opos][0] / n:.2f}x")
    lost = med[opos_names[0]][0] - med["adstash (cap 10000)"][0]
    print(f"adstash with its default cap read {med['adstash (cap 10000)'][0]} and moved its checkpoint to the newest "
          f"record: the other {lost} records of this backlog would never be read by it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
