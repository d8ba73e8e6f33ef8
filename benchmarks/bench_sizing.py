#!/usr/bin/env python3
"""Sizing of one replica: memory and CPU of the real daemon against a schedd with 0, 50k, 100k queued jobs.

    .venv/bin/python benchmarks/bench_sizing.py [--jobs 0,50000,100000] [--schedd jobsub01@HOST]
        [--state held|idle] [--interval 60] [--cycles 3] [--repeat 3] [--no-peer] [--json FILE]
    .venv/bin/python benchmarks/bench_sizing.py --report FILE      # print a saved run again

Needs root and the dev pool (``deploy/dev-pool/devpool up``; brought up if it is not).  The
defaults take about 35 minutes (``--state idle --jobs 0,100000 --no-peer``: about 25).  It runs
``opos-monitor run`` (this checkout's code, a private config: the one pool, only ``--schedd``,
``sources.schedd_sources = ["queue", "history"]``, queue every ``--interval`` s, history every
2x that, the default ``query_timeout_s`` and ``max_concurrent_schedds``) and measures, from
/proc, the whole process tree: the daemon, its forkserver and every short-lived query worker.

* **levels** (``--jobs``, ascending): before each level the schedd gets more jobs tagged
  ``+OposTestTag`` (``--state held``: ``hold = true``, the default; ``--state idle``:
  ``requirements = false``, never matched).  Per level, ``--repeat`` daemon runs, each from a
  fresh copy of a state directory whose history checkpoint is already at the newest record
  (the steady state of a restarted daemon).  Per run: the first queue poll is the warm-up (it
  writes the queue's held jobs to an empty store; reported apart), then ``--cycles`` polls are
  the window: CPU seconds of the tree per poll and cores (CPU / wall time of the window), wall
  seconds per poll (``opos_source_poll_duration_seconds``), the daemon's RSS between polls,
  its peak, the peak RSS of any query worker (VmHWM, sampled every ``--sample-s``: a worker
  living less than that may be missed, shown as ``-``), the peak of the tree's summed RSS
  (shared pages of the forkserver and its workers counted twice: an upper bound), the schedd's
  own CPU per poll, and the CPU the rest of the machine used meanwhile (other engineers' load).
  The daemon's /metrics is read every ``--scrape-s`` to see polls end; that CPU is included.
* **per 100k queued jobs**: the differences between the highest level and level 0, scaled.
* **derived capacity** (a calculation from the measurements, printed with its inputs): how
  many schedds of the highest level fit in one replica when a poll cycle may use
  ``--budget`` of the queue interval on ``--cores`` cores with ``max_concurrent_schedds``,
  and how many queued jobs the same budget takes spread over several schedds.
* **peer** (unless ``--no-peer``): no peer polls queues, so the comparison is where one
  exists: reading the schedd's whole history backlog (what a fresh daemon does first), our
  daemon (``schedd_sources = ["history"]``, fresh store: read, classify, store) against the
  chroot's ``condor_adstash --schedd_history --interface null`` with its cap lifted (read and
  convert only, nothing stored), alternated ``--repeat`` times: records, time, CPU and peak
  RSS (largest process, and the summed tree), with ratios.  A history shorter than
  ``--backlog`` records (a freshly cleaned pool has none) is first filled with tagged noop
  jobs.  (With ``--no-peer`` our side still runs once: its store is the state template above.)

The schedd's ``MAX_JOBS_PER_OWNER`` (HTCondor's default: 100000) is raised for the run by a
bench-only file in the chroot's ``config.d`` (removed at the end; only ``--schedd`` is
reconfigured).  Other sessions share the pool: a test session's ``devpool down``/``up`` in the
middle of a run makes that run unusable (a poll fails or the schedd's process changes); it is
run again (``--retries``), the pool brought up and missing jobs resubmitted first.  Every job it
submits is tagged and removed at the end, also on failure, Ctrl-C or SIGTERM.  Exit status is
non-zero when no usable run was had, a poll kept failing, or on any other error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "sources"))  # the dev-pool helpers the integration tests use
sys.path.insert(0, str(ROOT / "deploy" / "dev-pool"))

import devpool_jobs as dp  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1e6

HELD = """opos_name = sizing-bench
include : common.inc
executable = /bin/true
transfer_executable = false
log =
output =
error =
hold = true
+OposTestTag = "{tag}"
queue {n}
"""

IDLE = """opos_name = sizing-bench
include : common.inc
executable = /bin/true
transfer_executable = false
log =
output =
error =
requirements = false
# never matched; their own accounting group, so the team's submitter is not affected
+AccountingGroup = "group_opos_bench.sizing"
+OposTestTag = "{tag}"
queue {n}
"""


# ---------------------------------------------------------------------------
# /proc


def _stat(pid: int) -> tuple[int, float, float, int, int] | None:
    """(ppid, own CPU s, CPU s of waited-for children, RSS bytes, start time) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    return (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK, (int(rest[13]) + int(rest[14])) / CLK,
            int(rest[21]) * PAGE, int(rest[19]))


