"""Shared helpers of the live sources: settings, token directory, ad conversion, worker
processes (timeouts, failures), allow/deny selection, backoff."""

from __future__ import annotations

import os
import time
from pathlib import Path

import classad2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opos_monitor.classads import ERROR, Expr, plain_ad
from opos_monitor.config import HTCondorConfig
from opos_monitor.sources import htc
from opos_monitor.sources.htc import (Backoff, CollectorTarget, InlineRunner, ProcessRunner, QueryError, QueryTimeout,
                                      TokenDir, ad_dict, condor_params, job_projection, schedd_selected)

# --- settings -------------------------------------------------------------------------------


def test_condor_params_from_config(tmp_path):
    token = tmp_path / "opos.token"
    token.write_text("x")
    cfg = HTCondorConfig(token_file=token, auth_methods=["IDTOKENS", "SSL"], query_timeout_s=12.4)
    p = condor_params(cfg)
    assert p == {"SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS,SSL", "QUERY_TIMEOUT": "12",
                 "Q_QUERY_TIMEOUT": "12", "SEC_TOKEN_DIRECTORY": str(tmp_path)}
    assert condor_params(cfg, Path("/private"))["SEC_TOKEN_DIRECTORY"] == "/private"
    assert "SEC_TOKEN_DIRECTORY" not in condor_params(HTCondorConfig())
    assert condor_params(HTCondorConfig(query_timeout_s=0.2))["QUERY_TIMEOUT"] == "1"


def test_token_dir_holds_only_the_configured_token(tmp_path):
    (tmp_path / "opos.token").write_text("read-only")
    (tmp_path / "admin.token").write_text("write")
    with TokenDir(tmp_path / "opos.token") as td:
        assert [p.name for p in td.path.iterdir()] == ["00-opos.token"]
        assert (td.path / "00-opos.token").read_text() == "read-only"
        assert oct(td.path.stat().st_mode & 0o777) == "0o700"
        (tmp_path / "opos.token").write_text("rotated")  # a replaced token is followed
        assert (td.path / "00-opos.token").read_text() == "rotated"
    assert not td.path.exists()
    with pytest.raises(FileNotFoundError):
        TokenDir(tmp_path / "missing.token")


def test_token_dir_holds_one_token_per_trust_domain_even_with_the_same_file_name(tmp_path):
    for domain in ("fnal", "osg"):
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "read.token").write_text(domain)
    cfg = HTCondorConfig(token_file=tmp_path / "fnal" / "read.token",
                         token_files=[tmp_path / "osg" / "read.token", tmp_path / "fnal" / "read.token"])
    assert cfg.tokens() == [tmp_path / "fnal" / "read.token", tmp_path / "osg" / "read.token"]
    with TokenDir(*cfg.tokens()) as td:
        assert sorted((p.name, p.read_text()) for p in td.path.iterdir()) == [("00-read.token", "fnal"),
                                                                             ("01-read.token", "osg")]
    with pytest.raises(FileNotFoundError, match="missing.token"):
        TokenDir(tmp_path / "fnal" / "read.token", tmp_path / "missing.token")


def test_apply_params_sets_htcondor_knobs(monkeypatch):
    monkeypatch.setenv("CONDOR_CONFIG", "/dev/null")
    monkeypatch.delenv("_CONDOR_Q_QUERY_TIMEOUT", raising=False)
    mod = htc.apply_params({"Q_QUERY_TIMEOUT": "17"})
    try:
        assert str(mod.param["Q_QUERY_TIMEOUT"]) == "17"
    finally:
        os.environ.pop("_CONDOR_Q_QUERY_TIMEOUT", None)
        mod.reload_config()


def test_job_projection_covers_records_and_classifier_once():
    attrs = job_projection(("OposTestTag", "clusterid"))
    low = [a.lower() for a in attrs]
    assert len(low) == len(set(low))
    for a in ("ClusterId", "GlobalJobId", "HoldReasonCode", "HoldReasonSubCode", "LastHoldReasonCode", "RemoveReason",
              "VacateReasonCode", "ExitBySignal", "MemoryUsage", "ResidentSetSize", "RequestMemory",
              "x509UserProxyExpiration", "MATCH_EXP_JOB_GLIDEIN_Site", "MachineAttrGLIDEIN_Site0", "LastRemoteHost",
              "NumShadowExceptions", "EnteredCurrentStatus", "OposTestTag"):
        assert a.lower() in low, a
    assert htc.JOB_ATTRS == job_projection()


# --- ad conversion ---------------------------------------------------------------------------


def test_ad_dict_keeps_every_kind_of_value():
    ad = classad2.ClassAd('[a = undefined; b = error; d = x + 1; e = "q\\"uote \\\\ /Expr(no)/"; f = {1, 2}; '
                          'g = [x = 1]; h = 1.5; i = true; j = "caf\u00e9"; k = 12345678901]')
    d = ad_dict(ad)
    assert d == {"a": None, "b": ERROR, "d": Expr("x + 1"), "e": 'q"uote \\ /Expr(no)/', "f": [1, 2],
                 "g": {"x": 1}, "h": 1.5, "i": True, "j": "caf\u00e9", "k": 12345678901}
    assert isinstance(d["d"], Expr)
    assert d == plain_ad(ad)
    assert ad_dict({"A": 1}) == {"A": 1}


