"""deploy/systemd under a real systemd: the shipped unit, sysusers.d and tmpfiles.d files are
installed into a Debian bookworm system (systemd 252, as EL9) that boots in a container
(`systemd-nspawn`, sharing this machine's network so the dev pool is reachable), with
opos-monitor installed at /opt/opos-monitor. Checked: the unit starts (READY reaches systemd),
its sandbox is in force on the main process, the secrets arrive as credentials, the daemon polls
every schedd of the dev pool from inside the sandbox (nothing refused by the system call or
address-family filters), the watchdog is fed, reload re-reads the configuration, and stop ends
with exit 0 well within TimeoutStopSec.

The only change to the unit is a test drop-in: the dev pool's client settings (CONDOR_CONFIG,
encryption optional) and a short WatchdogSec so that pings can be seen within the test.

Needs root, `systemd-nspawn` (apt-get install systemd-container) and `debootstrap`; the
bookworm tree is built once (about 3 minutes, from the machine's Debian mirror) and cached in
$OPOS_DEPLOYTEST_CACHE (default /var/cache/opos-deploytest).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ._tools import REPO, SYSTEMD_DIR, run, tool

pytestmark = pytest.mark.integration

CACHE = Path(os.environ.get("OPOS_DEPLOYTEST_CACHE", "/var/cache/opos-deploytest"))
ROOTFS = CACHE / "bookworm"
WHEELS = CACHE / "wheels"
BUILD_ID = "1"  # bump when the package set below changes
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,procps"
NSPAWN_HINT = "apt-get install systemd-container debootstrap"


def _mirror() -> str:
    """The Debian mirror this machine's apt already uses."""
    for f in [*Path("/etc/apt/sources.list.d").glob("*.sources"), Path("/etc/apt/sources.list")]:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["URIs:"] and "security" not in line:
                return parts[1]
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if "://" in p)
    pytest.fail("no Debian mirror found in /etc/apt sources", pytrace=False)


