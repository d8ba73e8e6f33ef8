"""Rule files, the rule language, and the classifier's derived facts."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import orjson
import pytest

from opos_monitor import __version__
from opos_monitor.enrich import classify as C
from opos_monitor.enrich.classify import (
    CATEGORIES,
    RuleError,
    Verdict,
    classify,
    credential_expired,
    decisive_reason,
    default_ruleset,
    failure_time,
    job_status,
    load_ruleset,
    memory_facts,
    normalize_events,
    run_rule_tests,
)

RULESETS = {
    "default": load_ruleset(),
    "fife": load_ruleset("fife"),
    "cms": load_ruleset("cms"),
}


def _inline_cases():
    for name, rs in RULESETS.items():
        for rule in rs.rules:
            if name != "default" and rule.source == "rules.toml":
                continue  # default rules are exercised once
            for i, case in enumerate(rule.tests):
                yield pytest.param(name, rule.id, case, id=f"{name}:{rule.id}#{i + 1}")


@pytest.mark.parametrize("ruleset,rule_id,case", list(_inline_cases()))
def test_inline_rule_case(ruleset, rule_id, case):
    """Every rule's own [[rule.test]] case is decided by that rule."""
    v = classify(case["ad"], case.get("events"), now=case.get("now"), ruleset=RULESETS[ruleset])
    assert v.category == case["expect"]
    assert v.rule == case.get("expect_rule", rule_id), v.explanation


def test_every_rule_has_a_case_and_run_rule_tests_is_clean():
    for rs in RULESETS.values():
        assert all(r.tests for r in rs.rules)
        assert run_rule_tests(rs) == []


def test_default_rules_cover_every_category():
    assert {r.category for r in default_ruleset().rules} == set(CATEGORIES)


def test_version_names_rules_and_package():
    rs = default_ruleset()
    assert rs.classifier_version == f"1.0.0+opos{__version__}"
    assert classify({"JobStatus": 2}).version == rs.classifier_version
    assert RULESETS["fife"].classifier_version.startswith("1.0.0+fife-1.0.0+opos")


def test_ruleset_spec_strings_are_cached_and_combined():
    a = classify({"JobStatus": 4, "ExitCode": 20}, ruleset="fife")
    assert (a.category, a.rule) == ("site", "fife.art-input-file")
    b = classify({"JobStatus": 4, "ExitCode": 20})  # optional sets are off by default
    assert (b.category, b.rule) == ("code", "code.nonzero-exit")
    both = C._ruleset_for("fife+cms")
    assert both is C._ruleset_for("fife+cms")
    assert set(both.names) == {"default", "fife", "cms"}


def test_priorities_order_rules():
    rs = default_ruleset()
    prios = [r.priority for r in rs.rules]
    assert prios == sorted(prios, reverse=True)
    # the optional set slots in before the generic exit-code rules
    ids = [r.id for r in RULESETS["fife"].rules]
    assert ids.index("fife.art-input-file") < ids.index("code.nonzero-exit")
    assert ids.index("certificate.proxy-expired-before-failure") < ids.index("fife.art-input-file")


# ---------------------------------------------------------------- loader
def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(textwrap.dedent(body))
    return p


_OK_RULE = """
    version = "t1"
    [[rule]]
    id = "x.one"
    category = "site"
    explain = "code {code}"
    [rule.when]
    code_in = [1]
    [[rule.test]]
    expect = "site"
    ad = { JobStatus = 5, HoldReasonCode = 1 }
"""


def test_custom_ruleset_loads_and_classifies(tmp_path):
    rs = load_ruleset(_write(tmp_path, _OK_RULE), base=False)
    assert len(rs) == 1 and rs.version == "t1"
    assert classify({"JobStatus": 5, "HoldReasonCode": 1}, ruleset=rs).rule == "x.one"
    v = classify({"JobStatus": 5, "HoldReasonCode": 2}, ruleset=rs)
    assert (v.category, v.rule) == ("unknown", "no-rule-matched")


@pytest.mark.parametrize(
    "mutation,message",
    [
        (lambda s: s.replace('category = "site"', 'category = "network"'), "category 'network'"),
        (lambda s: s.split("[[rule.test]]")[0], "at least one [[rule.test]]"),
        (lambda s: s.replace("code_in = [1]", "reason_re = '(unclosed'"), "bad regex"),
        (lambda s: s.replace("code_in = [1]", "colour_in = [1]"), "unknown fact 'colour'"),
        (lambda s: s.replace('explain = "code {code}"', 'explain = "code {nope}"'), "unknown field {nope}"),
        (lambda s: s.replace('version = "t1"', ""), "'version'"),
        (lambda s: s.replace("code_in = [1]", 'status = "zombie"'), "unknown status"),
        (lambda s: s.replace("code_in = [1]", "memory_ratio_ge = 'high'"), "needs a number"),
        (lambda s: s + s.split('version = "t1"')[1], "duplicate rule id 'x.one'"),
        (lambda s: s.replace('expect = "site"', 'expect = "sitee"'), "unknown category 'sitee'"),
        (lambda s: s.replace("[rule.when]", 'colour = "red"\n    [rule.when]'), "unknown key(s) colour"),
    ],
)
def test_loader_rejects_bad_rules_naming_rule_and_key(tmp_path, mutation, message):
    with pytest.raises(RuleError) as err:
        load_ruleset(_write(tmp_path, mutation(_OK_RULE)), base=False)
    assert message in str(err.value)
    if "version" not in message and "duplicate" not in message:
        assert "x.one" in str(err.value)


