"""Tests for opos_monitor.classads: formats, values, errors, streaming."""

from __future__ import annotations

import io
import json
import logging
import math
import sys
from pathlib import Path

import classad2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opos_monitor import classads
from opos_monitor.classads import ERROR, Expr, ReadError, parse_value, read_ads, read_path

DATA = Path(__file__).parent / "data" / "ads"
OLD = classad2.ParserType.Old


def read(text: str, name: str = "t.txt") -> tuple[list[dict], list[ReadError]]:
    errors: list[ReadError] = []
    return list(read_ads(io.StringIO(text), name, errors.append)), errors


def read_file(fname: str) -> tuple[list[dict], list[ReadError]]:
    errors: list[ReadError] = []
    return list(read_path(str(DATA / fname), errors.append)), errors


def split_history(text: str) -> list[str]:
    """Ad texts of a banner-separated history file, banners dropped."""
    ads, cur = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("***"):
            ads.append("".join(cur))
            cur = []
        else:
            cur.append(line)
    return ads + (["".join(cur)] if cur else [])


def classad_text(v) -> str:
    """Old ClassAd syntax as HTCondor's unparser writes it (only '"' escaped)."""
    if v is True or v is False:
        return "true" if v else "false"
    if v is None:
        return "undefined"
    if v is ERROR:
        return "error"
    if isinstance(v, Expr):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace('"', '\\"') + '"'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return 'real("INF")' if v > 0 else 'real("-INF")'
        return repr(v)
    if isinstance(v, list):
        return "{ " + ",".join(classad_text(x) for x in v) + " }"
    raise TypeError(v)


def long_text(ads: list[dict], banner: bool) -> str:
    out = []
    for i, ad in enumerate(ads):
        out.extend(f"{k} = {classad_text(v)}\n" for k, v in ad.items())
        out.append(f"*** Offset = {i} ClusterId = 1 ProcId = {i}\n" if banner else "\n")
    return "".join(out)


def json_default(v):
    if v is ERROR:
        return "/Expr(error)/"
    raise TypeError(v)


def json_value(v):
    if isinstance(v, Expr):
        return f"/Expr({v})/"
    if isinstance(v, float) and math.isinf(v):
        return "/Expr(%s)/" % classad_text(v)
    if isinstance(v, list):
        return [json_value(x) for x in v]
    return v


def json_ad(ad: dict) -> dict:
    return {k: json_value(v) for k, v in ad.items()}


# ---------------------------------------------------------------------------
# real-format fixtures


