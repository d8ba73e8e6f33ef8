"""Pipeline (enrich + store + observers) and the `failures` command over its store."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from opos_monitor.classads import read_path
from opos_monitor.cli import main
from opos_monitor.commands_failures import parse_since
from opos_monitor.enrich.derive import Enricher
from opos_monitor.pipeline import Pipeline
from opos_monitor.records import JobRecord
from opos_monitor.sinks.store import Store, StoreFull
from opos_monitor.sources.base import SourceKey

DATA = Path(__file__).parent / "data" / "ads"
KEY = SourceKey("fermigrid", "jobsub01.fnal.gov", "history")


def records(now: float = 1_718_000_000) -> list[JobRecord]:
    ads = list(read_path(DATA / "history_raw.txt"))
    return [JobRecord.from_ad(ad, pool="fermigrid", schedd="jobsub01.fnal.gov", source="history") for ad in ads]


@pytest.fixture
def pipe(tmp_path):
    seen = []
    store = Store.open(tmp_path / "s.sqlite", max_bytes=64 * 1024**2)
    p = Pipeline(store, Enricher.create(["default"], {"fnal.gov": "FermiGrid"}),
                 observers=[lambda key, recs, derived: seen.append((key, len(recs), [d["category"] for d in derived]))])
    yield p, seen, tmp_path / "s.sqlite"
    store.close()


def test_commit_stores_records_with_their_checkpoint_and_notifies_after(pipe):
    p, seen, _ = pipe
    recs = records()
    p.commit(KEY, recs, '{"last": "4101301.0"}')
    assert p.checkpoint(KEY) == '{"last": "4101301.0"}'
    assert p.store.counts()["records"] == len(recs)
    assert seen == [(KEY, len(recs), ["none", "memory", "code"])]
    assert p.totals[KEY].failures == 2 and p.totals[KEY].by_category == {"none": 1, "memory": 1, "code": 1}


def test_redelivery_does_not_duplicate(pipe):
    p, _, _ = pipe
    p.commit(KEY, records(), "1")
    p.commit(KEY, records(), "2")
    assert p.store.counts()["records"] == 3 and p.checkpoint(KEY) == "2"


def test_store_refusal_keeps_checkpoint_and_skips_observers(tmp_path):
    seen = []
    store = Store.open(tmp_path / "s.sqlite", max_bytes=1024**2)
    p = Pipeline(store, Enricher.create(), observers=[lambda *a: seen.append(a)])
    p.commit(KEY, records(), "1")
    big = records()[1]
    big.attrs["Padding"] = os.urandom(3_000_000).hex()  # incompressible, larger than the whole store bound
    with pytest.raises(StoreFull):
        p.commit(KEY, [big], "2")
    assert p.checkpoint(KEY) == "1" and len(seen) == 1
    store.close()


def test_enriched_document_carries_the_opos_object(pipe):
    p, _, _ = pipe
    p.commit(KEY, records(), None)
    (doc,) = p.store.job("4101240.3")
    opos = doc.doc["opos"]
    assert opos["category"] == "memory" and opos["site"] == "UChicago"
    assert opos["signature_hash"] and "5830" in opos["explanation"]
    assert "Job has gone over cgroup memory limit" in doc.doc["LastHoldReason"]


def test_failures_command_json_and_filters(pipe, capsysbinary):
    p, _, path = pipe
    p.commit(KEY, records(), None)
    p.store.close()
    cfg = ["-c", "/dev/null"]
    os.environ["OPOS_MONITOR__STORE__PATH"] = str(path)
    try:
        assert main([*cfg, "failures", "--since", "100000d", "--json"]) == 0
        rows = [orjson.loads(x) for x in capsysbinary.readouterr().out.splitlines()]
        assert sorted(r["category"] for r in rows) == ["code", "memory"]
        assert main([*cfg, "failures", "--since", "100000d", "--json", "--category", "memory"]) == 0
        rows = [orjson.loads(x) for x in capsysbinary.readouterr().out.splitlines()]
        assert [r["site"] for r in rows] == ["UChicago"]
        assert main([*cfg, "failures", "--since", "100000d", "--site", "Nebraska"]) == 0
        out = capsysbinary.readouterr().out.decode()
        assert "Top failure signatures" in out and "SIGSEGV" in out and "UChicago" not in out
        assert main([*cfg, "failures", "--since", "1h", "--json"]) == 0  # records are from 2024
        assert capsysbinary.readouterr().out == b""
    finally:
        del os.environ["OPOS_MONITOR__STORE__PATH"]


@pytest.mark.parametrize("text,ago", [("24h", 86400), ("30m", 1800), ("7d", 604800), ("45s", 45)])
def test_parse_since_durations(text, ago):
    assert parse_since(text, now=1000000.0) == 1000000.0 - ago


def test_parse_since_iso_and_bad():
    assert parse_since("2024-06-10T00:00:00") == 1717977600.0
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday")


def _as_nobody(*args: str, env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys

    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "opos_monitor.cli", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("daemon_running", [True, False])
def test_failures_reads_a_store_its_user_cannot_write(pipe, tmp_path, daemon_running):
    """A shifter's account with read access only (no write access to the file or its directory)
    queries the store, while the daemon holds it open and after it stopped; nothing is written."""
    if os.geteuid() != 0:
        pytest.fail("this test switches to an unprivileged user and must run as root (CI does)")
    p, _, path = pipe
    p.commit(KEY, records(), None)
    if not daemon_running:
        p.store.close()  # -wal/-shm are removed: the reader cannot create them
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    for parent in tmp_path.parents:  # pytest's tmp dirs are private to root
        if parent == Path(parent.anchor) or str(parent) in ("/tmp", "/var/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    before = path.stat().st_mtime_ns, sorted(x.name for x in tmp_path.iterdir())
    env = {**os.environ, "OPOS_MONITOR__STORE__PATH": str(path), "HOME": "/nonexistent"}
    proc = _as_nobody("-c", "/dev/null", "failures", "--since", "100000d", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(orjson.loads(x)["category"] for x in proc.stdout.splitlines()) == ["code", "memory"]
    assert (path.stat().st_mtime_ns, sorted(x.name for x in tmp_path.iterdir())) == before
    os.chmod(path, 0o600)  # no read access: a clear error, no traceback
    proc = _as_nobody("-c", "/dev/null", "failures", "--since", "1d", env=env)
    assert proc.returncode != 0 and "not readable by this user" in proc.stderr and "Traceback" not in proc.stderr


def test_read_only_store_refuses_writes_and_missing_files_clearly(pipe, tmp_path):
    from opos_monitor.sinks.store import StoreError

    p, _, path = pipe
    p.commit(KEY, records(), None)
    ro = Store.open_readonly(path)
    try:
        assert len(ro.failures(0)) == 2
        with pytest.raises(StoreError, match="readonly"):
            ro.requeue_range(None, None)
        with pytest.raises(StoreError, match="readonly"):
            ro.commit_batch([], None)
    finally:
        ro.close()
    with pytest.raises(StoreError, match="no such file"):
        Store.open_readonly(tmp_path / "nope.sqlite")
