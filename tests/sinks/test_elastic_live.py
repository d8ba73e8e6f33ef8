"""The sink against a real Elasticsearch or OpenSearch cluster (only when OPOS_TEST_ES_URL is set).

No cluster can be installed on the build machine, so these tests skip there (with that reason)
and the same behaviour is covered against the in-process test endpoint in test_elastic.py.
Point them at a real cluster to check what the endpoint can only imitate:

    OPOS_TEST_ES_URL=https://es.example.org:9200      (required)
    OPOS_TEST_ES_KIND=elasticsearch|opensearch        (default: elasticsearch)
    OPOS_TEST_ES_USER / OPOS_TEST_ES_PASSWORD         (basic auth), or OPOS_TEST_ES_API_KEY
    OPOS_TEST_ES_CA=/path/ca.pem                      (CA bundle), OPOS_TEST_ES_VERIFY=0 to skip TLS checks

Everything is written under a fresh prefix ``opos-test-<random>`` (indices, template, policy)
and deleted afterwards.  The user needs index-template, ILM/ISM-policy and index privileges on
``opos-test-*``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from opos_monitor.config import ElasticsearchConfig
from opos_monitor.sinks import es_schema
from opos_monitor.sinks.elastic import ElasticSink, doc_version, index_name

URL = os.environ.get("OPOS_TEST_ES_URL")
pytestmark = pytest.mark.skipif(
    not URL, reason="OPOS_TEST_ES_URL is not set: no real Elasticsearch/OpenSearch cluster to test against"
    " (the in-process test endpoint covers the same behaviour in test_elastic.py)"
)

if URL:  # the helpers of the endpoint suite, for realistic records and the expected shape
    from test_elastic import NOW, Producer, StoredRecord, expected_source, open_store, record_of


def live_cfg(prefix: str, **kw: Any) -> ElasticsearchConfig:
    env = os.environ
    opts: dict[str, Any] = {
        "enabled": True,
        "kind": env.get("OPOS_TEST_ES_KIND", "elasticsearch"),
        "urls": [URL],
        "index_prefix": prefix,
        "bulk_docs": 200,
        "verify_certs": env.get("OPOS_TEST_ES_VERIFY", "1") not in ("0", "false", "no"),
    }
    if env.get("OPOS_TEST_ES_USER"):
        opts["username"] = env["OPOS_TEST_ES_USER"]
        opts["password"] = env.get("OPOS_TEST_ES_PASSWORD", "")
    if env.get("OPOS_TEST_ES_API_KEY"):
        opts["api_key"] = env["OPOS_TEST_ES_API_KEY"]
    if env.get("OPOS_TEST_ES_CA"):
        opts["ca_certs"] = Path(env["OPOS_TEST_ES_CA"])
    opts.update(kw)
    return ElasticsearchConfig(**opts)


def _req(sink: ElasticSink, method: str, path: str, body: Any = None) -> Any:
    return es_schema._body(es_schema._perform(sink.client, method, path, body))


@pytest.fixture
def live(tmp_path):
    prefix = f"opos-test-{uuid.uuid4().hex[:8]}"
    sink = ElasticSink(live_cfg(prefix))
    sink.connect()
    yield prefix, sink
    for path in (f"/{prefix}-*", f"/_index_template/{prefix}",
                 f"/_plugins/_ism/policies/{prefix}-retention" if sink.flavor == "opensearch"
                 else f"/_ilm/policy/{prefix}-retention"):
        try:
            _req(sink, "DELETE", path)
        except Exception:  # noqa: BLE001 - best-effort clean-up
            pass
    sink.close()


def cluster_docs(sink: ElasticSink, prefix: str) -> dict[tuple[str, str], dict[str, Any]]:
    _req(sink, "POST", f"/{prefix}-*/_refresh")
    body = _req(sink, "POST", f"/{prefix}-*/_search",
                {"size": 10000, "version": True, "query": {"match_all": {}}})
    return {(h["_index"], h["_id"]): h for h in body["hits"]["hits"]}


def assert_live(sink: ElasticSink, prefix: str, store: Any, latest: dict[str, StoredRecord],
                poison: dict[str, str] | None = None) -> None:
    poison = poison or {}
    docs = cluster_docs(sink, prefix)
    ids = [d_id for _, d_id in docs]
    assert len(ids) == len(set(ids)), "a document is in more than one index"
    assert set(ids) == set(latest) - set(poison)
    for (index, d_id), hit in docs.items():
        r = latest[d_id]
        assert index == index_name(prefix, r.end_time if r.end_time is not None else r.updated_at)
        assert hit["_version"] == doc_version(r.updated_at)
        assert hit["_source"] == expected_source(r)
    assert store.pending_count() == 0
    dead = {d.doc_id: d.reason for d in store.dead_letters(limit=10_000)}
    assert set(dead) == set(poison)
    for d_id, needle in poison.items():
        assert needle in dead[d_id], dead[d_id]


def drain(sink: ElasticSink, store: Any) -> None:
    for _ in range(30):
        sink.ship_pending(store)
        if store.pending_count() == 0:
            return
    raise AssertionError(f"{store.pending_count()} still pending: {store.outbox_take(1)[0].last_error}")


def test_live_setup_is_idempotent(live):
    prefix, sink = live
    first = {a.what: a.result for a in sink.setup()}
    assert "created" in first.values()
    second = {a.what: a.result for a in sink.setup()}
    assert set(second.values()) == {"unchanged"}


def test_live_round_trip_types_versions_and_no_duplicates(live, tmp_path):
    prefix, sink = live
    sink.setup()
    store = open_store(tmp_path)
    prod = Producer(500, seed=21)
    recs = prod.records()
    bad = recs[7]
    doc = orjson.loads(bad.doc)
    doc["opos"]["q_date"] = "yesterday"
    recs[7] = StoredRecord(**{**{f: getattr(bad, f) for f in bad.__dataclass_fields__}, "doc": orjson.dumps(doc)})
    prod.commit(store, recs)
    drain(sink, store)
    assert_live(sink, prefix, store, prod.latest, {bad.doc_id: "HTTP 400"})
    # new versions: overwritten in place
    prod.round += 1
    prod.commit(store, prod.records(range(0, 500, 4)))
    drain(sink, store)
    assert_live(sink, prefix, store, prod.latest, {bad.doc_id: "HTTP 400"})
    mapping = next(iter(_req(sink, "GET", f"/{prefix}-*/_mapping").values()))["mappings"]["properties"]
    assert mapping["ClusterId"]["type"] == "long"
    assert mapping["HoldReason"]["type"] == "text" and mapping["HoldReason"]["fields"]["keyword"]["type"] == "keyword"
    assert mapping["QDate"]["type"] == "date"
    assert mapping["raw"]["type"] == ("flat_object" if sink.flavor == "opensearch" else "flattened")
    assert mapping["opos"]["properties"]["timestamp"]["type"] == "date"


def test_live_job_moving_month_stays_single(live, tmp_path):
    prefix, sink = live
    sink.setup()
    store = open_store(tmp_path)
    prod = Producer(1, seed=22)
    ad = dict(prod.ads[0])
    may20, jun3 = 1_716_163_200, 1_717_372_800
    ad.update(QDate=may20 - 3600, JobStatus=2, JobCurrentStartDate=may20, CompletionDate=0)
    store.commit_batch([record_of(ad, updated_at=may20 + 60)])
    drain(sink, store)
    ad.update(JobStatus=4, CompletionDate=jun3, EnteredCurrentStatus=jun3, ExitCode=0)
    done = record_of(ad, updated_at=jun3 + 60)
    store.commit_batch([done])
    drain(sink, store)
    assert_live(sink, prefix, store, {done.doc_id: done})


def test_live_unreachable_node_keeps_everything(live, tmp_path):
    prefix, _ = live
    store = open_store(tmp_path)
    prod = Producer(20, seed=23)
    prod.commit(store, prod.records())
    dead_end = ElasticSink(live_cfg(prefix, urls=["http://127.0.0.1:9"], request_timeout_s=2))
    stats = dead_end.ship_pending(store)
    assert stats.acked == 0 and store.pending_count() == 20
    assert NOW  # records are realistic (see test_elastic.Producer)
