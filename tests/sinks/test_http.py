"""The exposition server: /metrics, /healthz, /readyz on one bound address; clean shutdown."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from opos_monitor.sinks.http import ExpositionServer, accepts_text, check_body, exposition, parse_listen
from opos_monitor.sinks.metrics import MetricsState, make_registry
from opos_monitor.sources.base import PollResult, SourceKey


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture
def state() -> MetricsState:
    s = MetricsState()
    s.set_schedds("fermigrid", ["jobsub01.fnal.gov"])
    s.observe_poll(PollResult(SourceKey("fermigrid", "jobsub01.fnal.gov", "queue"), status_counts={"idle": 7}))
    s.set_store(pending=42, dead=0, size_bytes=1024, full=False)
    return s


@pytest.fixture
def checks() -> dict[str, bool]:
    return {"store": True, "schedds": True}


@pytest.fixture
def server(state, checks):
    srv = ExpositionServer(make_registry(state), "127.0.0.1:0", ready=lambda: checks).start()
    yield srv
    srv.stop()


def test_parse_listen():
    assert parse_listen("127.0.0.1:9720") == ("127.0.0.1", 9720)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    for bad in ("9720", ":9720", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_metrics_endpoint_serves_the_registry_with_the_text_content_type(server, state):
    code, headers, body = get(server.url + "/metrics")
    assert code == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {"opos_jobs", "opos_source_up", "opos_store_pending_records", "process_cpu_seconds"} <= set(fams)
    idle = [s for s in fams["opos_jobs"].samples if s.labels["status"] == "idle"]
    assert idle[0].value == 7
    # the state is read at scrape time: an update shows on the next scrape
    state.set_store(pending=99, dead=0, size_bytes=1024, full=False)
    assert b"opos_store_pending_records 99.0" in get(server.url + "/metrics")[2]


def test_metrics_openmetrics_and_gzip_negotiation(server):
    code, headers, body = get(server.url + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert code == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    code, headers, body = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert code == 200 and headers["Content-Encoding"] == "gzip"
    assert b"opos_store_pending_records 42.0" in gzip.decompress(body)


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # what Prometheus 2.42 sends


def test_prometheus_accept_header_gets_the_fast_text_format(server, state):
    code, headers, body = get(server.url + "/metrics", {"Accept": PROMETHEUS_ACCEPT})
    assert code == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert not body.rstrip().endswith(b"# EOF")
    assert b"opos_store_pending_records 42.0" in body


def test_accepts_text():
    assert accepts_text("") and accepts_text("*/*") and accepts_text("text/plain;version=0.0.4")
    assert accepts_text(PROMETHEUS_ACCEPT)
    assert not accepts_text("application/openmetrics-text; version=1.0.0")
    assert not accepts_text("application/openmetrics-text, text/plain;q=0")


def test_exposition_of_a_plain_registry_uses_generate_latest():
    from prometheus_client import CollectorRegistry, Counter

    reg = CollectorRegistry()
    Counter("opos_test_things", "things", registry=reg).inc()
    body, ctype = exposition(reg, "")
    assert b"opos_test_things_total 1.0" in body and ctype.startswith("text/plain; version=0.0.4")


def test_healthz_is_200_while_serving(server):
    code, headers, body = get(server.url + "/healthz")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["status"] == "ok"


def test_readyz_follows_the_readiness_callable(server, checks):
    code, _, body = get(server.url + "/readyz")
    assert code == 200
    assert json.loads(body) == {"status": "ok", "checks": {"schedds": True, "store": True}, "failing": []}
    checks["schedds"] = False
    code, headers, body = get(server.url + "/readyz")
    assert code == 503 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "failing" and doc["failing"] == ["schedds"] and doc["checks"]["store"] is True


def test_readyz_with_a_raising_callable_is_503_naming_the_error(state):
    def broken():
        raise RuntimeError("store closed")

    with ExpositionServer(make_registry(state, process=False), "127.0.0.1:0", ready=broken) as srv:
        code, _, body = get(srv.url + "/readyz")
        assert code == 503
        doc = json.loads(body)
        assert doc["failing"] == ["checks"] and "store closed" in doc["error"]
        # the server survives a broken check
        assert get(srv.url + "/healthz")[0] == 200


def test_liveness_callable_drives_healthz(state):
    alive = {"scheduler": True}
    with ExpositionServer(make_registry(state, process=False), "127.0.0.1:0", live=lambda: alive) as srv:
        assert get(srv.url + "/healthz")[0] == 200
        alive["scheduler"] = False
        code, _, body = get(srv.url + "/healthz")
        assert code == 503 and json.loads(body)["failing"] == ["scheduler"]


def test_check_body_without_callable_is_ready():
    code, body = check_body(None)
    assert code == 200 and json.loads(body)["failing"] == []


def test_unknown_path_404_and_other_methods_405_and_head(server):
    assert get(server.url + "/nope")[0] == 404
    code, headers, _ = get(server.url + "/metrics", method="POST")
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    code, headers, body = get(server.url + "/metrics", method="HEAD")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_binds_the_configured_address_only(state):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ExpositionServer(make_registry(state, process=False), f"127.0.0.1:{port}") as srv:
        assert srv.address == ("127.0.0.1", port)
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        # the port is taken: a second server on it fails at start, loudly
        with pytest.raises(OSError):
            ExpositionServer(make_registry(state, process=False), f"127.0.0.1:{port}").start()


def test_ipv6_loopback(state):
    if not socket.has_ipv6:
        pytest.fail("this host has no IPv6 support")
    try:
        srv = ExpositionServer(make_registry(state, process=False), "[::1]:0").start()
    except OSError as exc:  # ::1 not configured in this container
        pytest.xfail(f"no ::1 here: {exc}")
    with srv:
        assert srv.url.startswith("http://[::1]:")
        assert get(srv.url + "/healthz")[0] == 200


def test_stop_closes_the_port_and_joins_the_thread(state):
    srv = ExpositionServer(make_registry(state, process=False), "127.0.0.1:0").start()
    host, port = srv.address
    assert get(srv.url + "/metrics")[0] == 200
    thread = srv._thread
    srv.stop()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()
    srv.stop()  # idempotent
    # the same address can be bound again right away
    with ExpositionServer(make_registry(state, process=False), f"{host}:{port}") as again:
        assert get(again.url + "/healthz")[0] == 200


def test_parallel_scrapes(server):
    results: list[int] = []

    def scrape():
        results.append(get(server.url + "/metrics")[0])

    threads = [threading.Thread(target=scrape) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 16