def test_loader_reports_invalid_toml(tmp_path):
    with pytest.raises(RuleError, match="invalid TOML"):
        load_ruleset(_write(tmp_path, "version = \n"), base=False)


def test_any_and_not_operators(tmp_path):
    body = """
        version = "t"
        [[rule]]
        id = "t.any"
        category = "code"
        explain = "x"
        [rule.when]
        any = [{ exit_code_in = [3] }, { exit_signal_in = [4] }]
        not = { attr.Owner = "root" }
        [[rule.test]]
        expect = "code"
        ad = { JobStatus = 4, ExitCode = 3 }
    """
    rs = load_ruleset(_write(tmp_path, body), base=False)
    assert classify({"JobStatus": 4, "ExitCode": 3}, ruleset=rs).rule == "t.any"
    assert classify({"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 4}, ruleset=rs).rule == "t.any"
    assert classify({"JobStatus": 4, "ExitCode": 3, "Owner": "root"}, ruleset=rs).rule == "no-rule-matched"
    assert classify({"JobStatus": 4, "ExitCode": 5}, ruleset=rs).rule == "no-rule-matched"


# ---------------------------------------------------------------- verdict
def test_verdict_is_frozen_slotted_and_serialisable():
    v = classify({"JobStatus": 5, "HoldReasonCode": 12, "HoldReasonSubCode": 2,
                  "HoldReason": "Error from slot1@wn.example.org: STARTER at 10.0.0.1 failed to send file(s) to "
                                "<10.0.0.2:9618>: error reading from /x/y.root: (errno 2) No such file or directory"})
    assert isinstance(v, Verdict)
    assert not hasattr(v, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.category = "none"  # type: ignore[misc]
    d = v.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(Verdict)}
    assert d["evidence"]["HoldReasonCode"] == 12
    orjson.dumps(d)  # JSON-safe
    assert 0.0 <= v.confidence <= 1.0 and v.runbook and v.action


def test_none_verdicts_have_no_signature():
    v = classify({"JobStatus": 1, "VacateReasonCode": 1008, "VacateReason": "Job disconnected too long"})
    assert v.category == "none" and v.signature is None and v.signature_hash is None


# -------------------------------------------------------- input variants
def test_lowercase_attribute_names():
    ad = {"jobstatus": 5, "holdreasoncode": 34, "holdreason": "Job has gone over memory limit of 10 megabytes",
          "memoryusage": 10, "requestmemory": 10}
    v = classify(ad)
    assert (v.category, v.rule) == ("memory", "memory.out-of-resources")
    assert "used 10 MB of 10 MB" in v.explanation


def test_strings_and_expressions_as_values():
    class Expr(str):
        pass

    ad = {"JobStatus": "4", "ExitBySignal": "true", "ExitSignal": "9",
          "MemoryUsage": Expr("((ResidentSetSize + 1023) / 1024)"), "ResidentSetSize": "2000000",
          "RequestMemory": "2000"}
    v = classify(ad)
    assert (v.category, v.rule) == ("memory", "memory.sigkill-near-request")
    assert "using 1954 MB of 2000 MB" in v.explanation


def test_classad2_ad():
    import classad2  # the htcondor wheel is a dependency: no skip

    ad = classad2.ClassAd({"JobStatus": 5, "HoldReasonCode": 4, "HoldReason": "Job credentials are not available"})
    assert classify(ad).category == "certificate"


def test_object_with_attrs_is_classified_by_its_attrs():
    class Record:
        attrs = {"JobStatus": 5, "HoldReasonCode": 47, "HoldReason": "The job exceeded allowed execute duration of 1:00:00"}

    assert classify(Record()).category == "policy"


def test_event_type_aliases():
    types, kind, reason = normalize_events(
        [{"MyType": "JobReconnectFailedEvent", "Reason": "Job disconnected too long"}, {"type": 7}, {"type": "held"}]
    )
    assert types == {"job_reconnect_failed", "shadow_exception", "held"}
    assert (kind, reason) == ("job_reconnect_failed", "Job disconnected too long")
    assert normalize_events(None) == (frozenset(), "", "")


# ------------------------------------------------------- root cause wins
def test_removed_after_site_hold_is_site_and_records_user_removal():
    ad = {"JobStatus": 3, "LastJobStatus": 5, "LastHoldReasonCode": 45,
          "LastHoldReason": "Error from slot1@wn: Singularity test failed", "RemoveReason": "via condor_rm (by user nova)"}
    v = classify(ad)
    assert v.category == "site" and v.removed_by_user is True
    assert ("RemoveReason", "via condor_rm (by user nova)") in v.evidence


def test_removed_by_policy_while_running_ignores_an_old_hold():
    ad = {"JobStatus": 3, "LastJobStatus": 2, "LastHoldReasonCode": 13, "LastHoldReason": "Transfer input files failure",
          "RemoveReason": "The job attribute PeriodicRemove expression '(JobRunCount > 5)' evaluated to TRUE"}
    v = classify(ad)
    assert (v.category, v.removed_by_user) == ("policy", False)


def test_user_hold_then_remove_is_user():
    ad = {"JobStatus": 3, "LastHoldReasonCode": 1, "LastHoldReason": "via condor_hold (by user x)",
          "RemoveReason": "via condor_rm (by user x)"}
    assert classify(ad).category == "user"


# ----------------------------------------------------- derived facts
def test_job_status_inference():
    assert job_status({"JobStatus": 5}) == "held"
    assert job_status({"JobStatus": 9}) == "unknown"
    assert job_status({"ExitCode": 0}) == "completed"
    assert job_status({"RemoveReason": "x", "ExitCode": 1}) == "removed"
    assert job_status({"HoldReason": "x"}) == "held"
    assert job_status({}) == "unknown"


def test_decisive_reason_sources():
    held = {"HoldReasonCode": 13, "HoldReasonSubCode": 2, "HoldReason": "r"}
    assert decisive_reason("held", held) == (13, 2, "r", "HoldReasonCode", "HoldReason")
    removed = {"LastHoldReasonCode": 34, "LastHoldReason": "oom", "RemoveReason": "via condor_rm (by user a)"}
    assert decisive_reason("removed", removed)[:3] == (34, None, "oom")
    vac = {"VacateReasonCode": 1008, "VacateReason": "lost", "RemoveReason": "via condor_rm (by user a)"}
    assert decisive_reason("removed", vac)[0] == 1008
    churn = {"VacateReasonCode": 1014, "VacateReason": "draining", "RemoveReason": "via condor_rm (by user a)"}
    assert decisive_reason("removed", churn) == (None, None, "via condor_rm (by user a)", None, "RemoveReason")
    assert decisive_reason("completed", {"ExitCode": 1}) == (None, None, "", None, None)


def test_memory_facts_fallbacks():
    assert memory_facts({"MemoryUsage": 100, "RequestMemory": 200}) == (100.0, 200.0, None)
    assert memory_facts({"ResidentSetSize": 1025, "RequestMemory": "x", "MemoryProvisioned": 300}) == (2.0, 300.0, None)
    text = "Job has gone over cgroup memory limit of 4096 megabytes. Peak usage: 4100 megabytes."
    assert memory_facts({}, text) == (4100.0, 4096.0, 4096.0)
    assert memory_facts({}, "Docker job has gone over memory limit of 2000 Mb") == (None, 2000.0, 2000.0)
    # the dev pool's SYSTEM_PERIODIC_HOLD_REASON wording; MemoryUsage is an unevaluated expression there
    assert memory_facts({"MemoryUsage": "((ResidentSetSize + 1023) / 1024)", "RequestMemory": 128},
                        "Job memory usage 409 MB exceeded request_memory 128 MB") == (409.0, 128.0, None)


def test_credential_and_failure_time():
    assert credential_expired(100.0, 200.0) is True
    assert credential_expired(300.0, 200.0) is False
    assert credential_expired(None, 200.0) is False
    assert credential_expired(0.0, 200.0) is False
    assert failure_time("held", {"EnteredCurrentStatus": 50}) == 50
    assert failure_time("completed", {"CompletionDate": 70, "EnteredCurrentStatus": 60}) == 70
    assert failure_time("running", {}, now=9.0) == 9.0


def test_proxy_valid_at_failure_is_not_certificate():
    ad = {"JobStatus": 4, "ExitCode": 1, "CompletionDate": 1_000, "X509UserProxyExpiration": 2_000}
    assert classify(ad).category == "code"
    ad["X509UserProxyExpiration"] = 500
    v = classify(ad)
    assert v.category == "certificate"
    assert "0.1 h before the failure" in v.explanation
    assert ("X509UserProxyExpiration", 500) in v.evidence and ("CompletionDate", 1_000) in v.evidence


def test_sigkill_far_below_request_is_not_memory():
    ad = {"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 9, "MemoryUsage": 100, "RequestMemory": 4000}
    assert classify(ad).category == "site"
    ad["MemoryUsage"] = 3900
    assert classify(ad).category == "memory"


def test_segfault_over_request_is_still_code():
    ad = {"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 11, "MemoryUsage": 9000, "RequestMemory": 2000}
    assert classify(ad).rule == "code.segfault"


def test_runbook_links_point_at_existing_doc_anchors():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "classifier.md").read_text()
    anchors = {line.lstrip("#").strip().lower().replace(" ", "-") for line in doc.splitlines() if line.startswith("#")}
    for rs in RULESETS.values():
        for rule in rs.rules:
            if rule.runbook:
                path, _, anchor = rule.runbook.partition("#")
                assert path == "docs/classifier.md", rule.id
                assert anchor in anchors, (rule.id, anchor)