class TestFixtures:
    def test_raw_history_file_with_banners(self):
        ads, errors = read_file("history_raw.txt")
        assert errors == []
        assert [ad["GlobalJobId"] for ad in ads] == [
            "jobsub01.fnal.gov#4101234.0#1717900000",
            "jobsub02.fnal.gov#4101240.3#1717901000",
            "jobsub03.fnal.gov#4101301.0#1717990000",
        ]
        first, removed, segv = ads
        assert first["ExitCode"] == 0 and first["ExitBySignal"] is False
        assert first["BytesRecvd"] == 581347223.0 and isinstance(first["BytesRecvd"], float)
        assert first["MemoryUsage"] == Expr("((ResidentSetSize + 1023) / 1024)")
        assert isinstance(first["Requirements"], Expr)
        assert removed["JobStatus"] == 3 and removed["LastHoldReasonCode"] == 34
        assert removed["LastHoldReason"].endswith("Consider resubmitting with a higher request_memory.")
        assert removed["NumHoldsByReason"] == {"JobOutOfResources": 1}
        assert segv["ExitSignal"] == 11 and segv["JobCoreDumped"] is True
        assert segv["SubmitEventNotes"] == 'quoted "notes" with a path C:\\temp\\ and a trailing backslash\\'

    def test_history_literals_equal_classad2(self):
        """Every literal in the file reads as classad2.parseOne reads it."""
        texts = split_history((DATA / "history_raw.txt").read_text())
        ads, _ = read_file("history_raw.txt")
        assert len(texts) == len(ads) == 3
        compared = 0
        for text, ours in zip(texts, ads):
            theirs = classad2.parseOne(text, OLD)
            assert set(theirs.keys()) == set(ours)
            for k, v in theirs.items():
                if isinstance(v, classad2.ExprTree):
                    assert isinstance(ours[k], Expr), k
                elif isinstance(v, classad2.ClassAd):
                    assert ours[k] == dict(v), k
                else:
                    assert ours[k] == v and type(ours[k]) is type(v), k
                    compared += 1
        assert compared > 100

    def test_condor_q_long_blank_line_separated(self):
        ads, errors = read_file("condor_q_long.txt")
        assert errors == []
        assert [(ad["ClusterId"], ad["ProcId"], ad["JobStatus"]) for ad in ads] == [
            (4102001, 0, 1),
            (4102002, 7, 2),
            (4102003, 0, 5),
        ]
        held = ads[2]
        assert held["HoldReasonCode"] == 13 and held["HoldReasonSubCode"] == 256
        assert held["HoldReason"].startswith("Transfer input files failure at execution point slot1_2@wn101.unl.edu")
        assert held["HoldReason"].endswith("usr/dune/scratch/input.tar)")
        assert ads[0]["WantRemoteIO"] is True and ads[0]["Rank"] == 0.0

    def test_json_array_as_condor_writes_it(self):
        ads, errors = read_file("condor_history.json")
        assert errors == []
        assert len(ads) == 2
        a, b = ads
        assert a["MemoryUsage"] == Expr("((ResidentSetSize + 1023) / 1024)")
        assert a["Requirements"] == Expr('(TARGET.Arch == "X86_64") && (TARGET.OpSys == "LINUX")')
        assert a["SubmitEventNotes"] == 'quoted "notes" with a path C:\\temp\\ and a unicode dash \u2013 here'
        assert a["TransferInput"] is None and a["WantRemoteIO"] is True
        assert b["Broken"] is ERROR
        assert b["Inf"] == float("inf")
        assert b["NumHoldsByReason"] == {"JobOutOfResources": 1}
        assert b["SomeList"] == ["a", "b"]

    def test_json_and_history_agree_on_shared_literals(self):
        hist, _ = read_file("history_raw.txt")
        js, _ = read_file("condor_history.json")
        for h, j in zip(hist, js):
            differ = {"TransferInput", "SubmitEventNotes"}  # deliberately different in the JSON fixture
            shared = [k for k in j if k in h and k not in differ and not isinstance(h[k], Expr)]
            assert len(shared) >= 8
            for k in shared:
                assert h[k] == j[k], k

    def test_json_lines(self):
        ads, errors = read_file("ads.jsonl")
        assert errors == []
        assert [ad["JobStatus"] for ad in ads] == [1, 2, 5]
        assert ads[0]["MemoryUsage"] == Expr("((ResidentSetSize + 1023) / 1024)")
        assert ads[1]["BigCounter"] == 123456789012345678901234567890
        assert type(ads[1]["BigCounter"]) is int
        assert ads[2]["HoldReason"] == "Transfer input files failure\ttab and newline\nsecond line"

    def test_new_classad_syntax(self):
        ads, errors = read_file("condor_q_new.txt")
        assert errors == []
        assert len(ads) == 2
        a = ads[0]
        assert a["Owner"] == "mu2epro" and a["ClusterId"] == 4102001
        assert a["Notes"] == 'line one\nline two with "quotes" and a \\ backslash'
        assert a["Missing"] is None
        assert isinstance(a["MemoryUsage"], Expr)
        assert a["Nested"] == {"a": 1, "b": "]"}
        assert ads[1] == {"ClusterId": 4102002, "ProcId": 7, "JobStatus": 2}


# ---------------------------------------------------------------------------
# long format details


