"""`opos-monitor classify [FILE|-]`: classify job ads from a file, one JSON object per ad."""

from __future__ import annotations

import sys
from typing import IO, Any, Mapping

import orjson

from .classads import ReadError, read_path
from .enrich.derive import Enricher


def job_label(ad: Mapping[str, Any], ordinal: int) -> str:
    """GlobalJobId, else "Cluster.Proc", else the ad's ordinal (1-based) in the input."""
    gid = ad.get("GlobalJobId")
    if isinstance(gid, str) and gid:
        return gid
    cluster, proc = ad.get("ClusterId"), ad.get("ProcId")
    if isinstance(cluster, int) and isinstance(proc, int):
        return f"{cluster}.{proc}"
    return str(ordinal)


def classify_stream(source: str, out: IO[bytes], enricher: Enricher, errors: list[ReadError]) -> int:
    """Write one JSON line per ad read from ``source``; returns the number of ads."""
    n = 0
    for n, ad in enumerate(read_path(source, errors=errors.append), start=1):
        line = {"job": job_label(ad, n), **enricher.derive(ad)}
        out.write(orjson.dumps(line, default=str) + b"\n")
    return n


def run(source: str, rulesets: list[str], corrections: Mapping[str, str]) -> int:
    enricher = Enricher.create(rulesets, corrections)
    errors: list[ReadError] = []
    out = sys.stdout.buffer
    try:
        count = classify_stream(source, out, enricher, errors)
    except FileNotFoundError:
        print(f"opos-monitor classify: {source}: no such file", file=sys.stderr)
        return 2
    except IsADirectoryError:
        print(f"opos-monitor classify: {source}: is a directory", file=sys.stderr)
        return 2
    out.flush()
    for err in errors:
        print(f"opos-monitor classify: {err.name}:{err.line}: {err.message}: {err.snippet}", file=sys.stderr)
    print(f"opos-monitor classify: {count} ads classified, {len(errors)} input problems", file=sys.stderr)
    return 1 if errors and count == 0 else 0
