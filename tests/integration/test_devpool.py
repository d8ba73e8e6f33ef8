"""The dev pool itself: real daemons, both pools, sites, read-only token, catalogue outcomes."""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.integration


def test_both_pools_list_their_schedds(devpool):
    _, htcondor2 = devpool
    names = {addr: sorted(a["Name"].split("@")[0] for a in htcondor2.Collector(addr).locateAll(htcondor2.DaemonType.Schedd))
             for addr in ("127.0.0.1:9618", "127.0.0.1:9619")}
    assert names == {"127.0.0.1:9618": ["jobsub01", "jobsub02"], "127.0.0.1:9619": ["ospool-ap01"]}


def test_slots_advertise_distinct_glidein_sites(devpool):
    _, htcondor2 = devpool
    sites = set()
    for addr in ("127.0.0.1:9618", "127.0.0.1:9619"):
        for ad in htcondor2.Collector(addr).query(htcondor2.AdType.Startd, projection=["Name", "GLIDEIN_Site"]):
            sites.add(ad.get("GLIDEIN_Site"))
    assert {"FermiGrid", "Nebraska", "Wisconsin", "UCSD"} <= sites


def test_reads_are_refused_without_the_token(devpool):
    """Reads need authentication: the read-only token works, no credential is refused."""
    code = ("import htcondor2 as h; c = h.Collector('127.0.0.1:9618'); "
            "print(len(c.query(h.AdType.Schedd, projection=['Name'])))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("_CONDOR_SEC_TOKEN")}
    env.update(CONDOR_CONFIG="/dev/null", _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="IDTOKENS",
               _CONDOR_SEC_TOKEN_DIRECTORY="/nonexistent")
    refused = subprocess.run([os.sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "collector" in refused.stderr.lower()
    allowed = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "2"


def test_up_is_idempotent_and_fast_when_running(devpool):
    import time

    cat, _ = devpool
    t0 = time.monotonic()
    cat.devpool("up")
    assert time.monotonic() - t0 < 60
    assert "fermigrid: running" in cat.devpool("status").stdout


def test_catalogue_jobs_end_in_the_outcomes_they_claim(catalogue_run):
    wrong = {name: (o.status, o.entry.status) for name, o in catalogue_run.items() if o.status != o.entry.status}
    assert not wrong
    assert len(catalogue_run) >= 14


@pytest.mark.parametrize("name,attr,expected", [
    ("memory_over", "HoldReasonCode", 26),
    ("memory_over", "HoldReasonSubCode", 102),
    ("missing_input", "HoldReasonCode", 13),
    ("missing_output", "HoldReasonCode", 12),
    ("missing_executable", "HoldReasonCode", 6),
    ("site_cvmfs", "HoldReasonCode", 21),
    ("credential_missing", "HoldReasonCode", 4),
    ("proxy_expired", "HoldReasonSubCode", 101),
    ("user_hold", "HoldReasonCode", 1),
    ("segfault", "ExitSignal", 11),
    ("exit_nonzero", "ExitCode", 65),
    ("success", "ExitCode", 0),
])
def test_catalogue_jobs_carry_real_evidence(catalogue_run, name, attr, expected):
    assert catalogue_run[name].ad.get(attr) == expected


def test_site_attributes_reach_the_job_ads(catalogue_run):
    o = catalogue_run["success"]
    assert o.ad.get("MATCH_EXP_JOB_GLIDEIN_Site") in {"FermiGrid", "Nebraska", "Wisconsin"}
    assert o.ad.get("MachineAttrGLIDEIN_Site0") == o.ad.get("MATCH_EXP_JOB_GLIDEIN_Site")
    assert catalogue_run["ospool_success"].ad.get("MATCH_EXP_JOB_GLIDEIN_Site") == "UCSD"
    assert catalogue_run["site_cvmfs"].ad.get("HoldReason", "").find("CVMFS") >= 0


def test_removed_after_site_hold_keeps_the_site_reason(catalogue_run):
    ad = catalogue_run["site_held_then_removed"].ad
    assert ad["JobStatus"] == 3
    assert "CVMFS" in ad.get("LastHoldReason", "")
    assert "condor_rm" in ad.get("RemoveReason", "")
