"""Issue 4 on the real pool: every catalogue job, run for real, gets the category it is tagged
with, and the explanation quotes the evidence; `opos-monitor classify` reads the pool's own
raw history file and condor_q -json output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from opos_monitor.enrich.derive import Enricher

pytestmark = pytest.mark.integration

HISTORY = Path("/var/cache/opos-monitor/trixie/var/spool/condor/history")

# What the explanation must quote for each catalogue job (the evidence a shifter checks).
EVIDENCE = {
    "exit_nonzero": "65",
    "segfault": "11",
    "missing_executable": "6",
    "missing_input": "13",
    "missing_output": "12",
    "memory_over": "MB",
    "walltime": "lifetime",
    "site_cvmfs": "CVMFS",
    "site_held_then_removed": "CVMFS",
    "proxy_expired": "proxy",
    "credential_missing": "credentials",
}


@pytest.fixture(scope="module")
def enricher():
    return Enricher.create(["default"], {"fnal.gov": "FermiGrid"})


def test_every_catalogue_job_gets_its_tagged_category(catalogue_run, enricher):
    got = {name: enricher.derive(o.ad) for name, o in catalogue_run.items()}
    wrong = {name: (d["category"], d["rule"], d["explanation"]) for name, d in got.items()
             if d["category"] != catalogue_run[name].entry.category}
    assert not wrong, wrong


@pytest.mark.parametrize("name", sorted(EVIDENCE))
def test_explanations_quote_the_evidence(catalogue_run, enricher, name):
    d = enricher.derive(catalogue_run[name].ad)
    assert EVIDENCE[name].lower() in d["explanation"].lower(), d["explanation"]
    assert d["rule"] and d["action"]


def test_site_is_attributed_from_the_real_ads(catalogue_run, enricher):
    assert enricher.derive(catalogue_run["site_cvmfs"].ad)["site"] == "Nebraska"
    assert enricher.derive(catalogue_run["ospool_success"].ad)["site"] == "UCSD"


def test_root_cause_wins_over_user_removal(catalogue_run, enricher):
    d = enricher.derive(catalogue_run["site_held_then_removed"].ad)
    assert d["category"] == "site" and d["removed_by_user"] is True


def _classify_cli(data: bytes) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "opos_monitor.cli", "classify", "-"], input=data,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return [orjson.loads(line) for line in proc.stdout.splitlines()]


def test_classify_cli_on_the_pools_raw_history_file(catalogue_run):
    # the current file and the rotated ones (history.<time>): on a shared pool other work may
    # rotate the history between the catalogue run and this test
    data = b"".join(p.read_bytes() for p in sorted(HISTORY.parent.glob(HISTORY.name + "*")) if p.is_file())
    banners = data.count(b"\n*** ") + data.startswith(b"*** ")
    out = _classify_cli(data)
    assert len(out) == banners > 0
    assert all({"job", "category", "rule", "signature", "explanation"} <= set(o) for o in out)
    by_job = {o["job"]: o for o in out}
    seg = catalogue_run["segfault"].ad["GlobalJobId"]
    assert by_job[seg]["category"] == "code"


def test_classify_cli_on_condor_q_json(catalogue_run, devpool):
    cat, _ = devpool
    held = [o for o in catalogue_run.values() if o.status == "held" and o.schedd_name.startswith("jobsub01")]
    raw = cat.devpool("exec", "condor_q", "-name", held[0].schedd_name, "-json").stdout.encode()
    ads = orjson.loads(raw)
    out = _classify_cli(raw)
    assert [o["job"] for o in out] == [a["GlobalJobId"] for a in ads]
    cats = {o["job"]: o["category"] for o in out}
    for o in held:
        assert cats[o.ad["GlobalJobId"]] == o.entry.category
