"""The Elasticsearch / OpenSearch sink, its schema and setup, against the in-process test endpoint.

The endpoint (tests/sinks/es_endpoint.py) is not Elasticsearch: it answers the REST calls the
official clients make and checks documents against the installed template the way a real
server does (types, dynamic mapping, term limits, field limit), so a mapping reject here is a
real one.  Records are realistic (benchmarks/adgen.py ads through JobRecord, the classifier
and the real Store).  For every fault the end state is checked the same way
(:func:`assert_delivered`): the endpoint holds exactly the records produced, each id once, each
at its latest version, in the right monthly index; the poison records are in dead letters with
their reasons; the outbox is empty.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from es_endpoint import TestEndpoint
from opos_monitor.config import ElasticsearchConfig
from opos_monitor.enrich.classify import classify
from opos_monitor.enrich.site import attribute_site
from opos_monitor.records import JobRecord
from opos_monitor.sinks import es_schema
from opos_monitor.sinks.elastic import (
    ElasticSink,
    SinkError,
    classify_result,
    doc_version,
    es_setup_main,
    index_name,
    item_actions,
    shape_document,
    stale_indices,
)
from opos_monitor.sinks.store import OutboxItem, Store, StoredRecord, stored_from

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_718_000_000  # 2024-06-10
PREFIX = "opos-jobs"
SERVERS = [("elasticsearch", "9.1.0"), ("elasticsearch", "8.15.0"), ("opensearch", "2.17.0")]


# ---------------------------------------------------------------------------------------------
# realistic records


def _adgen():
    name = "opos_bench_adgen"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "adgen.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def record_of(ad: dict[str, Any], updated_at: float, attempt: int | None = None) -> StoredRecord:
    schedd = str(ad.get("GlobalJobId", "jobsub01.fnal.gov#")).split("#")[0] or "jobsub01.fnal.gov"
    rec = JobRecord.from_ad(ad, pool="fermigrid", schedd=schedd, source="history")
    return stored_from(rec, classify(ad).to_dict(), attribute_site(ad), attempt=attempt, updated_at=updated_at)


class Producer:
    """Makes realistic records and new versions of them; remembers the latest of each."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.ads = list(_adgen().make_ads(n, seed, now=NOW))
        self.latest: dict[str, StoredRecord] = {}
        self.round = 0

    def records(self, idx: range | list[int] | None = None, *, updated_at: float | None = None) -> list[StoredRecord]:
        """Versions of the ads ``idx`` (all by default) for the current round."""
        out = []
        for i in (range(len(self.ads)) if idx is None else idx):
            ad = dict(self.ads[i])
            ad["OposTestRound"] = self.round
            r = record_of(ad, updated_at if updated_at is not None else NOW + self.round * 10 + i * 1e-3)
            out.append(r)
        return out

    def commit(self, store: Store, recs: list[StoredRecord]) -> None:
        store.commit_batch(recs)
        for r in recs:
            self.latest[r.doc_id] = r


def open_store(tmp_path: Path, name: str = "store.sqlite", **kw: Any) -> Store:
    kw.setdefault("retry_base_s", 0.0)
    kw.setdefault("retry_max_s", 0.0)
    kw.setdefault("synchronous", "NORMAL")
    return Store.open(tmp_path / name, max_bytes=1 << 30, **kw)


def es_cfg(ep: TestEndpoint, **kw: Any) -> ElasticsearchConfig:
    kw.setdefault("bulk_docs", 100)
    kw.setdefault("request_timeout_s", 10.0)
    return ElasticsearchConfig(enabled=True, kind=ep.state.flavor, urls=[ep.url], **kw)


def drain(sink: ElasticSink, store: Store, rounds: int = 60) -> None:
    for _ in range(rounds):
        sink.ship_pending(store)
        if store.pending_count() == 0:
            return
    raise AssertionError(f"outbox not drained: {store.pending_count()} pending")


def expected_source(r: StoredRecord) -> dict[str, Any]:
    shaped = shape_document(orjson.loads(r.doc), kind=r.kind, end_time=r.end_time, updated_at=r.updated_at)
    return orjson.loads(orjson.dumps(shaped))


def assert_delivered(ep: TestEndpoint, store: Store, latest: dict[str, StoredRecord],
                     poison: dict[str, str] | None = None) -> None:
    """The endpoint holds exactly the produced records (latest versions, once each, right index);
    poison records are dead letters with their reason; nothing is pending."""
    poison = poison or {}
    counts = ep.id_counts(f"{PREFIX}-*")
    dupes = {i: n for i, n in counts.items() if n != 1}
    assert not dupes, f"documents in more than one index: {dupes}"
    assert set(counts) == set(latest) - set(poison), (
        f"missing {len(set(latest) - set(poison) - set(counts))}, unexpected {len(set(counts) - set(latest))}"
    )
    for (index, doc_id), d in ep.docs(f"{PREFIX}-*").items():
        r = latest[doc_id]
        assert index == index_name(PREFIX, r.end_time if r.end_time is not None else r.updated_at), doc_id
        assert d.version == doc_version(r.updated_at), f"{doc_id}: not the latest version"
        assert d.source == expected_source(r), f"{doc_id}: content differs from the latest version"
    assert store.pending_count() == 0
    dead = {d.doc_id: d for d in store.dead_letters(limit=10_000)}
    assert set(dead) == set(poison)
    for doc_id, needle in poison.items():
        assert needle in dead[doc_id].reason, dead[doc_id].reason
        assert dead[doc_id].doc == latest[doc_id].doc


@pytest.fixture(params=SERVERS, ids=[f"{f}-{v}" for f, v in SERVERS])
def server(request):
    flavor, version = request.param
    with TestEndpoint(flavor, version) as ep:
        yield ep


