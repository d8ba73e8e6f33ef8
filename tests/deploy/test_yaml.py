"""yamllint on every YAML file of the repository (tracked or new, not ignored by git): syntax,
duplicate keys, indentation, trailing spaces, booleans — with tests/deploy/yamllint.yml."""

from __future__ import annotations

import subprocess

import pytest

from ._tools import REPO, python, run

CONFIG = REPO / "tests/deploy/yamllint.yml"


def yaml_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(p for p in out.split("\0") if p.endswith((".yml", ".yaml")) and (REPO / p).is_file())


def _yamllint(*args: str):
    proc = run([python(), "-m", "yamllint", *args], cwd=REPO)
    if "No module named yamllint" in proc.stderr:
        pytest.fail("yamllint is needed: pip install yamllint", pytrace=False)
    return proc


def test_every_yaml_file_passes_yamllint():
    files = yaml_files()
    assert any(f.startswith("deploy/kubernetes/") for f in files) and len(files) >= 10
    proc = _yamllint("--strict", "-f", "parsable", "-c", str(CONFIG), *files)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_yamllint_check_is_not_vacuous(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:  [1,2]   \n")
    proc = _yamllint("--strict", "-f", "parsable", "-c", str(CONFIG), str(bad))
    assert proc.returncode != 0
    assert "key-duplicates" in proc.stdout and "trailing-spaces" in proc.stdout
