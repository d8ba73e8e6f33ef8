"""Realistic records for the store tests.

Job ads come from ``benchmarks/adgen.py`` (about 140 attributes, FIFE-like
failure scenarios with real HTCondor reason texts), go through the real
``JobRecord.from_ad``, ``classify`` and ``attribute_site``, and become
``StoredRecord`` with ``stored_from`` - the path the sources will use.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from opos_monitor.enrich.classify import classify
from opos_monitor.enrich.site import attribute_site
from opos_monitor.records import JobRecord
from opos_monitor.sinks.store import StoredRecord, stored_from

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_718_000_000


def adgen() -> ModuleType:
    """benchmarks/adgen.py, imported by path (benchmarks/ is not a package)."""
    name = "opos_bench_adgen"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "adgen.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def scenario_ad(
    scenario: str,
    cluster: int,
    proc: int = 0,
    *,
    schedd: str = "jobsub01.fnal.gov",
    site: str | None = None,
    owner: str | None = None,
    end: int | None = None,
) -> dict[str, Any]:
    """One realistic history ad of an adgen scenario, with chosen schedd/site/owner/end time."""
    ad = adgen().make_ad(random.Random(cluster * 1009 + proc), cluster, proc, NOW, scenario)
    ad["GlobalJobId"] = f"{schedd}#{cluster}.{proc}#{ad['QDate']}"
    if site is not None:
        for k in ("MATCH_EXP_JOB_GLIDEIN_Site", "MATCH_GLIDEIN_Site", "MachineAttrGLIDEIN_Site0"):
            ad[k] = site
    if owner is not None:
        ad["Owner"] = owner
    if end is not None:
        ad["EnteredCurrentStatus"] = end
        if ad["JobStatus"] == 4:
            ad["CompletionDate"] = end
    return ad


def record_for(
    ad: dict[str, Any],
    *,
    pool: str = "fermigrid",
    schedd: str = "jobsub01.fnal.gov",
    attempt: int | None = None,
    updated_at: float | None = None,
) -> StoredRecord:
    rec = JobRecord.from_ad(ad, pool=pool, schedd=schedd, source="history")
    return stored_from(rec, classify(ad).to_dict(), attribute_site(ad), attempt=attempt,
                       updated_at=NOW if updated_at is None else updated_at)


def mixed_records(n: int, seed: int = 0) -> list[StoredRecord]:
    """``n`` records with adgen's realistic failure mix (about 70 % successes)."""
    out = []
    for ad in adgen().make_ads(n, seed):
        schedd = ad["GlobalJobId"].split("#")[0]
        out.append(record_for(ad, schedd=schedd))
    return out
