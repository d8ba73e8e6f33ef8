"""deploy/condor: the read-only token's promises.

* The config snippet, read by HTCondor's own configuration parser (the ``htcondor2`` bindings),
  adds IDTOKENS to the READ methods and the monitor's identity to ALLOW_READ on top of any
  existing policy, and changes no other authorization level.
* On the real dev pool (integration): with the read-only IDTOKEN, reads succeed and every write
  — submit, edit, hold — is refused, although the pool's policy is ``ALLOW_WRITE = *`` (a client
  with WRITE authorization is allowed the very same hold); and the README's ``condor_ping``
  check shows exactly that.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from ._tools import CONDOR_DIR, clean_env, python, run

SNIPPET = CONDOR_DIR / "99-opos-monitor-read.config"
LEVELS = ("WRITE", "ADMINISTRATOR", "DAEMON", "NEGOTIATOR", "CONFIG", "OWNER",
          "ADVERTISE_MASTER", "ADVERTISE_SCHEDD", "ADVERTISE_STARTD")
KNOBS = ("ALLOW_READ", "SEC_READ_AUTHENTICATION", "SEC_READ_AUTHENTICATION_METHODS", "OPOS_MONITOR_IDENTITY",
         *(f"ALLOW_{lvl}" for lvl in LEVELS), *(f"DENY_{lvl}" for lvl in ("READ", *LEVELS)),
         *(f"SEC_{lvl}_AUTHENTICATION_METHODS" for lvl in LEVELS))


def condor_params(tmp_path: Path, base: str, with_snippet: bool) -> dict[str, str | None]:
    config = tmp_path / ("with.config" if with_snippet else "without.config")
    config.write_text(textwrap.dedent(base) + (f"include : {SNIPPET}\n" if with_snippet else ""))
    code = ("import json, htcondor2 as h; "
            f"print(json.dumps({{k: h.param.get(k) for k in {list(KNOBS)!r}}}))")
    proc = run([python(), "-c", code], env=clean_env(CONDOR_CONFIG=str(config)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _items(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").replace(",", " ").split()]


BASES = {
    # HTCondor's recommended security (what a 9.x+ pool's condor_config uses)
    "recommended_v9_0": "use SECURITY : recommended_v9_0\n",
    # a pool that restricts reads to its hosts and reads by FS/SSL only
    "restricted": """\
        use SECURITY : recommended_v9_0
        SEC_READ_AUTHENTICATION = REQUIRED
        SEC_READ_AUTHENTICATION_METHODS = FS, SSL
        ALLOW_READ = *.fnal.gov, condor@*
        """,
    # no security configuration at all
    "empty": "",
}


@pytest.mark.parametrize("base", sorted(BASES))
def test_snippet_adds_read_access_for_the_identity_only(tmp_path, base):
    before = condor_params(tmp_path, BASES[base], with_snippet=False)
    after = condor_params(tmp_path, BASES[base], with_snippet=True)
    identity = after["OPOS_MONITOR_IDENTITY"]
    assert identity == "opos-monitor@fnal.gov"
    # READ: the old list, plus the identity (an unset list stays open to everyone as before)
    old_read = _items(before["ALLOW_READ"]) or ["*"]
    assert _items(after["ALLOW_READ"]) == old_read + [f"{identity}/*"]
    assert "$(" not in after["ALLOW_READ"], "every macro expanded"
    # READ methods: the old ones (or the defaults they fall back to), plus IDTOKENS
    methods = _items(after["SEC_READ_AUTHENTICATION_METHODS"])
    assert "IDTOKENS" in methods
    old_methods = _items(before["SEC_READ_AUTHENTICATION_METHODS"])
    assert all(m in methods for m in old_methods)
    # nothing else changes: not the READ requirement, not any other level
    for knob in KNOBS:
        if knob not in ("ALLOW_READ", "SEC_READ_AUTHENTICATION_METHODS", "OPOS_MONITOR_IDENTITY"):
            assert after[knob] == before[knob], knob


def test_snippet_lock_down_lines_are_valid_when_enabled(tmp_path):
    text = SNIPPET.read_text().replace("#SEC_READ_AUTHENTICATION", "SEC_READ_AUTHENTICATION").replace("#ALLOW_READ", "ALLOW_READ")
    local = tmp_path / "99-opos-monitor-read.config"
    local.write_text(text)
    config = tmp_path / "condor_config"
    config.write_text(f"use SECURITY : recommended_v9_0\ninclude : {local}\n")
    code = "import htcondor2 as h; print(h.param['ALLOW_READ']); print(h.param['SEC_READ_AUTHENTICATION'])"
    proc = run([python(), "-c", code], env=clean_env(CONDOR_CONFIG=str(config)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    allow, required = proc.stdout.splitlines()
    assert required == "REQUIRED"
    assert "*" not in _items(allow) and "opos-monitor@fnal.gov/*" in _items(allow)
    assert "$(" not in allow


# --- on the real dev pool ---------------------------------------------------------------------

PROBE = """
import json, sys
import htcondor2 as h
out = {}
coll = h.Collector("127.0.0.1:9618")
try:
    names = sorted(a["Name"] for a in coll.query(h.AdType.Schedd, projection=["Name"]))
    schedd = h.Schedd(coll.locate(h.DaemonType.Schedd, names[0]))
    schedd.query(constraint="true", projection=["ClusterId"])
    out["read"] = "ok"