def _chroot(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run(["chroot", str(ROOTFS), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", *args],
               timeout=timeout)


def ensure_rootfs() -> None:
    stamp = ROOTFS / ".opos-deploytest-build"
    if stamp.is_file() and stamp.read_text().strip() == BUILD_ID:
        return
    tmp = ROOTFS.with_name(ROOTFS.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    proc = run([tool("debootstrap", NSPAWN_HINT), "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(tmp),
                _mirror()], timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(ROOTFS, ignore_errors=True)
    tmp.rename(ROOTFS)
    proc = _chroot("python3", "-m", "venv", "/opt/opos-monitor")
    assert proc.returncode == 0, proc.stderr
    stamp.write_text(BUILD_ID + "\n")


def install_package() -> None:
    """This checkout as a wheel (plus its dependencies' wheels, cached) into /opt/opos-monitor."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    proc = run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(WHEELS), "--find-links", str(WHEELS),
                str(REPO)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    inside = ROOTFS / "tmp/wheels"
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(WHEELS, inside)
    pip = "/opt/opos-monitor/bin/pip"
    for args in (["install", "-q", "--no-index", "--find-links", "/tmp/wheels", "opos-monitor"],
                 ["install", "-q", "--no-index", "--find-links", "/tmp/wheels", "--force-reinstall", "--no-deps",
                  "opos-monitor"]):
        proc = _chroot(pip, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    link = ROOTFS / "usr/bin/opos-monitor"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("/opt/opos-monitor/bin/opos-monitor")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_unit(port: int, token: Path) -> None:
    etc = ROOTFS / "etc"
    for sub in ("systemd/system", "sysusers.d", "tmpfiles.d", "systemd/system/multi-user.target.wants"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(SYSTEMD_DIR / "opos-monitor.service", etc / "systemd/system/opos-monitor.service")
    shutil.copy(SYSTEMD_DIR / "opos-monitor.sysusers", etc / "sysusers.d/opos-monitor.conf")
    shutil.copy(SYSTEMD_DIR / "opos-monitor.tmpfiles", etc / "tmpfiles.d/opos-monitor.conf")
    wants = etc / "systemd/system/multi-user.target.wants/opos-monitor.service"
    if not wants.is_symlink():
        wants.symlink_to("../opos-monitor.service")
    dropins = etc / "systemd/system/opos-monitor.service.d"
    shutil.rmtree(dropins, ignore_errors=True)
    dropins.mkdir()
    (dropins / "test.conf").write_text(
        "[Service]\n"
        "Environment=CONDOR_CONFIG=/dev/null _CONDOR_SEC_CLIENT_ENCRYPTION=OPTIONAL _CONDOR_SEC_CLIENT_INTEGRITY=OPTIONAL\n"
        "WatchdogSec=20s\n")
    shutil.rmtree(etc / "opos-monitor", ignore_errors=True)
    shutil.rmtree(ROOTFS / "var/lib/opos-monitor", ignore_errors=True)
    (etc / "opos-monitor/tokens").mkdir(parents=True)
    (etc / "opos-monitor/secrets").mkdir(parents=True)
    shutil.copy(token, etc / "opos-monitor/tokens/read.token")
    (etc / "opos-monitor/secrets/es-password").write_text("unused-in-this-test\n")
    (etc / "opos-monitor/opos-monitor.toml").write_text(f"""\
state_dir = "/var/lib/opos-monitor"
[pools.fermigrid]
collectors = ["127.0.0.1:9618"]
[pools.ospool]
collectors = ["127.0.0.1:9619"]
[htcondor]
token_file = "/etc/opos-monitor/tokens/read.token"
auth_methods = ["IDTOKENS"]
[sources]
queue_interval_s = 10
history_interval_s = 10
[metrics]
listen = "127.0.0.1:{port}"
""")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


class Container:
    def __init__(self, log: Path) -> None:
        self.name = f"opos-deploytest-{os.getpid()}"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [tool("systemd-nspawn", NSPAWN_HINT), "-D", str(ROOTFS), "-b", "--register=no", "--keep-unit",
             "-M", self.name, "--console=passive"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        self.leader = 0
        while time.monotonic() < deadline and not self.leader:
            assert self.proc.poll() is None, f"systemd-nspawn exited: see {log}"
            kids = _children(self.proc.pid)
            self.leader = kids[0] if kids else 0
            time.sleep(0.2)
        assert self.leader, "no container init process"

    def sh(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(["nsenter", "-t", str(self.leader), "-a", *args], timeout=timeout)

    def prop(self, name: str) -> str:
        return self.sh("systemctl", "show", "opos-monitor", "-p", name, "--value").stdout.strip()

    def wait_state(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl", "is-active", "opos-monitor").stdout.strip()
            if state in ("active", "failed"):
                return state
            time.sleep(1)
        return state

    def journal(self) -> str:
        return self.sh("journalctl", "-b", "-u", "opos-monitor", "--no-pager", "-o", "cat").stdout  # this boot only

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn powers the container off
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture(scope="module")
def booted(devpool, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("booting a systemd container needs root", pytrace=False)
    tool("systemd-nspawn", NSPAWN_HINT)
    ensure_rootfs()
    install_package()
    port = _free_port()
    token = Path(os.environ.get("OPOS_DEVPOOL_CACHE", "/var/cache/opos-monitor")) / "tokens/opos-read.token"
    install_unit(port, token)
    _, htcondor2 = devpool
    schedds = sum(len(htcondor2.Collector(a).query(htcondor2.AdType.Schedd, projection=["Name"]))
                  for a in ("127.0.0.1:9618", "127.0.0.1:9619"))
    box = Container(tmp_path_factory.mktemp("nspawn") / "console.log")
    try:
        yield box, port, schedds
    finally:
        box.close()


def test_unit_starts_and_reports_ready(booted):
    box, _, schedds = booted
    state = box.wait_state()
    assert state == "active", box.sh("systemctl", "status", "opos-monitor", "--no-pager").stdout + box.journal()[-3000:]
    # Type=notify: "active" only after READY=1; the status line is the daemon's own
    assert re.fullmatch(rf"polling {schedds} schedds; last successful poll \d+ s ago", box.prop("StatusText")), \
        box.prop("StatusText")
    assert box.prop("ExecStartPre").count("check-config") == 1


def test_sandbox_is_in_force_on_the_main_process(booted):
    box, _, _ = booted
    assert box.wait_state() == "active"
    pid = box.prop("MainPID")
    status = dict(line.split(":", 1) for line in box.sh("cat", f"/proc/{pid}/status").stdout.splitlines() if ":" in line)
    assert status["NoNewPrivs"].strip() == "1"
    assert status["CapBnd"].strip() == "0000000000000000" and status["CapEff"].strip() == "0000000000000000"
    assert status["Seccomp"].strip() == "2", "the system call filter is loaded"
    uid = box.sh("id", "-u", "opos-monitor").stdout.strip()
    assert status["Uid"].split()[0] == uid and uid != "0"
    # ProtectSystem=strict: the file system is read-only for it, its state directory is not
    mounts = {}
    for line in box.sh("cat", f"/proc/{pid}/mountinfo").stdout.splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5].split(",")  # the last mount on a path wins
    assert "ro" in mounts["/"]
    assert "rw" in mounts["/var/lib/opos-monitor"]


def test_secrets_arrive_as_credentials(booted):
    box, _, _ = booted
    assert box.wait_state() == "active"
    pid = box.prop("MainPID")
    env = dict(item.split("=", 1) for item in box.sh("cat", f"/proc/{pid}/environ").stdout.split("\0") if "=" in item)
    creds = "/run/credentials/opos-monitor.service"
    assert env["OPOS_MONITOR__HTCONDOR__TOKEN_FILE"] == f"{creds}/condor-read.token"
    assert env["OPOS_MONITOR__ELASTICSEARCH__PASSWORD_FILE"] == f"{creds}/es-password"
    listing = box.sh("stat", "-c", "%a %U %n", f"{creds}/condor-read.token", f"{creds}/es-password").stdout.split("\n")
    assert [l.split()[:2] for l in listing if l] == [["400", "opos-monitor"], ["400", "opos-monitor"]]


def test_daemon_polls_every_schedd_from_inside_the_sandbox(booted):
    box, port, schedds = booted
    assert box.wait_state() == "active"
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    deadline = time.monotonic() + 120
    up: set[str] = set()
    while time.monotonic() < deadline:
        code, text = _get(f"http://127.0.0.1:{port}/metrics")
        up = {m.group(1) for m in re.finditer(r'^opos_source_up\{[^}]*schedd="([^"]+)"[^}]*source="queue"[^}]*\} 1\.0$',
                                              text, re.M)}
        if code == 200 and len(up) == schedds:
            break
        time.sleep(2)
    assert len(up) == schedds, (up, box.journal()[-4000:])
    assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    journal = box.journal()
    for sign in ("Operation not permitted", "Failed to determine my IP address", "Bad system call", "Permission denied"):
        assert sign not in journal, sign


def test_watchdog_is_fed(booted):
    box, _, _ = booted
    assert box.wait_state() == "active"
    assert box.prop("WatchdogUSec") == "20s"
    first = int(box.prop("WatchdogTimestampMonotonic") or 0)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and int(box.prop("WatchdogTimestampMonotonic") or 0) <= first:
        time.sleep(2)
    assert int(box.prop("WatchdogTimestampMonotonic")) > first, "no WATCHDOG=1 ping seen by systemd"
    assert box.wait_state() == "active"


def test_reload_rereads_the_configuration(booted):
    box, _, _ = booted
    assert box.wait_state() == "active"
    pid = box.prop("MainPID")
    proc = box.sh("systemctl", "reload", "opos-monitor")
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "SIGHUP: configuration reloaded" not in box.journal():
        time.sleep(1)
    assert "SIGHUP: configuration reloaded" in box.journal()
    assert box.prop("MainPID") == pid and box.wait_state() == "active"


def test_stop_exits_zero_within_the_stop_timeout(booted):
    box, _, _ = booted
    assert box.wait_state() == "active"
    t0 = time.monotonic()
    proc = box.sh("systemctl", "stop", "opos-monitor", timeout=180)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert box.prop("Result") == "success"
    assert (box.prop("ExecMainCode"), box.prop("ExecMainStatus")) == ("1", "0"), "exited (code 1 = CLD_EXITED) with 0"
    assert took < 60, f"stop took {took:.0f}s"
    assert '"event":"stopped"' in box.journal()
