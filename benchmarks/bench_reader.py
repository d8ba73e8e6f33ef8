"""Benchmark opos_monitor.classads.read_ads against classad2.parseOne.

Generates N realistic history ads (``adgen.make_history_file``) in a temp
dir, then times, on the same text:

* ``read_ads`` over the whole file (I/O and decoding included);
* a straightforward pure-Python line reader (the reference in DESIGN.md §5);
* ``classad2.parseOne`` on each ad's text, pre-split (splitting not timed),
  with and without turning the result into a dict (the peer baseline;
  ``parseAds`` on a whole file is super-linear and is not used);
* ``read_ads`` on the same ads as a ``-json`` array and as JSON lines.

Usage: python benchmarks/bench_reader.py [--n 20000] [--seed 1] [--peer-n N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import adgen  # noqa: E402

from opos_monitor.classads import read_ads  # noqa: E402


def naive_line_reader(f):
    """The simple reader DESIGN.md measured: split each line at ' = '."""
    ad: dict = {}
    for line in f:
        if line.startswith("***") or not line.strip():
            if ad:
                yield ad
                ad = {}
            continue
        k, _, v = line.rstrip("\n").partition(" = ")
        if v[:1] == '"':
            ad[k] = v[1:-1].replace('\\"', '"')
        elif v in ("true", "false"):
            ad[k] = v == "true"
        else:
            try:
                ad[k] = int(v)
            except ValueError:
                try:
                    ad[k] = float(v)
                except ValueError:
                    ad[k] = v
    if ad:
        yield ad


def split_ads(path: Path) -> list[str]:
    """Each ad's text, without banners (input for the per-ad peer)."""
    ads, cur = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("***"):
                ads.append("".join(cur))
                cur = []
            else:
                cur.append(line)
    if cur:
        ads.append("".join(cur))
    return ads


def time_file(path: Path, fn) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    with path.open(encoding="utf-8") as f:
        for _ in fn(f):
            n += 1
    return time.perf_counter() - t, n


def time_peer(texts: list[str], to_dict: bool) -> float:
    import classad2

    old = classad2.ParserType.Old
    t = time.perf_counter()
    if to_dict:
        for text in texts:
            dict(classad2.parseOne(text, old))
    else:
        for text in texts:
            classad2.parseOne(text, old)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="ads to generate")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--peer-n", type=int, default=None, help="ads given to classad2.parseOne (default: all)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = adgen.make_history_file(Path(tmp) / "history", args.n, args.seed)
        size = path.stat().st_size
        texts = split_ads(path)
        attrs = sum(t.count("\n") for t in texts[:500]) / min(500, len(texts))
        print(f"{args.n} ads, {size / 1e6:.1f} MB, {size / args.n:.0f} B/ad, {attrs:.0f} attributes/ad")

        dt, n = time_file(path, lambda f: read_ads(f, str(path)))
        ours = dt / n * 1e6
        assert n == args.n, f"read_ads yielded {n} ads, expected {args.n}"
        print(f"read_ads (history file)      {ours:8.1f} us/ad")

        dt, n = time_file(path, naive_line_reader)
        naive = dt / n * 1e6
        print(f"naive line reader            {naive:8.1f} us/ad   ours is {naive / ours:.2f}x faster")

        peer_texts = texts[: args.peer_n] if args.peer_n else texts
        p1 = time_peer(peer_texts, False) / len(peer_texts) * 1e6
        p2 = time_peer(peer_texts, True) / len(peer_texts) * 1e6
        print(f"classad2.parseOne per ad     {p1:8.1f} us/ad   ours is {p1 / ours:.2f}x faster")
        print(f"classad2.parseOne + dict()   {p2:8.1f} us/ad   ours is {p2 / ours:.2f}x faster")

        for label, writer in (("-json array", adgen.write_json), ("JSON lines", adgen.write_jsonl)):
            jpath = Path(tmp) / "ads.json"
            with jpath.open("w", encoding="utf-8") as out:
                writer(out, adgen.make_ads(args.n, args.seed))
            dt, n = time_file(jpath, lambda f: read_ads(f, str(jpath)))
            assert n == args.n, f"read_ads yielded {n} ads from {label}, expected {args.n}"
            print(f"read_ads ({label:<11})       {dt / n * 1e6:8.1f} us/ad")
    return 0


if __name__ == "__main__":
    sys.exit(main())
