"""Tests for opos_monitor.records.JobRecord."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import classad2
import orjson
import pytest

from opos_monitor.classads import ERROR, Expr, read_path
from opos_monitor.records import JobRecord, status_name, to_bool, to_float, to_int, to_time

DATA = Path(__file__).parent / "data" / "ads"
UTC = timezone.utc


def rec(ad, **kw) -> JobRecord:
    return JobRecord.from_ad(ad, pool=kw.get("pool", "fermigrid"), schedd=kw.get("schedd", "jobsub01.fnal.gov"), source=kw.get("source", "history"))


def ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


@pytest.fixture(scope="module")
def history():
    return [rec(ad) for ad in read_path(str(DATA / "history_raw.txt"))]


@pytest.fixture(scope="module")
def queue():
    return [rec(ad, source="queue", schedd="jobsub04.fnal.gov") for ad in read_path(str(DATA / "condor_q_long.txt"))]


class TestFromHistory:
    def test_completed_job(self, history):
        r = history[0]
        assert (r.pool, r.schedd, r.source) == ("fermigrid", "jobsub01.fnal.gov", "history")
        assert r.global_job_id == "jobsub01.fnal.gov#4101234.0#1717900000" and r.synthetic_id is False
        assert (r.cluster_id, r.proc_id, r.owner) == (4101234, 0, "novapro")
        assert r.accounting_group == "group_nova.prod.novapro"
        assert r.status == "completed" and r.job_status_code == 4
        assert r.q_date == ts(1717900000) and r.q_date.tzinfo is UTC
        assert r.completion_date == ts(1717912345)
        assert r.job_start_date == r.job_current_start_date == ts(1717906900)
        assert r.exit_code == 0 and r.exit_by_signal is False
        assert r.request_memory_mb == 2000
        assert r.memory_usage_mb == 1800  # MemoryUsage is an expression: ResidentSetSize 1843200 KiB -> MB
        assert r.cpu_time_s == 5244.0 and r.remote_wall_clock_time_s == 5412.0
        assert r.request_disk_kb == 10485760 and r.disk_usage_kb == 1250000 and r.request_cpus == 1
        assert r.glidein_site == "FermiGrid" and r.machine_attr_glidein_site0 == "FermiGrid"
        assert (r.startd_slot, r.startd_name, r.execute_host) == ("slot1_12", "fnpc7464.fnal.gov", "fnpc7464.fnal.gov")
        assert r.x509_user_proxy_expiration == ts(1718505000)
        assert r.x509_user_proxy_vo_name == "fermilab"
        assert r.x509_user_proxy_first_fqan == "/fermilab/nova/Role=Production/Capability=NULL"
        assert r.x509_user_proxy_subject.endswith("/CN=novapro")
        assert r.x509_user_proxy == "/var/lib/jobsub/creds/proxies/nova/x509cc_novapro_Production"
        assert r.attrs["Jobsub_Group"] == "nova"  # FIFE attributes stay raw
        assert r.attrs["JobsubClientKerberosPrincipal"] == "novapro/cron/novagpvm01.fnal.gov@FNAL.GOV"

    def test_removed_after_memory_hold(self, history):
        r = history[1]
        assert r.status == "removed" and r.completion_date is None  # CompletionDate = 0
        assert r.removal_time == ts(1717998000) and r.hold_time is None
        assert r.last_hold_reason_code == 34 and r.last_hold_reason_subcode == 0
        assert r.last_hold_reason.startswith("Error from slot1_3@glidein_4079_71834960@c4221.uchicago.edu")
        assert r.remove_reason == "via condor_rm (by user dunepro)"
        assert (r.vacate_reason, r.vacate_reason_code, r.vacate_reason_subcode) == ("Job was evicted.", 1004, 0)
        assert r.memory_usage_mb == 5830 and r.request_memory_mb == 4000
        assert (r.job_run_count, r.num_holds, r.num_job_starts, r.num_shadow_starts) == (2, 1, 2, 2)
        assert r.glidein_site == "UChicago" and r.match_exp_job_glidein_resource_name == "MWT2"
        assert r.startd_name == "glidein_4079_71834960@c4221.uchicago.edu" and r.startd_slot == "slot1_3"
        assert r.execute_host == "c4221.uchicago.edu"

    def test_segfault(self, history):
        r = history[2]
        assert r.exit_by_signal is True and r.exit_signal == 11 and r.job_core_dumped is True
        assert r.exit_code is None
        assert r.cpu_time_s is None  # neither RemoteUserCpu nor RemoteSysCpu present

    def test_queue_states(self, queue):
        idle, running, held = queue
        assert [r.status for r in queue] == ["idle", "running", "held"]
        assert idle.memory_usage_mb is None  # expression and no ResidentSetSize
        assert running.remote_host == "slot1_4@glidein_1234_98765@e2345.chtc.wisc.edu"
        assert running.execute_host == "e2345.chtc.wisc.edu" and running.startd_slot == "slot1_4"
        assert running.job_current_start_executing_date == ts(1718001042)
        assert running.glidein_site == "Wisconsin"
        assert held.hold_time == ts(1718002000) and held.removal_time is None
        assert held.hold_reason_code == 13 and held.hold_reason_subcode == 256
        assert held.hold_reason.endswith("usr/dune/scratch/input.tar)")
        assert held.scitokens_file == "/var/lib/condor/creds/dunepro.use"
        assert held.oauth_services_needed == "scitokens"
        assert held.x509_user_proxy_expiration == ts(1717000000)

    def test_json_and_long_give_same_record_fields(self, history):
        js = [rec(ad) for ad in read_path(str(DATA / "condor_history.json"))]
        for field in ("global_job_id", "status", "q_date", "completion_date", "memory_usage_mb", "request_memory_mb",
                      "last_hold_reason", "last_hold_reason_code", "remove_reason", "owner"):
            assert [getattr(r, field) for r in js] == [getattr(r, field) for r in history[:2]], field


class TestLookupAndConversion:
    def test_case_insensitive_names(self):
        a = rec({"clusterid": 5, "PROCID": 1, "jobstatus": 2, "QDATE": 1700000000, "globaljobid": "s#5.1#1700000000",
                 "MATCH_EXP_JOB_GLIDEIN_SITE": "MIT", "X509USERPROXYEXPIRATION": 1700003600})
        assert (a.cluster_id, a.proc_id, a.status) == (5, 1, "running")
        assert a.global_job_id == "s#5.1#1700000000" and a.synthetic_id is False
        assert a.glidein_site == "MIT" and a.x509_user_proxy_expiration == ts(1700003600)

    def test_strings_where_numbers_expected(self):
        r = rec({"RequestMemory": "4096", "MemoryUsage": " 5000 ", "ExitCode": "1", "QDate": "1700000000",
                 "RemoteWallClockTime": "12.5", "RequestCpus": "2.0", "ExitBySignal": "TRUE", "JobStatus": "5"})
        assert r.request_memory_mb == 4096 and r.memory_usage_mb == 5000 and r.exit_code == 1
        assert r.q_date == ts(1700000000) and r.remote_wall_clock_time_s == 12.5 and r.request_cpus == 2
        assert r.exit_by_signal is True and r.status == "held"

    def test_expressions_and_garbage_become_none_but_stay_in_attrs(self):
        ad = {"RequestMemory": Expr("ifThenElse(MemoryUsage > 2000, 4000, 2000)"), "ExitCode": "abc",
              "QDate": ERROR, "Owner": Expr("strcat(a, b)"), "RequestDisk": [1, 2], "NumHolds": 1.5,
              "HoldReasonCode": None}
        r = rec(ad)
        assert r.request_memory_mb is None and r.exit_code is None and r.q_date is None
        assert r.owner is None and r.request_disk_kb is None and r.num_holds is None
        assert r.attrs == ad and r.attrs is not ad

    def test_big_ints_preserved(self):
        big = 2**80 + 7
        r = rec({"RequestDisk": big, "DiskUsage": str(big)})
        assert r.request_disk_kb == big and r.disk_usage_kb == big

    @pytest.mark.parametrize("value", [0, -5, "0", None, "never", 1e300, float("nan"), float("inf"), True])
    def test_bad_times_are_none(self, value):
        assert to_time(value) is None
        assert rec({"CompletionDate": value}).completion_date is None

    def test_fractional_and_string_times(self):
        assert to_time(1700000000.5) == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
        assert to_time("1700000000") == ts(1700000000)

    def test_converters(self):
        assert to_int(True) is None and to_int(3.0) == 3 and to_int(3.5) is None and to_int("1e3") == 1000
        assert to_int("9" * 5000) is None and to_int(classad2.Value.Undefined) is None
        assert to_float("nan") is None and to_float(2**2000) is None and to_float("2.5") == 2.5
        assert to_bool(1) is True and to_bool(0) is False and to_bool(2) is None and to_bool("False") is False
        assert to_bool(Expr("true")) is None

    @pytest.mark.parametrize(
        "code, name",
        [(1, "idle"), (2, "running"), (3, "removed"), (4, "completed"), (5, "held"), (6, "transferring_output"),
         (7, "suspended"), (0, "unknown"), (99, "unknown"), (None, "unknown"), ("4", "completed"), (Expr("x"), "unknown")],
    )
    def test_status(self, code, name):
        assert status_name(code) == name
        assert rec({"JobStatus": code}).status == name

    def test_memory_usage_falls_back_to_resident_set_size(self):
        assert rec({"MemoryUsage": 700}).memory_usage_mb == 700
        assert rec({"MemoryUsage": Expr("x"), "ResidentSetSize": 1025}).memory_usage_mb == 2
        assert rec({"ResidentSetSize": 1024}).memory_usage_mb == 1
        assert rec({"MemoryUsage": 12.2}).memory_usage_mb == 13
        assert rec({}).memory_usage_mb is None

    def test_cpu_time_with_one_part(self):
        assert rec({"RemoteUserCpu": 10.0}).cpu_time_s == 10.0
        assert rec({"RemoteSysCpu": 2, "RemoteUserCpu": 3}).cpu_time_s == 5.0

    def test_site_sources_in_order_and_macros_skipped(self):
        assert rec({"MachineAttrGLIDEIN_Site0": "BNL", "GLIDEIN_Site": "CERN"}).glidein_site == "CERN"
        r = rec({"MATCH_EXP_JOB_GLIDEIN_Site": "$$(GLIDEIN_Site:Unknown)", "MachineAttrGLIDEIN_Site0": "BNL"})
        assert r.glidein_site == "BNL" and r.match_exp_job_glidein_site == "$$(GLIDEIN_Site:Unknown)"
        assert rec({}).glidein_site is None

    def test_startd_attributes_win_over_remote_host(self):
        r = rec({"RemoteHost": "slot1_2@host.a.org", "StartdName": "glidein_9@host.a.org", "StartdSlot": "slot1_9"})
        assert (r.startd_name, r.startd_slot, r.execute_host) == ("glidein_9@host.a.org", "slot1_9", "host.a.org")
        r = rec({"LastRemoteHost": "host.b.org"})
        assert (r.startd_name, r.startd_slot, r.execute_host) == ("host.b.org", None, "host.b.org")

    def test_from_classad2_ad(self):
        ad = classad2.parseOne(
            'GlobalJobId = "s#1.0#5"\nJobStatus = 5\nHoldReason = "x"\nRequestMemory = undefined\n'
            "MemoryUsage = ((ResidentSetSize + 1023) / 1024)\nResidentSetSize = 2048\nBroken = error\n",
            classad2.ParserType.Old,
        )
        r = rec(ad)
        assert r.status == "held" and r.hold_reason == "x" and r.request_memory_mb is None
        assert r.memory_usage_mb == 2
        assert r.attrs["RequestMemory"] is None and r.attrs["Broken"] is ERROR
        assert r.attrs["MemoryUsage"] == Expr("((ResidentSetSize + 1023) / 1024)")
        orjson.dumps(r.to_doc())


class TestIds:
    def test_synthetic_global_job_id(self):
        r = rec({"ClusterId": 12, "ProcId": 3, "QDate": 1700000000}, schedd="jobsub02.fnal.gov")
        assert r.global_job_id == "jobsub02.fnal.gov#12.3#1700000000" and r.synthetic_id is True
        assert rec({}, schedd="s").global_job_id == "s#?.?#?"

    def test_doc_id_is_sha1_of_global_job_id(self, history):
        r = history[0]
        assert r.doc_id() == hashlib.sha1(b"jobsub01.fnal.gov#4101234.0#1717900000").hexdigest()
        assert r.doc_id() == rec(dict(r.attrs), pool="other", source="queue").doc_id()
        assert len({h.doc_id() for h in history}) == 3

    def test_attempt_doc_ids(self, history):
        r = history[1]
        ids = [r.attempt_doc_id(n) for n in range(3)]
        assert len(set(ids)) == 3 and r.doc_id() not in ids
        assert ids[1] == rec(dict(r.attrs)).attempt_doc_id(1)
        assert history[0].attempt_doc_id(1) != ids[1]


class TestDoc:
    def test_raw_attributes_and_opos_object(self, history):
        r = history[1]
        doc = r.to_doc({"category": "memory", "rule": "mem.cgroup", "signature": "abc123", "site": "UChicago",
                        "explanation": "used 5830 MB of 4000 MB"})
        assert doc["GlobalJobId"] == r.global_job_id and doc["LastHoldReasonCode"] == 34
        assert doc["LastHoldReason"] == r.attrs["LastHoldReason"]
        assert doc["NumHoldsByReason"] == {"JobOutOfResources": 1}
        opos = doc["opos"]
        assert opos["pool"] == "fermigrid" and opos["schedd"] == "jobsub01.fnal.gov" and opos["source"] == "history"
        assert opos["status"] == "removed"
        assert opos["q_date"] == "2024-06-09T02:43:20Z" and opos["removal_time"] == "2024-06-10T05:40:00Z"
        assert "completion_date" not in opos  # never completed
        assert opos["category"] == "memory" and opos["site"] == "UChicago" and opos["rule"] == "mem.cgroup"
        assert opos["signature"] == "abc123" and opos["explanation"] == "used 5830 MB of 4000 MB"
        assert json.loads(json.dumps(doc, allow_nan=False)) == doc

    def test_values_made_serialisable_without_losing_text(self):
        big = 2**70
        ad = {"Requirements": Expr("(TARGET.Memory >= RequestMemory)"), "Broken": ERROR, "Big": big,
              "Inf": float("inf"), "L": [Expr("a"), 1, ERROR], "N": {"x": Expr("y")}, "U": None, "F": 1.5}
        doc = rec(ad).to_doc()
        assert doc["Requirements"] == "(TARGET.Memory >= RequestMemory)" and type(doc["Requirements"]) is str
        assert doc["Broken"] == "error" and doc["Big"] == str(big) and doc["Inf"] is None
        assert doc["L"] == ["a", 1, "error"] and type(doc["L"][0]) is str
        assert doc["N"] == {"x": "y"} and doc["U"] is None and doc["F"] == 1.5
        json.dumps(doc, allow_nan=False)
        assert orjson.loads(orjson.dumps(doc)) == doc

    def test_reasons_never_truncated(self):
        reason = "Error from slot1@x: " + "very long detail; " * 20000
        doc = rec({"HoldReason": reason, "JobStatus": 5}).to_doc()
        assert doc["HoldReason"] == reason and len(doc["HoldReason"]) > 300000

    def test_attribute_named_opos_is_kept(self):
        doc = rec({"opos": "user value", "JobStatus": 4}).to_doc()
        assert doc["opos_attr"] == "user value" and doc["opos"]["status"] == "completed"

    def test_derived_values_serialised(self):
        doc = rec({}).to_doc({"when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "expr": Expr("x")})
        assert doc["opos"]["when"] == "2024-01-02T03:04:05Z" and doc["opos"]["expr"] == "x"


def test_record_is_slotted():
    r = rec({})
    with pytest.raises(AttributeError):
        r.not_a_field = 1  # type: ignore[attr-defined]
