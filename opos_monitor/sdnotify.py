"""systemd notification (sd_notify) without libsystemd: READY, STATUS, STOPPING, WATCHDOG.

``Notifier.from_env()`` reads ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and ``WATCHDOG_USEC``; without them every call is a no-op, so the daemon runs the
same under systemd, in a container or in a terminal.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Mapping


class Notifier:
    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watchdog = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1e6
        return cls(addr, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines; returns False when there is no socket or sending failed."""
        if not self.address:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(msg, target)
                return True
            except OSError:
                return False

    def ready(self, status: str = "") -> bool:
        return self.notify(ready=1, status=status) if status else self.notify(ready=1)

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def stopping(self) -> bool:
        return self.notify(stopping=1)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """Pings WATCHDOG=1 every watchdog/2 seconds, but only while ``progressing()`` says the
    daemon's polls make progress — a stuck daemon stops pinging and systemd restarts it."""

    def __init__(self, notifier: Notifier, progressing: Callable[[], bool], clock: Callable[[], float] = time.monotonic):
        self.notifier = notifier
        self.progressing = progressing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.skipped = 0

    def start(self) -> "Watchdog":
        if self.notifier.watchdog_s and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="opos-watchdog", daemon=True)
            self._thread.start()
        return self

    def tick(self) -> bool:
        """One watchdog decision: ping if progressing. Returns whether it pinged."""
        if self.progressing():
            if self.notifier.notify(watchdog=1):
                self.pings += 1
                return True
        else:
            self.skipped += 1
        return False

    def _loop(self) -> None:
        interval = max(0.05, (self.notifier.watchdog_s or 1.0) / 2)
        while not self._stop.wait(interval):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