except Exception as exc:
    out["read"] = f"refused: {exc}"
    print(json.dumps(out)); sys.exit(0)
actions = {
    "hold": lambda: schedd.act(h.JobAction.Hold, "false", reason="opos-monitor permission probe"),
    "edit": lambda: schedd.edit("false", "OposMonitorProbe", "1"),
    "submit": lambda: schedd.submit(h.Submit({"executable": "/bin/true", "hold": "true"})),
}
for name in sys.argv[1:]:
    try:
        result = actions[name]()
        out[name] = "ok"
    except Exception as exc:
        out[name] = f"refused: {exc}"
print(json.dumps(out))
"""


def _probe(env: dict[str, str], *actions: str) -> dict[str, str]:
    proc = run([python(), "-c", PROBE, *actions], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _token_env(token_dir: str) -> dict[str, str]:
    return clean_env(CONDOR_CONFIG="/dev/null", _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="IDTOKENS",
                     _CONDOR_SEC_TOKEN_DIRECTORY=token_dir, _CONDOR_SEC_CLIENT_ENCRYPTION="OPTIONAL",
                     _CONDOR_SEC_CLIENT_INTEGRITY="OPTIONAL")


def _read_token_dir(tmp_path: Path) -> str:
    """A directory holding only the dev pool's read-only token (as opos-monitor's TokenDir does)."""
    cache = Path(os.environ.get("OPOS_DEVPOOL_CACHE", "/var/cache/opos-monitor"))
    token = cache / "tokens/opos-read.token"
    assert token.is_file(), f"the dev pool makes its read token at {token}"
    d = tmp_path / "tokens"
    d.mkdir(mode=0o700)
    shutil.copy(token, d / "read.token")
    return str(d)


@pytest.mark.integration
def test_read_token_reads_but_cannot_write(devpool, tmp_path):
    out = _probe(_token_env(_read_token_dir(tmp_path)), "hold", "edit", "submit")
    assert out["read"] == "ok"
    for action in ("hold", "edit", "submit"):
        assert out[action].startswith("refused"), (action, out[action])
    assert "DENIED" in out["submit"] and "opos-monitor@devpool.opos" in out["submit"] and "IDTOKENS" in out["submit"]


@pytest.mark.integration
def test_the_same_hold_is_allowed_with_write_authorization(devpool):
    """Control: the pool allows WRITE to any authenticated client (ALLOW_WRITE = *), so the
    refusal above comes from the token's READ-only limit."""
    env = clean_env(CONDOR_CONFIG="/dev/null", _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="CLAIMTOBE",
                    _CONDOR_SEC_CLIENT_ENCRYPTION="OPTIONAL", _CONDOR_SEC_CLIENT_INTEGRITY="OPTIONAL")
    out = _probe(env, "hold")
    assert out == {"read": "ok", "hold": "ok"}


@pytest.mark.integration
def test_readme_condor_ping_check(devpool, tmp_path):
    """deploy/condor/README.md step 5: condor_ping with the token alone shows READ ALLOW for the
    token's identity over IDTOKENS, and no WRITE."""
    cache = Path(os.environ.get("OPOS_DEVPOOL_CACHE", "/var/cache/opos-monitor"))
    root = cache / "trixie"
    inside = Path("/tmp") / f"opos-deploy-test-{os.getpid()}"
    host_dir = root / inside.relative_to("/")
    host_dir.mkdir(mode=0o700)
    try:
        shutil.copy(Path(_read_token_dir(tmp_path)) / "read.token", host_dir / "read.token")
        cat, htcondor2 = devpool
        schedd = sorted(a["Name"] for a in htcondor2.Collector("127.0.0.1:9618").query(
            htcondor2.AdType.Schedd, projection=["Name"]))[0]
        proc = run(["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/nonexistent",
                    "CONDOR_CONFIG=/dev/null", "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS=IDTOKENS",
                    f"_CONDOR_SEC_TOKEN_DIRECTORY={inside}",
                    "condor_ping", "-pool", "127.0.0.1:9618", "-type", "schedd", "-name", schedd,
                    "-table", "READ", "WRITE"], timeout=120)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["READ"], ["WRITE"])}
    read = rows["READ"]
    assert read[1] == "IDTOKENS" and read[-2:] == ["ALLOW", "opos-monitor@devpool.opos"], proc.stdout
    assert "ALLOW" not in rows["WRITE"], proc.stdout
    assert proc.returncode != 0, "condor_ping exits non-zero when an authorization fails"
