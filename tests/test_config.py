"""Configuration: valid files, every kind of invalid, environment overrides, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from opos_monitor.cli import main
from opos_monitor.config import ConfigError, env_overrides, load_config, read_secret

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "opos-monitor.example.toml"
DEV = ROOT / "deploy" / "dev-pool" / "opos-monitor.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_builtin_defaults_point_at_a_local_pool():
    cfg = load_config(None, environ={})
    assert cfg.pools["local"].collectors == ["127.0.0.1:9618"]
    assert cfg.metrics.listen.startswith("127.0.0.1:")
    assert cfg.elasticsearch.verify_certs is True
    assert cfg.store_path == cfg.state_dir / "store.sqlite"


@pytest.mark.parametrize("path", [EXAMPLE, DEV])
def test_shipped_configs_are_valid(path):
    cfg = load_config(path, environ={})
    assert len(cfg.pools) == 2


def test_config_path_from_environment(tmp_path):
    p = write(tmp_path, '[pools.a]\ncollectors = ["cm.example.org:9618"]\n')
    cfg = load_config(None, environ={"OPOS_MONITOR_CONFIG": str(p)})
    assert list(cfg.pools) == ["a"]


def test_environment_overrides_every_level(tmp_path):
    p = write(tmp_path, '[pools.a]\ncollectors = ["cm:9618"]\n[elasticsearch]\nurls = ["https://es1:9200"]\n')
    cfg = load_config(p, environ={
        "OPOS_MONITOR__ELASTICSEARCH__URLS": '["https://es2:9200", "https://es3:9200"]',
        "OPOS_MONITOR__ELASTICSEARCH__PASSWORD": "s3cret",
        "OPOS_MONITOR__POOLS__A__SCHEDDS_DENY": '["test*"]',
        "OPOS_MONITOR__SOURCES__QUEUE_INTERVAL_S": "30",
        "OPOS_MONITOR__METRICS__LISTEN": "0.0.0.0:9999",
    })
    assert cfg.elasticsearch.urls == ["https://es2:9200", "https://es3:9200"]
    assert cfg.elasticsearch.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert cfg.pools["a"].collectors == ["cm:9618"]
    assert cfg.pools["a"].schedds_deny == ["test*"]
    assert cfg.sources.queue_interval_s == 30
    assert cfg.metrics.listen == "0.0.0.0:9999"


def test_env_value_that_is_not_toml_is_a_string():
    assert env_overrides({"OPOS_MONITOR__STATE_DIR": "/var/lib/x"}) == {"state_dir": "/var/lib/x"}
    assert env_overrides({"OTHER": "1"}) == {}


@pytest.mark.parametrize("text,key,reason", [
    ('[metrics]\nlisten = "nohostport"\n', "metrics.listen", "HOST:PORT"),
    ('[metrics]\nlisten = "x:70000"\n', "metrics.listen", "1-65535"),
    ('[elasticsearch]\nurls = ["ftp://es:9200"]\n', "elasticsearch.urls", "http(s) URL"),
    ('[elasticsearch]\nkind = "solr"\n', "elasticsearch.kind", "elasticsearch"),
    ('[elasticsearch]\npassword = "a"\npassword_file = "/x"\n', "elasticsearch", "not both"),
    ('[elasticsearch]\nindex_prefix = "Has Spaces"\n', "elasticsearch.index_prefix", "pattern"),
    ('[sources]\nqueue_interval_s = 0\n', "sources.queue_interval_s", "greater than or equal to 1"),
    ('[sources]\nqueue_interval_s = "often"\n', "sources.queue_interval_s", "valid number"),
    ('[pools.a]\ncollectors = []\n', "pools.a.collectors", "at least 1"),
    ('[pools.a]\ncollectors = ["bad host!"]\n', "pools.a.collectors", "collector address"),
    ('[pools."bad name"]\ncollectors = ["cm:9618"]\n', "pools", "may hold only"),
    ('[pools.a]\ncolectors = ["cm:9618"]\n', "pools.a.colectors", "unknown key"),
    ('[metrics]\nlisten_address = "127.0.0.1:1"\n', "metrics.listen_address", "unknown key"),
    ('[logging]\nlevel = "loud"\n', "logging.level", "'debug'"),
])
def test_invalid_values_name_key_value_and_reason(tmp_path, text, key, reason):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    msg = str(info.value)
    assert f"{key}" in msg and reason in msg and str(p) in msg


def test_several_errors_are_all_reported(tmp_path):
    p = write(tmp_path, '[metrics]\nlisten = "x"\n[logging]\nlevel = "loud"\n')
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    assert "metrics.listen" in str(info.value) and "logging.level" in str(info.value)


def test_secret_values_are_not_echoed_in_errors(tmp_path):
    p = write(tmp_path, '[elasticsearch]\npassword = ["hunter2"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    assert "hunter2" not in str(info.value)
    assert "elasticsearch.password" in str(info.value)


def test_bad_env_override_names_the_variable_source(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"OPOS_MONITOR__METRICS__LISTEN": "oops"})
    assert "environment" in str(info.value) and "metrics.listen" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    p = write(tmp_path, "[metrics\nlisten=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p, environ={})


def test_read_secret_from_file(tmp_path):
    f = tmp_path / "pw"
    f.write_text("hunter2\n")
    assert read_secret(None, f) == "hunter2"
    with pytest.raises(ConfigError, match="cannot read secret file"):
        read_secret(None, tmp_path / "missing")


def test_cli_check_config_exit_codes(tmp_path, capsys):
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "configuration OK" in capsys.readouterr().err
    bad = write(tmp_path, '[metrics]\nlisten = "nope"\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "metrics.listen" in err and "Traceback" not in err


def test_cli_show_masks_secrets(tmp_path, capsys):
    p = write(tmp_path, '[elasticsearch]\npassword = "hunter2"\n')
    assert main(["--config", str(p), "check-config", "--show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and '"password"' in out


@pytest.mark.parametrize("shard,ok", [("0/1", True), ("1/2", True), ("2/2", False), ("0/0", False), ("x", False)])
def test_shard_validation(tmp_path, shard, ok):
    p = write(tmp_path, f'shard = "{shard}"\n')
    if ok:
        assert load_config(p, environ={}).shard == shard
    else:
        with pytest.raises(ConfigError, match="shard"):
            load_config(p, environ={})


def test_shards_split_schedds_deterministically():
    from opos_monitor.runtime import shard_of

    names = [("fermigrid", f"jobsub{i:02d}.fnal.gov") for i in range(1, 41)]
    for n in (1, 2, 3, 5):
        owners = [shard_of(p, s, n) for p, s in names]
        assert owners == [shard_of(p, s, n) for p, s in names]  # stable
        assert set(owners) == set(range(n))  # every replica gets work with 40 schedds
