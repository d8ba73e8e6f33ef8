#!/usr/bin/env python3
"""Elasticsearch shipping throughput, against condor_adstash in the same run.

Both talk to the same kind of server: the test endpoint (tests/sinks/es_endpoint.py, run as
its own process, a fresh one per measurement) which answers like Elasticsearch 9 and checks
every document against the index mapping.  It is not Elasticsearch: absolute numbers say how
fast the clients are against a server of this speed, the ratios compare the two clients.

N realistic job ads (benchmarks/adgen.py) are written as a schedd history file.  Measured:

* opos ship: the outbox of a filled store -> ElasticSink.ship_pending (threads 1 and 2),
  docs/s; then the same documents re-sent (a replay): the endpoint must still hold N;
* opos end to end: history file -> classads reader -> JobRecord -> classify + site ->
  Store.commit_batch (the durable outbox) -> shipped;
* condor_adstash (HTCondor 23.9, in the dev pool's chroot; ``--ad_file FILE --interface
  elasticsearch``): history file -> ES, and ``--interface null`` (its read/convert cost alone);
  then run again on the same file, to count the documents it duplicates.

    .venv/bin/python benchmarks/bench_es.py                 # 50k ads
    .venv/bin/python benchmarks/bench_es.py --n 5000 --no-peer
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import structlog  # noqa: E402

from adgen import make_history_file  # noqa: E402

from opos_monitor.classads import read_path  # noqa: E402
from opos_monitor.config import ElasticsearchConfig  # noqa: E402
from opos_monitor.enrich.derive import Enricher  # noqa: E402
from opos_monitor.records import JobRecord  # noqa: E402
from opos_monitor.sinks.elastic import ElasticSink  # noqa: E402
from opos_monitor.sinks.store import Store, stored_from  # noqa: E402

CHROOT = Path(os.environ.get("OPOS_DEVPOOL_CACHE", "/var/cache/opos-monitor")) / "trixie"
DEVPOOL = ROOT / "deploy" / "dev-pool" / "devpool"
ENDPOINT = ROOT / "tests" / "sinks" / "es_endpoint.py"


class Endpoint:
    """The test endpoint in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ENDPOINT)], stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not self.url.startswith("http"):
            raise RuntimeError("test endpoint did not start")

    def cpu_s(self) -> float:
        """CPU seconds the endpoint process used so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def count(self, pattern: str) -> int:
        return int(self.get(f"/{pattern}/_count")["count"])

    def delete(self, index: str) -> None:
        """Forget an index (a killed run's partial data)."""
        req = urllib.request.Request(f"{self.url}/{index}", method="DELETE")
        try:
            urllib.request.urlopen(req, timeout=60).close()
        except OSError:
            pass  # not there

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def fill_store(history: Path, store: Store) -> int:
    """The daemon's path from a history file to the durable outbox."""
    enricher = Enricher.create()
    batch, n = [], 0
    for ad in read_path(history):
        rec = JobRecord.from_ad(ad, pool="fermigrid", schedd=str(ad.get("GlobalJobId", "")).split("#")[0] or "s",
                                source="history")
        derived = enricher.derive(ad)
        site = derived.pop("site", None)
        batch.append(stored_from(rec, derived, site))
        if len(batch) == 500:
            n += len(batch)
            store.commit_batch(batch)
            batch = []
    if batch:
        n += len(batch)
        store.commit_batch(batch)
    return n


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Clock:
    """Wall time, this process's CPU time, the endpoint's CPU time and waited-for children's."""

    def __init__(self, ep: "Endpoint | None" = None) -> None:
        self.ep = ep
        self.t = time.perf_counter()
        self.cpu = time.process_time()
        self.child = _children_cpu()
        self.server = ep.cpu_s() if ep else 0.0

    def stop(self) -> dict[str, float]:
        return {
            "wall_s": time.perf_counter() - self.t,
            "client_cpu_s": time.process_time() - self.cpu + _children_cpu() - self.child,
            "server_cpu_s": (self.ep.cpu_s() - self.server) if self.ep else 0.0,
        }


def ship(store: Store, ep: "Endpoint", threads: int) -> tuple[dict[str, float], Any]:
    sink = ElasticSink(ElasticsearchConfig(enabled=True, urls=[ep.url], bulk_docs=500), threads=threads)
    sink.setup()
    clock = Clock(ep)
    total = None
    for _ in range(100):
        s = sink.ship_pending(store)
        total = s if total is None else (total.add(s) or total)
        if store.pending_count() == 0:
            break
    used = clock.stop()
    sink.close()
    if store.pending_count():
        raise RuntimeError(f"{store.pending_count()} documents not shipped: {total.last_error}")
    return used, total


def run_adstash(history_in_chroot: str, ep: "Endpoint | None", interface: str, tag: str,
                fresh_index: bool = True) -> dict[str, float]:
    port = ep.port if ep else None
    args = [str(DEVPOOL), "root", "condor_adstash", "--standalone", "--interface", interface,
            "--ad_file", history_in_chroot, "--log_file", f"/tmp/opos-bench-adstash-{tag}.log",
            "--checkpoint_file", f"/tmp/opos-bench-adstash-{tag}.json", "--log_level", "WARNING"]
    if port is not None:
        args += ["--se_host", f"127.0.0.1:{port}", "--se_index_name", "htcondor-bench", "--se_bunch_size", "500",
                 "--se_no_log_mappings"]
    for attempt in range(3 if fresh_index else 1):
        if ep is not None and fresh_index:
            ep.delete("htcondor-bench")
        clock = Clock(ep)
        p = subprocess.run(args, capture_output=True, text=True, timeout=3600)
        used = clock.stop()
        if p.returncode == 0:
            return used
        # 137: SIGKILL - `devpool down` (another test session) kills every process in the chroot
        if p.returncode != 137 or attempt == 2:
            raise RuntimeError(f"condor_adstash failed ({p.returncode}): {p.stderr[-500:]}")
        print(f"(condor_adstash was killed - the dev pool's chroot was cleaned up meanwhile; run again)",
              file=sys.stderr)
    raise AssertionError("unreachable")


def peer_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root (the dev pool chroot needs root)"
    if not (CHROOT / "usr" / "bin" / "condor_adstash").exists():
        return f"no condor_adstash in {CHROOT} (run deploy/dev-pool/devpool up once)"
    try:
        p = subprocess.run([str(DEVPOOL), "root", "python3", "-c", "import elasticsearch"], capture_output=True,
                           text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run in the chroot: {exc}"
    if p.returncode != 0:
        return ("the chroot has no python3-elasticsearch (condor_adstash's ES interface needs it):"
                f" {DEVPOOL} root apt-get install -y python3-elasticsearch")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
    n = a.n
    res: dict[str, Any] = {"n": n, "python": platform.python_version(), "cpus": os.cpu_count()}
    reason = None if not a.no_peer else "--no-peer"
    reason = reason or peer_reason()
    work = Path(tempfile.mkdtemp(prefix="opos-bench-es-"))
    if reason is None:
        history = CHROOT / "tmp" / f"opos-bench-es-{os.getpid()}.history"
    else:
        history = work / "history"
    try:
        make_history_file(history, n=n, seed=7)
        res["history_mb"] = round(history.stat().st_size / 1e6, 1)

        # --- opos: history file -> store (the durable outbox) ---------------------------------
        store = Store.open(work / "store.sqlite", max_bytes=1 << 34)
        clock = Clock()
        stored = fill_store(history, store)
        res["opos_fill"] = clock.stop()
        assert stored == n, stored

        # --- opos: ship (1 thread) and re-send, then 2 threads -----------------------------------
        for threads in (1, 2):
            ep = Endpoint()
            try:
                if threads == 2:
                    store.requeue_range(None, None)
                res[f"opos_ship_t{threads}"], _ = ship(store, ep, threads)
                held = ep.count("opos-jobs-*")
                assert held == n, f"endpoint holds {held}, expected {n}"
                if threads == 1:
                    store.requeue_range(None, None)
                    res["opos_resend"], _ = ship(store, ep, 1)
                    res["opos_after_resend_docs"] = ep.count("opos-jobs-*")
            finally:
                ep.close()
        store.close()

        # --- condor_adstash ---------------------------------------------------------------------
        if reason is None:
            inside = "/" + str(history.relative_to(CHROOT))
            res["adstash_null"] = run_adstash(inside, None, "null", "null")
            ep = Endpoint()
            try:
                res["adstash_es"] = run_adstash(inside, ep, "elasticsearch", "es1")
                res["adstash_docs"] = ep.count("htcondor-bench")
                try:  # the same file again, into the same index
                    run_adstash(inside, ep, "elasticsearch", "es2", fresh_index=False)
                    res["adstash_docs_after_rerun"] = ep.count("htcondor-bench")
                except RuntimeError as exc:
                    print(f"(re-run not measured: {exc})", file=sys.stderr)
            finally:
                ep.close()
        else:
            res["peer_not_measured"] = reason
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if history.exists() and str(history).startswith(str(CHROOT)):
            history.unlink()

    res["load_avg_after"] = os.getloadavg()
    if a.json:
        print(json.dumps(res, indent=2))
        return 0

    def row(label: str, m: dict[str, float], note: str = "") -> None:
        print(f"  {label:26} {m['wall_s']:7.1f} s {n / m['wall_s']:8.0f} docs/s   client CPU {m['client_cpu_s']:6.1f} s"
              f" ({m['client_cpu_s'] / n * 1e6:5.0f} us/doc)   endpoint CPU {m['server_cpu_s']:6.1f} s  {note}")

    print(f"{n} ads ({res['history_mb']} MB history file), Python {res['python']}, {res['cpus']} CPUs,"
          f" load average after {res['load_avg_after'][0]:.1f};"
          f" server: the test endpoint (Elasticsearch 9 mode, own process)")
    row("opos ship, 1 thread", res["opos_ship_t1"])
    row("opos ship, 2 threads", res["opos_ship_t2"])
    row("opos re-send all", res["opos_resend"], f"endpoint holds {res['opos_after_resend_docs']} (no duplicates)")
    row("opos file -> store", res["opos_fill"], "read, classify, durable commit")
    e2e = {k: res["opos_fill"][k] + res["opos_ship_t1"][k] for k in res["opos_fill"]}
    row("opos end to end", e2e)
    if "adstash_es" in res:
        row("adstash --interface null", res["adstash_null"], "read + convert only")
        row("adstash elasticsearch", res["adstash_es"], f"endpoint holds {res['adstash_docs']}")
        if "adstash_docs_after_rerun" in res:
            print(f"  adstash run again: endpoint holds {res['adstash_docs_after_rerun']} documents"
                  f" ({res['adstash_docs_after_rerun'] - res['adstash_docs']} duplicated; opos: 0)")
        ad_ship_wall = res["adstash_es"]["wall_s"] - res["adstash_null"]["wall_s"]
        ad_ship_cpu = res["adstash_es"]["client_cpu_s"] - res["adstash_null"]["client_cpu_s"]
        print("ratios (adstash / opos; > 1 means opos is faster or lighter):")
        print(f"  end to end, wall time:              {res['adstash_es']['wall_s'] / e2e['wall_s']:.2f}")
        print(f"  end to end, client CPU:             {res['adstash_es']['client_cpu_s'] / e2e['client_cpu_s']:.2f}")
        print(f"  shipping only, wall time:           {ad_ship_wall / res['opos_ship_t1']['wall_s']:.2f}"
              f"  (adstash: elasticsearch run - null run = {ad_ship_wall:.1f} s wall, {ad_ship_cpu:.1f} s CPU)")
        print(f"  endpoint CPU (document size):       {res['adstash_es']['server_cpu_s'] / res['opos_ship_t1']['server_cpu_s']:.2f}")
    else:
        print(f"  condor_adstash not measured: {res['peer_not_measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
