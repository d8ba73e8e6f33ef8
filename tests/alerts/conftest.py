"""Real Prometheus tooling for the alert tests: promtool, amtool, prometheus, alertmanager.

Installed by ``scripts/install-prometheus`` (Debian bookworm's packages) when missing. The tests
never skip: without the binaries they fail and say why.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RULES = ALERTS / "opos.rules.yml"
RULE_TESTS = sorted((ALERTS / "tests").glob("*.test.yml"))
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/opos-monitor/opos-monitor/blob/main/docs/runbooks/"
BINARIES = {
    "promtool": "/usr/bin/promtool",
    "amtool": "/usr/bin/amtool",
    "prometheus": "/usr/bin/prometheus",
    "alertmanager": "/usr/bin/prometheus-alertmanager",
}


@pytest.fixture(scope="session")
def prom_bins() -> dict[str, str]:
    """Paths of the four binaries; runs scripts/install-prometheus once if any is missing."""
    def found() -> dict[str, str]:
        out = {}
        for name, default in BINARIES.items():
            path = shutil.which(Path(default).name) or (default if Path(default).exists() else None)
            if path:
                out[name] = path
        return out

    bins = found()
    if len(bins) < len(BINARIES):
        proc = subprocess.run([str(ROOT / "scripts" / "install-prometheus")], capture_output=True, text=True,
                              timeout=900)
        bins = found()
        if len(bins) < len(BINARIES):
            pytest.fail(f"missing {sorted(set(BINARIES) - set(bins))}; scripts/install-prometheus exited "
                        f"{proc.returncode}:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return bins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: object | None = None, timeout: float = 10) -> object:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited {proc.returncode}:\n{log.read_text()}", pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not ready after {timeout}s:\n{log.read_text()}", pytrace=False)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def prometheus_rules_api(prom_bins, tmp_path_factory) -> Iterator[dict]:
    """A real Prometheus on 127.0.0.1 that loads the shipped rules; yields /api/v1/rules data."""
    d = tmp_path_factory.mktemp("prometheus")
    cfg = d / "prometheus.yml"
    cfg.write_text(f"global:\n  evaluation_interval: 1m\nrule_files:\n  - {RULES}\n")
    port = free_port()
    log = d / "prometheus.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [prom_bins["prometheus"], f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield http_json(f"http://127.0.0.1:{port}/api/v1/rules")["data"]
    finally:
        stop(proc)
