"""deploy/systemd: the unit passes `systemd-analyze verify` with no message at all, its sandbox
scores well in `systemd-analyze security`, its hardening and life-cycle settings are the ones
the daemon relies on, its environment is a valid opos-monitor configuration, and the sysusers.d
and tmpfiles.d snippets create what they claim (run by systemd's own tools in a scratch root).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
from pathlib import Path

import pytest

from ._tools import REPO, SYSTEMD_DIR, clean_env, opos_monitor, run, tool

UNIT = SYSTEMD_DIR / "opos-monitor.service"
SYSUSERS = SYSTEMD_DIR / "opos-monitor.sysusers"
TMPFILES = SYSTEMD_DIR / "opos-monitor.tmpfiles"
SYSTEMD_HINT = "apt-get install systemd (systemd-analyze, systemd-sysusers, systemd-tmpfiles)"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every assignment in order (systemd keeps lists that way)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        assert not line.endswith("\\"), "no continuation lines, please (keeps this parser honest)"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def _host_unit_dir() -> Path:
    for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (d / "multi-user.target").exists():
            return d
    pytest.fail(f"no systemd unit directory with multi-user.target on this machine: {SYSTEMD_HINT}", pytrace=False)


def make_root(tmp: Path, unit_text: str) -> Path:
    """A scratch root for `systemd-analyze --root`: the host's system units (so every target
    the unit names resolves), the unit under test in /etc/systemd/system, the real
    opos-monitor console script at /usr/bin/opos-monitor and kill(1) at /bin/kill."""
    root = tmp / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(_host_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "bin").symlink_to("usr/bin")
    shutil.copy2(opos_monitor(), root / "usr/bin/opos-monitor")
    kill = shutil.which("kill") or "/bin/kill"
    shutil.copy2(kill, root / "usr/bin/kill")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/opos-monitor.service").write_text(unit_text)
    return root


def verify(root: Path):
    return run([tool("systemd-analyze", SYSTEMD_HINT), "verify", "--man=no", f"--root={root}",
                "/etc/systemd/system/opos-monitor.service"], env=clean_env(SYSTEMD_LOG_COLOR="0"))


# --- systemd-analyze -----------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify_without_any_message(tmp_path):
    proc = verify(make_root(tmp_path, UNIT.read_text()))
    assert proc.returncode == 0, proc.stderr
    # Unknown keys and bad values are only logged ("…, ignoring.") with exit 0: any message fails.
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("old,new,expect", [
    ("ProtectHome=yes", "ProtectHom=yes", "Unknown key"),
    ("MemoryMax=4G", "MemoryMax=4Q", "Invalid memory limit"),
    ("KillMode=mixed", "KillMode=mixd", "kill mode"),
    ("ExecStart=/usr/bin/opos-monitor run", "ExecStart=/usr/bin/opos-monitr run", "is not executable"),
])
def test_verify_check_catches_broken_units(tmp_path, old, new, expect):
    """The check above is not vacuous: each of these mistakes produces a message."""
    text = UNIT.read_text()
    assert old in text
    proc = verify(make_root(tmp_path, text.replace(old, new)))
    assert expect.lower() in (proc.stdout + proc.stderr).lower()


def test_unit_sandbox_exposure_is_low(tmp_path):
    """`systemd-analyze security` (offline): overall exposure at most 1.5 of 10."""
    root = make_root(tmp_path, UNIT.read_text())
    proc = run([tool("systemd-analyze", SYSTEMD_HINT), "security", "--offline=yes", f"--root={root}",
                "--threshold=15", "--no-pager", "opos-monitor.service"], env=clean_env(SYSTEMD_LOG_COLOR="0"))
    m = re.search(r"Overall exposure level for opos-monitor\.service: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 1.5, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- what the daemon relies on ---------------------------------------------------------------


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "User": "opos-monitor",
    "Group": "opos-monitor",
    "ExecStart": "/usr/bin/opos-monitor run",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "KillMode": "mixed",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "StateDirectory": "opos-monitor",
    "ConfigurationDirectory": "opos-monitor",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "SystemCallArchitectures": "native",
}


@pytest.mark.parametrize("key,value", sorted(REQUIRED.items()))
def test_unit_setting(unit, key, value):
    assert unit["Service"].get(key, [None])[-1] == value


def test_system_call_filter_allows_system_services_only(unit):
    assert "@system-service" in unit["Service"]["SystemCallFilter"]
    assert any(v.startswith("~") and "@privileged" in v for v in unit["Service"]["SystemCallFilter"])


def _seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for num, unit_ in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(num) * units[unit_]
    return total


def test_stop_timeout_outlasts_the_daemons_drain(unit):
    """SIGTERM lets in-flight work finish for shutdown_timeout_s (config); systemd must wait longer."""
    from opos_monitor.config import Config

    drain = Config().shutdown_timeout_s + 10  # + up to 10 s for queries abandoned at the timeout
    assert _seconds(unit["Service"]["TimeoutStopSec"][-1]) >= drain + 15


def test_watchdog_and_memory_limits_are_set(unit):
    svc = unit["Service"]
    # The daemon pings every WatchdogSec/2 while polls progress (2 minutes without one = stuck).
    assert _seconds(svc["WatchdogSec"][-1]) >= 60
    assert re.fullmatch(r"\d+[KMGT]?", svc["MemoryMax"][-1])
    assert svc["StateDirectoryMode"][-1] == "0750"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][-1] and "network-online.target" in unit["Unit"]["Wants"][-1]


def test_secrets_come_in_as_credentials(unit):
    """Every LoadCredential= is handed to the daemon as a *_FILE path under %d, never a value."""
    svc = unit["Service"]
    creds = dict(v.split(":", 1) for v in svc["LoadCredential"])
    assert set(creds) == {"condor-read.token", "es-password"}
    env = " ".join(svc["Environment"])
    assert "OPOS_MONITOR__HTCONDOR__TOKEN_FILE=%d/condor-read.token" in env
    assert "OPOS_MONITOR__ELASTICSEARCH__PASSWORD_FILE=%d/es-password" in env
    assert not re.search(r"(PASSWORD|API_KEY|TOKEN)=", env.replace("_FILE=", "")), env


def _unit_environment(unit, creds_dir: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for assignment in unit["Service"]["Environment"]:
        for item in assignment.split():
            key, _, value = item.partition("=")
            env[key] = value.replace("%d", str(creds_dir))
    return env


def test_unit_environment_is_a_valid_configuration(unit, tmp_path):
    """The unit's Environment= names real configuration keys (unknown keys are errors) and,
    with the example configuration, points the token and password at the credentials."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "condor-read.token").write_text("not-a-real-token\n")
    (creds / "es-password").write_text("not-a-real-password\n")
    env = clean_env(**_unit_environment(unit, creds))
    env["OPOS_MONITOR_CONFIG"] = str(REPO / "deploy/opos-monitor.example.toml")  # as /etc/opos-monitor/opos-monitor.toml
    assert _unit_environment(unit, creds)["OPOS_MONITOR_CONFIG"] == "/etc/opos-monitor/opos-monitor.toml"
    proc = run([opos_monitor(), "check-config", "--show"], env=env)
    assert proc.returncode == 0, proc.stderr
    import json

    shown = json.loads(proc.stdout)
    assert shown["htcondor"]["token_file"] == str(creds / "condor-read.token")
    assert shown["elasticsearch"]["password_file"] == str(creds / "es-password")
    assert shown["logging"]["format"] == "json"
    assert "not-a-real" not in proc.stdout + proc.stderr


