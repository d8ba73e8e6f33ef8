"""`opos-monitor run`: the long-running daemon.

* APScheduler 3.x (BackgroundScheduler, thread pool): one discovery job per pool set, and one
  job per (schedd, source kind) with its own interval and jitter, ``max_instances=1`` and
  coalescing, so a slow schedd never delays the others; event logs, ES shipping and store
  metrics have their own jobs. Missed runs and job errors are counted in metrics.
* ``/metrics``, ``/healthz`` and ``/readyz`` on ``metrics.listen``.
* systemd ``Type=notify``: READY once the first discovery ran, WATCHDOG pings only while polls
  make progress, STOPPING at shutdown.
* SIGTERM/SIGINT: stop scheduling; running polls and shipping end after the batch they are
  committing (each batch is stored with its checkpoint); after ``shutdown_timeout_s`` queries
  still running are abandoned (their workers killed; those records are read again after the
  checkpoint on the next start); the store is closed; exit 0.
  SIGHUP: re-read and validate the configuration; intervals, pools and allow/deny lists take
  effect by rebuilding the jobs; a change of store path or listen address needs a restart
  (logged).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any, Callable

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from .config import Config, ConfigError, load_config
from .logsetup import get_logger
from .runtime import Runtime
from .sdnotify import Notifier, Watchdog
from .sinks.http import ExpositionServer
from .sinks.metrics import make_registry
from .sources.schedd import KnownSchedd

log = get_logger("opos_monitor.daemon")


def _interval(cfg: Config, kind: str) -> float:
    s = cfg.sources
    return {"queue": s.queue_interval_s, "history": s.history_interval_s, "epochs": s.history_interval_s,
            "eventlog": s.eventlog_interval_s}.get(kind, s.queue_interval_s)


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None, *, shutdown_timeout_s: float | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.shutdown_timeout_s = cfg.shutdown_timeout_s if shutdown_timeout_s is None else shutdown_timeout_s
        self.runtime = Runtime(cfg)
        self.notifier = notifier or Notifier.from_env()
        self.started = time.time()
        self._stop = threading.Event()
        self._reload = threading.Event()
        workers = max(4, cfg.htcondor.max_concurrent_schedds + 3)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30},
            timezone="UTC",
        )
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self.server = ExpositionServer(make_registry(self.runtime.metrics), cfg.metrics.listen,
                                       ready=self.readiness, live=lambda: {"process": True})
        self.watchdog = Watchdog(self.notifier, self.progressing)
        self._job_keys: dict[str, tuple[str, str, str]] = {}

    # -- health -----------------------------------------------------------------------------

    def progressing(self) -> bool:
        """True while some poll succeeded recently (3 queue intervals, at least 2 minutes)."""
        horizon = max(120.0, 3 * self.cfg.sources.queue_interval_s)
        return time.monotonic() - self.runtime.last_progress < horizon

    def readiness(self) -> dict[str, bool]:
        try:
            store_ok = not self.runtime.store.full and os.access(self.runtime.store.path.parent, os.W_OK)
        except Exception:  # noqa: BLE001
            store_ok = False
        return {"config_loaded": True, "store_writable": store_ok, "polled_recently": self.progressing()}

    # -- jobs ---------------------------------------------------------------------------------

    def _add(self, job_id: str, fn: Callable[[], Any], interval_s: float, key: tuple[str, str, str]) -> None:
        jitter = min(interval_s * 0.1, 30.0)
        first = time.time() + random.uniform(0, min(jitter, 5.0))
        self.scheduler.add_job(fn, "interval", seconds=interval_s, jitter=jitter, id=job_id, name=job_id,
                               replace_existing=True, next_run_time=_utc(first))
        self._job_keys[job_id] = key

    def _discover(self) -> None:
        self.runtime.discover()
        self._sync_schedd_jobs()

    def _sync_schedd_jobs(self) -> None:
        wanted = set()
        for known in self.runtime.known_schedds():
            for kind in self.runtime.schedds.kinds:
                job_id = f"poll:{known.target.pool}:{known.target.name}:{kind}"
                wanted.add(job_id)
                if self.scheduler.get_job(job_id) is None:
                    self._add(job_id, _poll_job(self.runtime, known.target.pool, known.target.name, kind),
                              _interval(self.cfg, kind), (known.target.pool, known.target.name, kind))
        for job in self.scheduler.get_jobs():
            if job.id.startswith("poll:") and job.id not in wanted:
                job.remove()
                self._job_keys.pop(job.id, None)

    def _ship(self) -> None:
        self.runtime.ship_pending(max_seconds=30.0)

    def schedule(self) -> None:
        cfg = self.cfg
        self._add("discovery", self._discover, min(cfg.sources.queue_interval_s, 300.0), ("*", "*", "discovery"))
        if self.runtime.eventlogs is not None:
            self._add("eventlogs", self.runtime.poll_eventlogs, cfg.sources.eventlog_interval_s, ("*", "*", "eventlog"))
        if cfg.sources.adfiles:
            self.scheduler.add_job(self.runtime.replay_adfiles, id="adfiles", name="adfiles")
        if cfg.elasticsearch.enabled:
            self._add("ship", self._ship, 5.0, ("*", "*", "ship"))
        self._add("store-metrics", self.runtime.refresh_store_metrics, 15.0, ("*", "*", "store"))

    def _on_job_event(self, event: JobEvent) -> None:
        pool, schedd, source = self._job_keys.get(event.job_id, ("*", "*", event.job_id))
        if event.code in (EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES):
            # missed its time, or skipped because the previous poll of the same source still runs
            self.runtime.metrics.observe_missed_run(pool, schedd, source)
            log.debug("scheduled run skipped", job=event.job_id,
                      reason="missed" if event.code == EVENT_JOB_MISSED else "previous run still going")
        else:
            log.error("scheduled job failed", job=event.job_id, error=repr(getattr(event, "exception", None)))

    # -- life ---------------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def run(self) -> int:
        self.server.start()
        log.info("opos-monitor started", listen=self.cfg.metrics.listen, store=str(self.cfg.store_path),
                 pools=list(self.cfg.pools))
        self._discover()  # first discovery before READY so the jobs exist
        self.schedule()
        self.scheduler.start()
        self.notifier.ready(self.status_line())
        self.watchdog.start()
        last_status = time.monotonic()
        while not self._stop.wait(1.0):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if time.monotonic() - last_status >= 30.0:  # what `systemctl status` shows
                self.notifier.status(self.status_line())
                last_status = time.monotonic()
        return self.shutdown()

    def status_line(self) -> str:
        """One line for systemd's STATUS=: schedds polled, last progress, records waiting."""
        ago = time.monotonic() - self.runtime.last_progress
        line = f"polling {len(self.runtime.known_schedds())} schedds; last successful poll {ago:.0f} s ago"
        if self.runtime.sink is not None:
            line += f"; {self.runtime.store.pending_count()} records to ship"
        return line

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: configuration invalid, keeping the running one", error=str(exc))
            return
        restart = [k for k, a, b in (("store.path", new.store_path, self.cfg.store_path),
                                      ("metrics.listen", new.metrics.listen, self.cfg.metrics.listen),
                                      ("pools", new.pools, self.cfg.pools),
                                      ("htcondor", new.htcondor, self.cfg.htcondor)) if a != b]
        if restart:
            log.warning("SIGHUP: these keys changed and need a restart to take effect", keys=restart)
        self.cfg = new.model_copy(update={"pools": self.cfg.pools, "htcondor": self.cfg.htcondor,
                                          "store": self.cfg.store, "metrics": self.cfg.metrics,
                                          "state_dir": self.cfg.state_dir})
        self.runtime.cfg = self.cfg
        for job in self.scheduler.get_jobs():
            key = self._job_keys.get(job.id)
            if key and job.id.startswith("poll:"):
                job.reschedule("interval", seconds=_interval(self.cfg, key[2]),
                               jitter=min(_interval(self.cfg, key[2]) * 0.1, 30.0))
        log.info("SIGHUP: configuration reloaded")

    def shutdown(self) -> int:
        """Stop gracefully (see the module doc); returns the exit code, 0."""
        t0 = time.monotonic()
        self.notifier.stopping()
        log.info("stopping: running polls end after the batch they are committing",
                 timeout_s=self.shutdown_timeout_s)
        self.watchdog.stop()
        self.scheduler.pause()
        self.runtime.request_stop()
        done = threading.Event()

        def _wait() -> None:
            self.scheduler.shutdown(wait=True)
            done.set()

        threading.Thread(target=_wait, name="opos-shutdown", daemon=True).start()
        clean = done.wait(self.shutdown_timeout_s)
        if not clean:
            log.warning("in-flight work did not end in time; abandoning queries still running "
                        "(their records are read again after the stored checkpoint at the next start)",
                        timeout_s=self.shutdown_timeout_s)
        self.runtime.close()  # kills query workers still running, then closes the store
        if not clean:
            clean = done.wait(10.0)  # threads blocked on a killed worker return at once
        self.server.stop()
        log.info("stopped", seconds=round(time.monotonic() - t0, 2), clean=clean)
        return 0


def _poll_job(runtime: Runtime, pool: str, name: str, kind: str) -> Callable[[], None]:
    def job() -> None:
        known = next((k for k in runtime.known_schedds() if k.target.pool == pool and k.target.name == name), None)
        if known is not None:
            runtime.poll_schedd(known, [kind])

    return job


def _utc(t: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


def main(cfg: Config, config_path: str | None) -> int:
    d = Daemon(cfg, config_path)
    d.install_signals()
    code = d.run()
    _exit_if_threads_linger(code)
    return code


def _exit_if_threads_linger(code: int) -> None:
    """After the store is closed nothing durable is left to do; a thread still blocked (say, on
    an unresponsive Elasticsearch) must not hold the exit past the stop timeout: exit now."""
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if lingering:
        log.warning("exiting with threads still blocked", threads=lingering)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
