#!/usr/bin/env python3
"""Scrape cost of opos-monitor's metrics with 100,000 jobs in the queue state.

    .venv/bin/python benchmarks/bench_scrape.py [--jobs 100000] [--schedds 8] [--sites 50] [--repeat 30]

Builds a MetricsState as the pipeline would after polling N queued jobs spread over the schedds
and sites (plus finished-job outcomes for every site and category, black holes, store and ES
state), then times:

* ``generate_latest`` on the explicit registry (median / p95 of --repeat runs);
* ``OposRegistry.render_text`` (the same bytes, rendered straight from the state snapshot);
* an HTTP GET of /metrics through the real ExpositionServer on 127.0.0.1 (serves render_text);
* the same with every site up to the 500-site cap (the bounded worst case);
* the peer pattern the issue warns about - one gauge sample per job, labelled by job id (what a
  per-job exporter does), with the same N jobs - for the ratio.

Also reports the cost of the pipeline's updates (observe_finished, set_queue) per call.
Target: a scrape under 100 ms (docs/metrics.md records the numbers).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, Gauge, generate_latest  # noqa: E402

from opos_monitor.enrich.blackhole import Flag  # noqa: E402
from opos_monitor.enrich.classify import CATEGORIES  # noqa: E402
from opos_monitor.sinks.http import ExpositionServer  # noqa: E402
from opos_monitor.sinks.metrics import JOB_STATUSES, MetricsState, make_registry  # noqa: E402
from opos_monitor.sources.base import PollResult, SourceKey  # noqa: E402

STATUS_WEIGHTS = {"idle": 0.55, "running": 0.38, "held": 0.05, "completed": 0.01, "removed": 0.005,
                  "transferring_output": 0.005}


def build_state(jobs: int, schedds: int, sites: int, rng: random.Random) -> tuple[MetricsState, float, float]:
    """The state after polling ``jobs`` queued jobs; returns (state, µs/observe_finished, µs/set_queue)."""
    state = MetricsState()
    names = [f"jobsub{i + 1:02d}.fnal.gov" for i in range(schedds)]
    site_names = ["FermiGrid"] + [f"OSG_Site_{i:03d}" for i in range(sites - 1)]
    state.set_schedds("fermigrid", names[: schedds // 2], sources=("queue", "history", "epochs"))
    state.set_schedds("ospool", names[schedds // 2:], sources=("queue", "history", "epochs"))
    state.set_sites(site_names)
    per_schedd = jobs // schedds
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    t_queue = 0.0
    for i, name in enumerate(names):
        pool = "fermigrid" if i < schedds // 2 else "ospool"
        # the pipeline counts its queue poll's records: simulate that per job
        counts: dict[str, int] = {}
        for st in rng.choices(statuses, weights, k=per_schedd):
            counts[st] = counts.get(st, 0) + 1
        held = {c: rng.randint(0, counts.get("held", 0) // 4) for c in CATEGORIES[1:]}
        t0 = time.perf_counter()
        state.set_queue(pool, name, counts, held, cred_expiring=rng.randint(0, 50))
        t_queue += time.perf_counter() - t0
        for src in ("queue", "history", "epochs"):
            state.observe_poll(PollResult(SourceKey(pool, name, src), duration_s=rng.uniform(0.5, 20),
                                          records=per_schedd, lag_s=rng.uniform(0, 120) if src != "queue" else None))
    # finished outcomes: as many as queued jobs, every site and category touched
    n_finished = jobs
    picks = [(rng.randrange(schedds), rng.randrange(sites), rng.choice(CATEGORIES)) for _ in range(n_finished)]
    t0 = time.perf_counter()
    for si, ti, cat in picks:
        state.observe_finished("fermigrid" if si < schedds // 2 else "ospool", names[si], site_names[ti], cat)
    t_fin = time.perf_counter() - t0
    state.set_blackholes([Flag("host", f"wn{i}.example.org", site_names[i % sites], 6, 0, 0.0, 1.0)
                          for i in range(12)])
    state.set_store(pending=25_000, dead=4, size_bytes=900 * 1024**2, full=False, max_bytes=2 * 1024**3)
    state.declare_sink("elasticsearch")
    for _ in range(100):
        state.observe_es(500, rng.randint(0, 2), rng.randint(0, 1), rng.uniform(0.05, 2.0))
    return state, t_fin / n_finished * 1e6, t_queue / schedds * 1e6


def time_it(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def peer_registry(jobs: int, schedds: int, rng: random.Random) -> CollectorRegistry:
    """The per-job pattern: one labelled gauge sample per job (job id, owner, schedd, status)."""
    reg = CollectorRegistry()
    g = Gauge("peer_job_status", "Job status per job (per-job labels).", ["schedd", "job_id", "owner", "status"],
              registry=reg)
    for j in range(jobs):
        g.labels(f"jobsub{j % schedds + 1:02d}.fnal.gov", f"{1000000 + j // 100}.{j % 100}",
                 f"user{rng.randrange(300)}", rng.choice(JOB_STATUSES[:3])).set(1)
    return reg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--schedds", type=int, default=8)
    ap.add_argument("--sites", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    rng = random.Random(42)

    rows = []
    for label, sites in ((f"{args.sites} sites", args.sites), ("500 sites (cap)", 500)):
        state, us_fin, us_queue = build_state(args.jobs, args.schedds, sites, rng)
        reg = make_registry(state)
        body = generate_latest(reg)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        med, p95 = time_it(lambda: generate_latest(reg), args.repeat)
        rmed, rp95 = time_it(reg.render_text, args.repeat)
        with ExpositionServer(reg, "127.0.0.1:0") as srv:
            hmed, hp95 = time_it(lambda: http_get(srv.url + "/metrics"), args.repeat)
        rows.append((f"opos-monitor, {label}", series, len(body), med, p95, rmed, rp95, hmed, hp95))
        if sites == args.sites:
            ours = (med, hmed)
            updates = (us_fin, us_queue)

    peer = peer_registry(args.jobs, args.schedds, rng)
    pbody = generate_latest(peer)
    pmed, pp95 = time_it(lambda: generate_latest(peer), max(3, args.repeat // 5))
    with ExpositionServer(peer, "127.0.0.1:0") as srv:
        phmed, php95 = time_it(lambda: http_get(srv.url + "/metrics"), max(3, args.repeat // 5))
    rows.append(("peer pattern: per-job labels", args.jobs, len(pbody), pmed, pp95, float("nan"), float("nan"),
                 phmed, php95))

    print(f"scrape cost, {args.jobs:,} queued jobs, {args.schedds} schedds "
          f"(median / p95 ms of {args.repeat} runs; python {sys.version.split()[0]})")
    print(f"{'':31} {'samples':>8} {'bytes':>10} {'generate_latest':>17} {'render_text':>17} {'GET /metrics':>17}")
    for name, series, size, med, p95, rmed, rp95, hmed, hp95 in rows:
        print(f"{name:31} {series:8,} {size:10,} {med:8.1f} / {p95:6.1f} {rmed:8.1f} / {rp95:6.1f} "
              f"{hmed:8.1f} / {hp95:6.1f}")
    print(f"ratio peer/opos-monitor ({args.sites} sites): generate_latest {pmed / ours[0]:.0f}x, "
          f"GET /metrics {phmed / ours[1]:.0f}x")
    print(f"updates: observe_finished {updates[0]:.2f} µs/call, set_queue {updates[1]:.1f} µs/call")
    ok = ours[1] < 100.0
    print(f"target GET /metrics < 100 ms: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
