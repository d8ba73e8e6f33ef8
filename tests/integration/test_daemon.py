"""`opos-monitor run` against the real dev pool: READY over a real notify socket, health and
metrics on its port, both pools' schedds polled on schedule, SIGTERM exits 0 in bounded time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEV_CONFIG = ROOT / "deploy" / "dev-pool" / "opos-monitor.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def daemon(devpool, tmp_path):
    port = free_port()
    sock_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "OPOS_MONITOR__STATE_DIR": str(tmp_path / "state"),
           "OPOS_MONITOR__METRICS__LISTEN": f"127.0.0.1:{port}",
           "OPOS_MONITOR__SOURCES__QUEUE_INTERVAL_S": "3", "OPOS_MONITOR__SOURCES__HISTORY_INTERVAL_S": "5"}
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "opos_monitor.cli", "-c", str(DEV_CONFIG), "--log-format", "json",
                             "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    yield proc, notify, f"http://127.0.0.1:{port}", tmp_path / "daemon.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    notify.close()
    log.close()


def test_run_polls_both_pools_serves_health_and_stops_cleanly(daemon):
    proc, notify, url, logfile = daemon
    msg = notify.recv(4096).decode()
    assert msg.startswith("READY=1"), msg
    assert "STATUS=polling 3 schedds" in msg, msg  # what `systemctl status` shows
    deadline = time.monotonic() + 60
    while True:
        status, body = get(url + "/metrics")
        polled = [line for line in body.splitlines()
                  if line.startswith("opos_source_last_success_timestamp_seconds") and 'source="queue"' in line
                  and not line.rstrip().endswith(" 0.0")]
        if len(polled) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    schedds = {line.split('schedd="')[1].split('"')[0] for line in polled}
    assert {s.split("@")[0] for s in schedds} == {"jobsub01", "jobsub02", "ospool-ap01"}, body[:2000]
    assert get(url + "/healthz")[0] == 200
    status, ready = get(url + "/readyz")
    assert status == 200 and '"status": "ok"' in ready
    # queue polls repeat on schedule (interval 3 s)
    before = {line for line in body.splitlines() if line.startswith("opos_source_last_success_timestamp_seconds")}
    time.sleep(7)
    after = {line for line in get(url + "/metrics")[1].splitlines()
             if line.startswith("opos_source_last_success_timestamp_seconds")}
    assert before != after
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0, logfile.read_text()[-3000:]
    assert time.monotonic() - t0 < 90
    rest = []
    notify.settimeout(2)
    try:
        while True:
            rest.append(notify.recv(4096).decode())
    except socket.timeout:
        pass
    assert any("STOPPING=1" in m for m in rest)
    assert "Traceback" not in logfile.read_text()


def test_run_refuses_a_busy_metrics_port_clearly(devpool, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "OPOS_MONITOR__STATE_DIR": str(tmp_path), "OPOS_MONITOR__METRICS__LISTEN": f"127.0.0.1:{port}"}
        proc = subprocess.run([sys.executable, "-m", "opos_monitor.cli", "-c", str(DEV_CONFIG), "run"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "in use" in proc.stderr.lower() and "Traceback" not in proc.stderr
