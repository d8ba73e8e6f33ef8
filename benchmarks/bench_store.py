#!/usr/bin/env python3
"""Durable store throughput: commit, size, take/ack, queries, open check.

Builds N realistic records once (``adgen.make_ads`` -> ``JobRecord.from_ad`` ->
``classify`` -> ``attribute_site`` -> ``stored_from``; about 140 attributes and
~7 KB of JSON each), then for each configuration (synchronous FULL / NORMAL,
documents zlib level 1 with the store's preset dictionary / raw) commits them into a fresh store in batches of 500
with a checkpoint per batch, and prints records/s and the file size.  On the
FULL+zlib store it also measures: re-delivery of unchanged records, the
shipper's take+ack loop, the CLI queries, and ``Store.open`` with its
``quick_check``.

Baseline measured in the same run: appending the same JSON documents as JSON
lines to a file with one fsync per batch (the cheapest durable spool there is;
no upsert, no index, no checkpoint atomicity).  Ratios are against it.

    .venv/bin/python benchmarks/bench_store.py              # 100k records
    .venv/bin/python benchmarks/bench_store.py --n 20000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adgen import make_ads  # noqa: E402

from opos_monitor.enrich.classify import classify  # noqa: E402
from opos_monitor.enrich.site import attribute_site  # noqa: E402
from opos_monitor.records import JobRecord  # noqa: E402
from opos_monitor.sinks.store import (  # noqa: E402
    Checkpoint,
    Store,
    StoredRecord,
    decode_doc,
    encode_doc,
    make_zdict,
    stored_from,
)


def build(n: int, seed: int) -> tuple[list[StoredRecord], float]:
    t0 = time.perf_counter()
    out = []
    for ad in make_ads(n, seed):
        schedd = ad["GlobalJobId"].split("#")[0]
        rec = JobRecord.from_ad(ad, pool="fermigrid", schedd=schedd, source="history")
        out.append(stored_from(rec, classify(ad).to_dict(), attribute_site(ad)))
    return out, time.perf_counter() - t0


def batches(recs: list[StoredRecord], size: int) -> list[list[StoredRecord]]:
    return [recs[i:i + size] for i in range(0, len(recs), size)]


def files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def bench_commit(dirpath: Path, recs: list[StoredRecord], batch: int, synchronous: str, compress: bool) -> dict:
    path = dirpath / f"store-{synchronous}-{'zlib' if compress else 'raw'}.sqlite"
    s = Store.open(path, max_bytes=1 << 40, synchronous=synchronous, compress=compress)
    t0 = time.perf_counter()
    lat = []
    for k, b in enumerate(batches(recs, batch)):
        t1 = time.perf_counter()
        s.commit_batch(b, Checkpoint("fermigrid", "jobsub01.fnal.gov", "history", str(k)))
        lat.append(time.perf_counter() - t1)
    dt = time.perf_counter() - t0
    s.close()
    lat.sort()
    return {
        "config": f"{synchronous}+{'zlib1+dict' if compress else 'raw'}",
        "path": path,
        "records_per_s": len(recs) / dt,
        "seconds": dt,
        "batch_p50_ms": lat[len(lat) // 2] * 1e3,
        "batch_p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
        "file_bytes": path.stat().st_size,
    }


def bench_codecs(recs: list[StoredRecord]) -> list[dict]:
    """Per-document cost and ratio of each codec (the store uses zlib1+dict after its first batch)."""
    docs = [r.doc for r in recs[:20_000]]
    raw = sum(map(len, docs))
    zdict = make_zdict([r.doc for r in recs[:500]])
    out = []
    for name, compress, zd in (("raw", False, None), ("zlib1", True, None), ("zlib1+dict", True, zdict)):
        t0 = time.perf_counter()
        enc = [encode_doc(d, compress, zd) for d in docs]
        t1 = time.perf_counter()
        for codec, blob in enc:
            decode_doc(codec, blob, zd)
        t2 = time.perf_counter()
        out.append({"codec": name, "encode_us": (t1 - t0) / len(docs) * 1e6, "decode_us": (t2 - t1) / len(docs) * 1e6,
                    "ratio": raw / sum(len(b) for _, b in enc)})
    return out


def bench_fsync(dirpath: Path, n: int = 200) -> float:
    """Mean latency of write(4 KiB)+fsync on this filesystem, in ms (what FULL pays per commit)."""
    path = dirpath / "fsync.probe"
    with open(path, "wb") as fh:
        t0 = time.perf_counter()
        for _ in range(n):
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        return (time.perf_counter() - t0) / n * 1e3


def bench_baseline(dirpath: Path, recs: list[StoredRecord], batch: int) -> dict:
    path = dirpath / "baseline.jsonl"
    t0 = time.perf_counter()
    with open(path, "ab") as fh:
        for b in batches(recs, batch):
            fh.write(b"".join(r.doc + b"\n" for r in b))
            fh.flush()
            os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    return {"config": "jsonl+fsync", "records_per_s": len(recs) / dt, "seconds": dt, "file_bytes": path.stat().st_size}


def bench_redeliver(path: Path, recs: list[StoredRecord], batch: int) -> dict:
    s = Store.open(path, max_bytes=1 << 40)
    t0 = time.perf_counter()
    written = sum(s.commit_batch(b) for b in batches(recs, batch))
    dt = time.perf_counter() - t0
    s.close()
    return {"records_per_s": len(recs) / dt, "written": written}


def bench_take_ack(path: Path, n: int, limit: int) -> dict:
    s = Store.open(path, max_bytes=1 << 40)
    pending = s.pending_count()
    t0 = time.perf_counter()
    take_s = 0.0
    shipped = 0
    body = 0
    while True:
        t1 = time.perf_counter()
        items = s.outbox_take(limit)
        take_s += time.perf_counter() - t1
        if not items:
            break
        body += sum(len(i.doc) for i in items)
        s.outbox_ack(i.seq for i in items)
        shipped += len(items)
    dt = time.perf_counter() - t0
    s.close()
    assert shipped == pending == n, (shipped, pending, n)
    return {"records_per_s": shipped / dt, "take_only_per_s": shipped / take_s, "mb_per_s": body / dt / 1e6}


def bench_queries(path: Path, reps: int = 20) -> dict:
    s = Store.open(path, max_bytes=1 << 40)
    out = {}
    probes = {
        "failures_all_limit100": lambda: s.failures(limit=100),
        "failures_site_category": lambda: s.failures(site="Nebraska", category="memory", limit=100),
        "top_signatures_all": lambda: s.top_signatures(limit=10),
        "top_signatures_since_24h": lambda: s.top_signatures(since=1_718_000_000 - 86400, limit=10),
        "pending_count": s.pending_count,
    }
    for name, fn in probes.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name + "_ms"] = (time.perf_counter() - t0) / reps * 1e3
    s.close()
    return out


def bench_open(path: Path) -> dict:
    out = {}
    for check in (True, False):
        t0 = time.perf_counter()
        Store.open(path, max_bytes=1 << 40, check=check).close()
        out[f"open_{'with' if check else 'without'}_quick_check_s"] = time.perf_counter() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the stores (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    recs, build_s = build(args.n, args.seed)
    raw = sum(len(r.doc) for r in recs)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    try:
        fsync_ms = bench_fsync(tmp)
        codecs = bench_codecs(recs)
        base = bench_baseline(tmp, recs, args.batch)
        results = [bench_commit(tmp, recs, args.batch, sync, comp)
                   for sync in ("FULL", "NORMAL") for comp in (True, False)]
        main_path = results[0]["path"]
        redeliver = bench_redeliver(main_path, recs, args.batch)
        queries = bench_queries(main_path)
        opened = bench_open(main_path)
        take_ack = bench_take_ack(main_path, args.n, args.batch)
        normal_take = bench_take_ack(results[2]["path"], args.n, args.batch)
        sqlite_version = sqlite3.sqlite_version
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "machine": {"python": platform.python_version(), "sqlite": sqlite_version, "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "n": args.n, "batch": args.batch, "build_records_s": build_s,
        "avg_doc_bytes": raw / len(recs),
        "fsync_ms": fsync_ms,
        "codecs": codecs,
        "baseline": base,
        "commit": [{k: v for k, v in r.items() if k != "path"} for r in results],
        "redeliver_unchanged": redeliver,
        "take_ack_full_zlib": take_ack,
        "take_ack_normal_zlib": normal_take,
        "queries": queries,
        "open": opened,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.n} records, batches of {args.batch}, avg JSON doc {raw / len(recs):.0f} B "
          f"(built in {build_s:.1f} s, not timed); SQLite {sqlite_version}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    print(f"fsync (4 KiB write + fsync) on this filesystem: {fsync_ms:.2f} ms")
    for c in codecs:
        print(f"codec {c['codec']:>10}: encode {c['encode_us']:6.1f} us/doc, decode {c['decode_us']:5.1f} us/doc,"
              f" ratio {c['ratio']:.2f}")
    print(f"baseline {base['config']:>17}: {base['records_per_s']:9.0f} records/s"
          f"  file {base['file_bytes'] / 1e6:8.1f} MB")
    for r in results:
        print(f"commit   {r['config']:>17}: {r['records_per_s']:9.0f} records/s  file {r['file_bytes'] / 1e6:8.1f} MB"
              f"  batch p50 {r['batch_p50_ms']:.1f} ms p99 {r['batch_p99_ms']:.1f} ms"
              f"  ({r['records_per_s'] / base['records_per_s']:.2f}x baseline)")
    print(f"re-deliver unchanged (FULL+zlib1+dict): {redeliver['records_per_s']:.0f} records/s,"
          f" {redeliver['written']} written")
    print(f"take+ack (FULL+zlib1+dict): {take_ack['records_per_s']:.0f} records/s"
          f" ({take_ack['mb_per_s']:.0f} MB/s of JSON);"
          f" take alone {take_ack['take_only_per_s']:.0f}/s")
    print(f"take+ack (NORMAL+zlib1+dict): {normal_take['records_per_s']:.0f} records/s")
    print("queries on the store: " + ", ".join(f"{k} {v:.2f}" for k, v in queries.items()))
    print("open: " + ", ".join(f"{k} {v:.2f}" for k, v in opened.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
