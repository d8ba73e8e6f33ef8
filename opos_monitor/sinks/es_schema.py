"""What the job-record indices look like: the index template, the ILM / ISM policy, and setup.

Everything here is data plus small pure functions; :func:`setup` is the only one that talks to
a cluster.  ``docs/record-schema.md`` describes every field; ``deploy/elasticsearch/`` holds the
same objects exported as JSON for admins who install them by hand (a test keeps them in sync).

The document shape (see :func:`opos_monitor.sinks.elastic.shape_document`):

* the HTCondor attributes listed in :data:`RAW_FIELDS` stay at the top level under their
  canonical HTCondor names, typed (a value that does not fit the type, e.g. ``MemoryUsage``
  as an unevaluated expression, goes to ``raw`` instead);
* every other raw attribute is kept under ``raw`` (one ``flattened`` field in Elasticsearch,
  ``flat_object`` in OpenSearch: searchable as keywords, one mapped field however many
  attributes there are);
* values too big to index as one term are kept whole under ``raw_unindexed`` (stored in
  ``_source``, not indexed);
* ``opos`` holds what the daemon derives (:data:`OPOS_FIELDS`).

The root and ``opos`` objects are ``dynamic: false``: a field nobody mapped is kept in
``_source`` but never added to the mapping, so the field limit cannot explode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import orjson

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "KEYWORD_LIMIT",
    "OPOS_FIELDS",
    "RAW_FIELDS",
    "RAW_OBJECT",
    "RAW_UNINDEXED",
    "SCHEMA_VERSION",
    "SetupAction",
    "Flavor",
    "ilm_policy",
    "index_pattern",
    "index_template",
    "ism_policy",
    "mappings",
    "policy_name",
    "schema_hash",
    "setup",
    "template_name",
]

Flavor = Literal["elasticsearch", "opensearch"]

#: bump when the template or policies change in a way an installed cluster must pick up
SCHEMA_VERSION = 1

#: ``ignore_above`` (characters) on every keyword: Lucene refuses terms over 32766 bytes and a
#: character takes at most 4 bytes in UTF-8.  A longer value is kept whole in ``_source`` and
#: stays searchable through the ``text`` field where there is one; only its keyword is skipped.
KEYWORD_LIMIT = 8191

#: records are deleted this many days after their monthly index was created (ILM / ISM)
DEFAULT_RETENTION_DAYS = 400

RAW_OBJECT = "raw"
RAW_UNINDEXED = "raw_unindexed"

# -------------------------------------------------------------------------------------------
# the fields we know

#: HTCondor attributes kept at the top level, by canonical name -> kind.
#: kinds: keyword, reason (text + keyword), long, integer, double, boolean,
#: epoch (date in epoch seconds).
RAW_FIELDS: dict[str, str] = {
    # identity
    "GlobalJobId": "keyword",
    "ClusterId": "long",
    "ProcId": "long",
    "Owner": "keyword",
    "User": "keyword",
    "AccountingGroup": "keyword",
    "AcctGroup": "keyword",
    "AcctGroupUser": "keyword",
    "JobBatchName": "keyword",
    "DAGManJobId": "long",
    "DAGNodeName": "keyword",
    "JobsubJobId": "keyword",
    "Jobsub_Group": "keyword",
    "JobsubClientDN": "keyword",
    "ProjectName": "keyword",
    "SubmitterGlobalJobId": "keyword",
    "Cmd": "keyword",
    "Iwd": "keyword",
    "SingularityImage": "keyword",
    "MyType": "keyword",
    # state
    "JobStatus": "integer",
    "LastJobStatus": "integer",
    "JobUniverse": "integer",
    "JobPrio": "integer",
    # exit
    "ExitCode": "integer",
    "ExitStatus": "integer",
    "ExitBySignal": "boolean",
    "ExitSignal": "integer",
    "JobCoreDumped": "boolean",
    # hold / remove / vacate: reasons are text with a keyword sub-field, never truncated
    "HoldReason": "reason",
    "HoldReasonCode": "integer",
    "HoldReasonSubCode": "integer",
    "LastHoldReason": "reason",
    "LastHoldReasonCode": "integer",
    "LastHoldReasonSubCode": "integer",
    "RemoveReason": "reason",
    "ReleaseReason": "reason",
    "LastReleaseReason": "reason",
    "VacateReason": "reason",
    "VacateReasonCode": "integer",
    "VacateReasonSubCode": "integer",
    "LastRejMatchReason": "reason",
    # dates (epoch seconds; 0 means "never" in HTCondor and is kept as is)
    "QDate": "epoch",
    "JobStartDate": "epoch",
    "JobCurrentStartDate": "epoch",
    "JobCurrentStartExecutingDate": "epoch",
    "JobLastStartDate": "epoch",
    "CompletionDate": "epoch",
    "EnteredCurrentStatus": "epoch",
    "LastMatchTime": "epoch",
    "LastVacateTime": "epoch",
    "LastSuspensionTime": "epoch",
    "LastJobLeaseRenewal": "epoch",
    "LastHoldTime": "epoch",
    "TransferInQueued": "epoch",
    "TransferInStarted": "epoch",
    "TransferInFinished": "epoch",
    "TransferOutQueued": "epoch",
    "TransferOutStarted": "epoch",
    "TransferOutFinished": "epoch",
    "x509UserProxyExpiration": "epoch",
    "DelegatedProxyExpiration": "epoch",
    # resources requested / used
    "RequestMemory": "long",
    "MemoryUsage": "long",
    "ResidentSetSize": "long",
    "ProportionalSetSizeKb": "long",
    "ImageSize": "long",
    "RequestDisk": "long",
    "DiskUsage": "long",
    "RequestCpus": "integer",
    "RequestGPUs": "integer",
    "CpusProvisioned": "integer",
    "GPUsProvisioned": "integer",
    "MemoryProvisioned": "long",
    "DiskProvisioned": "long",
    "CPUsUsage": "double",
    "RemoteWallClockTime": "double",
    "RemoteUserCpu": "double",
    "RemoteSysCpu": "double",
    "CumulativeRemoteUserCpu": "double",
    "CumulativeRemoteSysCpu": "double",
    "CumulativeSlotTime": "double",
    "CommittedTime": "double",
    "CommittedSlotTime": "double",
    "BytesRecvd": "double",
    "BytesSent": "double",
    "TransferInputSizeMB": "long",
    "BlockReadKbytes": "long",
    "BlockWriteKbytes": "long",
    # attempts
    "JobRunCount": "integer",
    "NumShadowStarts": "integer",
    "NumHolds": "integer",
    "NumSystemHolds": "integer",
    "NumJobStarts": "integer",
    "NumJobMatches": "integer",
    "NumRestarts": "integer",
    "NumShadowExceptions": "integer",
    "NumJobCompletions": "integer",
    # where it ran
    "RemoteHost": "keyword",
    "LastRemoteHost": "keyword",
    "StartdName": "keyword",
    "StartdSlot": "keyword",
    "GLIDEIN_Site": "keyword",
    "MATCH_GLIDEIN_Site": "keyword",
    "MATCH_EXP_JOB_GLIDEIN_Site": "keyword",
    "MachineAttrGLIDEIN_Site0": "keyword",
    "MATCH_EXP_JOB_GLIDEIN_ResourceName": "keyword",
    "DESIRED_Sites": "keyword",
    # credentials
    "x509userproxy": "keyword",
    "x509userproxysubject": "keyword",
    "x509UserProxyVOName": "keyword",
    "x509UserProxyFirstFQAN": "keyword",
    "x509UserProxyFQAN": "keyword",
    "x509UserProxyEmail": "keyword",
    "ScitokensFile": "keyword",
    "OAuthServicesNeeded": "keyword",
    "AuthTokenSubject": "keyword",
    "AuthTokenIssuer": "keyword",
    "AuthTokenScopes": "keyword",
    "AuthTokenId": "keyword",
}

#: fields of the ``opos`` object -> kind (iso = date as ISO-8601 text; flat = flattened;
#: unindexed = kept in _source only)
OPOS_FIELDS: dict[str, str] = {
    # from JobRecord.to_doc
    "pool": "keyword",
    "schedd": "keyword",
    "source": "keyword",
    "status": "keyword",
    "global_job_id": "keyword",
    "synthetic_id": "boolean",
    "glidein_site": "keyword",
    "execute_host": "keyword",
    "memory_usage_mb": "long",
    "request_memory_mb": "long",
    "cpu_time_s": "double",
    "remote_wall_clock_time_s": "double",
    "q_date": "iso",
    "job_start_date": "iso",
    "job_current_start_date": "iso",
    "job_current_start_executing_date": "iso",
    "completion_date": "iso",
    "entered_current_status": "iso",
    "hold_time": "iso",
    "removal_time": "iso",
    "last_match_time": "iso",
    "last_vacate_time": "iso",
    "x509_user_proxy_expiration": "iso",
    # from the classifier (Verdict.to_dict) and site attribution
    "category": "keyword",
    "rule": "keyword",
    "explanation": "reason",
    "action": "reason",
    "runbook": "keyword",
    "confidence": "float",
    "version": "keyword",
    "evidence": "flat",
    "evidence_unindexed": "unindexed",  # evidence values too big to index (shape_document)
    "removed_by_user": "boolean",
    "signature": "signature",
    "signature_hash": "keyword",
    "site": "keyword",
    "attempt": "integer",
    # added by the shipper (shape_document)
    "kind": "keyword",
    "timestamp": "iso",
    "end_time": "iso",
    "updated_at": "iso",
}


# -------------------------------------------------------------------------------------------
# mappings


def _keyword() -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": KEYWORD_LIMIT}


def _flat(flavor: Flavor) -> dict[str, Any]:
    if flavor == "opensearch":
        return {"type": "flat_object"}
    return {"type": "flattened", "ignore_above": KEYWORD_LIMIT}


def field_mapping(kind: str, flavor: Flavor = "elasticsearch") -> dict[str, Any]:
    """The mapping of one field kind (see :data:`RAW_FIELDS` / :data:`OPOS_FIELDS`)."""
    if kind == "keyword":
        return _keyword()
    if kind == "reason":
        return {"type": "text", "fields": {"keyword": _keyword()}}
    if kind == "signature":
        return {**_keyword(), "fields": {"text": {"type": "text"}}}
    if kind in ("long", "integer", "double", "float"):
        return {"type": kind, "ignore_malformed": True}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "epoch":
        return {"type": "date", "format": "epoch_second", "ignore_malformed": True}
    if kind == "iso":
        return {"type": "date", "format": "strict_date_optional_time"}
    if kind == "flat":
        return _flat(flavor)
    if kind == "unindexed":
        return {"type": "object", "enabled": False}
    raise ValueError(f"unknown field kind {kind!r}")


def mappings(flavor: Flavor = "elasticsearch") -> dict[str, Any]:
    """The index mappings: known raw attributes, ``raw``, ``raw_unindexed`` and ``opos``."""
    props: dict[str, Any] = {name: field_mapping(kind, flavor) for name, kind in RAW_FIELDS.items()}
    props[RAW_OBJECT] = _flat(flavor)
    props[RAW_UNINDEXED] = {"type": "object", "enabled": False}
    props["opos"] = {
        "type": "object",
        "dynamic": False,
        "properties": {name: field_mapping(kind, flavor) for name, kind in OPOS_FIELDS.items()},
    }
    return {
        "dynamic": False,
        "date_detection": False,
        "numeric_detection": False,
        "properties": props,
    }


# -------------------------------------------------------------------------------------------
# names


def template_name(prefix: str) -> str:
    return prefix


def policy_name(prefix: str) -> str:
    return f"{prefix}-retention"


def index_pattern(prefix: str) -> str:
    return f"{prefix}-*"


# -------------------------------------------------------------------------------------------
# template and policies


def schema_hash(flavor: Flavor, prefix: str, retention_days: int) -> str:
    """A short hash of what :func:`setup` installs, stored in ``_meta`` / the description, so
    a second run can tell "unchanged" from "needs an update" without comparing normalised
    server output."""
    body = orjson.dumps(
        [SCHEMA_VERSION, flavor, prefix, retention_days, mappings(flavor)], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).hexdigest()[:16]


def _meta(flavor: Flavor, prefix: str, retention_days: int) -> dict[str, Any]:
    return {
        "managed_by": "opos-monitor",
        "schema_version": SCHEMA_VERSION,
        "schema_hash": schema_hash(flavor, prefix, retention_days),
        "description": "opos-monitor HTCondor job records; see docs/record-schema.md",
    }


def index_template(
    prefix: str, flavor: Flavor = "elasticsearch", retention_days: int = DEFAULT_RETENTION_DAYS
) -> dict[str, Any]:
    """The composable index template for ``<prefix>-*`` (the body of ``PUT _index_template/<prefix>``)."""
    settings: dict[str, Any] = {
        "index.number_of_shards": 1,
        "index.codec": "best_compression",
    }
    if flavor == "elasticsearch":
        settings["index.lifecycle.name"] = policy_name(prefix)
    # OpenSearch attaches the ISM policy through the policy's own ism_template
    return {
        "index_patterns": [index_pattern(prefix)],
        "priority": 200,
        "template": {"settings": settings, "mappings": mappings(flavor)},
        "_meta": _meta(flavor, prefix, retention_days),
    }


def ilm_policy(prefix: str, retention_days: int = DEFAULT_RETENTION_DAYS) -> dict[str, Any]:
    """The ILM policy (body of ``PUT _ilm/policy/<prefix>-retention``): hot, then delete.

    Indices are monthly, so no rollover: each index is deleted ``retention_days`` after it was
    created (its month's first record).
    """
    return {
        "policy": {
            "_meta": _meta("elasticsearch", prefix, retention_days),
            "phases": {
                "hot": {"min_age": "0ms", "actions": {"set_priority": {"priority": 100}}},
                "delete": {"min_age": f"{int(retention_days)}d", "actions": {"delete": {}}},
            },
        }
    }


def ism_policy(prefix: str, retention_days: int = DEFAULT_RETENTION_DAYS) -> dict[str, Any]:
    """The OpenSearch ISM policy (body of ``PUT _plugins/_ism/policies/<prefix>-retention``).

    ``ism_template`` attaches it to every new ``<prefix>-*`` index.
    """
    h = schema_hash("opensearch", prefix, retention_days)
    return {
        "policy": {
            "description": f"opos-monitor job records: delete {int(retention_days)} days after index creation"
                           f" (schema {h})",
            "default_state": "hot",
            "states": [
                {
                    "name": "hot",
                    "actions": [],
                    "transitions": [
                        {"state_name": "delete", "conditions": {"min_index_age": f"{int(retention_days)}d"}}
                    ],
                },
                {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
            ],
            "ism_template": [{"index_patterns": [index_pattern(prefix)], "priority": 100}],
        }
    }


# -------------------------------------------------------------------------------------------
# setup


@dataclass(frozen=True, slots=True)
class SetupAction:
    """One thing :func:`setup` looked at: ``what`` (index_template, ilm_policy, ism_policy,
    mapping), its ``name`` and the ``result`` (created, updated, unchanged, failed: ...)."""

    what: str
    name: str
    result: str

    def __str__(self) -> str:
        return f"{self.what} {self.name}: {self.result}"


def _body(resp: Any) -> Any:
    """The JSON body of a client response (elasticsearch-py ApiResponse or plain dict)."""
    return getattr(resp, "body", resp)


def _status(exc: BaseException) -> Any:
    for attr in ("status_code", "status"):
        v = getattr(exc, attr, None)
        if isinstance(v, int):
            return v
    meta = getattr(exc, "meta", None)
    return getattr(meta, "status", None)


def _get(client: Any, path: str) -> Any | None:
    """GET ``path``; None on 404."""
    try:
        return _body(_perform(client, "GET", path))
    except Exception as exc:  # noqa: BLE001 - both clients' error classes
        if _status(exc) == 404:
            return None
        raise


def _perform(client: Any, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
    """One raw request through either client (elasticsearch-py 8/9 or opensearch-py)."""
    if client.__class__.__module__.startswith("opensearchpy"):
        return client.transport.perform_request(method, path, params=dict(params or {}), body=body)
    headers = {"accept": "application/json"}
    if body is not None:
        headers["content-type"] = "application/json"
    return client.perform_request(method, path, params=dict(params) if params else None, headers=headers, body=body)


def _stored_hash(meta: Any) -> str | None:
    return meta.get("schema_hash") if isinstance(meta, dict) else None


def _put_template(client: Any, name: str, body: dict[str, Any], want: str) -> SetupAction:
    got = _get(client, f"/_index_template/{name}")
    current = None
    for t in (got or {}).get("index_templates", []):
        if t.get("name") == name:
            current = t.get("index_template", {})
    if current is not None and _stored_hash(current.get("_meta")) == want:
        return SetupAction("index_template", name, "unchanged")
    _perform(client, "PUT", f"/_index_template/{name}", body)
    return SetupAction("index_template", name, "created" if current is None else "updated")


def _put_ilm(client: Any, name: str, body: dict[str, Any], want: str) -> SetupAction:
    got = _get(client, f"/_ilm/policy/{name}")
    current = (got or {}).get(name)
    if current is not None and _stored_hash(current.get("policy", {}).get("_meta")) == want:
        return SetupAction("ilm_policy", name, "unchanged")
    _perform(client, "PUT", f"/_ilm/policy/{name}", body)
    return SetupAction("ilm_policy", name, "created" if current is None else "updated")


def _put_ism(client: Any, name: str, body: dict[str, Any], want: str) -> SetupAction:
    """ISM refuses to overwrite a policy without its seq_no/primary_term: read them first."""
    current = _get(client, f"/_plugins/_ism/policies/{name}")
    if current is None:
        _perform(client, "PUT", f"/_plugins/_ism/policies/{name}", body)
        return SetupAction("ism_policy", name, "created")
    desc = str(current.get("policy", {}).get("description", ""))
    if f"(schema {want})" in desc:
        return SetupAction("ism_policy", name, "unchanged")
    params = {"if_seq_no": current.get("_seq_no"), "if_primary_term": current.get("_primary_term")}
    _perform(client, "PUT", f"/_plugins/_ism/policies/{name}", body, params=params)
    return SetupAction("ism_policy", name, "updated")


def _update_existing(client: Any, prefix: str, flavor: Flavor) -> SetupAction:
    """Add the template's fields to indices that already exist (additive mapping update)."""
    pattern = index_pattern(prefix)
    try:
        existing = _get(client, f"/{pattern}/_mapping") or {}
    except Exception as exc:  # noqa: BLE001
        return SetupAction("mapping", pattern, f"failed: {exc}")
    if not existing:
        return SetupAction("mapping", pattern, "no existing indices")
    m = mappings(flavor)
    body = {"properties": m["properties"]}
    try:
        _perform(client, "PUT", f"/{pattern}/_mapping", body)
    except Exception as exc:  # noqa: BLE001 - a conflicting old mapping: report, keep going
        return SetupAction("mapping", pattern, f"failed (new indices get the template; existing ones keep"
                                               f" their mapping): {exc}")
    return SetupAction("mapping", pattern, f"updated {len(existing)} existing index(es)")


def setup(
    client: Any,
    cfg: Any,
    *,
    flavor: Flavor | None = None,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    update_existing: bool = True,
) -> list[SetupAction]:
    """Install (idempotently) the index template and the ILM (Elasticsearch) or ISM
    (OpenSearch) policy for ``cfg.index_prefix``; returns what was done.

    ``client`` is an ``elasticsearch.Elasticsearch`` or ``opensearchpy.OpenSearch``; ``cfg``
    an :class:`~opos_monitor.config.ElasticsearchConfig`.  Objects carry a hash of their
    content, so a second run reports "unchanged" and writes nothing.  With
    ``update_existing`` the template's fields are also added to existing ``<prefix>-*``
    indices (new fields only; existing ones keep their types).
    """
    prefix = cfg.index_prefix
    flavor = flavor or cfg.kind
    want = schema_hash(flavor, prefix, retention_days)
    done = []
    if flavor == "opensearch":
        done.append(_put_ism(client, policy_name(prefix), ism_policy(prefix, retention_days), want))
    else:
        done.append(_put_ilm(client, policy_name(prefix), ilm_policy(prefix, retention_days), want))
    done.append(_put_template(client, template_name(prefix), index_template(prefix, flavor, retention_days), want))
    if update_existing and done[-1].result != "unchanged":
        done.append(_update_existing(client, prefix, flavor))
    return done


def export(prefix: str = "opos-jobs", retention_days: int = DEFAULT_RETENTION_DAYS) -> dict[str, Any]:
    """File name -> JSON body, for ``deploy/elasticsearch/`` (admins installing by hand)."""
    return {
        "index-template.elasticsearch.json": index_template(prefix, "elasticsearch", retention_days),
        "index-template.opensearch.json": index_template(prefix, "opensearch", retention_days),
        "ilm-policy.json": ilm_policy(prefix, retention_days),
        "ism-policy.json": ism_policy(prefix, retention_days),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m opos_monitor.sinks.es_schema [--prefix P] [--retention-days N] DIR``:
    write the template and policies as JSON files (what ``deploy/elasticsearch/`` holds)."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("directory", type=Path)
    ap.add_argument("--prefix", default="opos-jobs")
    ap.add_argument("--retention-days", type=int, default=DEFAULT_RETENTION_DAYS)
    a = ap.parse_args(argv)
    a.directory.mkdir(parents=True, exist_ok=True)
    for name, body in export(a.prefix, a.retention_days).items():
        (a.directory / name).write_text(json.dumps(body, indent=2) + "\n")
        print(a.directory / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
