"""Real HTCondor hold/remove/vacate messages (tests/enrich/real_messages.toml).

Every case quotes a reason string from HTCondor's source, its manual or a
public report, names its source, and states the category a shifter should
see.  The table must cover every category.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from opos_monitor.enrich.classify import CATEGORIES, classify

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA = Path(__file__).with_name("real_messages.toml")
CASES = tomllib.loads(DATA.read_text())["case"]


def test_table_covers_every_category():
    assert {c["expect"] for c in CASES} == set(CATEGORIES)


def test_every_case_names_a_source_and_unique_id():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    for c in CASES:
        assert len(c.get("source", "")) > 15, c["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_real_message(case):
    v = classify(case["ad"], case.get("events"))
    assert v.category == case["expect"], v
    if "expect_rule" in case:
        assert v.rule == case["expect_rule"], v
    if "signature" in case:
        assert v.signature == case["signature"]
        assert v.signature_hash is not None and len(v.signature_hash) == 12
    if "removed_by_user" in case:
        assert v.removed_by_user is case["removed_by_user"]
    assert v.explanation and "\n" not in v.explanation


def _quotes_evidence(case, v) -> bool:
    """The explanation quotes something the shifter can check in the ad."""
    ad = case["ad"]
    reason = ""
    for name in ("HoldReason", "LastHoldReason", "VacateReason", "RemoveReason"):
        if ad.get(name):
            reason = ad[name]
            break
    if v.category == "none":
        return True
    if reason and " ".join(reason.split())[:40] in v.explanation:
        return True
    for name in ("HoldReasonCode", "LastHoldReasonCode", "VacateReasonCode", "ExitCode", "ExitSignal"):
        value = ad.get(name)
        if value is not None and str(value) in v.explanation:
            return True
    for ev in case.get("events", []):
        if ev.get("reason") and ev["reason"][:30] in v.explanation:
            return True
    return False


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_explanation_quotes_evidence(case):
    v = classify(case["ad"], case.get("events"))
    assert _quotes_evidence(case, v), v.explanation


def test_memory_explanation_shape():
    """The issue's example: "HoldReasonCode 34/102: used 4088 MB of 4096 MB requested"."""
    ad = {"JobStatus": 5, "HoldReasonCode": 34, "HoldReasonSubCode": 102, "MemoryUsage": 4088,
          "RequestMemory": 4096, "HoldReason": "Error from slot1_1@wn: Job has gone over cgroup memory limit of 4096 megabytes."}
    v = classify(ad)
    assert v.explanation.startswith("HoldReasonCode 34/102: used 4088 MB of 4096 MB requested")
    assert ("MemoryUsage", 4088) in v.evidence and ("RequestMemory", 4096) in v.evidence
    assert ("HoldReasonCode", 34) in v.evidence


def test_same_failure_on_different_hosts_shares_a_signature():
    by_id = {c["id"]: c for c in CASES}
    a = dict(by_id["starter-cgroup-oom"]["ad"])
    b = dict(a, HoldReason=a["HoldReason"].replace("fnpc7013.fnal.gov", "wn-9.t2.example.edu").replace("4100", "4311"))
    va, vb = classify(a), classify(b)
    assert va.signature_hash == vb.signature_hash
    other = classify(by_id["iwd-missing"]["ad"])
    assert other.signature_hash != va.signature_hash