scalar = st.one_of(st.integers(-2**62, 2**62), st.booleans(), st.text(max_size=20),
                   st.floats(allow_nan=False, allow_infinity=False, width=32))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True), scalar, max_size=8))
def test_ad_dict_agrees_with_plain_ad(values):
    """Equal, except that reals come back with the 15 significant digits HTCondor's text
    formats (history files, JSON) carry."""
    ad = classad2.ClassAd()
    for k, v in values.items():
        ad[k] = v
    fast, exact = ad_dict(ad), plain_ad(ad)
    assert fast.keys() == exact.keys()
    for k, v in exact.items():
        if isinstance(v, float):
            assert fast[k] == pytest.approx(v, rel=1e-14, abs=1e-300)
        else:
            assert fast[k] == v and type(fast[k]) is type(v)


# --- workers ---------------------------------------------------------------------------------


def _sleep(client, seconds):
    time.sleep(seconds)
    return seconds


def _boom(client):
    raise RuntimeError("Failed to fetch ads from schedd, errmsg=SECMAN:2007")


def _die(client):
    os._exit(3)


def _client_kind(client, n):
    return type(client).__name__, [n] * 3


TARGET = CollectorTarget("fermigrid", "127.0.0.1:1")


@pytest.fixture(scope="module")
def runner():
    r = ProcessRunner({"QUERY_TIMEOUT": "5"}, timeout_s=20)
    yield r
    r.close()


def test_worker_returns_the_result(runner):
    assert runner.call(TARGET, _client_kind, 7) == ("Collector", [7, 7, 7])


def test_worker_timeout_kills_it_quickly(runner):
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"collector 127.0.0.1:1: no answer within 1 s"):
        runner.call(TARGET, _sleep, 30, timeout=1)
    assert time.monotonic() - t0 < 8


def test_worker_error_names_target_and_reason(runner):
    with pytest.raises(QueryError, match=r"collector 127.0.0.1:1: RuntimeError: Failed to fetch ads.*SECMAN:2007"):
        runner.call(TARGET, _boom)


def test_worker_that_dies_is_reported(runner):
    with pytest.raises(QueryError, match="worker died"):
        runner.call(TARGET, _die)


def test_workers_run_in_parallel(runner):
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(lambda _: runner.call(TARGET, _sleep, 1.0), range(4))) == [1.0] * 4
    assert time.monotonic() - t0 < 3.5  # not 4 s: the GIL is not held while workers run


def test_inline_runner_wraps_errors():
    r = InlineRunner(lambda target: object())
    with pytest.raises(QueryError, match=r"collector 127.0.0.1:1: RuntimeError"):
        r.call(TARGET, _boom)


# --- selection and backoff ---------------------------------------------------------------------


@pytest.mark.parametrize("name,allow,deny,expected", [
    ("jobsub01.fnal.gov", [], [], True),
    ("jobsub01.fnal.gov", ["jobsub0*"], [], True),
    ("fifebatch1.fnal.gov", ["jobsub0*"], [], False),
    ("jobsub03.fnal.gov", ["jobsub0*"], ["jobsub03*"], False),
    ("jobsub03.fnal.gov", [], ["*03*"], False),
    ("JOBSUB01", ["jobsub*"], [], False),  # case-sensitive, like schedd names
    ("jobsub02@vm", ["jobsub0[12]@*"], [], True),
])
def test_schedd_selected(name, allow, deny, expected):
    assert schedd_selected(name, allow, deny) is expected


def test_backoff_grows_caps_and_resets():
    now = [1000.0]
    b = Backoff(base_s=10, max_s=60, clock=lambda: now[0])
    assert b.wait_s("k") == 0
    assert [b.failure("k", f"e{i}") for i in range(5)] == [10, 20, 40, 60, 60]
    assert b.failures("k") == 5 and b.last_error("k") == "e4"
    assert b.wait_s("k") == 60
    now[0] += 59
    assert b.wait_s("k") == pytest.approx(1)
    assert b.wait_s("other") == 0
    b.success("k")
    assert b.wait_s("k") == 0 and b.failures("k") == 0


def test_records_cross_the_process_boundary_as_tuples():
    import pickle

    from opos_monitor.records import JobRecord
    from opos_monitor.sources.htc import record_from_wire, record_to_wire

    ad = {"ClusterId": 7, "ProcId": 1, "QDate": 1_700_000_000, "JobStatus": 5, "HoldReasonCode": 26,
          "HoldReason": "Job memory usage 2100 MB exceeded request_memory 2000 MB", "EnteredCurrentStatus": 1_700_000_500,
          "RequestMemory": Expr("ifThenElse(MemoryUsage =!= undefined, MemoryUsage, 2000)"), "ExitSignal": None,
          "GlobalJobId": "jobsub01.fnal.gov#7.1#1700000000", "x509UserProxyExpiration": 1_700_100_000, "Odd": ERROR}
    rec = JobRecord.from_ad(ad, pool="fermigrid", schedd="jobsub01.fnal.gov", source="history")
    back = record_from_wire(pickle.loads(pickle.dumps(record_to_wire(rec))))
    assert back == rec and back.attrs == rec.attrs and back.hold_time == rec.hold_time
    assert isinstance(back.attrs["RequestMemory"], Expr) and back.attrs["Odd"] is ERROR
