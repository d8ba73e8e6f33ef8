#!/usr/bin/env python3
"""Run the dev-pool job catalogue (jobs/catalogue.toml) for real and wait for every outcome.

    python3 deploy/dev-pool/catalogue.py [--only NAME ...] [--timeout S]

Submits each catalogue job as the chroot's non-root submitter (tagged with a run id), plays
the owner's part where the entry says so (condor_hold / condor_rm), waits until every job
reaches the status it claims, and prints one line per job. Reads jobs back from the host with
the htcondor2 bindings, as opos-monitor does. Used by the integration tests and the demo.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
DEVPOOL = HERE / "devpool"
CATALOGUE = HERE / "jobs" / "catalogue.toml"
POOL_ADDR = {"fermigrid": "127.0.0.1:9618", "ospool": "127.0.0.1:9619"}
STATUS = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held", 6: "transferring_output", 7: "suspended"}


@dataclass
class Entry:
    name: str
    submit: str
    pool: str
    schedd: str
    status: str
    category: str
    timeout: float = 120
    setup: str = ""
    after: str = ""


@dataclass
class Outcome:
    entry: Entry
    schedd_name: str = ""
    cluster: int | None = None
    status: str = "unsubmitted"
    ad: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    acted: bool = False


def load(path: Path = CATALOGUE) -> list[Entry]:
    with open(path, "rb") as fh:
        return [Entry(**job) for job in tomllib.load(fh)["job"]]


def devpool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(DEVPOOL), *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise RuntimeError(f"devpool {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def host_env() -> dict[str, str]:
    """The environment a host-side htcondor2 client needs (from `devpool env`)."""
    env = {}
    for line in devpool("env").stdout.splitlines():
        m = re.match(r"export (\w+)=(.*)$", line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


def use_host_env() -> Any:
    """Point this process's htcondor2 at the dev pool; returns the module."""
    os.environ.update(host_env())
    import htcondor2

    htcondor2.reload_config()
    return htcondor2


def schedd_full_name(htcondor2: Any, pool: str, short: str) -> str:
    coll = htcondor2.Collector(POOL_ADDR[pool])
    for ad in coll.query(htcondor2.AdType.Schedd, projection=["Name"]):
        if ad["Name"].split("@")[0] == short:
            return ad["Name"]
    raise RuntimeError(f"schedd {short} not found in pool {pool}")


def _plain(ad: Any) -> dict[str, Any]:
    try:
        from opos_monitor.classads import plain_ad
    except ImportError:  # without opos-monitor installed: classad2 values as they are
        return dict(ad)
    return plain_ad(ad)


def _schedd(htcondor2: Any, pool: str, name: str) -> Any:
    return htcondor2.Schedd(htcondor2.Collector(POOL_ADDR[pool]).locate(htcondor2.DaemonType.Schedd, name))


def submit(entry: Entry, schedd_name: str, run_id: str) -> int:
    if entry.setup.startswith("proxy:"):
        devpool("exec", "bin/make-proxy", "proxies/x509up_short", entry.setup.split(":", 1)[1])
    args = ["submit", entry.submit, "-name", schedd_name, "-pool", POOL_ADDR[entry.pool],
            "-append", f'+OposRunId = "{run_id}"', "-append", f'+OposCatalogueName = "{entry.name}"']
    out = devpool(*args).stdout
    m = re.search(r"submitted to cluster (\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read the cluster id from condor_submit output: {out!r}")
    return int(m.group(1))


def _owner_action(o: Outcome, tool: str) -> None:
    conf = "/etc/condor-ospool/condor_config" if o.entry.pool == "ospool" else "/etc/condor/condor_config"
    subprocess.run([str(DEVPOOL), "exec", tool, "-name", o.schedd_name, "-pool", POOL_ADDR[o.entry.pool], str(o.cluster)],
                   capture_output=True, text=True, timeout=60, check=True, env={**os.environ, "OPOS_DEVPOOL_CONFIG": conf})
    o.acted = True


def _poll(htcondor2: Any, o: Outcome) -> None:
    schedd = _schedd(htcondor2, o.entry.pool, o.schedd_name)
    constraint = f"ClusterId == {o.cluster}"
    ads = schedd.query(constraint=constraint)
    if not ads:
        ads = list(schedd.history(constraint=constraint, projection=[], match=1))
    if not ads:
        return
    ad = _plain(ads[0])
    o.ad = ad
    o.status = STATUS.get(int(ad.get("JobStatus", 0)), "unknown")
    e = o.entry
    if e.after in ("hold", "remove") and not o.acted and o.status == "running":
        _owner_action(o, "condor_hold" if e.after == "hold" else "condor_rm")
    elif e.after == "remove_when_held" and not o.acted and o.status == "held":
        _owner_action(o, "condor_rm")
    settled = o.status == e.status and (not e.after or o.acted)
    # a removed job is only final once it has left the queue (its ad is in history)
    o.done = settled and (o.status != "removed" or "CompletionDate" in ad or not schedd.query(constraint=constraint))


def run(entries: list[Entry], timeout: float | None = None, poll_s: float = 2.0, log: Any = None) -> dict[str, Outcome]:
    """Submit every entry, drive it, wait for its final status; raises TimeoutError with details."""
    htcondor2 = use_host_env()
    run_id = uuid.uuid4().hex[:12]
    outcomes = {}
    for e in entries:
        o = Outcome(e, schedd_name=schedd_full_name(htcondor2, e.pool, e.schedd))
        o.cluster = submit(e, o.schedd_name, run_id)
        o.status = "submitted"
        outcomes[e.name] = o
    # entries' timeouts assume a quiet machine; the jobs share the pool's few slots, so the
    # whole run gets half as long again before it is declared stuck
    limit = time.monotonic() + (timeout or 1.5 * max(e.timeout for e in entries))
    while True:
        pending = [o for o in outcomes.values() if not o.done]
        for o in pending:
            try:
                _poll(htcondor2, o)
            except Exception as exc:  # a transient query failure: try again next round
                if log:
                    log(f"{o.entry.name}: poll failed: {exc}")
        pending = [o for o in outcomes.values() if not o.done]
        if not pending:
            return outcomes
        if time.monotonic() > limit:
            detail = ", ".join(f"{o.entry.name}={o.status} (want {o.entry.status})" for o in pending)
            raise TimeoutError(f"catalogue jobs did not reach their outcome: {detail}")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="run only these catalogue entries")
    p.add_argument("--timeout", type=float, help="overall timeout in seconds")
    args = p.parse_args(argv)
    entries = [e for e in load() if not args.only or e.name in args.only]
    outcomes = run(entries, args.timeout, log=lambda m: print(m, file=sys.stderr))
    for o in outcomes.values():
        reason = o.ad.get("HoldReason") or o.ad.get("RemoveReason") or ""
        print(f"{o.entry.name:24} {o.schedd_name:18} {o.cluster:>6} {o.status:10} expect {o.entry.category:12} {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
