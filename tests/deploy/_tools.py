"""Shared helpers of the deployment-file tests: paths, and the external tools they run.

A missing tool fails the test with the package to install; it never skips, because a skipped
linter would let a broken deployment file through CI unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Mapping, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD_DIR = DEPLOY / "systemd"
CONTAINER_DIR = DEPLOY / "container"
KUBERNETES_DIR = DEPLOY / "kubernetes"
CONDOR_DIR = DEPLOY / "condor"

#: where this interpreter's console scripts live (the virtualenv's bin/)
SCRIPTS = Path(sysconfig.get_path("scripts"))


def tool(name: str, how_to_install: str) -> str:
    """Absolute path of an external tool: this environment's scripts first, then PATH."""
    candidate = SCRIPTS / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed by this test and is not installed: {how_to_install}", pytrace=False)
    return found


def opos_monitor() -> str:
    return tool("opos-monitor", "pip install -e . (the package itself)")


def run(args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120,
        cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=None if env is None else dict(env),
                          cwd=cwd, input=input)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any opos-monitor or HTCondor settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("OPOS_MONITOR", "_CONDOR_")) and k != "CONDOR_CONFIG"}
    env.update(extra)
    return env


def python() -> str:
    return sys.executable
