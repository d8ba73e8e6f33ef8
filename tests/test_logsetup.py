"""Logging: JSON shape, stdlib routing, secret redaction, tracebacks without locals."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from opos_monitor.logsetup import configure_logging, get_logger, redact_text


@pytest.fixture
def json_log():
    buf = io.StringIO()
    configure_logging("debug", "json", stream=buf)
    yield buf
    configure_logging("info", "console")


def lines(buf: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_lines_shape(json_log):
    get_logger("opos.test").info("poll done", schedd="jobsub01@fnal.gov", jobs=12)
    (rec,) = lines(json_log)
    assert rec["event"] == "poll done"
    assert rec["level"] == "info"
    assert rec["logger"] == "opos.test"
    assert rec["schedd"] == "jobsub01@fnal.gov" and rec["jobs"] == 12
    assert rec["timestamp"].endswith("Z")


def test_stdlib_loggers_go_through_the_same_pipeline(json_log):
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "poll")
    (rec,) = lines(json_log)
    assert rec["event"] == "Run time of job poll was missed"
    assert rec["logger"] == "apscheduler.scheduler" and rec["level"] == "warning"


def test_secrets_redacted_by_key(json_log):
    get_logger().info("connect", password="hunter2", api_key="abc123", token_file="/etc/t", es_token="x")
    (rec,) = lines(json_log)
    assert rec["password"] == "[REDACTED]" and rec["api_key"] == "[REDACTED]" and rec["es_token"] == "[REDACTED]"
    assert rec["token_file"] == "/etc/t"  # a path to a secret is fine to log
    assert "hunter2" not in json_log.getvalue()


def test_secrets_redacted_by_shape_in_text_and_stdlib(json_log):
    logging.getLogger("elastic_transport").error(
        "POST https://writer:hunter2@es.fnal.gov:9200/_bulk failed; Authorization: ApiKey c2VjcmV0a2V5MTIz")
    get_logger().info("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcG9zIn0.c2lnbmF0dXJl seen")
    out = json_log.getvalue()
    assert "hunter2" not in out and "c2VjcmV0a2V5MTIz" not in out and "c2lnbmF0dXJl" not in out
    assert "es.fnal.gov" in out


@pytest.mark.parametrize("text,secret", [
    ("Bearer abcdefghijkl", "abcdefghijkl"),
    ("password=hunter2&x=1", "hunter2"),
    ("https://u:p4ssw0rd@host/", "p4ssw0rd"),
    ("api_key: AKIA1234567", "AKIA1234567"),
])
def test_redact_text(text, secret):
    assert secret not in redact_text(text)


def test_traceback_has_no_locals(json_log):
    def boom():
        secret_local = "hunter2-local"  # noqa: F841
        raise ValueError("bad ad")

    try:
        boom()
    except ValueError:
        get_logger().exception("classify failed")
    (rec,) = lines(json_log)
    assert rec["exception"][0]["exc_type"] == "ValueError"
    assert "hunter2-local" not in json_log.getvalue()


def test_console_format_is_readable():
    buf = io.StringIO()
    configure_logging("info", "console", stream=buf)
    get_logger("x").info("hello", schedd="jobsub01", password="hunter2")
    out = buf.getvalue()
    assert "hello" in out and "schedd=jobsub01" in out and "hunter2" not in out
    assert not out.lstrip().startswith("{")


def test_skipped_scheduler_runs_are_not_logged_but_other_warnings_are(json_log):
    sched = logging.getLogger("apscheduler.scheduler")
    sched.warning('Execution of job "poll" skipped: maximum number of running instances reached (1)')
    sched.warning("Run time of job %s was missed by 0:00:05", "poll")
    recs = lines(json_log)
    assert [r["event"] for r in recs] == ["Run time of job poll was missed by 0:00:05"]
