"""Configuration: one TOML file plus environment overrides, validated.

Sources, later ones winning:
  1. built-in defaults (a local pool on 127.0.0.1:9618, a local store, metrics on 127.0.0.1);
  2. the TOML file from ``--config`` or ``OPOS_MONITOR_CONFIG``;
  3. environment variables ``OPOS_MONITOR__SECTION__KEY=value`` (any depth, case-insensitive;
     the value is read as a TOML value when it parses as one, e.g. ``["a:9618"]`` or ``30``,
     and as a plain string otherwise).

Every validation error names the key, the value and the reason (``ConfigError``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "OPOS_MONITOR__"
ENV_CONFIG = "OPOS_MONITOR_CONFIG"


class ConfigError(Exception):
    """A configuration problem, worded for the operator (key, value, reason)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_HOSTPORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+(:\d{1,5})?$")


class PoolConfig(_Section):
    """One HTCondor pool: its collectors and which schedds to watch."""

    collectors: list[str] = Field(min_length=1)
    schedds_allow: list[str] = []  # shell-style patterns on the schedd Name; empty = all
    schedds_deny: list[str] = []

    @field_validator("collectors")
    @classmethod
    def _hostports(cls, v: list[str]) -> list[str]:
        for item in v:
            if not _HOSTPORT.match(item):
                raise ValueError(f"{item!r} is not a host[:port] collector address")
        return v


class HTCondorConfig(_Section):
    """How the daemon talks to HTCondor (read-only)."""

    token_file: Path | None = None  # a read-only IDTOKEN (condor_token_create -authz READ)
    # more read-only tokens, one per further trust domain: HTCondor presents to each pool the
    # token its trust domain issued
    token_files: list[Path] = []
    auth_methods: list[str] = ["IDTOKENS", "SSL", "FS"]
    query_timeout_s: float = Field(60.0, gt=0)
    max_concurrent_schedds: int = Field(4, ge=1, le=64)

    def tokens(self) -> list[Path]:
        """Every token file: ``token_file`` first, then ``token_files`` (duplicates dropped)."""
        return list(dict.fromkeys([*([self.token_file] if self.token_file else []), *self.token_files]))


class SourcesConfig(_Section):
    # what to poll on every schedd: "queue", "history", "epochs" (per-attempt records; needs the
    # schedd's JOB_EPOCH_HISTORY)
    schedd_sources: list[Literal["queue", "history", "epochs"]] = ["queue", "history"]
    queue_interval_s: float = Field(60.0, ge=1)
    history_interval_s: float = Field(120.0, ge=1)
    eventlog_interval_s: float = Field(30.0, ge=1)
    eventlogs: list[str] = []  # paths or globs of job event logs to tail
    adfiles: list[Path] = []  # ad dumps / history files to replay


class StoreConfig(_Section):
    path: Path | None = None  # default: <state_dir>/store.sqlite
    max_bytes: int = Field(2 * 1024**3, ge=64 * 1024**2)  # a batch of 500 records is ~1 MB


class MetricsConfig(_Section):
    listen: str = "127.0.0.1:9720"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT with a port in 1-65535")
        return v


class ElasticsearchConfig(_Section):
    enabled: bool = False
    kind: Literal["elasticsearch", "opensearch"] = "elasticsearch"
    urls: list[str] = ["https://localhost:9200"]
    index_prefix: str = Field("opos-jobs", pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    request_timeout_s: float = Field(30.0, gt=0)
    bulk_docs: int = Field(500, ge=1, le=100_000)
    threads: int = Field(1, ge=1, le=16)  # bulk requests in flight at once
    retention_days: int = Field(400, ge=1, le=36500)  # es-setup: indices deleted this long after creation

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            if not re.match(r"^https?://[^/\s]+", u):
                raise ValueError(f"{u!r} is not an http(s) URL")
        return v

    @model_validator(mode="after")
    def _one_secret_source(self) -> "ElasticsearchConfig":
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        return self


class SitesConfig(_Section):
    # execute-host domain suffix (or /regex/) -> site name, used when no GLIDEIN_Site is known
    corrections: dict[str, str] = {}


class ClassifierConfig(_Section):
    rulesets: list[str] = ["default"]
    blackhole_threshold: int = Field(5, ge=1)
    blackhole_window_s: float = Field(900.0, gt=0)
    blackhole_max_runtime_s: float = Field(300.0, gt=0)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section):
    state_dir: Path = Path("/var/lib/opos-monitor")
    # "i/N": this replica polls the schedds whose stable hash of "pool/schedd" mod N is i
    shard: str = Field("0/1", pattern=r"^\d+/\d+$")
    # SIGTERM/SIGINT: how long in-flight polls and shipping may take to finish their batch
    # before queries still running are abandoned (keep below systemd's TimeoutStopSec)
    shutdown_timeout_s: float = Field(30.0, gt=0, le=600)
    pools: dict[str, PoolConfig] = {"local": PoolConfig(collectors=["127.0.0.1:9618"])}
    htcondor: HTCondorConfig = HTCondorConfig()
    sources: SourcesConfig = SourcesConfig()
    store: StoreConfig = StoreConfig()
    metrics: MetricsConfig = MetricsConfig()
    elasticsearch: ElasticsearchConfig = ElasticsearchConfig()
    sites: SitesConfig = SitesConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, v: dict[str, PoolConfig]) -> dict[str, PoolConfig]:
        if not v:
            raise ValueError("at least one pool is needed")
        for name in v:
            if not re.match(r"^[A-Za-z0-9_\-]+$", name):
                raise ValueError(f"pool name {name!r} may hold only letters, digits, '_' and '-'")
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        i, n = (int(x) for x in v.split("/"))
        if n < 1 or not 0 <= i < n:
            raise ValueError("must be i/N with N >= 1 and 0 <= i < N")
        return v

    @property
    def shard_index(self) -> tuple[int, int]:
        i, n = self.shard.split("/")
        return int(i), int(n)

    @property
    def store_path(self) -> Path:
        return self.store.path or self.state_dir / "store.sqlite"


def read_secret(value: SecretStr | None, path: Path | None) -> str | None:
    """The secret from the config value or its file (first line, stripped); never logged."""
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc


# --- loading -------------------------------------------------------------------------------


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict from ``OPOS_MONITOR__A__B=value`` variables (keys lower-cased)."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.upper().startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {key}: empty key part")
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"environment variable {key}: {part!r} is not a table")
            node = nxt
        node[path[-1]] = _parse_env_value(raw)
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _describe(err: Mapping[str, Any], origin: str) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    value = err.get("input")
    shown = "" if isinstance(value, dict) or err["type"] == "missing" else f" = {_safe_repr(key, value)}"
    return f"{origin}: {key}{shown}: {msg}"


def _safe_repr(key: str, value: Any) -> str:
    if re.search(r"password|api_key|secret|token(?!_file)", key, re.I):
        return "'[REDACTED]'"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    path = path if path is not None else environ.get(ENV_CONFIG) or None
    data: dict[str, Any] = {}
    origin = "built-in defaults"
    if path is not None:
        origin = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    overrides = env_overrides(environ)
    if overrides:
        origin += " + environment"
    merged = _merge(data, overrides)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        lines = [_describe(e, origin) for e in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def redacted_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration for display, secrets masked."""
    return cfg.model_dump(mode="json")  # SecretStr dumps as '**********'
