"""Shared pytest set-up: the real dev pool (session scope) and its catalogue run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVPOOL_DIR = ROOT / "deploy" / "dev-pool"


def _load_catalogue_module():
    spec = importlib.util.spec_from_file_location("opos_devpool_catalogue", DEVPOOL_DIR / "catalogue.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def devpool():
    """The real HTCondor dev pool, up, with this process's htcondor2 pointed at it.

    Fails (never skips) when the pool cannot come up: every integration test depends on it.
    """
    proc = subprocess.run([str(DEVPOOL_DIR / "devpool"), "up"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"dev pool did not come up (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    cat = _load_catalogue_module()
    htcondor2 = cat.use_host_env()
    yield cat, htcondor2
    if os.environ.get("OPOS_DEVPOOL_KEEP") != "1":
        subprocess.run([str(DEVPOOL_DIR / "devpool"), "down"], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def catalogue_run(devpool):
    """Every catalogue job submitted once, driven to its final status; name -> Outcome."""
    cat, _ = devpool
    try:
        return cat.run(cat.load())
    except TimeoutError as exc:
        pytest.fail(str(exc), pytrace=False)