@pytest.fixture
def es9():
    with TestEndpoint("elasticsearch", "9.1.0") as ep:
        yield ep


@pytest.fixture(params=["elasticsearch", "opensearch"])
def ep(request):
    with TestEndpoint(request.param) as e:
        yield e


def ready_sink(ep: TestEndpoint, **kw: Any) -> ElasticSink:
    sink = ElasticSink(es_cfg(ep, **kw))
    sink.setup()
    return sink


# ---------------------------------------------------------------------------------------------
# pure functions


def test_index_name_is_the_utc_month():
    assert index_name("opos-jobs", 1_717_200_000) == "opos-jobs-2024.06"  # 2024-06-01 00:00 UTC
    assert index_name("opos-jobs", 1_717_199_999) == "opos-jobs-2024.05"
    assert index_name("x", 0) == "x-1970.01"


def test_doc_version_is_monotonic_in_update_time():
    assert doc_version(NOW) < doc_version(NOW + 1e-6) < doc_version(NOW + 1)
    assert doc_version(0) == 1


def test_shape_keeps_known_attributes_typed_and_moves_the_rest_to_raw():
    doc = {
        "ClusterId": 7, "procid": 0, "JobStatus": 5, "MemoryUsage": "((ResidentSetSize + 1023) / 1024)",
        "RequestMemory": 2000.0, "QDate": 1717000000.0, "CompletionDate": 0, "HoldReason": "x" * 20000,
        "NumHoldsByReason": {"JobOutOfResources": 1}, "Cmd": "/bin/sh", "SomeNewAttr": "v", "ExitBySignal": 0,
        "opos_attr": "kept", "Huge": "y" * 10000, "opos": {"category": "memory"},
    }
    s = shape_document(doc, kind="job", end_time=NOW, updated_at=NOW + 5)
    assert s["ClusterId"] == 7 and s["ProcId"] == 0 and "procid" not in s  # canonical name
    assert s["raw"]["MemoryUsage"] == "((ResidentSetSize + 1023) / 1024)" and "MemoryUsage" not in s
    assert s["RequestMemory"] == 2000.0 and s["QDate"] == 1717000000 and isinstance(s["QDate"], int)
    assert s["CompletionDate"] == 0
    assert s["HoldReason"] == "x" * 20000  # reasons are never truncated
    assert s["raw"]["NumHoldsByReason"] == {"JobOutOfResources": 1}
    assert s["raw"]["ExitBySignal"] == 0  # not a boolean: kept raw, never coerced
    assert s["raw"]["opos_attr"] == "kept" and s["raw"]["SomeNewAttr"] == "v"
    assert s["raw_unindexed"] == {"Huge": "y" * 10000}
    assert s["opos"] == {"category": "memory", "kind": "job", "end_time": "2024-06-10T06:13:20.000Z",
                         "updated_at": "2024-06-10T06:13:25.000Z", "timestamp": "2024-06-10T06:13:20.000Z"}


