"""explain (live and from the store) and failures after a real `once` over the dev pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from opos_monitor.commands_explain import parse_job

pytestmark = pytest.mark.integration
DEV_CONFIG = str(Path(__file__).resolve().parents[2] / "deploy" / "dev-pool" / "opos-monitor.toml")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opos_monitor.cli", "-c", DEV_CONFIG, *args],
                          capture_output=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def polled_store(catalogue_run, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    env = {"OPOS_MONITOR__STATE_DIR": str(state)}
    proc = cli("once", "--json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return env, orjson.loads(proc.stdout)


def test_parse_job():
    assert parse_job("jobsub01.fnal.gov#123.4#1718000000") == ("jobsub01.fnal.gov", 123, 4)
    assert parse_job("123.4") == (None, 123, 4) and parse_job("77") == (None, 77, 0)
    with pytest.raises(ValueError):
        parse_job("not-a-job")


def test_explain_live_tells_the_memory_story(catalogue_run):
    gid = catalogue_run["memory_over"].ad["GlobalJobId"]
    proc = cli("explain", gid, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    (out,) = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert out["origin"] == "live" and out["job"] == gid
    assert out["verdict"]["category"] == "memory"
    assert "128 MB requested" in out["story"]["memory"]


def test_explain_readable_layout(catalogue_run):
    o = catalogue_run["site_held_then_removed"]
    proc = cli("explain", f"{o.cluster}.0", "--schedd", o.schedd_name)
    text = proc.stdout.decode()
    assert proc.returncode == 0 and "verdict" in text and "site" in text and "CVMFS" in text


def test_once_summary_counts_every_schedd(polled_store):
    _, summary = polled_store
    names = {r["schedd"].split("@")[0] for r in summary["schedds"]}
    assert {"jobsub01", "jobsub02", "ospool-ap01"} <= names


def test_explain_from_the_store_after_once(catalogue_run, polled_store):
    env, _ = polled_store
    gid = catalogue_run["site_held_then_removed"].ad["GlobalJobId"]
    proc = cli("explain", gid, "--store-only", "--json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    out = orjson.loads(proc.stdout.splitlines()[0])
    assert out["origin"] == "local store" and out["verdict"]["category"] == "site"


def test_failures_answers_from_the_store_after_a_real_run(catalogue_run, polled_store):
    env, _ = polled_store
    proc = cli("failures", "--since", "1d", "--limit", "100000", "--json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = {r["job"]: r for r in map(orjson.loads, proc.stdout.splitlines())}
    for name, o in catalogue_run.items():
        gid = o.ad["GlobalJobId"]
        if o.entry.category == "none":
            assert gid not in rows
        elif o.status != "held":  # held jobs are in the store from the queue poll too
            assert rows[gid]["category"] == o.entry.category, (name, rows.get(gid))
    proc = cli("failures", "--since", "1d", "--site", "Nebraska", env=env)
    assert proc.returncode == 0 and b"Top failure signatures" in proc.stdout and b"CVMFS" in proc.stdout
