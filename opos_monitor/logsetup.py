"""Logging: structlog for our events, the same pipeline for stdlib loggers.

JSON lines in production (not a terminal, or ``format = "json"``), readable console output on
a terminal. Secrets are redacted by key name and by shape (bearer tokens, API keys, JWTs,
passwords in URLs) before anything is rendered. Tracebacks never include local variables.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Mapping, MutableMapping, TextIO

import orjson
import structlog

REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|authorization|cookie|credential|private[_-]?key)", re.I
)
_SECRET_KEY_OK = re.compile(r"(_file|_path|_dir|_directory)$", re.I)  # a path to a secret is not one
_SECRET_TEXT = [
    (re.compile(r"(?i)\b(bearer|apikey|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"), REDACTED),  # JWT/IDTOKEN
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]+):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
    (re.compile(r"(?i)\b(password|passwd|api_key|apikey|token|secret)(\s*[=:]\s*)([^\s,;&\"']+)"),
     r"\1\2" + REDACTED),
]


def redact_text(text: str) -> str:
    for pattern, repl in _SECRET_TEXT:
        text = pattern.sub(repl, text)
    return text


def _redact_value(key: str | None, value: Any) -> Any:
    if key is not None and _SECRET_KEY.search(key) and not _SECRET_KEY_OK.search(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(None, v) for v in value]
    return value


def redact_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets by key and by shape in every value."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key if key != "event" else None, event_dict[key])
    return event_dict


def _orjson_dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]


def _renderer(json_output: bool) -> list[Any]:
    if json_output:
        return [
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            redact_secrets,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    return [
        redact_secrets,
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback, sort_keys=False
        ),
    ]


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and route the stdlib root logger through the same processors."""
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not (hasattr(stream, "isatty") and stream.isatty()))
    numeric = getattr(logging, level.upper())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderer(json_output)],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Chatty libraries: keep their warnings, drop their per-request info lines.
    for name in ("urllib3", "elastic_transport", "elasticsearch", "opensearch", "apscheduler.executors"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # APScheduler warns on every run skipped because the previous one still runs; the daemon
    # counts those (opos_scheduler_missed_runs_total) instead of filling the log.
    sched = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _SkippedRunFilter) for f in sched.filters):
        sched.addFilter(_SkippedRunFilter())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class _SkippedRunFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
