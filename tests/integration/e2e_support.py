"""Helpers for the alerting end-to-end test (test_alerting_e2e.py): the real daemon, a real
Prometheus loading a copy of the shipped rules with shortened ``for:``, a real Alertmanager
loading a copy of the shipped example config pointed at a test webhook, a recorder of every
alert state Prometheus reports, and diagnostics for failure messages.

Everything listens on 127.0.0.1 on free ports; every process is started here and stopped by
its own id (process group for the daemon and its query workers).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pytest

# tests/ is on sys.path (pytest's rootdir-based import of the tests/alerts and tests/integration
# packages): reuse the real-Prometheus helpers and the webhook receiver of the alert tests.
from alerts.conftest import AM_CONFIG, RULES, free_port, http_json, stop, wait_ready  # noqa: E402
from alerts.test_alertmanager import Webhook  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEVPOOL = ROOT / "deploy" / "dev-pool" / "devpool"
DEV_CONFIG = ROOT / "deploy" / "dev-pool" / "opos-monitor.toml"
POOLS = {"fermigrid": "127.0.0.1:9618", "ospool": "127.0.0.1:9619"}
POOL_CONFIG = {"fermigrid": "/etc/condor/condor_config", "ospool": "/etc/condor-ospool/condor_config"}
SCRAPE_JOB = "opos-monitor"  # OposMonitorDown looks for up{job="opos-monitor"}

_DURATION = re.compile(r"^(\d+)([smh])$")
_UNIT = {"s": 1, "m": 60, "h": 3600}


# ------------------------------------------------------------------------------ config copies
def seconds(duration: str) -> int:
    m = _DURATION.match(duration)
    if not m:
        raise ValueError(f"unsupported duration {duration!r}")
    return int(m.group(1)) * _UNIT[m.group(2)]


def write_scaled_rules(dst: Path, divisor: int = 30, src: Path = RULES) -> dict[str, tuple[str, str]]:
    """A copy of the shipped rules with every alert's ``for:`` divided by ``divisor`` (at least
    2 s when it was not 0), nothing else changed. Returns alert -> (shipped, test) ``for:``."""
    out, changes, alert = [], {}, None
    for line in src.read_text().splitlines(keepends=True):
        m = re.match(r"^\s*- alert: (\w+)\s*$", line)
        if m:
            alert = m.group(1)
        m = re.match(r"^(\s*)for: (\S+)\s*$", line)
        if m:
            old = seconds(m.group(2))
            new = 0 if old == 0 else max(2, round(old / divisor))
            changes[alert] = (m.group(2), f"{new}s")
            line = f"{m.group(1)}for: {new}s\n"
        out.append(line)
    dst.write_text("".join(out))
    return changes


def write_am_config(dst: Path, hook_url: str, src: Path = AM_CONFIG) -> str:
    """A copy of the example Alertmanager config: receivers to the test webhook, group_wait 1s,
    group_interval 2s (routing, grouping and inhibition as shipped)."""
    text = src.read_text()
    assert "http://127.0.0.1:9095" in text, "the example config's receiver URLs changed"
    text = text.replace("http://127.0.0.1:9095", hook_url)
    text = re.sub(r"(?m)^(\s*)group_wait: \S+$", r"\1group_wait: 1s", text)
    text = re.sub(r"(?m)^(\s*)group_interval: \S+$", r"\1group_interval: 2s", text)
    dst.write_text(text)
    return text


def prometheus_config(target: str, alertmanager: str, rules: Path, interval: str = "2s") -> str:
    return (
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        f"rule_files:\n  - {rules}\n"
        "alerting:\n  alertmanagers:\n    - static_configs:\n"
        f"        - targets: ['{alertmanager}']\n"
        f"scrape_configs:\n  - job_name: {SCRAPE_JOB}\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )


# ------------------------------------------------------------------------------ processes
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    group: bool = False  # started in its own session: stop the whole group (query workers)

    def tail(self, lines: int = 40, skip: str | None = None) -> str:
        """The last lines of the log; lines containing ``skip`` are left out (and counted)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"
        rows = text.splitlines()
        kept = [ln for ln in rows if not skip or skip not in ln]
        note = f"[{len(rows) - len(kept)} lines containing {skip!r} left out]\n" if len(kept) < len(rows) else ""
        return note + "\n".join(kept[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        p = self.popen
        if not self.group:
            stop(p)
            return
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # the daemon's query worker processes, if any outlived it
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if p.poll() is None:
            p.wait(10)


def start(name: str, args: list[str], log: Path, env: Mapping[str, str] | None = None, group: bool = False) -> Proc:
    with log.open("wb") as fh:
        popen = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                 start_new_session=group)
    return Proc(name, popen, log, group)


def start_daemon(d: Path, port: int, queue_s: float = 2, history_s: float = 3) -> Proc:
    env = {**os.environ, "OPOS_MONITOR__STATE_DIR": str(d / "state"),
           "OPOS_MONITOR__METRICS__LISTEN": f"127.0.0.1:{port}",
           "OPOS_MONITOR__SOURCES__QUEUE_INTERVAL_S": str(queue_s),
           "OPOS_MONITOR__SOURCES__HISTORY_INTERVAL_S": str(history_s)}
    env.pop("NOTIFY_SOCKET", None)
    return start("opos-monitor", [sys.executable, "-m", "opos_monitor.cli", "-c", str(DEV_CONFIG), "--log-format",
                                  "json", "run"], d / "daemon.log", env, group=True)


def start_alertmanager(binary: str, d: Path, config: Path, port: int) -> Proc:
    proc = start("alertmanager", [binary, f"--config.file={config}", f"--storage.path={d / 'am-data'}",
                                  f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                 d / "alertmanager.log")
    wait_ready(f"http://127.0.0.1:{port}/-/ready", proc.popen, proc.log)
    return proc


def start_prometheus(binary: str, d: Path, config: Path, port: int) -> Proc:
    proc = start("prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={d / 'prom-data'}",
                                f"--web.listen-address=127.0.0.1:{port}"], d / "prometheus.log")
    wait_ready(f"http://127.0.0.1:{port}/-/ready", proc.popen, proc.log)
    return proc


# ------------------------------------------------------------------------------ dev pool
def devpool_cmd(*args: str, stdin: str | None = None, config: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if config:
        env["OPOS_DEVPOOL_CONFIG"] = config
    proc = subprocess.run([str(DEVPOOL), *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"devpool {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-2000:]}")
    return proc


def tagged_submit_description(sub: Path, tag: str, n: int) -> str:
    """A catalogue submit file with this test's tag and ``queue n`` (condor_submit refuses
    ``-queue`` on a file that has its own queue statement)."""
    lines = sub.read_text().splitlines()
    queues = [i for i, ln in enumerate(lines) if re.match(r"^\s*queue\b", ln)]
    assert len(queues) == 1, f"{sub} should have exactly one queue statement"
    lines[queues[0]:] = [f'+OposTestTag = "{tag}"', f"queue {n}"]
    return "\n".join(lines) + "\n"


def submit(schedd: str, description: str, pool: str = "fermigrid") -> int:
    """Submit (from stdin, in the submitter's jobs directory) as the pool's submitter."""
    out = devpool_cmd("submit", "-", "-name", schedd, "-pool", POOLS[pool], "-terse", stdin=description).stdout
    m = re.match(r"\s*(\d+)\.\d+", out)
    if not m:
        raise RuntimeError(f"cannot read the cluster id from condor_submit -terse: {out!r}")
    return int(m.group(1))


def remove_tagged(schedd: str, tag: str, pool: str = "fermigrid") -> subprocess.CompletedProcess[str]:
    """Remove this test's jobs, never anyone else's."""
    return devpool_cmd("exec", "condor_rm", "-name", schedd, "-pool", POOLS[pool], "-constraint",
                   f'OposTestTag == "{tag}"', config=POOL_CONFIG[pool], check=False)


def tagged_jobs(htcondor2: Any, schedd: str, tag: str, pool: str = "fermigrid") -> list[dict[str, Any]]:
    try:
        coll = htcondor2.Collector(POOLS[pool])
        client = htcondor2.Schedd(coll.locate(htcondor2.DaemonType.Schedd, schedd))
        ads = client.query(f'OposTestTag == "{tag}"',
                           ["ClusterId", "ProcId", "JobStatus", "HoldReasonCode", "MachineAttrGLIDEIN_Site0"])
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return [{"error": repr(exc)}]
    return [{k: ad.get(k) for k in ("ClusterId", "ProcId", "JobStatus", "HoldReasonCode", "MachineAttrGLIDEIN_Site0")}
            for ad in ads]


# ------------------------------------------------------------------------------ observing
def get_text(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one series in exposition text (labels given must match; others ignored)."""
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def query(prom: str, expr: str) -> list[dict]:
    data = http_json(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert data["status"] == "success", data
    return data["data"]["result"]


def key_of(labels: Mapping[str, str]) -> frozenset:
    return frozenset(labels.items())


@dataclass
class Seen:
    labels: dict[str, str]
    first: dict[str, float] = field(default_factory=dict)  # state -> monotonic time first seen
    active_at: str | None = None


class AlertRecorder:
    """Polls Prometheus's /api/v1/alerts every ``every`` s in a thread and records, for every
    alert (label set), when each state (pending, firing) was first seen: so a short pending
    phase is never missed while the test waits for something else."""

    def __init__(self, prom: str, every: float = 0.5) -> None:
        self.prom = prom
        self.every = every
        self.seen: dict[frozenset, Seen] = {}
        self.last: list[dict] = []
        self.errors = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="alert-recorder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alerts = http_json(f"{self.prom}/api/v1/alerts", timeout=5)["data"]["alerts"]
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                self.errors += 1
            else:
                now = time.monotonic()
                with self.lock:
                    self.last = alerts
                    for a in alerts:
                        s = self.seen.setdefault(key_of(a["labels"]), Seen(dict(a["labels"])))
                        s.first.setdefault(a["state"], now)
                        s.active_at = a.get("activeAt", s.active_at)
            self._stop.wait(self.every)

    def find(self, alertname: str, **labels: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen.values() if s.labels.get("alertname") == alertname
                    and all(s.labels.get(k) == v for k, v in labels.items())]

    def firing(self, alertname: str, **labels: str) -> Seen | None:
        return next((s for s in self.find(alertname, **labels) if "firing" in s.first), None)

    def summary(self) -> str:
        with self.lock:
            now = [f"  {a['labels'].get('alertname')} {a['state']} "
                   f"{ {k: v for k, v in a['labels'].items() if k != 'alertname'} } value={a.get('value')}"
                   for a in self.last]
            ever = [f"  {s.labels.get('alertname')} {sorted(s.first)} "
                    f"{ {k: v for k, v in s.labels.items() if k not in ('alertname', 'severity')} }"
                    for s in self.seen.values()]
        return ("Prometheus alerts now:\n" + ("\n".join(now) or "  (none)")
                + "\nalert states seen so far:\n" + ("\n".join(ever) or "  (none)"))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)


def notifications(hook: Webhook, path: str | None = None) -> list[dict]:
    """Every alert the webhook received: receiver path, status, labels, annotations, group."""
    with hook.lock:
        received = list(hook.received)
    return [{"path": p, "receiver": body.get("receiver"), "status": a.get("status"), "labels": a["labels"],
             "annotations": a.get("annotations", {}), "groupLabels": body.get("groupLabels", {})}
            for p, body in received if path is None or p == path for a in body.get("alerts", [])]


def am_alerts(am: str) -> list[dict]:
    return http_json(f"{am}/api/v2/alerts")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, diag: Callable[[], str],
             every: float = 0.5) -> Any:
    """The first truthy value of ``predicate`` within ``timeout`` s, else fail with ``diag()``."""
    t0 = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n\n{diag()}", pytrace=False)
        time.sleep(every)


def fmt(rows: Iterable[Any]) -> str:
    return "\n".join(f"  {r}" for r in rows) or "  (none)"
