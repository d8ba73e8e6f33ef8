"""The hold/vacate code table against HTCondor's own enum, and the rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from opos_monitor.enrich import holdcodes
from opos_monitor.enrich.classify import CATEGORIES, classify


def _htcondor_enum() -> dict[int, str]:
    """CONDOR_HOLD_CODE as compiled into the installed htcondor wheel.

    BETTER_ENUM keeps the enumerator list as one string
    ("Unspecified = 0,UserRequest = 1,...") in libcondor_utils.
    """
    import htcondor2

    libs = Path(htcondor2.__file__).resolve().parent.parent / "htcondor.libs"
    candidates = sorted(libs.glob("libcondor_utils*.so*"))
    assert candidates, f"no libcondor_utils in {libs}"
    blob = candidates[0].read_bytes()
    m = re.search(rb"Unspecified = 0,UserRequest = 1,[A-Za-z0-9 =,]+", blob)
    assert m, "CONDOR_HOLD_CODE enum string not found in libcondor_utils"
    table: dict[int, str] = {}
    for item in m.group().decode().split(","):
        if "=" not in item:
            continue
        name, value = (x.strip() for x in item.split("="))
        if name == "VacateBase":
            continue
        table[int(value)] = name
    return table


def test_table_matches_htcondor_enum():
    enum = _htcondor_enum()
    assert len(enum) > 80
    for code, name in enum.items():
        row = holdcodes.lookup(code)
        assert row is not None, f"code {code} ({name}) missing from holdcodes"
        # the manual labels 12/13 TransferOutputError/TransferInputError; the
        # enum agrees in 25.x (older headers said DownloadFileError/UploadFileError)
        assert row.name == name, (code, row.name, name)
    assert set(holdcodes.HOLD_CODES) == set(enum)


def test_covers_0_to_49_and_vacate_codes():
    assert set(range(0, 50)) <= set(holdcodes.HOLD_CODES)
    assert {c for c in holdcodes.HOLD_CODES if c >= 1000} == set(range(1000, 1038))
    assert all(r.is_vacate == (r.code >= 1000) for r in holdcodes.HOLD_CODES.values())


def test_categories_are_valid():
    for row in holdcodes.HOLD_CODES.values():
        assert row.category in CATEGORIES, row


def test_catch_all_codes_are_text_decided():
    # the list, checked against what the source says each code carries
    assert {3, 6, 12, 13, 21, 26, 34, 35, 1002, 1007} <= holdcodes.TEXT_DECIDES
    assert 4 not in holdcodes.TEXT_DECIDES and 1 not in holdcodes.TEXT_DECIDES


@pytest.mark.parametrize(
    "code,sub,expected",
    [
        (34, 102, "34 JobOutOfResources/102 (memory)"),
        (21, 103, "21 StartdHeldJob/103 (runtime exceeded maximum)"),
        (13, 256, "13 TransferInputError/256 (plugin exit 1)"),
        (6, 13, "6 FailedToCreateProcess/13 (errno 13)"),
        (1008, 0, "1008 ReconnectFailed"),
        (999, None, "999"),
    ],
)
def test_describe(code, sub, expected):
    assert holdcodes.describe(code, sub) == expected


def test_lookup_accepts_strings_and_rejects_bools():
    assert holdcodes.lookup("34").name == "JobOutOfResources"
    assert holdcodes.lookup(True) is None
    assert holdcodes.default_category(12345) == "unknown"


_BLAND = "held for a reason without keywords"


@pytest.mark.parametrize("code", sorted(c for c in holdcodes.HOLD_CODES if holdcodes.HOLD_CODES[c].category != "none"))
def test_rules_agree_with_table_default(code):
    """With no telling text, a held job gets the code's default category."""
    v = classify({"JobStatus": 5, "HoldReasonCode": code, "HoldReasonSubCode": 0, "HoldReason": _BLAND})
    assert v.category == holdcodes.default_category(code), (code, v.rule, v.explanation)


def test_docs_table_matches_holdcodes():
    """docs/classifier.md shows the same table (docs change with behaviour)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "classifier.md").read_text()
    body = doc.split("<!-- holdcodes:start -->")[1].split("<!-- holdcodes:end -->")[0]
    rows = [line for line in body.strip().splitlines()[2:]]
    expected = [
        f"| {code} | {r.name} | {r.category} | {'yes' if r.text_decides else ''} | {r.meaning} |"
        for code, r in sorted(holdcodes.HOLD_CODES.items())
    ]
    assert rows == expected