class TestLongFormat:
    def test_last_ad_without_banner_is_yielded(self):
        text = "A = 1\n*** Offset = 0\nA = 2\nB = \"x\"\n"
        ads, errors = read(text)
        assert ads == [{"A": 1}, {"A": 2, "B": "x"}] and errors == []

    def test_last_ad_without_trailing_newline_or_blank_line(self):
        ads, errors = read("A = 1\n\nA = 2\nB = 3")
        assert ads == [{"A": 1}, {"A": 2, "B": 3}] and errors == []

    def test_truncated_last_ad_keeps_valid_attributes(self):
        text = 'ClusterId = 7\nProcId = 0\nOwner = "nov'
        ads, errors = read(text, "cut.log")
        assert ads == [{"ClusterId": 7, "ProcId": 0}]
        assert [(e.name, e.line, e.message) for e in errors] == [("cut.log", 3, "unterminated string")]
        assert errors[0].snippet == 'Owner = "nov'

    def test_garbage_lines_reported_with_file_and_line(self):
        text = (
            "A = 1\n"
            "this is not an attribute\n"
            "B = 2\n"
            "*** Offset = 0\n"
            "C = 3\n"
            "D = \n"
            "bad name = 4\n"
            "E = 5\n"
        )
        ads, errors = read(text, "/var/lib/condor/spool/history")
        assert ads == [{"A": 1, "B": 2}, {"C": 3, "E": 5}]
        assert [(e.name, e.line) for e in errors] == [
            ("/var/lib/condor/spool/history", 2),
            ("/var/lib/condor/spool/history", 6),
            ("/var/lib/condor/spool/history", 7),
        ]
        assert errors[0].snippet == "this is not an attribute"
        assert "line 2" not in errors[0].message  # the line is a field, not text
        assert str(errors[0]).startswith("/var/lib/condor/spool/history:2: ")

    def test_line_numbers_stay_right_across_chunks(self, monkeypatch):
        monkeypatch.setattr(classads, "CHUNK", 50)
        lines = []
        for i in range(40):
            lines += [f"ClusterId = {i}", f"Owner = \"u{i}\""]
            if i % 7 == 3:
                lines.append("garbage here")
            lines.append(f"*** Offset = {i}" if i % 2 else "")
        text = "\n".join(lines) + "\n"
        ads, errors = read(text)
        assert len(ads) == 40
        expected = [n for n, line in enumerate(lines, 1) if line == "garbage here"]
        assert [e.line for e in errors] == expected

    def test_unterminated_string_skips_only_that_line(self):
        ads, errors = read('A = "open\nB = 2\n')
        assert ads == [{"B": 2}]
        assert [(e.line, e.message) for e in errors] == [(1, "unterminated string")]

    def test_separators_mixed_and_headers(self):
        text = (
            "-- Schedd: jobsub01.fnal.gov : <131.225.1.1:9615?...\n"
            "A = 1\n"
            "\n\n"
            "   \n"
            "A = 2\n"
            "*** Offset = 10 ClusterId = 1 ProcId = 0 Owner = \"x\" CompletionDate = 0\n"
            "*** Offset = 11\n"
            "-- Schedd: jobsub02.fnal.gov : <131.225.1.2:9615?...\n"
            "A = 3\n"
        )
        ads, errors = read(text)
        assert ads == [{"A": 1}, {"A": 2}, {"A": 3}] and errors == []

    def test_banner_as_first_line(self):
        ads, errors = read("*** Offset = 0\nA = 1\n*** Offset = 5\n")
        assert ads == [{"A": 1}] and errors == []

    def test_duplicate_attribute_last_wins(self):
        ads, _ = read("A = 1\nB = 2\nA = 3\n")
        assert ads == [{"A": 3, "B": 2}]

    def test_crlf_line_endings(self):
        ads, errors = read('A = 1\r\nB = "x y"\r\n\r\nA = 2\r\n')
        assert ads == [{"A": 1, "B": "x y"}, {"A": 2}] and errors == []

    def test_lenient_spacing_goes_through_careful_path(self):
        ads, errors = read('A=1\n  B  =  "x"\nC = 5 \nD = "y" \n')
        assert ads == [{"A": 1, "B": "x", "C": 5, "D": "y"}] and errors == []

    def test_equality_operator_is_not_an_assignment(self):
        ads, errors = read("A == 1\nB = 2\n")
        assert ads == [{"B": 2}] and len(errors) == 1 and errors[0].line == 1

    def test_case_of_names_kept(self):
        ads, _ = read("x509userproxysubject = \"/DC=org/CN=a\"\nJobStatus = 4\n")
        assert list(ads[0]) == ["x509userproxysubject", "JobStatus"]

    def test_huge_value_and_many_attributes(self):
        big = "x" * (5 * 1024 * 1024) + '"quoted"' + "y" * 1000
        lines = [f"Attr{i} = {i}" for i in range(10000)]
        lines.insert(5000, "Huge = " + classad_text(big))
        text = "A = 0\n\n" + "\n".join(lines) + "\n\nZ = 1\n"
        ads, errors = read(text)
        assert errors == []
        assert len(ads) == 3
        assert ads[1]["Huge"] == big
        assert len(ads[1]) == 10001 and ads[1]["Attr9999"] == 9999
        assert ads[2] == {"Z": 1}

    def test_huge_value_with_small_chunks(self, monkeypatch):
        monkeypatch.setattr(classads, "CHUNK", 4096)
        big = "ab\\" * 300000
        ads, errors = read(f"A = 1\nHuge = {classad_text(big)}\nB = 2\n*** x\nC = 3\n")
        assert errors == [] and ads == [{"A": 1, "Huge": big, "B": 2}, {"C": 3}]

    def test_reading_is_streaming(self):
        """The first ad comes out before the stream has been read through."""
        ad = "".join(f"Attr{i} = {i}\n" for i in range(100))
        text = (ad + "*** Offset = 0\n") * 5000  # ~7 MB
        stream = io.StringIO(text)
        it = read_ads(stream)
        first = next(it)
        assert first["Attr99"] == 99
        assert stream.tell() < len(text) // 3
        assert sum(1 for _ in it) == 4999

    def test_small_chunks_give_same_result(self, monkeypatch):
        text = (DATA / "history_raw.txt").read_text() + (DATA / "condor_q_long.txt").read_text()
        expected, _ = read(text)
        for size in (1, 7, 64, 333):
            monkeypatch.setattr(classads, "CHUNK", size)
            got, errors = read(text)
            assert got == expected and errors == []
        assert len(expected) == 6

    def test_binary_stream(self):
        data = 'Owner = "j\u00fcrgen"\nA = 1\n'.encode()
        ads = list(read_ads(io.BytesIO(data)))
        assert ads == [{"Owner": "j\u00fcrgen", "A": 1}]

    def test_read_path_dash_reads_stdin(self, monkeypatch):
        monkeypatch.setattr(sys, "stdin", io.StringIO("A = 1\n\nA = 2\n"))
        assert list(read_path("-")) == [{"A": 1}, {"A": 2}]

    def test_byte_order_mark_and_path_objects(self, tmp_path):
        f = tmp_path / "ads.json"
        f.write_text('\ufeff[\n{"A": 1}\n]\n', encoding="utf-8")
        assert list(read_path(f)) == [{"A": 1}]
        f.write_bytes(b'Owner = "caf\xe9"\nA = 2\n')  # latin-1, not UTF-8
        assert list(read_path(f)) == [{"Owner": "caf\ufffd", "A": 2}]

    def test_empty_and_blank_input(self):
        assert read("") == ([], [])
        assert read("\n\n   \n") == ([], [])

    def test_default_error_callback_logs_warning(self, caplog):
        with caplog.at_level(logging.WARNING, logger="opos_monitor.classads"):
            ads = list(read_ads(io.StringIO("A = 1\nnonsense\n"), "f.txt"))
        assert ads == [{"A": 1}]
        assert "f.txt:2" in caplog.text and "nonsense" in caplog.text


