"""Read-only token on the real pool (reads with it, refused without it, said clearly) and
sharding: two replicas with shard 0/2 and 1/2 together poll every schedd exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration
DEV_CONFIG = str(Path(__file__).resolve().parents[2] / "deploy" / "dev-pool" / "opos-monitor.toml")


def once(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OPOS_MONITOR__STATE_DIR": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-m", "opos_monitor.cli", "-c", DEV_CONFIG, "once", "--json"],
                          env=full, capture_output=True, timeout=600)


def polled(proc: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    summary = orjson.loads(proc.stdout)
    return {(r["pool"], r["schedd"]) for r in summary["schedds"] if r["schedd"] != "*" and not r["errors"]}


def test_the_read_only_token_reads(devpool, tmp_path):
    proc = once(tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert {s.split("@")[0] for _, s in polled(proc)} == {"jobsub01", "jobsub02", "ospool-ap01"}


def test_without_a_valid_token_reads_are_refused_and_said_clearly(devpool, tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.bm90LWEtc2lnbmF0dXJl\n")
    proc = once(tmp_path / "state", OPOS_MONITOR__HTCONDOR__TOKEN_FILE=str(bad),
                OPOS_MONITOR__HTCONDOR__AUTH_METHODS='["IDTOKENS"]')
    assert proc.returncode == 1
    summary = orjson.loads(proc.stdout)
    errors = " ".join(e for r in summary["schedds"] for e in r["errors"])
    assert "authentication was refused" in errors and str(bad) in errors
    assert "eyJhbGciOiJIUzI1NiJ9" not in proc.stderr.decode() + proc.stdout.decode()  # never log the token


def _foreign_token(path: Path) -> Path:
    """A well-formed IDTOKEN of another trust domain (its signature cannot be checked here)."""
    import base64
    import time

    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    now = int(time.time())
    path.write_text(".".join([b64({"alg": "HS256", "kid": "POOL"}),
                              b64({"iss": "otherpool.example.org", "sub": "opos-monitor@otherpool.example.org",
                                   "iat": now, "exp": now + 3600, "scope": "condor:/READ"}),
                              "c2lnbmVkLWJ5LWFub3RoZXItZG9tYWlu"]) + "\n")
    return path


def test_tokens_of_several_trust_domains_each_go_to_their_own_pool(devpool, tmp_path):
    """token_file of another trust domain first, the pool's own token in token_files: HTCondor
    presents the pool the token its trust domain issued, so every schedd is read."""
    from sources.devpool_jobs import TOKEN

    other = _foreign_token(tmp_path / "other.token")
    proc = once(tmp_path / "state", OPOS_MONITOR__HTCONDOR__TOKEN_FILE=str(other),
                OPOS_MONITOR__HTCONDOR__TOKEN_FILES=f'["{TOKEN}"]',
                OPOS_MONITOR__HTCONDOR__AUTH_METHODS='["IDTOKENS"]')
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert {s.split("@")[0] for _, s in polled(proc)} == {"jobsub01", "jobsub02", "ospool-ap01"}
    # the other domain's token alone is refused, and said so
    proc = once(tmp_path / "state2", OPOS_MONITOR__HTCONDOR__TOKEN_FILE=str(other),
                OPOS_MONITOR__HTCONDOR__AUTH_METHODS='["IDTOKENS"]')
    assert proc.returncode == 1 and "authentication was refused" in proc.stdout.decode()


def test_a_missing_token_file_is_a_clear_error(devpool, tmp_path):
    proc = once(tmp_path, OPOS_MONITOR__HTCONDOR__TOKEN_FILE=str(tmp_path / "nope.token"))
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "nope.token" in err and "does not exist" in err and "Traceback" not in err


def test_two_shards_poll_every_schedd_exactly_once(devpool, tmp_path):
    a = once(tmp_path / "a", OPOS_MONITOR__SHARD="0/2")
    b = once(tmp_path / "b", OPOS_MONITOR__SHARD="1/2")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr.decode()[-1000:], b.stderr.decode()[-1000:])
    pa, pb = polled(a), polled(b)
    assert not (pa & pb)
    assert {s.split("@")[0] for _, s in pa | pb} == {"jobsub01", "jobsub02", "ospool-ap01"}