_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers(min_value=-(2**70), max_value=2**70)
    | hs.floats(allow_nan=False, allow_infinity=False) | hs.text(max_size=30),
    lambda c: hs.lists(c, max_size=3) | hs.dictionaries(hs.text(min_size=1, max_size=5), c, max_size=3),
    max_leaves=8,
)
_names = hs.sampled_from(sorted(es_schema.RAW_FIELDS) + ["memoryusage", "HOLDREASON", "Foo", "raw", "x"]) | hs.text(
    alphabet="abcXYZ_", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(hs.dictionaries(_names, _values, max_size=12))
def test_shape_keeps_every_value_exactly_once(doc):
    doc = {k: v for k, v in doc.items() if k != "opos"}
    s = shape_document(doc)
    seen: dict[str, Any] = {}
    for k, v in s.items():
        if k in ("raw", "raw_unindexed"):
            for rk, rv in v.items():
                assert rk not in seen
                seen[rk] = rv
        elif k != "opos":
            assert k in es_schema.RAW_FIELDS
            seen[k] = v
    # every input value is in the output once, under its own name or its canonical spelling
    canon = {n.lower(): n for n in es_schema.RAW_FIELDS}
    for k, v in doc.items():
        got = seen.pop(k) if k in seen else seen.pop(canon[k.lower()])
        assert got == v or (isinstance(v, float) and got == int(v))
    assert not seen


def test_stale_indices_cover_the_months_since_submission():
    may15, jun2, jul1 = 1_715_731_200, 1_717_286_400, 1_719_792_000
    doc = {"QDate": may15}
    assert stale_indices("p", doc, end_time=jun2, updated_at=jun2 + 60) == ["p-2024.05"]
    assert stale_indices("p", doc, end_time=None, updated_at=jul1 + 60) == ["p-2024.05", "p-2024.06"]
    assert stale_indices("p", {"QDate": jun2}, end_time=jun2, updated_at=jun2) == []
    assert stale_indices("p", {"opos": {"q_date": "2024-05-15T00:00:00Z"}}, end_time=jun2, updated_at=jun2) == ["p-2024.05"]
    long_idle = stale_indices("p", {"QDate": 1_500_000_000}, end_time=None, updated_at=jun2)
    assert len(long_idle) == 12 and long_idle[-1] == "p-2024.05"  # capped at the newest 13 months
    # a backfill (observed two years after the job ended): nothing between its end and now
    assert stale_indices("p", {"QDate": may15}, end_time=jun2, updated_at=jun2 + 2 * 365 * 86400) == ["p-2024.05"]
    assert stale_indices("p", {"QDate": jun2 - 3600}, end_time=jun2, updated_at=jun2 + 2 * 365 * 86400) == []


@pytest.mark.parametrize("op, ok, result, want", [
    ("index", True, {"status": 201}, "ok"),
    ("index", True, {"status": 200}, "ok"),
    ("index", False, {"status": 429, "error": {"type": "es_rejected_execution_exception"}}, "retry"),
    ("index", False, {"status": 503, "error": {"type": "unavailable_shards_exception"}}, "retry"),
    ("index", False, {"status": 500, "error": {"type": "x"}}, "retry"),
    ("index", False, {"status": 400, "error": {"type": "mapper_parsing_exception"}}, "dead"),
    ("index", False, {"status": 400, "error": {"type": "document_parsing_exception"}}, "dead"),
    ("index", False, {"status": 400, "error": {"type": "illegal_argument_exception"}}, "dead"),
    ("index", False, {"status": 400, "error": {"type": "strict_dynamic_mapping_exception"}}, "dead"),
    ("index", False, {"status": 400, "error": {"type": "index_closed_exception"}}, "retry"),
    ("index", False, {"status": 400, "error": {"type": "validation_exception"}}, "retry"),
    ("index", False, {"status": 409, "error": {"type": "version_conflict_engine_exception"}}, "superseded"),
    ("index", False, {"status": 401, "error": {"type": "security_exception"}}, "retry"),
    ("index", False, {"status": 403, "error": {"type": "security_exception"}}, "retry"),
    ("index", False, {"status": 404, "error": {"type": "index_not_found_exception"}}, "retry"),
    # whole-request failures say nothing about the document, whatever the status
    ("index", False, {"status": 400, "error": "media_type_header_exception", "exception": ValueError()}, "retry"),
    ("index", False, {"status": 200, "error": "not elasticsearch", "exception": ValueError()}, "retry"),
    ("index", False, {"status": "N/A", "error": "ConnectionError", "exception": ValueError()}, "retry"),
    ("delete", True, {"status": 200}, "ok"),
    ("delete", False, {"status": 404, "result": "not_found"}, "ok"),
    ("delete", False, {"status": 404, "error": {"type": "index_not_found_exception"}}, "ok"),
    ("delete", False, {"status": 429, "error": {"type": "es_rejected_execution_exception"}}, "retry"),
    ("delete", False, {"status": 503, "error": {"type": "x"}}, "retry"),
])
def test_classify_result(op, ok, result, want):
    assert classify_result(op, ok, result) == want


# ---------------------------------------------------------------------------------------------
# schema and setup


def _mapped_paths(m: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for name, f in m.get("properties", {}).items():
        out.add(prefix + name)
        out |= _mapped_paths(f, prefix + name + ".")
        for sub in f.get("fields", {}):
            out.add(f"{prefix}{name}.{sub}")
    return out


def test_every_opos_field_the_pipeline_writes_is_mapped():
    """A field the daemon adds under opos but the template forgets would be silently unindexed."""
    prod = Producer(600, seed=3)
    keys: set[str] = set()
    for r in prod.records():
        s = shape_document(orjson.loads(r.doc), kind=r.kind, end_time=r.end_time, updated_at=r.updated_at)
        keys |= set(s["opos"])
        assert set(s) - {"raw", "raw_unindexed", "opos"} <= set(es_schema.RAW_FIELDS)
    attempt = record_of(prod.ads[0], NOW, attempt=2)
    keys |= set(shape_document(orjson.loads(attempt.doc), kind="attempt", end_time=NOW, updated_at=NOW)["opos"])
    assert keys - set(es_schema.OPOS_FIELDS) == set()


@pytest.mark.parametrize("flavor", ["elasticsearch", "opensearch"])
def test_template_stays_far_below_the_field_limit(flavor):
    n = sum(1 for _ in _mapped_paths(es_schema.mappings(flavor)))  # type: ignore[arg-type]
    assert n < 400


def test_record_schema_doc_lists_every_field():
    doc = (ROOT / "docs" / "record-schema.md").read_text()
    missing = [n for n in es_schema.RAW_FIELDS if f"| `{n}` |" not in doc]
    missing += [f"opos.{n}" for n in es_schema.OPOS_FIELDS if f"| `opos.{n}` |" not in doc]
    missing += [n for n in ("raw", "raw_unindexed") if f"| `{n}` |" not in doc]
    assert not missing, f"document these fields in docs/record-schema.md: {missing}"
    assert f"ignore_above: {es_schema.KEYWORD_LIMIT}" in doc


def test_deploy_exports_match_the_code():
    out = ROOT / "deploy" / "elasticsearch"
    for name, body in es_schema.export().items():
        assert json.loads((out / name).read_text()) == json.loads(json.dumps(body)), f"regenerate {name}"


def test_setup_is_idempotent_and_reports_what_it_did(ep):
    sink = ElasticSink(es_cfg(ep))
    policy = "ism_policy" if ep.state.flavor == "opensearch" else "ilm_policy"
    first = {a.what: a.result for a in sink.setup()}
    assert first[policy] == "created" and first["index_template"] == "created"
    second = {a.what: a.result for a in sink.setup()}
    assert second == {policy: "unchanged", "index_template": "unchanged"}
    third = {a.what: a.result for a in sink.setup(retention_days=30)}
    assert third[policy] == "updated" and third["index_template"] == "updated"
    if ep.state.flavor == "opensearch":
        stored = ep.state.ism["opos-jobs-retention"]["policy"]
        assert stored["ism_template"][0]["index_patterns"] == ["opos-jobs-*"]
        assert stored["states"][0]["transitions"][0]["conditions"] == {"min_index_age": "30d"}
    else:
        assert ep.state.ilm["opos-jobs-retention"]["policy"]["phases"]["delete"]["min_age"] == "30d"
        settings_ = ep.state.templates["opos-jobs"]["template"]["settings"]
        assert settings_["index.lifecycle.name"] == "opos-jobs-retention"


def test_endpoint_refuses_the_other_flavors_template():
    """The endpoint knows flattened (ES) from flat_object (OpenSearch) and ILM settings."""
    with TestEndpoint("opensearch") as os_ep:
        es_tpl = es_schema.index_template(PREFIX, "elasticsearch")
        sink = ElasticSink(es_cfg(os_ep))
        with pytest.raises(Exception, match="unknown setting|flattened"):
            sink.client.transport.perform_request("PUT", "/_index_template/x", body=es_tpl)


def test_setup_adds_new_fields_to_existing_indices(es9):
    sink = ready_sink(es9)
    store_like = es9.state
    with store_like.lock:
        store_like.create_index("opos-jobs-2024.01")
        del store_like.indices["opos-jobs-2024.01"].mappings["properties"]["opos"]["properties"]["kind"]
    actions = sink.setup(retention_days=31)
    assert any(a.what == "mapping" and a.result.startswith("updated 1") for a in actions)
    assert "kind" in es9.mapping("opos-jobs-2024.01")["properties"]["opos"]["properties"]


def test_es_setup_main_prints_and_returns(es9, capsys):
    cfg = es_cfg(es9)
    assert es_setup_main(cfg) == 0
    out = capsys.readouterr().out
    assert "Elasticsearch 9.1.0" in out and "index_template opos-jobs: created" in out
    assert es_setup_main(cfg) == 0
    assert "unchanged" in capsys.readouterr().out
    es9.down()
    assert es_setup_main(cfg) == 1
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out


# ---------------------------------------------------------------------------------------------
# clients, versions, security


def test_the_9x_client_alone_cannot_talk_to_an_8x_server_but_the_sink_can(tmp_path):
    """elasticsearch-py 9 asks for compatible-with=9, which 8.x refuses: the sink negotiates."""
    from elasticsearch import BadRequestError, Elasticsearch

    with TestEndpoint("elasticsearch", "8.15.0") as ep8:
        with pytest.raises(BadRequestError, match="media_type_header_exception"):
            Elasticsearch(ep8.url).info()
        store = open_store(tmp_path)
        prod = Producer(50)
        prod.commit(store, prod.records())
        sink = ready_sink(ep8)
        drain(sink, store)
        assert_delivered(ep8, store, prod.latest)
        bulk = ep8.requests("_bulk")[-1]
        assert "compatible-with=8" in bulk["accept"] and "compatible-with=8" in bulk["content_type"]


def test_9x_server_gets_compatible_with_9(es9, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(10)
    prod.commit(store, prod.records())
    drain(ready_sink(es9), store)
    bulk = es9.requests("_bulk")[-1]
    assert bulk["content_type"] == "application/vnd.elasticsearch+x-ndjson; compatible-with=9"


def test_elasticsearch_kind_against_opensearch_says_so():
    with TestEndpoint("opensearch") as os_ep:
        cfg = ElasticsearchConfig(enabled=True, kind="elasticsearch", urls=[os_ep.url])
        with pytest.raises(SinkError, match='kind = "opensearch"'):
            ElasticSink(cfg).connect()


@pytest.mark.parametrize("flavor", ["elasticsearch", "opensearch"])
def test_basic_auth_from_a_password_file_and_never_logged(flavor, tmp_path, capsys):
    secret = "s3cr3t-Pa55word"
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n")
    with TestEndpoint(flavor, basic_auth=("opos", secret)) as ep:
        store = open_store(tmp_path)
        prod = Producer(20)
        prod.commit(store, prod.records())
        drain(ready_sink(ep, username="opos", password_file=pw), store)
        assert_delivered(ep, store, prod.latest)
        assert all(r["authorization"].startswith("Basic ") for r in ep.requests())
        # a wrong password: nothing acked, the outbox keeps it, the secret is nowhere
        prod.round += 1
        prod.commit(store, prod.records())
        pw.write_text("wrong-" + secret)
        stats = ElasticSink(es_cfg(ep, username="opos", password_file=pw)).ship_pending(store)
        assert stats.acked == 0 and store.pending_count() == 20
        assert "401" in (stats.last_error or "") or "Authentication" in (stats.last_error or "")
        taken = store.outbox_take(100)
        out = capsys.readouterr()
        for text in [out.out, out.err, stats.last_error or ""] + [t.last_error or "" for t in taken]:
            assert secret not in text


def test_api_key_auth(tmp_path):
    with TestEndpoint("elasticsearch", api_key="aWQ6a2V5") as ep:
        store = open_store(tmp_path)
        prod = Producer(5)
        prod.commit(store, prod.records())
        drain(ready_sink(ep, api_key="aWQ6a2V5"), store)
        assert_delivered(ep, store, prod.latest)
        assert ep.requests("_bulk")[-1]["authorization"] == "ApiKey aWQ6a2V5"


# ---------------------------------------------------------------------------------------------
# delivery and faults


def test_delivers_everything_once_on_every_server(server, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(400, seed=1)
    prod.commit(store, prod.records())
    sink = ready_sink(server)
    stats = sink.ship_pending(store)
    assert stats.acked == 400 and stats.retried == stats.dead == 0
    assert_delivered(server, store, prod.latest)
    # new versions of some, re-sent: overwritten, never duplicated
    prod.round += 1
    prod.commit(store, prod.records(range(0, 400, 3)))
    drain(sink, store)
    assert_delivered(server, store, prod.latest)
    rounds = Counter(d.source["raw"]["OposTestRound"] for d in server.docs().values())
    assert rounds == {0: 400 - 134, 1: 134}


def test_unknown_attributes_never_grow_the_mapping(es9, tmp_path):
    """Thousands of distinct unknown attributes: one mapped field (raw), however many there are."""
    store = open_store(tmp_path)
    prod = Producer(30)
    for j, ad in enumerate(prod.ads):
        for k in range(100):
            ad[f"Custom_{j}_{k}"] = f"v{k}" if k % 2 else k
    prod.commit(store, prod.records())
    sink = ready_sink(es9)
    drain(sink, store)
    assert_delivered(es9, store, prod.latest)
    (index,) = es9.index_names()
    tpl = es_schema.mappings("elasticsearch")
    assert es9.mapping(index)["properties"].keys() == tpl["properties"].keys()


def test_without_the_template_a_real_server_rejects_what_the_template_accepts(es9, tmp_path):
    """Why es-setup matters: with dynamic mapping an attribute that is a number in one ad and
    an expression in another is a mapping conflict, and unknown attributes hit the field limit.
    With the template the same records all go in (test_unknown_attributes_never_grow_the_mapping)."""
    store = open_store(tmp_path)
    prod = Producer(200, seed=5)
    for j, ad in enumerate(prod.ads[:20]):
        for k in range(60):
            ad[f"Custom_{j}_{k}"] = k
    prod.ads[100]["MaxLifetime"] = 86400
    prod.ads[101]["MaxLifetime"] = "JOB_EXPECTED_MAX_LIFETIME * 2"
    prod.commit(store, prod.records())
    sink = ElasticSink(es_cfg(es9))  # no setup
    drain(sink, store)
    reasons = [d.reason for d in store.dead_letters(limit=1000)]
    assert any("failed to parse field [raw.MaxLifetime] of type [long]" in r for r in reasons)
    assert any("Limit of total fields [1000] has been exceeded" in r for r in reasons)
    with TestEndpoint() as fresh:
        store2 = open_store(tmp_path, "store2.sqlite")
        store2.commit_batch(list(prod.latest.values()))
        drain(ready_sink(fresh), store2)
        assert_delivered(fresh, store2, prod.latest)


def test_endpoint_down_for_a_while(ep, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(300, seed=2)
    prod.commit(store, prod.records())
    sink = ready_sink(ep)
    sink.ship_once(store, limit=100)  # some get through
    ep.down()
    for _ in range(3):
        stats = sink.ship_pending(store)
        assert stats.acked == 0
        assert stats.last_error and "Connection" in stats.last_error
    assert store.pending_count() == 200
    prod.round += 1
    prod.commit(store, prod.records(range(0, 300, 7)))  # the source keeps producing meanwhile
    ep.up()
    drain(sink, store)
    assert_delivered(ep, store, prod.latest)


def test_down_from_the_start(tmp_path):
    ep = TestEndpoint().start()
    url = ep.url
    ep.down()
    store = open_store(tmp_path)
    prod = Producer(40)
    prod.commit(store, prod.records())
    sink = ElasticSink(ElasticsearchConfig(enabled=True, urls=[url], bulk_docs=20))
    stats = sink.ship_pending(store)
    assert stats.taken == 0 and stats.acked == 0 and stats.last_error  # nothing taken while unreachable
    ep.up()
    sink.setup()
    drain(sink, store)
    assert_delivered(ep, store, prod.latest)
    ep.stop()


def test_slow_endpoint_times_out_then_recovers(ep, tmp_path):
    """Bulks that time out may still be applied by the server: the re-send overwrites."""
    store = open_store(tmp_path)
    prod = Producer(150, seed=4)
    prod.commit(store, prod.records())
    sink = ready_sink(ep, request_timeout_s=0.3, bulk_docs=50)
    ep.faults.delay_s = 0.8
    stats = sink.ship_pending(store)
    assert stats.acked == 0 and stats.retried > 0 and "Timeout" in (stats.last_error or "")
    time.sleep(1.0)  # the server finishes applying what it got
    assert ep.docs()  # ...so some documents are already there, not acknowledged
    ep.faults.delay_s = 0.2  # slow but within the timeout
    drain(ready_sink(ep, request_timeout_s=10.0, bulk_docs=50), store)
    assert_delivered(ep, store, prod.latest)
    assert max(d.writes for d in ep.docs().values()) >= 2  # sent twice, stored once


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_whole_request_failures_are_retried(ep, tmp_path, status):
    store = open_store(tmp_path)
    prod = Producer(250, seed=6)
    prod.commit(store, prod.records())
    sink = ready_sink(ep)
    ep.faults.fail_requests(status, count=4)
    passes = []
    stats = sink.ship_pending(store, on_pass=passes.append)
    assert stats.acked == 0 and stats.retried == 200 and stats.request_failed  # one pass: 2 bulks of 100
    assert len(passes) == 1 and passes[0].request_failed
    taken = store.outbox_take(300)
    assert {t.attempts for t in taken} == {0, 1} and str(status) in (taken[0].last_error or "")
    assert len({t.last_error for t in taken if t.attempts}) == 1  # one reason: put back in one transaction
    drain(sink, store)
    assert_delivered(ep, store, prod.latest)


def test_a_stop_lets_the_pass_in_flight_finish_and_starts_no_other(ep, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(250, seed=8)
    prod.commit(store, prod.records())
    sink = ready_sink(ep)
    passes = []
    stats = sink.ship_pending(store, on_pass=passes.append, should_stop=lambda: len(passes) >= 1)
    assert len(passes) == 1 and stats.acked == passes[0].acked > 0  # one pass, fully acknowledged
    assert store.pending_count() == 250 - stats.acked
    assert sink.ship_pending(store, should_stop=lambda: True).taken == 0  # stopped: nothing taken
    drain(sink, store)
    assert_delivered(ep, store, prod.latest)


@pytest.mark.parametrize("status", [429, 503])
def test_item_level_storm_is_retried_item_by_item(ep, tmp_path, status):
    store = open_store(tmp_path)
    prod = Producer(300, seed=7)
    prod.commit(store, prod.records())
    sink = ready_sink(ep)
    ep.faults.fail_items(status, count=250, every=2)
    stats = sink.ship_once(store, limit=100)
    assert stats.acked == 50 and stats.retried == 50  # per-item results: half of the bulk got in
    assert not stats.request_failed and stats.errors["es_rejected_execution_exception" if status == 429
                                                     else "unavailable_shards_exception"] == 50
    drain(sink, store)
    assert_delivered(ep, store, prod.latest)


def test_rejected_items_are_dead_letters_and_never_resent(ep, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(200, seed=8)
    recs = prod.records()
    poison = {recs[i].doc_id: "injected poison" for i in (3, 50, 51, 199)}
    ep.faults.reject_ids.update({k: f"injected poison for {k}" for k in poison})
    prod.commit(store, recs)
    sink = ready_sink(ep)
    drain(sink, store)
    assert_delivered(ep, store, prod.latest, poison)
    bulks_before = len(ep.requests("_bulk"))
    for _ in range(3):
        assert sink.ship_pending(store).taken == 0
    assert len(ep.requests("_bulk")) == bulks_before
    dead = store.dead_letters()
    assert all(d.attempts == 1 for d in dead)
    # replay after the cause is fixed: re-sent once, delivered
    ep.faults.reject_ids.clear()
    assert store.requeue_dead() == 4
    drain(sink, store)
    assert_delivered(ep, store, prod.latest)


def test_a_real_mapping_reject_goes_to_dead_letters_with_its_reason(ep, tmp_path):
    """A document the template cannot take (a date field that is not a date): the endpoint's
    template-driven check rejects it, as the real server would."""
    store = open_store(tmp_path)
    prod = Producer(60, seed=9)
    recs = prod.records()
    bad = recs[10]
    doc = orjson.loads(bad.doc)
    doc["opos"]["q_date"] = "yesterday"
    poison = StoredRecord(**{**{f: getattr(bad, f) for f in bad.__dataclass_fields__}, "doc": orjson.dumps(doc)})
    recs[10] = poison
    prod.commit(store, recs)
    sink = ready_sink(ep)
    drain(sink, store)
    parse = "document_parsing_exception" if ep.state.flavor == "elasticsearch" else "mapper_parsing_exception"
    assert_delivered(ep, store, prod.latest, {bad.doc_id: f"HTTP 400 {parse}"})
    reason = store.dead_letters()[0].reason
    assert "failed to parse field [opos.q_date] of type [date]" in reason and "yesterday" in reason


def test_huge_reasons_are_kept_whole_and_accepted(ep, tmp_path):
    """A 40 kB hold reason: kept whole in _source; its keyword is skipped (ignore_above) instead
    of tripping Lucene's 32766-byte term limit, which the endpoint enforces."""
    store = open_store(tmp_path)
    prod = Producer(5)
    reason = "Error from slot1_1@wn.example.org: " + "é" * 20000
    prod.ads[2]["HoldReason"] = reason
    prod.ads[2]["SomeHugeUnknown"] = "z" * 40000
    prod.commit(store, prod.records())
    drain(ready_sink(ep), store)
    assert_delivered(ep, store, prod.latest)
    _, d = ep.doc(prod.records([2])[0].doc_id)
    assert d.source["HoldReason"] == reason and d.source["raw_unindexed"]["SomeHugeUnknown"] == "z" * 40000


def test_endpoint_enforces_the_term_limit_without_ignore_above(es9):
    from elasticsearch import BadRequestError, Elasticsearch

    es9.state.templates["t"] = {"index_patterns": ["t-*"], "template": {"mappings": {"properties": {"k": {"type": "keyword"}}}}}
    with pytest.raises(BadRequestError, match="immense term"):
        Elasticsearch(es9.url).index(index="t-1", id="1", document={"k": "é" * 20000})


def test_older_version_arriving_late_does_not_overwrite(es9, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(3)
    prod.commit(store, prod.records())
    sink = ready_sink(es9)
    drain(sink, store)
    r = prod.latest[prod.records([1])[0].doc_id]
    older = OutboxItem(seq=10**9, doc_id=r.doc_id, kind=r.kind, end_time=r.end_time, updated_at=r.updated_at - 5,
                       doc=r.doc.replace(b'"OposTestRound":0', b'"OposTestRound":-1'), attempts=0, last_error=None)

    class OneItemOutbox:
        acked: list[int] = []

        def outbox_take(self, limit):
            return [older]

        def outbox_ack(self, seqs):
            self.acked += list(seqs)

        def outbox_retry(self, seqs, error):
            raise AssertionError(error)

        def outbox_dead(self, seq, reason):
            raise AssertionError(reason)

    fake = OneItemOutbox()
    stats = sink.ship_once(fake)
    assert stats.superseded == 1 and fake.acked == [10**9]
    assert_delivered(es9, store, prod.latest)


def test_a_job_seen_live_then_finished_next_month_lives_in_one_index(ep, tmp_path):
    store = open_store(tmp_path)
    ad = dict(next(iter(_adgen().make_ads(1, 11, now=NOW))))
    may20, jun3 = 1_716_163_200, 1_717_372_800
    ad.update(QDate=may20 - 3600, JobStatus=2, JobCurrentStartDate=may20, CompletionDate=0)
    live = record_of(ad, updated_at=may20 + 60)
    assert live.end_time is None
    store.commit_batch([live])
    sink = ready_sink(ep)
    drain(sink, store)
    assert ep.doc(live.doc_id)[0] == "opos-jobs-2024.05"
    ad.update(JobStatus=4, CompletionDate=jun3, EnteredCurrentStatus=jun3, ExitCode=0)
    done = record_of(ad, updated_at=jun3 + 60)
    store.commit_batch([done])
    stats = sink.ship_pending(store)
    assert stats.stale_deleted == 1
    assert_delivered(ep, store, {done.doc_id: done})
    assert ep.doc(done.doc_id)[0] == "opos-jobs-2024.06"


def test_attempt_records_ship_beside_job_records(es9, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(10)
    job = prod.records()
    attempts = [record_of(prod.ads[i], NOW + 1, attempt=a) for i in range(3) for a in (1, 2)]
    store.commit_batch(job + attempts)
    drain(ready_sink(es9), store)
    latest = {r.doc_id: r for r in job + attempts}
    assert_delivered(es9, store, latest)
    kinds = sorted(d.source["opos"]["kind"] for d in es9.docs().values())
    assert kinds.count("attempt") == 6 and kinds.count("job") == 10


def test_undecodable_document_is_a_dead_letter(es9, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(3)
    recs = prod.records()
    broken = StoredRecord(**{**{f: getattr(recs[0], f) for f in recs[0].__dataclass_fields__}, "doc": b"[1, 2]"})
    prod.commit(store, [broken] + recs[1:])
    drain(ready_sink(es9), store)
    assert_delivered(es9, store, prod.latest, {broken.doc_id: "not a JSON object"})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos(ep, tmp_path, seed):
    """Random faults while the source keeps producing new versions: the end state is exact."""
    rng = random.Random(seed)
    store = open_store(tmp_path)
    prod = Producer(300, seed=seed)
    recs = prod.records()
    poison = {recs[i].doc_id: "injected poison" for i in rng.sample(range(300), 3)}
    ep.faults.reject_ids.update(poison)
    prod.commit(store, recs)
    sink = ready_sink(ep, request_timeout_s=0.4, bulk_docs=40)
    for _ in range(14):
        fault = rng.choice(["none", "down", "429", "503-items", "429-items", "500", "slow"])
        if fault == "down":
            ep.down()
        elif fault == "429":
            ep.faults.fail_requests(429, count=rng.randint(1, 3))
        elif fault == "500":
            ep.faults.fail_requests(500, count=1)
        elif fault.endswith("-items"):
            ep.faults.fail_items(int(fault[:3]), count=rng.randint(5, 60), every=rng.randint(1, 4))
        elif fault == "slow":
            ep.faults.delay_s = 0.6
        sink.ship_once(store)
        sink.ship_once(store)
        ep.up()
        ep.faults.delay_s = 0.0
        prod.round += 1
        prod.commit(store, prod.records(rng.sample(range(300), 25)))
    with ep.faults.lock:
        ep.faults._requests.clear()
        ep.faults._items.clear()
    time.sleep(0.7)  # requests that timed out finish on the server side
    drain(ready_sink(ep, bulk_docs=40), store)  # a normal timeout: a loaded test machine is slow
    assert_delivered(ep, store, prod.latest, {k: "injected poison" for k in poison})


# ---------------------------------------------------------------------------------------------
# the shipper killed mid-bulk and restarted


SHIPPER = """
import sys
from opos_monitor.config import ElasticsearchConfig
from opos_monitor.sinks.elastic import ElasticSink
from opos_monitor.sinks.store import Store
store = Store.open(sys.argv[1], max_bytes=1 << 30, retry_base_s=0.0, retry_max_s=0.0)
sink = ElasticSink(ElasticsearchConfig(enabled=True, kind=sys.argv[3], urls=[sys.argv[2]], bulk_docs=100))
print("shipping", flush=True)
for _ in range(50):
    sink.ship_pending(store)
    if store.pending_count() == 0:
        break
print("done", store.pending_count(), flush=True)
"""


def _shipper(store_path: Path, ep: TestEndpoint) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SHIPPER, str(store_path), ep.url, ep.state.flavor],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_shipper_killed_mid_bulk_and_restarted(ep, tmp_path):
    store = open_store(tmp_path)
    prod = Producer(800, seed=12)
    poison_id = prod.records([5])[0].doc_id
    ep.faults.reject_ids[poison_id] = "injected poison"
    prod.commit(store, prod.records())
    ElasticSink(es_cfg(ep)).setup()
    in_bulk = threading.Event()
    seen = []

    def on_bulk(n: int) -> None:
        seen.append(n)
        if len(seen) == 4:  # the 4th bulk is applied, then its answer is held back
            ep.faults.apply_then_delay_s = 30.0
            in_bulk.set()

    ep.faults.on_bulk = on_bulk
    child = _shipper(tmp_path / "store.sqlite", ep)
    try:
        assert in_bulk.wait(60), child.communicate(timeout=5)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    ep.faults.on_bulk = None
    ep.faults.apply_then_delay_s = 0.0
    pending = store.pending_count()
    assert 0 < pending <= 800 - 200  # the first pass (2 bulks) was acknowledged, the 2nd (bulks 3, 4) was not
    applied_unacked = len(ep.docs()) - (800 - pending) + 1  # +1: the poison is counted as settled
    assert applied_unacked >= 99  # the killed bulk reached the server
    child = _shipper(tmp_path / "store.sqlite", ep)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.strip().endswith("done 0")
    assert_delivered(ep, store, prod.latest, {poison_id: "injected poison"})
    assert sum(1 for d in ep.docs().values() if d.writes == 2) >= 99  # re-sent, overwritten, not duplicated


# ---------------------------------------------------------------------------------------------
# real HTCondor ads


def test_real_pool_ads_round_trip_with_types_and_whole_reasons(es9, tmp_path):
    """Ads as HTCondor writes them (history file, condor_history -json): typed fields come back
    typed, reasons whole, expressions and nested ads kept under raw."""
    from opos_monitor.classads import read_path  # the project's reader

    ads = []
    for name in ("history_raw.txt", "condor_history.json", "condor_q_long.txt"):
        ads += list(read_path(ROOT / "tests" / "data" / "ads" / name))
    store = open_store(tmp_path)
    recs = [record_of(ad, NOW + i) for i, ad in enumerate(ads)]
    store.commit_batch(recs)
    drain(ready_sink(es9), store)
    assert_delivered(es9, store, {r.doc_id: r for r in recs})
    sources = [d.source for d in es9.docs().values()]
    by_gjid = {s["opos"]["global_job_id"]: s for s in sources}
    last_ad = {JobRecord.from_ad(ad, pool="p", schedd="jobsub01.fnal.gov", source="s").global_job_id: ad for ad in ads}
    assert set(last_ad) == set(by_gjid)
    reasons = 0
    for gjid, ad in last_ad.items():
        for attr in ("HoldReason", "LastHoldReason", "RemoveReason", "VacateReason"):
            if isinstance(ad.get(attr), str):
                assert by_gjid[gjid][attr] == ad[attr]
                reasons += 1
    assert reasons >= 3
    mem = by_gjid["jobsub02.fnal.gov#4101240.3#1717901000"]
    assert mem["MemoryUsage"] == 5830 and mem["LastHoldReasonCode"] == 34
    assert mem["raw"]["NumHoldsByReason"] == {"JobOutOfResources": 1}
    ok = by_gjid["jobsub01.fnal.gov#4101234.0#1717900000"]
    assert ok["raw"]["MemoryUsage"] == "((ResidentSetSize + 1023) / 1024)" and ok["ExitBySignal"] is False


@pytest.mark.integration
def test_real_pool_catalogue_jobs_round_trip(catalogue_run, es9, tmp_path):
    """Every catalogue job run for real on the dev pool (HTCondor 23.9): its record reaches the
    endpoint with typed fields, whole reasons and the category the catalogue tags it with."""
    store = open_store(tmp_path)
    recs = {name: record_of(dict(o.ad), NOW + i) for i, (name, o) in enumerate(sorted(catalogue_run.items()))}
    store.commit_batch(list(recs.values()))
    drain(ready_sink(es9), store)
    assert_delivered(es9, store, {r.doc_id: r for r in recs.values()})
    for name, o in catalogue_run.items():
        _, d = es9.doc(recs[name].doc_id)
        src = d.source
        assert isinstance(src["ClusterId"], int) and isinstance(src["JobStatus"], int) and isinstance(src["QDate"], int)
        for attr in ("HoldReason", "LastHoldReason", "RemoveReason"):
            if isinstance(o.ad.get(attr), str):
                assert src[attr] == o.ad[attr], (name, attr)
        assert src["opos"]["category"] == o.entry.category, name


# ---------------------------------------------------------------------------------------------
# Kibana saved objects


KIBANA = ROOT / "deploy" / "kibana" / "opos-monitor.ndjson"


def _kibana_objects() -> list[dict[str, Any]]:
    lines = [ln for ln in KIBANA.read_text().splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]


def test_kibana_ndjson_parses_with_unique_ids_and_resolving_references():
    objs = _kibana_objects()
    keys = [(o["type"], o["id"]) for o in objs]
    assert len(keys) == len(set(keys))
    have = set(keys)
    for o in objs:
        for ref in o.get("references", []):
            assert (ref["type"], ref["id"]) in have, (o["id"], ref)
        meta = o["attributes"].get("kibanaSavedObjectMeta", {})
        if meta:
            src = json.loads(meta["searchSourceJSON"])
            names = {r["name"] for r in o["references"]}
            if "indexRefName" in src:
                assert src["indexRefName"] in names
            for f in src.get("filter", []):
                assert f["meta"]["indexRefName"] in names
        if o["type"] == "visualization":
            json.loads(o["attributes"]["visState"])
            assert o["attributes"].get("savedSearchRefName") in {r["name"] for r in o["references"]}
    types = Counter(t for t, _ in keys)
    assert types["index-pattern"] == 1 and types["search"] >= 5


def _fields_in_kql(q: str) -> set[str]:
    return set(re.findall(r"([A-Za-z_][\w.]*)\s*:", q))


def test_kibana_objects_use_only_mapped_fields():
    mapped = _mapped_paths(es_schema.mappings("elasticsearch")) | {"_id", "_index"}
    flat = {"raw", "opos.evidence"}  # flattened: any key below them is a field
    objs = _kibana_objects()
    (view,) = [o for o in objs if o["type"] == "index-pattern"]
    assert view["attributes"]["title"] == "opos-jobs-*"
    assert view["attributes"]["timeFieldName"] in mapped

    def known(f: str) -> bool:
        return f in mapped or any(f.startswith(p + ".") for p in flat)

    for o in objs:
        a = o["attributes"]
        used = set(a.get("columns", [])) | {s[0] for s in a.get("sort", [])}
        if "kibanaSavedObjectMeta" in a:
            src = json.loads(a["kibanaSavedObjectMeta"]["searchSourceJSON"])
            used |= _fields_in_kql(src["query"]["query"])
            for f in src.get("filter", []):
                used.add(f["meta"]["key"])
        if o["type"] == "visualization":
            for agg in json.loads(a["visState"])["aggs"]:
                if "field" in agg.get("params", {}):
                    used.add(agg["params"]["field"])
        unknown = {f for f in used if not known(f)}
        assert not unknown, (o["id"], unknown)