# ---------------------------------------------------------------------------
# values


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", 42),
        ("-7", -7),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        ("-123456789012345678901234567890", -123456789012345678901234567890),
        ("1.5", 1.5),
        ("1.0E+10", 1.0e10),
        ("1E-05", 1e-05),
        ("-0.25", -0.25),
        (".5", 0.5),
        ('real("INF")', float("inf")),
        ('real("-INF")', float("-inf")),
        ("true", True),
        ("FALSE", False),
        ("True", True),
        ("undefined", None),
        ("UNDEFINED", None),
        ("error", ERROR),
        ('"plain"', "plain"),
        ('""', ""),
        ('"a\\"b"', 'a"b'),
        ('"back\\slash"', "back\\slash"),
        ('"no\\nescape"', "no\\nescape"),
        ('"ends with\\"', "ends with\\"),
        ('"\\"quoted\\" start"', '"quoted" start'),
        ('{ "a","b" }', ["a", "b"]),
        ('{ "a, b", 1, 2.5, true, undefined }', ["a, b", 1, 2.5, True, None]),
        ("{  }", []),
        ("(MemoryUsage > 4096) || (JobStatus == 5)", Expr("(MemoryUsage > 4096) || (JobStatus == 5)")),
        ("RequestMemory", Expr("RequestMemory")),
        ('"a" + "b"', Expr('"a" + "b"')),
        ("{ a, b }", Expr("{ a, b }")),
        ("010x", Expr("010x")),
        ("1_000", Expr("1_000")),
        ("10K", Expr("10K")),
        ("[ a = 1 ]", {"a": 1}),
        ('[ a = 1; b = "x;]"; c = { 1, 2 }; ]', {"a": 1, "b": "x;]", "c": [1, 2]}),
        ("[ a = b + 1 ]", Expr("[ a = b + 1 ]")),
        ("{ { 1 }, 2 }", [[1], 2]),
    ],
)
def test_parse_value(text, expected):
    got = parse_value(text)
    assert got == expected and type(got) is type(expected)
    ads, errors = read(f"X = {text}\n")
    assert errors == [] and ads[0]["X"] == expected and type(ads[0]["X"]) is type(expected)