def test_exec_start_pre_checks_the_configuration(unit):
    assert unit["Service"]["ExecStartPre"] == ["/usr/bin/opos-monitor check-config"]


# --- sysusers.d / tmpfiles.d, run by systemd's own tools in a scratch root -------------------


@pytest.fixture()
def users_root(tmp_path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, root / "usr/lib/sysusers.d/opos-monitor.conf")
    proc = run([tool("systemd-sysusers", SYSTEMD_HINT), f"--root={root}"], env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return root


def _passwd(root: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line}


def _group(root: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines() if line}


def test_sysusers_creates_an_unprivileged_system_user(users_root):
    user = _passwd(users_root)["opos-monitor"]
    _, _, uid, gid, _gecos, home, shell = user
    assert 0 < int(uid) < 1000, "a system user, not root"
    assert _group(users_root)["opos-monitor"][2] == gid
    assert home == "/var/lib/opos-monitor"
    assert shell.endswith("nologin")


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles sets owners: needs root (CI runs as root)")
def test_tmpfiles_creates_the_directories_with_their_owners(users_root):
    root = users_root
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    shutil.copy(TMPFILES, root / "usr/lib/tmpfiles.d/opos-monitor.conf")
    # a token an administrator copied in with a too-open mode gets fixed by the z line
    (root / "etc/opos-monitor/tokens").mkdir(parents=True)
    (root / "etc/opos-monitor/tokens/read.token").write_text("x\n")
    os.chmod(root / "etc/opos-monitor/tokens/read.token", 0o644)
    proc = run([tool("systemd-tmpfiles", SYSTEMD_HINT), f"--root={root}", "--create"], env=clean_env())
    assert proc.returncode == 0, proc.stderr
    uid, gid = (int(x) for x in _passwd(root)["opos-monitor"][2:4])

    def mode_owner(rel: str) -> tuple[str, int, int]:
        st = (root / rel).stat()
        return oct(st.st_mode & 0o7777), st.st_uid, st.st_gid

    assert mode_owner("etc/opos-monitor") == ("0o755", 0, 0)
    assert mode_owner("etc/opos-monitor/tokens") == ("0o750", 0, gid)
    assert mode_owner("etc/opos-monitor/tokens/read.token") == ("0o640", 0, gid)
    assert mode_owner("etc/opos-monitor/secrets") == ("0o700", 0, 0)
    assert mode_owner("var/lib/opos-monitor") == ("0o750", uid, gid)


def test_unit_paths_match_the_tmpfiles_and_unit_credentials(unit):
    """LoadCredential sources live in the directories tmpfiles.d creates."""
    lines = [l.split() for l in TMPFILES.read_text().splitlines() if l.strip() and not l.startswith("#")]
    dirs = {parts[1] for parts in lines if parts[0] == "d"}
    for source in (v.split(":", 1)[1] for v in unit["Service"]["LoadCredential"]):
        assert str(Path(source).parent) in dirs, source
