"""Site attribution."""

from __future__ import annotations

import pytest

from opos_monitor.enrich.site import Corrections, attribute_site, casefold_view, domain_of, host_of


def test_glidein_site_attributes_in_order():
    ad = {
        "JobStatus": 4,
        "MATCH_EXP_JOB_GLIDEIN_Site": "Nebraska",
        "GLIDEIN_Site": "Other",
        "MachineAttrGLIDEIN_Site0": "Third",
        "RemoteHost": "slot1@fnpc1.fnal.gov",
    }
    assert attribute_site(ad) == "Nebraska"
    del ad["MATCH_EXP_JOB_GLIDEIN_Site"]
    assert attribute_site(ad) == "Other"
    del ad["GLIDEIN_Site"]
    assert attribute_site(ad) == "Third"


def test_resource_name_before_machine_attr():
    ad = {"JobStatus": 2, "MATCH_EXP_JOBGLIDEIN_ResourceName": "FNAL_GPGrid", "MachineAttrGLIDEIN_Site0": "X"}
    assert attribute_site(ad) == "FNAL_GPGrid"


@pytest.mark.parametrize("placeholder", ["$$(GLIDEIN_Site:Unknown)", "Unknown", "UNDEFINED", "", "  ", None, 7])
def test_unexpanded_or_placeholder_values_are_ignored(placeholder):
    ad = {"JobStatus": 4, "MATCH_EXP_JOB_GLIDEIN_Site": placeholder, "LastRemoteHost": "slot1_3@wn1.pic.es"}
    assert attribute_site(ad) == "pic.es"


def test_host_domain_through_default_corrections():
    assert attribute_site({"JobStatus": 4, "RemoteHost": "slot1@fnpc123.fnal.gov"}) == "FermiGrid"
    assert attribute_site({"JobStatus": 4, "LastRemoteHost": "slot1_2@fnpc9.fnal.gov"}) == "FermiGrid"
    assert attribute_site({"JobStatus": 4, "StartdName": "glidein_1_2@cms-wn1.t2.ucsd.edu"}) == "t2.ucsd.edu"


def test_custom_corrections_suffix_longest_first_and_regex():
    table = {"ucsd.edu": "UCSD", "t2.ucsd.edu": "T2_US_UCSD", r"^cmswn\d+\.fnal\.gov$": "T1_US_FNAL", "fnal.gov": "FermiGrid"}
    assert attribute_site({"JobStatus": 4, "RemoteHost": "slot1@a.t2.ucsd.edu"}, table) == "T2_US_UCSD"
    assert attribute_site({"JobStatus": 4, "RemoteHost": "slot1@b.ucsd.edu"}, table) == "UCSD"
    assert attribute_site({"JobStatus": 4, "RemoteHost": "slot1@CMSWN42.fnal.gov"}, table) == "T1_US_FNAL"
    assert attribute_site({"JobStatus": 4, "RemoteHost": "slot1@fnpc1.fnal.gov"}, table) == "FermiGrid"
    # a suffix must match whole labels
    assert attribute_site({"JobStatus": 4, "RemoteHost": "slot1@x.notfnal.gov"}, table) == "notfnal.gov"
    assert Corrections({"fnal.gov": "F"}).site_for("fnal.gov") == "F"


def test_unknown_when_nothing_says():
    assert attribute_site({"JobStatus": 1}) == "unknown"
    assert attribute_site({"JobStatus": 2, "RemoteHost": "slot1@localhost"}) == "unknown"
    assert attribute_site({"JobStatus": 2, "RemoteHost": "slot1@10.0.0.7"}) == "unknown"
    assert attribute_site({"JobStatus": 2, "RemoteHost": "<10.0.0.7:9618>"}) == "unknown"


def test_case_insensitive_names():
    assert attribute_site({"match_exp_job_glidein_site": "Wisconsin"}) == "Wisconsin"
    assert attribute_site({"remotehost": "slot1@fnpc1.fnal.gov"}) == "FermiGrid"


def test_host_and_domain_helpers():
    assert host_of("slot1_2@glidein_3_4@node7.cluster.example.edu") == "node7.cluster.example.edu"
    assert host_of("fnpc1.fnal.gov:9618") == "fnpc1.fnal.gov"
    assert host_of("$$(Machine)") is None
    assert domain_of("fnpc123.fnal.gov") == "fnal.gov"
    assert domain_of("localhost") is None and domain_of("10.1.2.3") is None


def test_casefold_view_keeps_canonical_dicts():
    ad = {"JobStatus": 1, "x": 2}
    assert casefold_view(ad) is ad
    view = casefold_view({"jobstatus": 1})
    assert view.get("JobStatus") == 1 and "JOBSTATUS" in view