@pytest.mark.parametrize(
    "text",
    ['"a\\"b"', '"ends with\\"', '"C:\\temp\\"', '"x\\" "', '"\\"', '"\\\\"', '"a\\\\"b"', '"tab\there"', '"\u00fc\u20ac"'],
)
def test_strings_match_classad2(text):
    ours = parse_value(text)
    theirs = classad2.parseOne(f"a = {text}", OLD)["a"]
    assert ours == theirs


def test_nan_and_values_beyond_int_str_limit():
    assert math.isnan(parse_value('real("NaN")'))
    huge = "9" * 5000
    assert parse_value(huge) == Expr(huge)


def test_expr_and_error_types():
    e = Expr("a + b")
    assert isinstance(e, str) and e == "a + b" and repr(e) == "Expr('a + b')"
    assert not ERROR and str(ERROR) == "error" and repr(ERROR) == "ERROR"
    import pickle

    assert pickle.loads(pickle.dumps(ERROR)) is ERROR


# ---------------------------------------------------------------------------
# JSON details


class TestJson:
    def test_invalid_object_reported_and_skipped(self):
        text = '{"A": 1}\n{"B": 2,, }\n{"C": 3}\n'
        ads, errors = read(text, "x.jsonl")
        assert ads == [{"A": 1}, {"C": 3}]
        assert [(e.name, e.line) for e in errors] == [("x.jsonl", 2)]
        assert "invalid JSON" in errors[0].message

    def test_garbage_line_between_objects(self):
        ads, errors = read('{"A": 1}\nnot json at all\n{"C": 3}\n')
        assert ads == [{"A": 1}, {"C": 3}]
        assert [e.line for e in errors] == [2]

    def test_truncated_array(self):
        text = '[\n{\n  "A": 1\n}\n,\n{\n  "B": "cut here'
        ads, errors = read(text)
        assert ads == [{"A": 1}]
        assert len(errors) == 1 and errors[0].line == 6

    def test_compact_one_line_array(self):
        ads, errors = read('[{"A": 1}, {"B": [1, 2]}, {"C": "/Expr(x + 1)/"}]')
        assert ads == [{"A": 1}, {"B": [1, 2]}, {"C": Expr("x + 1")}] and errors == []

    def test_pretty_printed_objects_without_array(self):
        ads, errors = read('{\n  "A": 1,\n  "N": {\n    "x": 1\n  }\n}\n{\n  "B": 2\n}\n')
        assert ads == [{"A": 1, "N": {"x": 1}}, {"B": 2}] and errors == []

    def test_expressions_inside_lists_and_escaped_slashes(self):
        ads, _ = read('{"L": ["\\/Expr(a)\\/", "/Expr(undefined)/", 3]}\n')
        assert ads == [{"L": [Expr("a"), None, 3]}]

    def test_big_ints_in_nested_values(self):
        ads, _ = read('{"A": {"B": 123456789012345678901234567890}, "L": [-98765432109876543210]}\n')
        assert ads[0]["A"]["B"] == 123456789012345678901234567890
        assert ads[0]["L"] == [-98765432109876543210]
        ads, _ = read('{"A": {"B": {"C": 18446744073709551616}}, "F": 1e300}\n')
        assert ads == [{"A": {"B": {"C": 18446744073709551616}}, "F": 1e300}]
        assert type(ads[0]["A"]["B"]["C"]) is int

    def test_small_chunks_give_same_result(self, monkeypatch):
        texts = [(DATA / f).read_text() for f in ("condor_history.json", "ads.jsonl")]
        expected = [read(t)[0] for t in texts]
        for size in (1, 5, 100):
            monkeypatch.setattr(classads, "CHUNK", size)
            for text, exp in zip(texts, expected):
                got, errors = read(text)
                assert got == exp and errors == []

    def test_streaming(self):
        text = "".join(json.dumps({"A": i, "S": "x" * 200}) + "\n" for i in range(30000))
        stream = io.StringIO(text)
        it = read_ads(stream)
        assert next(it) == {"A": 0, "S": "x" * 200}
        assert stream.tell() < len(text) // 2
        assert sum(1 for _ in it) == 29999


