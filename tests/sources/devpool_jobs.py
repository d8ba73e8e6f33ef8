"""Helpers for the schedd source's integration tests on the real dev pool.

Every job a test submits carries ``+OposTestTag = "<tag>"`` so tests only ever look at (and
remove) their own jobs: other engineers use the same pool at the same time.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

from opos_monitor.config import HTCondorConfig, PoolConfig
from opos_monitor.sources.htc import ProcessRunner, ScheddTarget, condor_params

ROOT = Path(__file__).resolve().parents[2]
DEVPOOL = ROOT / "deploy" / "dev-pool" / "devpool"
CACHE = Path(os.environ.get("OPOS_DEVPOOL_CACHE", "/var/cache/opos-monitor"))
CHROOT = CACHE / "trixie"
TOKEN = CACHE / "tokens" / "opos-read.token"
POOLS = {"fermigrid": "127.0.0.1:9618", "ospool": "127.0.0.1:9619"}
POOL_CONFIG = {"fermigrid": "/etc/condor/condor_config", "ospool": "/etc/condor-ospool/condor_config"}
MAX_PER_SUBMIT = 10_000  # the pool's MAX_JOBS_PER_SUBMISSION is 20000
HOST_ENV_KEYS = ("CONDOR_CONFIG", "_CONDOR_SEC_CLIENT_ENCRYPTION", "_CONDOR_SEC_CLIENT_INTEGRITY")

NOOP = """opos_name = sources-test
include : common.inc
executable = /bin/true
transfer_executable = false
noop_job = true
log =
output =
error =
+OposTestTag = "{tag}"
queue {n}
"""

RUN = """opos_name = sources-test
include : common.inc
executable = /bin/true
transfer_executable = false
request_memory = 64
log =
output =
error =
{extra}
+OposTestTag = "{tag}"
queue {n}
"""


def new_tag(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


def pool_configs() -> dict[str, PoolConfig]:
    return {name: PoolConfig(collectors=[addr]) for name, addr in POOLS.items()}


def htcondor_config(**kw: Any) -> HTCondorConfig:
    kw.setdefault("token_file", TOKEN)
    kw.setdefault("auth_methods", ["IDTOKENS"])
    kw.setdefault("query_timeout_s", 60)
    return HTCondorConfig(**kw)


def worker_env() -> dict[str, str]:
    """What a host-side query worker needs besides our knobs (from ``devpool env``)."""
    return {k: os.environ[k] for k in HOST_ENV_KEYS if k in os.environ}


def process_runner(timeout_s: float = 60) -> ProcessRunner:
    cfg = htcondor_config(query_timeout_s=timeout_s)
    return ProcessRunner(condor_params(cfg), timeout_s, env=worker_env())


def devpool(*args: str, stdin: str | None = None, config: str | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if config:
        env["OPOS_DEVPOOL_CONFIG"] = config
    proc = subprocess.run([str(DEVPOOL), *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"devpool {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def submit(schedd: str, text: str, pool: str = "fermigrid") -> int:
    """Submit a description (read from stdin) as the pool's submitter; returns the cluster id."""
    out = devpool("submit", "-", "-name", schedd, "-pool", POOLS[pool], "-terse", stdin=text)
    m = re.match(r"\s*(\d+)\.\d+", out.stdout)
    if not m:
        raise RuntimeError(f"cannot read the cluster id from condor_submit -terse: {out.stdout!r} {out.stderr!r}")
    return int(m.group(1))


def submit_noop(schedd: str, n: int, tag: str, pool: str = "fermigrid") -> list[int]:
    clusters = []
    while n > 0:
        k = min(n, MAX_PER_SUBMIT)
        clusters.append(submit(schedd, NOOP.format(tag=tag, n=k), pool))
        n -= k
    return clusters


def schedd_client(htcondor2: Any, pool: str, name: str) -> Any:
    coll = htcondor2.Collector(POOLS[pool])
    return htcondor2.Schedd(coll.locate(htcondor2.DaemonType.Schedd, name))


def target(htcondor2: Any, pool: str, name: str) -> ScheddTarget:
    ad = htcondor2.Collector(POOLS[pool]).locate(htcondor2.DaemonType.Schedd, name)
    return ScheddTarget(pool, name, ad["MyAddress"], ad["CondorVersion"])


def wait_until(predicate: Any, timeout: float, what: str, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def wait_left_queue(htcondor2: Any, pool: str, schedd: str, tag: str, timeout: float = 600) -> None:
    """Wait until none of the tagged jobs is in the queue any more (all in the history)."""
    client = schedd_client(htcondor2, pool, schedd)

    def gone() -> bool:
        return not client.query(f'OposTestTag == "{tag}"', ["ClusterId"], limit=1)

    wait_until(gone, timeout, f"jobs tagged {tag} on {schedd} to leave the queue")


def tagged_history_ids(htcondor2: Any, pool: str, schedd: str, tag: str) -> list[str]:
    client = schedd_client(htcondor2, pool, schedd)
    return [str(ad["GlobalJobId"]) for ad in client.history(f'OposTestTag == "{tag}"', ["GlobalJobId"], -1)]


def remove_tagged(schedd: str, tag: str, pool: str = "fermigrid") -> None:
    """Remove this test's jobs (never anyone else's)."""
    devpool("exec", "condor_rm", "-name", schedd, "-pool", POOLS[pool], "-constraint", f'OposTestTag == "{tag}"',
            config=POOL_CONFIG[pool], check=False)


_TOTALS = re.compile(r"Total for all users: (\d+) jobs; (\d+) completed, (\d+) removed, (\d+) idle, "
                     r"(\d+) running, (\d+) held, (\d+) suspended")


def condor_q_totals(schedd: str, pool: str) -> dict[str, int]:
    """``condor_q -totals`` of one schedd (all users), as numbers."""
    out = devpool("root", "condor_q", "-name", schedd, "-pool", POOLS[pool], "-totals", config=POOL_CONFIG[pool]).stdout
    m = _TOTALS.search(out)
    if not m:
        raise RuntimeError(f"unexpected condor_q -totals output:\n{out}")
    names = ("jobs", "completed", "removed", "idle", "running", "held", "suspended")
    return dict(zip(names, map(int, m.groups())))


@contextlib.contextmanager
def runtime_config(name: str, knobs: Mapping[str, str], reconfig: list[tuple[str, str]]) -> Iterator[Path]:
    """A test-only config file in the chroot's config.d (both pools read it), with the given
    daemons reconfigured on entry and exit; the file is removed afterwards.

    ``reconfig``: ``(pool, schedd name)`` pairs to ``condor_reconfig``.
    """
    path = CHROOT / "etc" / "condor" / "config.d" / f"99-opos-sources-test-{name}.config"
    path.write_text("# written by tests/sources (removed when the test ends)\n"
                    + "".join(f"{k} = {v}\n" for k, v in knobs.items()))
    try:
        _reconfig(reconfig)
        yield path
    finally:
        path.unlink(missing_ok=True)
        _reconfig(reconfig)


def _reconfig(daemons: list[tuple[str, str]]) -> None:
    for pool, schedd in daemons:
        devpool("root", "condor_reconfig", "-schedd", "-name", schedd, "-pool", POOLS[pool], config=POOL_CONFIG[pool])
    time.sleep(2)  # the schedd re-reads its configuration asynchronously
