"""The daemon's stop when a query hangs: SIGTERM's path with in-process fake schedds.

The real-pool test (tests/integration/test_daemon_shutdown.py) shows a poll ending after its
batch in flight. Here a history query never answers (a schedd that hangs): the stop must not
wait for it longer than ``shutdown_timeout_s``, must abandon it (the runner is closed, as the
real one kills its worker), keep what was committed, and return 0.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "sources"))

from schedd_fakes import FakeGrid, FakeSchedd, job_ad  # noqa: E402

from opos_monitor import daemon as daemon_mod  # noqa: E402
from opos_monitor.config import Config  # noqa: E402
from opos_monitor.runtime import Runtime  # noqa: E402
from opos_monitor.sdnotify import Notifier  # noqa: E402
from opos_monitor.sources import schedd as schedd_mod  # noqa: E402
from opos_monitor.sources.history import HistoryOptions  # noqa: E402
from opos_monitor.sources.htc import InlineRunner, QueryError  # noqa: E402
from opos_monitor.sinks.store import Store  # noqa: E402

NAME = "jobsub01@fnal"


class HangingRunner:
    """Answers discovery; the history query after the first ``answer`` ones hangs until close()."""

    def __init__(self, grid: FakeGrid, answer: int) -> None:
        self.inner = InlineRunner(grid.connect)
        self.answer = answer
        self.hanging = threading.Event()
        self.closed = threading.Event()

    def call(self, target, fn, *args, timeout=None):
        if fn.__name__ in ("fetch_index", "fetch_page"):
            if self.answer <= 0:
                self.hanging.set()
                if self.closed.wait(60):
                    raise QueryError(f"{target.name}: query worker died (exit code -9)")
            self.answer -= 1
        return self.inner.call(target, fn, *args, timeout=timeout)

    def close(self) -> None:
        self.closed.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("answer", [0, 2])
def test_a_hanging_query_is_abandoned_after_the_shutdown_timeout_and_the_daemon_exits_0(tmp_path, monkeypatch,
                                                                                        caplog, answer):
    grid = FakeGrid()
    schedd = FakeSchedd(NAME)
    grid.add_pool("fg1:9618", schedd)
    schedd.complete(job_ad(100 + i // 100, i % 100, schedd=NAME) for i in range(3000))
    runner = HangingRunner(grid, answer)  # answer=2: the index and the first page, then a page hangs
    monkeypatch.setattr(daemon_mod, "Runtime", lambda cfg: Runtime(cfg, runner=runner))
    monkeypatch.setattr(schedd_mod, "HistoryOptions", lambda: HistoryOptions(page_size=1000, prefetch=1))
    cfg = Config.model_validate({
        "state_dir": str(tmp_path), "shutdown_timeout_s": 1.0,
        "pools": {"fermigrid": {"collectors": ["fg1:9618"]}},
        "sources": {"schedd_sources": ["history"], "history_interval_s": 3600},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    })
    d = daemon_mod.Daemon(cfg, notifier=Notifier(None))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(d.run()), daemon=True)
    t.start()
    assert runner.hanging.wait(30), "the history poll never reached the hanging query"
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        d._stop.set()  # what SIGTERM does
        t.join(30)
    took = time.monotonic() - t0
    assert result == [0] and not t.is_alive()
    assert took < 1.0 + 5.0, took  # the timeout, then the abandoned query returns at once
    assert runner.closed.is_set()
    with Store.open(cfg.store_path, max_bytes=cfg.store.max_bytes) as store:
        stored = store.counts()["records"]
        checkpoint = store.checkpoint("fermigrid", NAME, "history")
    if answer:  # the first page (1,000 records, one batch) was committed with its checkpoint
        assert stored == 1000 and checkpoint is not None
    else:
        assert stored == 0 and checkpoint is None