def _hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of a process, bytes (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs; /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK  # minus idle and iowait


@dataclass
class Sample:
    t: float
    tree_cpu: float  # own + reaped children's CPU of every live process of the tree
    main_cpu: float  # the root process's own CPU (for the daemon: every thread, one GIL)
    tree_rss: int
    root_rss: int
    workers: int  # live query workers (children of the forkserver)
    other_cpu: float  # CPU of the extra tree (the schedd), same accounting
    busy: float  # the machine's busy CPU seconds


@dataclass
class Proc:
    role: str
    first: float
    last: float
    hwm: int = 0


class TreeSampler:
    """Samples a process tree (and optionally one more, e.g. the schedd) every ``every`` s.

    CPU of the tree = sum over its live processes of (own + waited-for children's) CPU: a query
    worker's CPU moves into its forkserver's children's CPU when it is reaped, so the sum only
    grows.  RSS: VmRSS per process; each process's VmHWM is kept as its peak.
    """

    def __init__(self, root: int, every: float = 0.1, extra_root: int | None = None) -> None:
        self.root = root
        self.extra_root = extra_root
        self.every = every
        self.samples: list[Sample] = []
        self.procs: dict[tuple[int, int], Proc] = {}
        self._roles: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def start(self) -> "TreeSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a vanished process mid-scan; next sample
                print(f"(sampler: {exc})", file=sys.stderr)

    def _role(self, key: tuple[int, int], pid: int, parent_role: str | None) -> str:
        role = self._roles.get(key)
        if role is None:
            cmd = _cmdline(pid)  # a worker is forked from the forkserver: same command line
            if pid == self.root:
                role = "root"
            elif parent_role == "forkserver":
                role = "worker"
            elif "multiprocessing.forkserver" in cmd:
                role = "forkserver"
            elif "multiprocessing.resource_tracker" in cmd:
                role = "tracker"
            else:
                role = "other"
            self._roles[key] = role
        return role

    def sample(self) -> Sample:
        with self._lock:
            t = time.monotonic()
            busy = _busy_cpu_s()
            stats: dict[int, tuple[int, float, float, int, int]] = {}
            children: dict[int, list[int]] = {}
            for name in os.listdir("/proc"):
                if name.isdigit():
                    st = _stat(int(name))
                    if st is not None:
                        stats[int(name)] = st
                        children.setdefault(st[0], []).append(int(name))
            tree_cpu = main_cpu = 0.0
            tree_rss = root_rss = workers = 0
            if self.root in stats:
                stack: list[tuple[int, str | None]] = [(self.root, None)]
                while stack:
                    pid, parent_role = stack.pop()
                    st = stats.get(pid)
                    if st is None:
                        continue
                    key = (pid, st[4])
                    role = self._role(key, pid, parent_role)
                    tree_cpu += st[1] + st[2]
                    tree_rss += st[3]
                    if role == "root":
                        main_cpu, root_rss = st[1], st[3]
                    if role == "worker":
                        workers += 1
                    p = self.procs.get(key)
                    if p is None:
                        p = self.procs[key] = Proc(role, t, t)
                    p.last = t
                    p.hwm = max(p.hwm, _hwm(pid), st[3])
                    stack.extend((c, role) for c in children.get(pid, ()))
            other = 0.0
            if self.extra_root is not None:
                stack2 = [self.extra_root]
                while stack2:
                    pid = stack2.pop()
                    st = stats.get(pid)
                    if st is not None:
                        other += st[1] + st[2]
                        stack2.extend(children.get(pid, ()))
            s = Sample(t, tree_cpu, main_cpu, tree_rss, root_rss, workers, other, busy)
            self.samples.append(s)
            return s

    def window(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]

    def peak(self, role: str, t0: float = 0.0, t1: float = float("inf")) -> int:
        """Largest VmHWM of the processes of ``role`` alive at some time in [t0, t1]."""
        return max((p.hwm for p in self.procs.values() if p.role == role and p.last >= t0 and p.first <= t1),
                   default=0)


# ---------------------------------------------------------------------------
# the daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m:
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def config_text(state_dir: Path, schedd: str, port: int, interval: float, sources: Iterable[str],
                query_timeout: float | None, workers: int | None) -> str:
    ht = "".join([f"query_timeout_s = {query_timeout}\n" if query_timeout else "",
                  f"max_concurrent_schedds = {workers}\n" if workers else ""])
    return f"""# written by benchmarks/bench_sizing.py
state_dir = "{state_dir}"

[pools.fermigrid]
collectors = ["{dp.POOLS['fermigrid']}"]
schedds_allow = ["{schedd}"]

[htcondor]
token_file = "{dp.TOKEN}"
auth_methods = ["IDTOKENS"]
{ht}
[sources]
schedd_sources = {json.dumps(list(sources))}
queue_interval_s = {interval}
history_interval_s = {interval * 2}

[metrics]
listen = "127.0.0.1:{port}"

[logging]
format = "json"
"""


class Invalid(Exception):
    """A run whose numbers cannot be used (the pool restarted under it, a poll failed): run it again."""


class Daemon:
    """``opos-monitor run`` of this checkout, sampled from start to stop."""

    def __init__(self, workdir: Path, state: Path, schedd: str, interval: float, sources: Iterable[str],
                 args: argparse.Namespace, schedd_pid: int | None) -> None:
        self.schedd = schedd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.cfg = workdir / "opos-monitor.toml"
        self.cfg.write_text(config_text(state, schedd, self.port, interval, sources, args.query_timeout, args.workers))
        self.logfile = workdir / "daemon.log"
        self.log = open(self.logfile, "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPOS_MONITOR")}
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.started = time.monotonic()
        # its own session: a signal to the daemon's process group never reaches this benchmark
        self.proc = subprocess.Popen([sys.executable, "-m", "opos_monitor.cli", "-c", str(self.cfg), "run"],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.sampler = TreeSampler(self.proc.pid, args.sample_s, schedd_pid).start()
        self.stop_s: float | None = None
        self.exit_code: int | None = None
        self.seen: dict[str, int] = {}
        self.ready: Sample | None = None
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise Invalid(f"the daemon exited ({self.proc.returncode}) while starting:\n{self.tail(1500)}")
            try:
                if http_get(self.url + "/healthz", 2)[0] == 200:
                    self.ready = self.sampler.sample()  # start-up done (imports, first discovery)
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not answer /healthz within 120 s:\n{self.tail()}")
            time.sleep(0.3)

    def tail(self, n: int = 3000) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.logfile.read_text(errors="replace")[-n:]

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return parse_metrics(http_get(self.url + "/metrics", 30)[1])

    def value(self, m: dict, name: str, source: str, default: float = 0.0, **labels: str) -> float:
        want = {("pool", "fermigrid"), ("schedd", self.schedd), ("source", source), *labels.items()}
        return m.get((name, frozenset(want)), default)

    def wait_polls(self, source: str, n: int, timeout: float, on_poll: Callable[[dict, Sample], None],
                   every: float = 2.0) -> None:
        """Wait until ``n`` polls of ``source`` have finished since the start; ``on_poll`` after each
        one not reported before."""
        seen = self.seen.get(source, 0)
        deadline = time.monotonic() + timeout
        while seen < n:
            if self.proc.poll() is not None:  # e.g. killed by another session cleaning up
                raise Invalid(f"the daemon exited ({self.proc.returncode}) during the run:\n{self.tail(1500)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n - seen} {source} poll(s) did not finish within {timeout:.0f} s:\n{self.tail()}")
            m = self.metrics()
            count = int(self.value(m, "opos_source_poll_duration_seconds_count", source))
            if count > seen:
                s = self.sampler.sample()
                for _ in range(count - seen):  # normally one
                    on_poll(m, s)
                seen = self.seen[source] = count
            time.sleep(every)

    def _kill_leftovers(self) -> None:
        """Any forkserver, tracker or worker of this daemon still alive a few s after it exited."""
        deadline = time.monotonic() + 5
        for (pid, start), proc in self.sampler.procs.items():
            while time.monotonic() < deadline:
                st = _stat(pid)
                if st is None or st[4] != start:
                    break
                time.sleep(0.2)
            else:
                st = _stat(pid)
                if st is not None and st[4] == start:
                    print(f"WARNING: {proc.role} process {pid} outlived the daemon; killed", file=sys.stderr)
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.exit_code is not None:
            return
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            print(f"WARNING: the daemon did not stop within 120 s of SIGTERM; killed\n{self.tail(1500)}",
                  file=sys.stderr)
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self.stop_s = time.monotonic() - t0
        self.sampler.stop()
        self._kill_leftovers()
        self.log.close()
        if self.exit_code != 0:
            print(f"WARNING: the daemon exited {self.exit_code} after SIGTERM\n{self.tail(1500)}", file=sys.stderr)


# ---------------------------------------------------------------------------
# the schedd and its jobs


def schedd_process(schedd: str) -> tuple[int | None, str | None]:
    """The fermigrid condor_schedd process serving ``schedd`` (for its CPU) and its
    ``-local-name`` (None for the pool's default schedd); (None, None) when not found."""
    short = schedd.split("@")[0]
    candidates = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        cmd = _cmdline(int(name)).split()
        if not cmd or not cmd[0].endswith("condor_schedd"):
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if f"CONDOR_CONFIG={dp.POOL_CONFIG['fermigrid']}".encode() + b"\0" not in environ + b"\0":
            continue
        local = cmd[cmd.index("-local-name") + 1] if "-local-name" in cmd else None
        candidates.append((local, int(name)))
    named = [pid for local, pid in candidates if local == short]
    if named:
        return named[0], short
    plain = [pid for local, pid in candidates if local is None]
    return (plain[0], None) if plain else (None, None)


_QUERY_TOTAL = re.compile(r"Total for query: (\d+) jobs; (\d+) completed, (\d+) removed, (\d+) idle, (\d+) running, "
                          r"(\d+) held")
_ALL_TOTAL = re.compile(r"Total for all users: (\d+) jobs")


def queue_totals(schedd: str, tag: str) -> tuple[int, int, int, int]:
    """(tagged jobs, tagged held, tagged idle, every job in the schedd's queue)."""
    out = dp.devpool("root", "condor_q", "-name", schedd, "-pool", dp.POOLS["fermigrid"], "-allusers", "-totals",
                     "-constraint", f'OposTestTag == "{tag}"', config=dp.POOL_CONFIG["fermigrid"], timeout=300).stdout
    m = _QUERY_TOTAL.search(out)
    total = dp.devpool("root", "condor_q", "-name", schedd, "-pool", dp.POOLS["fermigrid"], "-allusers", "-totals",
                       config=dp.POOL_CONFIG["fermigrid"], timeout=300).stdout
    a = _ALL_TOTAL.search(total)
    if not m or not a:
        raise RuntimeError(f"unexpected condor_q -totals output:\n{out}\n{total}")
    return int(m.group(1)), int(m.group(6)), int(m.group(4)), int(a.group(1))


def submit(schedd: str, n: int, tag: str, state: str) -> None:
    text = HELD if state == "held" else IDLE
    while n > 0:
        k = min(n, dp.MAX_PER_SUBMIT)
        dp.submit(schedd, text.format(tag=tag, n=k))
        n -= k


def remove(schedd: str, tag: str) -> None:
    """Remove every job tagged ``tag`` (only those), bringing the pool up first if another session
    stopped it (the jobs would be back in the queue at its next start otherwise)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            ensure_pool()
            dp.remove_tagged(schedd, tag)
            if queue_totals(schedd, tag)[0] == 0:
                print(f"removed every job tagged {tag} from {schedd}")
                return
        except Exception as exc:  # noqa: BLE001 - report and retry
            print(f"(removing the jobs: {str(exc).splitlines()[0]})", file=sys.stderr)
        time.sleep(5)
    print(f"WARNING: jobs tagged {tag} still in {schedd}'s queue after 600 s; remove them with\n"
          f"  deploy/dev-pool/devpool exec condor_rm -name {schedd} -pool {dp.POOLS['fermigrid']} "
          f"-constraint 'OposTestTag == \"{tag}\"'", file=sys.stderr)


def history_size(schedd: str, limit: int) -> int:
    """How many records the schedd's history holds (counted up to ``limit``)."""
    out = dp.devpool("root", "condor_history", "-name", schedd, "-pool", dp.POOLS["fermigrid"], "-limit", str(limit),
                     "-af", "ClusterId", config=dp.POOL_CONFIG["fermigrid"], timeout=600).stdout
    return len(out.split())


def ensure_backlog(args: argparse.Namespace, htcondor2: Any, tag: str) -> None:
    """A history of at least ``--backlog`` records for the peer comparison (a freshly cleaned pool
    has none): noop jobs tagged like the rest, run to completion."""
    have = history_size(args.schedd, args.backlog)
    if have >= args.backlog:
        return
    t0 = time.monotonic()
    dp.submit_noop(args.schedd, args.backlog - have, tag)
    dp.wait_left_queue(htcondor2, "fermigrid", args.schedd, tag, timeout=1800)
    print(f"history backlog: {have} records; {args.backlog - have} noop jobs tagged {tag} run to fill it "
          f"({time.monotonic() - t0:.0f} s)", flush=True)


def ensure_pool() -> None:
    """The dev pool up (another session's test run may have stopped it: its fixture ends with
    ``devpool down``); ``devpool up`` is idempotent."""
    dp.devpool("up", timeout=900)


def ensure_level(args: argparse.Namespace, tag: str, jobs: int) -> int:
    """Exactly ``jobs`` tagged jobs in the schedd's queue (submitting what is missing, e.g. all of
    them, or again after a ``devpool clean``); returns every job in the queue."""
    deadline = time.monotonic() + 1800
    while True:
        ensure_pool()
        try:
            tagged, held, idle, total = queue_totals(args.schedd, tag)
        except RuntimeError as exc:  # the schedd is still starting (it reads its whole queue first)
            if time.monotonic() > deadline:
                raise
            print(f"(waiting for {args.schedd}: {str(exc).splitlines()[0]})", file=sys.stderr)
            time.sleep(10)
            continue
        if tagged > jobs:
            raise RuntimeError(f"{tagged} jobs tagged {tag} in the queue, expected {jobs}")
        if tagged == jobs and (held if args.state == "held" else idle) == jobs:
            return total
        if tagged == jobs:
            raise RuntimeError(f"{jobs} tagged jobs but only {held} held and {idle} idle")
        t0 = time.monotonic()
        submit(args.schedd, jobs - tagged, tag, args.state)
        print(f"submitted {jobs - tagged} {args.state} jobs tagged {tag} ({time.monotonic() - t0:.0f} s)", flush=True)


def retry(args: argparse.Namespace, what: str, fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> Any:
    """``fn()``, run again (up to ``--retries`` times) when it is Invalid."""
    for attempt in range(args.retries + 1):
        try:
            if attempt:
                ensure_pool()
                if before:
                    before()
            return fn()
        except Invalid as exc:
            text = str(exc) if len(str(exc)) < 1200 else str(exc)[:400] + " [...] " + str(exc)[-700:]
            print(f"({what}: not usable, {'again' if attempt < args.retries else 'giving up'}: {text})",
                  file=sys.stderr, flush=True)
            if attempt == args.retries:
                raise RuntimeError(f"{what}: no usable run in {args.retries + 1} attempts") from exc
            time.sleep(10)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------
# measurements


@dataclass
class Poll:
    t: float
    wall_s: float
    sample: Sample


def run_level(args: argparse.Namespace, work: Path, template: Path, jobs: int, rep: int) -> dict:
    """One daemon run: warm-up poll, then ``args.cycles`` measured queue polls."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{jobs}-{rep}-", dir=work))
    state = run_dir / "state"
    shutil.copytree(template, state)
    spid, _ = schedd_process(args.schedd)
    d = Daemon(run_dir, state, args.schedd, args.interval, ("queue", "history"), args, spid)
    polls: list[Poll] = []
    last = {"count": 0.0, "sum": 0.0}

    def on_poll(m: dict, s: Sample) -> None:
        c = d.value(m, "opos_source_poll_duration_seconds_count", "queue")
        total = d.value(m, "opos_source_poll_duration_seconds_sum", "queue")
        wall = (total - last["sum"]) / max(1.0, c - last["count"])
        last.update(count=c, sum=total)
        polls.append(Poll(s.t, wall, s))

    try:
        timeout = (args.cycles + 2) * args.interval + 900
        d.wait_polls("queue", 1, timeout, on_poll, args.scrape_s)
        m0 = d.metrics()
        warm_hwm = _hwm(d.proc.pid)
        d.wait_polls("queue", 1 + args.cycles, timeout, on_poll, args.scrape_s)
        m1 = d.metrics()
        d.stop()
    finally:
        d.stop()
    errors = d.value(m1, "opos_source_errors_total", "queue")  # the warm-up's too
    if errors:
        raise Invalid(f"{errors:.0f} of {len(polls)} queue polls failed:\n{d.tail(1500)}")
    if schedd_process(args.schedd)[0] != spid:
        raise Invalid("the schedd restarted during the run (another session's devpool down/up?)")
    a, b = polls[0], polls[-1]  # the end of the warm-up poll, the end of the last measured one
    wall = b.t - a.t
    win = d.sampler.window(a.t, b.t)
    between = [s.root_rss for s in win if s.workers == 0] or [s.root_rss for s in win]
    missed = (d.value(m1, "opos_scheduler_missed_runs_total", "queue")
              - d.value(m0, "opos_scheduler_missed_runs_total", "queue"))
    tree_cpu = b.sample.tree_cpu - a.sample.tree_cpu
    res = {
        "jobs": jobs,
        "queue_total": sum(v for (name, labels), v in m1.items() if name == "opos_jobs"
                           and ("schedd", args.schedd) in labels),
        "first_poll_s": polls[0].wall_s,
        # the first poll after a start fetches every held job in full (so does one after a mass hold)
        "first_poll_cpu_s": a.sample.tree_cpu - d.ready.tree_cpu,
        "first_poll_daemon_peak_mb": warm_hwm / MB,
        "first_worker_peak_mb": d.sampler.peak("worker", 0.0, a.t) / MB or None,
        "first_tree_rss_max_mb": max(s.tree_rss for s in d.sampler.samples if s.t <= a.t) / MB,
        "poll_s": statistics.median(p.wall_s for p in polls[1:]),
        "poll_s_max": max(p.wall_s for p in polls[1:]),
        "cpu_per_poll_s": tree_cpu / args.cycles,
        "main_cpu_per_poll_s": (b.sample.main_cpu - a.sample.main_cpu) / args.cycles,
        "cores": tree_cpu / wall,
        "window_s": wall,
        "daemon_rss_mb": statistics.median(between) / MB,
        "daemon_rss_max_mb": max(s.root_rss for s in win) / MB,
        "worker_peak_mb": d.sampler.peak("worker", a.t, b.t) / MB or None,  # None: none lived long enough to be seen
        "tree_rss_max_mb": max(s.tree_rss for s in win) / MB,
        "forkserver_mb": d.sampler.peak("forkserver") / MB,
        "schedd_cpu_per_poll_s": (b.sample.other_cpu - a.sample.other_cpu) / args.cycles if spid else None,
        "other_cores": ((b.sample.busy - a.sample.busy) - tree_cpu - (b.sample.other_cpu - a.sample.other_cpu)) / wall,
        "loadavg": os.getloadavg()[0],
        "missed": missed,
        "stop_s": d.stop_s,
        "exit_code": d.exit_code,
    }
    return res


def run_opos_history(args: argparse.Namespace, work: Path, rep: int) -> tuple[dict, Path]:
    """A fresh daemon reading the schedd's whole history (its first history poll)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"peer-opos-{rep}-", dir=work))
    state = run_dir / "state"
    d = Daemon(run_dir, state, args.schedd, 3600.0, ("history",), args, None)
    got: list[tuple[dict, Sample]] = []
    try:
        d.wait_polls("history", 1, 1800, lambda m, s: got.append((m, s)), args.scrape_s)
    finally:
        d.stop()
    m, s = got[0]
    if d.value(m, "opos_source_errors_total", "history"):
        raise Invalid(f"the history poll failed:\n{d.tail(1500)}")
    t0, t1 = d.sampler.samples[0].t, s.t
    return {
        "records": int(d.value(m, "opos_source_records_total", "history")),
        "poll_s": d.value(m, "opos_source_poll_duration_seconds_sum", "history"),
        "wall_s": s.t - d.started,  # start-up and discovery included, like adstash's
        "cpu_s": s.tree_cpu,
        "largest_mb": max(d.sampler.peak("root", t0, t1), d.sampler.peak("worker", t0, t1)) / MB,
        "daemon_peak_mb": d.sampler.peak("root", t0, t1) / MB,
        "worker_peak_mb": d.sampler.peak("worker", t0, t1) / MB,
        "tree_rss_max_mb": max(x.tree_rss for x in d.sampler.window(t0, t1)) / MB,
    }, state


ADSTASH_LOG = "/tmp/opos-bench-sizing-adstash.log"
ADSTASH_CKPT = "/tmp/opos-bench-sizing-adstash.json"


def run_adstash(args: argparse.Namespace) -> dict:
    """condor_adstash (in the chroot) reading the whole history, cap lifted, nothing stored."""
    for name in (ADSTASH_CKPT, ADSTASH_LOG):
        (dp.CHROOT / name.lstrip("/")).unlink(missing_ok=True)
    cmd = [str(dp.DEVPOOL), "root", "condor_adstash", "--standalone", "--schedd_history", "--interface", "null",
           "--collectors", dp.POOLS["fermigrid"], "--schedds", args.schedd, "--checkpoint_file", ADSTASH_CKPT,
           "--log_file", ADSTASH_LOG, "--log_level", "WARNING", "--schedd_history_max_ads", "100000000",
           "--schedd_history_timeout", "1800"]
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        sampler = TreeSampler(p.pid, args.sample_s).start()
        # wait4: CPU and peak RSS of the whole tree (every waited-for descendant), not sampled
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        out.seek(0)
        text = out.read()
    log = dp.CHROOT / ADSTASH_LOG.lstrip("/")
    text += log.read_text(errors="replace") if log.exists() else ""
    m = re.search(r"response count: (\d+)", text)
    if p.returncode == 137:  # `devpool down` (another session) kills every process in the chroot
        raise Invalid("condor_adstash was killed (the dev pool was stopped meanwhile)")
    if p.returncode != 0 or not m:
        raise RuntimeError(f"condor_adstash failed ({p.returncode}):\n{text[-3000:]}")
    largest = max(usage.ru_maxrss * 1024, max((pr.hwm for pr in sampler.procs.values()), default=0))
    return {"records": int(m.group(1)), "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "largest_mb": largest / MB, "tree_rss_max_mb": max((s.tree_rss for s in sampler.samples), default=0) / MB}


# ---------------------------------------------------------------------------
# report


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def span(rows: list[dict], key: str, fmt: str) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "-"
    m = format(statistics.median(vals), fmt)
    return m if len(vals) == 1 else f"{m} ({format(min(vals), fmt)}-{format(max(vals), fmt)})"


COLUMNS = [
    ("first poll after start: wall s", "first_poll_s", ".1f"),
    ("  CPU s (tree, from ready)", "first_poll_cpu_s", ".1f"),
    ("  daemon peak MB", "first_poll_daemon_peak_mb", ".0f"),
    ("  query worker peak MB", "first_worker_peak_mb", ".0f"),
    ("  tree RSS max MB (sum)", "first_tree_rss_max_mb", ".0f"),
    ("steady polls: wall s", "poll_s", ".2f"),
    ("  tree CPU s/poll", "cpu_per_poll_s", ".2f"),
    ("  main proc CPU s/poll", "main_cpu_per_poll_s", ".2f"),
    ("  cores (window)", "cores", ".3f"),
    ("  daemon RSS MB (between polls)", "daemon_rss_mb", ".0f"),
    ("  daemon RSS max MB", "daemon_rss_max_mb", ".0f"),
    ("  query worker peak MB", "worker_peak_mb", ".0f"),
    ("  tree RSS max MB (sum)", "tree_rss_max_mb", ".0f"),
    ("  schedd CPU s/poll", "schedd_cpu_per_poll_s", ".2f"),
    ("  other load, cores", "other_cores", ".2f"),
]


def derive(args: argparse.Namespace, by_level: dict[int, list[dict]], workers: int) -> dict:
    lo, hi = min(by_level), max(by_level)
    out: dict[str, Any] = {"from_jobs": lo, "to_jobs": hi}
    if hi == lo:
        return out
    scale = 100_000 / (hi - lo)
    for key in ("daemon_rss_mb", "daemon_rss_max_mb", "worker_peak_mb", "tree_rss_max_mb", "cores",
                "cpu_per_poll_s", "main_cpu_per_poll_s", "poll_s", "schedd_cpu_per_poll_s", "first_poll_s",
                "first_poll_cpu_s", "first_poll_daemon_peak_mb", "first_worker_peak_mb", "first_tree_rss_max_mb"):
        a, b = med(by_level[lo], key), med(by_level[hi], key)
        if a is not None and b is not None:
            out[f"per100k_{key}"] = (b - a) * scale
    # capacity: schedds like the highest level's one, polled every --interval s, a cycle within
    # --budget of it; CPU on --cores cores; the hand-off (enrich + store commit) is serialised in
    # the daemon's main process (one GIL, one lock), so its CPU adds up; walls overlap by `workers`
    budget = args.budget * args.interval
    c, mproc, w = med(by_level[hi], "cpu_per_poll_s"), med(by_level[hi], "main_cpu_per_poll_s"), med(by_level[hi], "poll_s")
    limits = {
        "cpu": budget * args.cores / c if c else float("inf"),
        "main_process": budget / mproc if mproc else float("inf"),
        "wall_with_workers": budget * workers / w if w else float("inf"),
    }
    out.update(budget_s=budget, cores_assumed=args.cores, max_concurrent_schedds=workers,
               per_schedd_cpu_s=c, per_schedd_main_cpu_s=mproc, per_schedd_poll_s=w, limits=limits)
    n = int(min(limits.values()))
    out["schedds_per_replica"] = n
    out["jobs_per_replica"] = n * hi
    # the same budget spent on queued jobs spread over several schedds (the cost is linear in jobs:
    # compare the levels), each schedd adding the empty-queue poll's cost
    bounds = [budget * args.cores / pc for pc in [out.get("per100k_cpu_per_poll_s")] if pc and pc > 0]
    bounds += [budget / pm for pm in [out.get("per100k_main_cpu_per_poll_s")] if pm and pm > 0.01 * budget]
    if bounds:
        out["jobs_per_replica_spread"] = int(100_000 * min(bounds))
    # memory at that load: the daemon between polls + `workers` polls at once at their peak
    rss = med(by_level[hi], "daemon_rss_max_mb") or 0.0
    wk = med(by_level[hi], "worker_peak_mb") or 0.0
    fs = med(by_level[hi], "forkserver_mb") or 0.0
    out["memory_worst_mb"] = rss + fs + min(workers, max(n, 1)) * wk
    # a (re)start: every schedd's first poll fetches all its held jobs, up to `workers` at once
    first, idle = med(by_level[hi], "first_tree_rss_max_mb"), med(by_level[lo], "tree_rss_max_mb")
    if first is not None and idle is not None:
        out["memory_start_mb"] = idle + min(workers, max(n, 1)) * max(first - idle, 0.0)
    return out


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _late_signal(signum: int, _frame: object) -> None:
    print(f"({signal.Signals(signum).name} during the clean-up: finishing it first)", file=sys.stderr, flush=True)


def report(results: dict, args: argparse.Namespace) -> None:
    """Print the tables, differences, derived capacity and peer comparison of ``results``."""
    by_level: dict[int, list[dict]] = {int(k): v for k, v in results["levels"].items()}
    from opos_monitor.config import HTCondorConfig

    workers = int(results.get("workers") or args.workers or HTCondorConfig().max_concurrent_schedds)
    print(f"\n== {args.state} jobs on {args.schedd}: medians of {args.repeat} runs (range), {args.cycles} polls each, "
          f"queue every {args.interval:g} s; code {results['commit']}; total time {results.get('minutes', '?')} min ==")
    if by_level:
        w0 = 32
        print(f"{'jobs queued (tagged)':{w0}}" + "".join(f"{j:>22}" for j in by_level))
        for label, key, fmt in COLUMNS:
            print(f"{label:{w0}}" + "".join(f"{span(rows, key, fmt):>22}" for rows in by_level.values()))
        d = derive(args, by_level, workers)
        results["derived"] = d
        if "per100k_cores" in d:
            print(f"\nper 100k queued {args.state} jobs (level {d['to_jobs']} minus level {d['from_jobs']}, medians):")
            for key, label, unit in (("daemon_rss_mb", "daemon RSS between polls", "MB"),
                                     ("daemon_rss_max_mb", "daemon RSS max", "MB"),
                                     ("worker_peak_mb", "query worker peak", "MB"),
                                     ("tree_rss_max_mb", "tree RSS max (sum)", "MB"),
                                     ("cpu_per_poll_s", "CPU per poll", "s"),
                                     ("main_cpu_per_poll_s", "main-process CPU per poll", "s"),
                                     ("cores", f"CPU polled every {args.interval:g} s", "cores"),
                                     ("poll_s", "poll wall time", "s"),
                                     ("schedd_cpu_per_poll_s", "the schedd's CPU per poll", "s"),
                                     ("first_poll_s", "first poll after start: wall", "s"),
                                     ("first_poll_cpu_s", "first poll: CPU (tree)", "s"),
                                     ("first_worker_peak_mb", "first poll: query worker peak", "MB"),
                                     ("first_tree_rss_max_mb", "first poll: tree RSS max (sum)", "MB")):
                if f"per100k_{key}" in d:
                    print(f"  {label:32} {d['per100k_' + key]:9.3f} {unit}")
            lim = d["limits"]
            print(f"\nderived (a calculation, not a measurement): a poll cycle within {args.budget:.0%} of "
                  f"{args.interval:g} s = {d['budget_s']:.0f} s, {args.cores:g} cores, max_concurrent_schedds "
                  f"{workers}; per schedd of {d['to_jobs']} {args.state} jobs: {d['per_schedd_cpu_s']:.2f} CPU s, "
                  f"{d['per_schedd_main_cpu_s']:.2f} s of it in the main process, {d['per_schedd_poll_s']:.1f} s wall")
            print(f"  CPU limit:           {lim['cpu']:6.1f} schedds  ({d['budget_s']:.0f} s x {args.cores:g} cores / "
                  f"{d['per_schedd_cpu_s']:.2f} s)")
            print(f"  main-process limit:  {lim['main_process']:6.1f} schedds  ({d['budget_s']:.0f} s / "
                  f"{d['per_schedd_main_cpu_s']:.2f} s; enrich + store commit are serialised)")
            print(f"  wall-time limit:     {lim['wall_with_workers']:6.1f} schedds  ({d['budget_s']:.0f} s x {workers} "
                  f"/ {d['per_schedd_poll_s']:.1f} s)")
            print(f"  => {d['schedds_per_replica']} schedds of {d['to_jobs']} {args.state} jobs = "
                  f"{d['jobs_per_replica']} queued jobs per replica; memory then up to ~{d['memory_worst_mb']:.0f} MB "
                  f"(daemon max + forkserver + {min(workers, max(d['schedds_per_replica'], 1))} query workers at "
                  f"their peak)")
            if "memory_start_mb" in d:
                print(f"  after a (re)start the first polls of those schedds run at once: ~{d['memory_start_mb']:.0f} MB "
                      f"(idle tree + {min(workers, max(d['schedds_per_replica'], 1))} x the first poll's growth)")
            if "jobs_per_replica_spread" in d:
                print(f"  spread over several schedds, the same budget takes ~{d['jobs_per_replica_spread']} queued "
                      f"{args.state} jobs (the per-100k differences above; linear if the levels in between agree)")
    peer = results["peer"]
    if peer["opos"]:
        print(f"\nhistory backlog of {args.schedd} (the whole history, read by a fresh daemon's first poll), medians "
              f"of {len(peer['opos'])} (range):")
        print(f"{'':33}{'records':>8}{'read s':>18}{'run s':>8}{'CPU s':>7}{'largest process MB':>20}"
              f"{'tree sum MB':>16}")
        for name, rows in (("opos (read, classify, store)", peer["opos"]),
                           ("condor_adstash --interface null", peer["adstash"])):
            if rows:
                read = span(rows, "poll_s", ".1f") if name.startswith("opos") else "-"
                print(f"{name:33}{med(rows, 'records'):8.0f}{read:>18}{med(rows, 'wall_s'):8.1f}{med(rows, 'cpu_s'):7.1f}"
                      f"{span(rows, 'largest_mb', '.0f'):>20}{span(rows, 'tree_rss_max_mb', '.0f'):>16}")
        print("  read s: our history poll; run s: process start to the end of the read (ours: daemon start-up,"
              " discovery and the first run's 0-5 s jitter too; adstash: its whole run); CPU s: the whole tree"
              " over run s")
        if peer["adstash"]:
            o, a = peer["opos"], peer["adstash"]
            print(f"ratios opos/adstash: largest process {med(o, 'largest_mb') / med(a, 'largest_mb'):.2f}x, "
                  f"tree {med(o, 'tree_rss_max_mb') / med(a, 'tree_rss_max_mb'):.2f}x, "
                  f"CPU {med(o, 'cpu_s') / med(a, 'cpu_s'):.2f}x, read time {med(o, 'poll_s') / med(a, 'wall_s'):.2f}x"
                  f" (ours also classifies and durably stores every record; adstash's null interface drops them)")
        else:
            print("condor_adstash not run (--no-peer)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="0,50000,100000", help="queued-job levels, ascending (default 0,50000,100000)")
    p.add_argument("--schedd", default=f"jobsub01@{socket.gethostname()}", help="a fermigrid schedd (default jobsub01@HOST)")
    p.add_argument("--state", choices=("held", "idle"), default="held",
                   help="held (hold = true; every poll fetches and classifies them) or idle (requirements = false)")
    p.add_argument("--interval", type=float, default=60.0, help="queue interval, s (history: twice that); default 60")
    p.add_argument("--cycles", type=int, default=3, help="measured queue polls per run (after one warm-up); default 3")
    p.add_argument("--repeat", type=int, default=3, help="daemon runs per level (and peer alternations); default 3")
    p.add_argument("--query-timeout", type=float, default=None, help="htcondor.query_timeout_s (default: the daemon's)")
    p.add_argument("--workers", type=int, default=None, help="htcondor.max_concurrent_schedds (default: the daemon's)")
    p.add_argument("--budget", type=float, default=0.5, help="share of the queue interval a poll cycle may use (0.5)")
    p.add_argument("--cores", type=float, default=2.0, help="cores of a replica for the derived capacity (2)")
    p.add_argument("--sample-s", type=float, default=0.1, help="/proc sampling period, s (0.1; ~3 ms a sample)")
    p.add_argument("--scrape-s", type=float, default=2.0,
                   help="how often the daemon's /metrics is read to see polls end, s (2; its CPU is in the numbers)")
    p.add_argument("--retries", type=int, default=3,
                   help="runs again when the pool restarted under a run or a poll failed (default 3)")
    p.add_argument("--backlog", type=int, default=20_000,
                   help="history records the peer comparison reads at least (noop jobs fill it up; default 20000)")
    p.add_argument("--no-peer", action="store_true", help="skip the history-backlog comparison with condor_adstash")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, stores)")
    p.add_argument("--json", type=Path, help="also write every measurement to this file")
    p.add_argument("--report", type=Path, metavar="JSON", help="print the report of a --json file again, measure nothing")
    args = p.parse_args()
    if args.report:
        results = json.loads(args.report.read_text())
        for k, v in results["args"].items():  # the measured run's options, for the labels and the derivation
            if k in ("budget", "cores", "report", "json") or (k in vars(args) and getattr(args, k) != p.get_default(k)):
                continue  # options given now win (e.g. another --budget asked of the same measurements)
            v = {"None": None, "True": True, "False": False}.get(v, v) if isinstance(v, str) else v
            cur = p.get_default(k)
            if isinstance(cur, (int, float)) and not isinstance(cur, bool) and v is not None:
                v = type(cur)(v)
            setattr(args, k, v)
        report(results, args)
        return 0
    levels = sorted({int(x) for x in args.jobs.split(",")})
    if os.geteuid() != 0:
        raise SystemExit("needs root (the dev pool runs in a chroot)")
    signal.signal(signal.SIGTERM, _interrupt)

    from opos_monitor.config import HTCondorConfig
    import opos_monitor

    workers = args.workers or HTCondorConfig().max_concurrent_schedds
    qtimeout = args.query_timeout or HTCondorConfig().query_timeout_s
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or "not a git checkout"
    t_start = time.monotonic()
    dp.devpool("up", timeout=900)
    import catalogue

    htcondor2 = catalogue.use_host_env()  # the daemon's query workers inherit this environment
    spid, local_name = schedd_process(args.schedd)
    # HTCondor's default MAX_JOBS_PER_OWNER is 100000: raised on this schedd for the run (a
    # bench-only file in the chroot's config.d, removed at the end; only this schedd is
    # reconfigured, and the knob is scoped to it when it has a local name)
    knob = f"{local_name}.MAX_JOBS_PER_OWNER" if local_name else "SCHEDD.MAX_JOBS_PER_OWNER"
    limits = {knob: str(max(levels) + 100_000)} if max(levels) > 0 else {}
    print(f"opos_monitor from {Path(opos_monitor.__file__).parent} ({commit}); Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs; schedd {args.schedd} (pid {spid}); state {args.state}; queue interval "
          f"{args.interval:g} s, {args.cycles} measured polls per run, {args.repeat} runs per level; "
          f"query_timeout_s {qtimeout:g}, max_concurrent_schedds {workers}")
    work = Path(tempfile.mkdtemp(prefix="opos-bench-sizing-"))
    tag = dp.new_tag("sizing")
    results: dict[str, Any] = {"commit": commit, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "levels": {},
                               "peer": {"opos": [], "adstash": []}}
    failed = False
    template: Path | None = None
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(dp.runtime_config("bench-sizing", limits, [("fermigrid", args.schedd)] if limits else []))
        # -- peer: the history backlog, and the state template (history checkpoint at the newest) --------
        if not args.no_peer:
            ensure_backlog(args, htcondor2, tag)
        for rep in range(args.repeat if not args.no_peer else 1):
            ours, state = retry(args, f"history backlog, opos run {rep + 1}", lambda: run_opos_history(args, work, rep))
            results["peer"]["opos"].append(ours)
            print(f"history backlog, opos run {rep + 1}: {ours['records']} records, poll {ours['poll_s']:.1f} s, "
                  f"largest process {ours['largest_mb']:.0f} MB", flush=True)
            template = template or state
            if not args.no_peer:
                theirs = retry(args, f"history backlog, adstash run {rep + 1}", lambda: run_adstash(args))
                results["peer"]["adstash"].append(theirs)
                print(f"history backlog, adstash run {rep + 1}: {theirs['records']} records, {theirs['wall_s']:.1f} s, "
                      f"largest process {theirs['largest_mb']:.0f} MB", flush=True)
        assert template is not None
        # -- levels ------------------------------------------------------------------------------------
        for jobs in levels:
            t0 = time.monotonic()
            total = ensure_level(args, tag, jobs)
            print(f"level {jobs}: {jobs} tagged {args.state} jobs; {total} jobs in the schedd's queue in all "
                  f"({time.monotonic() - t0:.0f} s to get there)", flush=True)
            rows = []
            for rep in range(args.repeat):
                def one() -> dict:
                    r = run_level(args, work, template, jobs, rep)
                    r["schedd_queue_jobs"] = ensure_level(args, tag, jobs)
                    return r

                r = retry(args, f"level {jobs} run {rep + 1}", one, before=lambda: ensure_level(args, tag, jobs))
                rows.append(r)
                print(f"  run {rep + 1}: poll {r['poll_s']:.2f} s (first {r['first_poll_s']:.1f} s), "
                      f"{r['cpu_per_poll_s']:.2f} CPU s/poll, {r['cores']:.3f} cores, daemon {r['daemon_rss_mb']:.0f} MB "
                      f"(max {r['daemon_rss_max_mb']:.0f}), worker peak {r['worker_peak_mb'] or 0:.0f} MB, "
                      f"other load {r['other_cores']:.2f} cores, load avg {r['loadavg']:.2f}"
                      + (f", {r['missed']:.0f} skipped runs" if r["missed"] else ""), flush=True)
            results["levels"][jobs] = rows
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        failed = True
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit non-zero
        print(f"ERROR: {exc}", file=sys.stderr)
        failed = True
    finally:
        # the clean-up runs to its end: a second Ctrl-C/SIGTERM is only reported
        signal.signal(signal.SIGTERM, _late_signal)
        signal.signal(signal.SIGINT, _late_signal)
        t0 = time.monotonic()
        remove(args.schedd, tag)
        try:
            stack.close()  # the bench-only config file goes, the schedd is reconfigured
        except Exception as exc:  # noqa: BLE001
            print(f"WARNING: restoring the schedd's configuration: {exc}", file=sys.stderr)
            failed = True
        print(f"clean-up {time.monotonic() - t0:.0f} s")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")

    results["minutes"] = round((time.monotonic() - t_start) / 60, 1)
    results["workers"] = workers
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwritten: {args.json}")
    if failed:
        print("\nFAILED: see the errors above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
