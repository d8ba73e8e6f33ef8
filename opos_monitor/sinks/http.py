"""The exposition server: ``/metrics``, ``/healthz`` and ``/readyz`` on one address.

A stdlib ``ThreadingHTTPServer`` served from a daemon thread. ``/metrics`` renders the
explicit registry: Prometheus text format 0.0.4 (fast path: ``OposRegistry.render_text``)
whenever the client accepts it, OpenMetrics for clients that accept only that, gzip when
accepted. ``/healthz`` answers
200 while the process serves (plus an optional liveness callable); ``/readyz`` asks the
readiness callable, which returns ``{check name: passed}``, and answers 200 when every check
passes, 503 otherwise, with a JSON body naming the failing checks.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import CollectorRegistry

__all__ = ["CONTENT_TYPE_TEXT", "Checks", "ExpositionServer", "accepts_text", "check_body", "exposition", "parse_listen"]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
#: A health callable: check name -> passed.
Checks = Callable[[], Mapping[str, bool]]


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) -> (host, port). Port 0 picks a free port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def check_body(checks: Callable[[], Mapping[str, bool]] | None) -> tuple[int, bytes]:
    """Run a health callable: (200 or 503, JSON body with every check and the failing ones).
    A callable that raises fails as a whole, its error quoted."""
    if checks is None:
        result: dict[str, bool] = {}
        error = None
    else:
        try:
            result = {str(k): bool(v) for k, v in checks().items()}
            error = None
        except Exception as exc:  # noqa: BLE001 - a broken check must answer 503, not crash the server
            result, error = {}, f"{type(exc).__name__}: {exc}"
    failing = sorted(k for k, ok in result.items() if not ok)
    if error is not None:
        failing.append("checks")
    ok = not failing
    body: dict[str, object] = {"status": "ok" if ok else "failing", "checks": result, "failing": failing}
    if error is not None:
        body["error"] = error
    return (200 if ok else 503), json.dumps(body, sort_keys=True).encode() + b"\n"


def accepts_text(accept: str) -> bool:
    """Whether an Accept header admits Prometheus text format (``text/plain``, ``text/*``,
    ``*/*`` with q > 0, or no header at all)."""
    if not accept.strip():
        return True
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() not in ("text/plain", "text/*", "*/*"):
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The /metrics body and content type for an Accept header.

    Prometheus text format 0.0.4 whenever the client accepts it — Prometheus does, even though
    it lists OpenMetrics first — rendered by the registry's fast ``render_text`` when it has one;
    OpenMetrics (prometheus_client's encoder) only for clients that do not accept text."""
    if not accepts_text(accept) and "openmetrics" in accept.lower():
        encoder, ctype = choose_encoder(accept)
        return encoder(registry), ctype
    render = getattr(registry, "render_text", None)
    body = render() if render is not None else generate_latest(registry)
    return body, CONTENT_TYPE_TEXT


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # set per instance by ExpositionServer
    registry: CollectorRegistry
    ready: Checks | None
    live: Checks | None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "opos-monitor"
    # HTTP/1.0: one request per connection, so no idle keep-alive connection outlives stop()
    protocol_version = "HTTP/1.0"
    timeout = 30  # a client that stalls mid-request cannot hold a thread for ever

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every 15 s would flood the daemon's log

    def _send(self, code: int, ctype: str, body: bytes, head: bool, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype = exposition(self.server.registry, self.headers.get("Accept", ""))
            extra = {}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                extra["Content-Encoding"] = "gzip"
            self._send(200, ctype, body, head, extra)
        elif path == "/healthz":
            code, body = check_body(self.server.live)
            self._send(code, "application/json", body, head)
        elif path == "/readyz":
            code, body = check_body(self.server.ready)
            self._send(code, "application/json", body, head)
        elif path == "/":
            body = b'<html><body><a href="/metrics">metrics</a> <a href="/healthz">healthz</a> <a href="/readyz">readyz</a></body></html>\n'
            self._send(200, "text/html; charset=utf-8", body, head)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", head)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._route(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def _not_allowed(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"method not allowed\n", False, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815


class ExpositionServer:
    """Serves a registry and the health endpoints on ``listen`` from a daemon thread.

    ``ready`` / ``live``: callables returning ``{check: passed}``; ``None`` means always passing.
    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(self, registry: CollectorRegistry, listen: str, *, ready: Checks | None = None,
                 live: Checks | None = None) -> None:
        self.registry = registry
        self.listen = listen
        self.ready = ready
        self.live = live
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ExpositionServer":
        if self._server is not None:
            raise RuntimeError("server already started")
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_BoundServer", (_Server,), {"address_family": family})
        server = server_cls((host, port), _Handler)  # binds now: an address in use raises here
        server.registry, server.ready, server.live = self.registry, self.ready, self.live
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="opos-metrics-http", daemon=True)
        self._thread.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is real even when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("server not started")
        addr = self._server.server_address
        return str(addr[0]), int(addr[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the thread. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> "ExpositionServer":
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