# ---------------------------------------------------------------------------
# property tests: write in each format, read back equal

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,24}", fullmatch=True)
LINE_TEXT = st.text(st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)), max_size=40)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
INTS = st.integers(min_value=-(2**200), max_value=2**200)
FLOATS = st.floats(allow_nan=False)
LIST_ITEMS = st.one_of(INTS, FLOATS, st.booleans(), st.none(), st.text(st.characters(blacklist_characters='\n\r\x00\\"', blacklist_categories=("Cs",)), max_size=10))
EXPRS = st.sampled_from(["(MemoryUsage > 4096) || (JobStatus == 5)", "RequestMemory * 2", 'strcat("a", Owner)', "ifThenElse(x, 1, 2)"]).map(Expr)


def ads_of(text_values):
    value = st.one_of(INTS, FLOATS, st.booleans(), st.none(), st.just(ERROR), text_values, st.lists(LIST_ITEMS, max_size=4), EXPRS)
    return st.lists(st.dictionaries(NAMES, value, min_size=1, max_size=12), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ads=ads_of(LINE_TEXT), banner=st.booleans())
def test_property_long_format_round_trip(ads, banner):
    got, errors = read(long_text(ads, banner))
    assert errors == []
    assert got == ads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ads=ads_of(ANY_TEXT), lines=st.booleans())
def test_property_json_round_trip(ads, lines):
    if lines:
        text = "".join(json.dumps(json_ad(ad), default=json_default) + "\n" for ad in ads)
    else:
        text = "[\n" + "\n,\n".join(json.dumps(json_ad(ad), default=json_default, indent=2) for ad in ads) + "\n]\n"
    got, errors = read(text)
    assert errors == []
    assert got == ads


@settings(max_examples=300, deadline=None)
@given(s=st.text(st.characters(min_codepoint=1, blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=30))
def test_property_strings_agree_with_classad2(s):
    text = f"a = {classad_text(s)}\n"
    ours = read(text)[0][0]["a"]
    assert ours == s
    assert classad2.parseOne(text, OLD)["a"] == s
