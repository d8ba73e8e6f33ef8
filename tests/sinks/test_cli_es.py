"""`es-setup`, `replay` and `once`'s shipping through the CLI, against the in-process ES test
endpoint (tests/sinks/es_endpoint.py — a stand-in: no Elasticsearch server can run here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from es_endpoint import TestEndpoint

from opos_monitor.cli import main
from opos_monitor.classads import read_path
from opos_monitor.enrich.derive import Enricher
from opos_monitor.pipeline import Pipeline
from opos_monitor.records import JobRecord
from opos_monitor.sinks.store import Store
from opos_monitor.sources.base import SourceKey

DATA = Path(__file__).resolve().parents[1] / "data" / "ads"


@pytest.fixture
def env(tmp_path, monkeypatch):
    with TestEndpoint("elasticsearch") as ep:
        for k, v in {"OPOS_MONITOR__ELASTICSEARCH__ENABLED": "true",
                     "OPOS_MONITOR__ELASTICSEARCH__URLS": f'["{ep.url}"]',
                     "OPOS_MONITOR__STATE_DIR": str(tmp_path)}.items():
            monkeypatch.setenv(k, v)
        yield ep, tmp_path / "store.sqlite"


def test_es_setup_installs_the_template(env, capsys):
    ep, _ = env
    assert main(["-c", "/dev/null", "es-setup"]) == 0
    out = capsys.readouterr().out
    assert "Elasticsearch" in out and ep.state.templates
    assert main(["-c", "/dev/null", "es-setup"]) == 0  # idempotent


def test_es_setup_takes_the_retention_from_the_config_and_the_option_overrides_it(env, monkeypatch):
    ep, _ = env
    monkeypatch.setenv("OPOS_MONITOR__ELASTICSEARCH__RETENTION_DAYS", "90")
    assert main(["-c", "/dev/null", "es-setup"]) == 0
    assert ep.state.ilm["opos-jobs-retention"]["policy"]["phases"]["delete"]["min_age"] == "90d"
    assert main(["-c", "/dev/null", "es-setup", "--retention-days", "30"]) == 0
    assert ep.state.ilm["opos-jobs-retention"]["policy"]["phases"]["delete"]["min_age"] == "30d"


def test_shipping_threads_come_from_the_config(monkeypatch):
    from opos_monitor.config import load_config
    from opos_monitor.sinks.elastic import ElasticSink

    cfg = load_config(None, {"OPOS_MONITOR__ELASTICSEARCH__THREADS": "3"})
    assert ElasticSink.from_config(cfg).threads == 3
    assert ElasticSink.from_config(cfg, threads=1).threads == 1


def test_es_setup_unreachable_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPOS_MONITOR__ELASTICSEARCH__URLS", '["http://127.0.0.1:9"]')
    assert main(["-c", "/dev/null", "es-setup"]) == 1
    out = capsys.readouterr().out
    assert "es-setup" in out and "Traceback" not in out


def test_replay_dead_letters_queues_them_again(env, capsys):
    _, path = env
    with Store.open(path, max_bytes=64 * 1024**2) as store:
        p = Pipeline(store, Enricher.create())
        recs = [JobRecord.from_ad(ad, pool="p", schedd="s", source="history")
                for ad in read_path(DATA / "history_raw.txt")]
        p.commit(SourceKey("p", "s", "history"), recs, None)
        items = store.outbox_take(10)
        store.outbox_dead(items[0].seq, "mapper_parsing_exception: test")
        assert store.dead_count() == 1 and store.pending_count() == len(recs) - 1
    assert main(["-c", "/dev/null", "replay", "--dead-letters"]) == 0
    assert "1 dead letters queued" in capsys.readouterr().err
    with Store.open(path, max_bytes=64 * 1024**2) as store:
        assert store.dead_count() == 0 and store.pending_count() == len(recs)


def test_replay_refuses_without_elasticsearch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPOS_MONITOR__STATE_DIR", str(tmp_path))
    assert main(["-c", "/dev/null", "replay", "--since", "7d"]) == 2
    assert "elasticsearch.enabled is false" in capsys.readouterr().err


def test_runtime_ships_what_the_pipeline_stored(env, tmp_path):
    ep, _ = env
    from opos_monitor.config import load_config
    from opos_monitor.runtime import Runtime

    cfg = load_config("/dev/null")
    rt = Runtime(cfg, runner=object())  # no schedd is polled here; the runner is never called
    try:
        recs = [JobRecord.from_ad(ad, pool="p", schedd="s", source="history")
                for ad in read_path(DATA / "history_raw.txt")]
        rt.pipeline.commit(SourceKey("p", "s", "history"), recs, None)
        assert rt.store.pending_count() == len(recs)
        rt.ship_pending(max_seconds=60)
        assert rt.store.pending_count() == 0
        ids = {doc_id for index in ep.state.indices.values() for doc_id in index.docs}
        assert ids == {r.doc_id() for r in recs}
    finally:
        rt.close()
