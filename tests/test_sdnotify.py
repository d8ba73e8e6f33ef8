"""sd_notify over a real unix datagram socket: READY, STATUS, WATCHDOG only while progressing."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from opos_monitor.sdnotify import Notifier, Watchdog


@pytest.fixture
def sock(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def recv_all(s: socket.socket, n: int) -> list[str]:
    return [s.recv(4096).decode() for _ in range(n)]


def test_no_socket_is_a_no_op():
    n = Notifier.from_env({})
    assert not n.enabled and n.ready() is False and n.watchdog_s is None


def test_ready_status_stopping(sock):
    path, s = sock
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.ready("polling 3 schedds") and n.status("ok") and n.stopping()
    assert recv_all(s, 3) == ["READY=1\nSTATUS=polling 3 schedds", "STATUS=ok", "STOPPING=1"]
    n.close()


def test_abstract_namespace_socket():
    name = f"opos-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        assert Notifier("@" + name).ready()
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_watchdog_interval_from_env_and_pid_check():
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"}).watchdog_s == 4.0
    other = str(os.getpid() + 1)
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": other}).watchdog_s is None


def test_watchdog_pings_only_while_progressing(sock):
    path, s = sock
    progressing = threading.Event()
    progressing.set()
    wd = Watchdog(Notifier(path, watchdog_s=0.2), progressing.is_set).start()
    try:
        assert recv_all(s, 2) == ["WATCHDOG=1", "WATCHDOG=1"]
        progressing.clear()  # polls stuck
        s.settimeout(0.1)
        while True:  # drain what was in flight
            try:
                s.recv(100)
            except socket.timeout:
                break
        s.settimeout(0.6)
        with pytest.raises(socket.timeout):
            s.recv(100)
        assert wd.skipped >= 1
        progressing.set()
        s.settimeout(2)
        assert s.recv(100) == b"WATCHDOG=1"
    finally:
        wd.stop()
