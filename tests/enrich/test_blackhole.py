"""Black-hole detector: sliding windows with explicit times."""

from __future__ import annotations

import pytest

from opos_monitor.enrich.blackhole import BlackHoleDetector


def _feed(det, t0, n, host="wn1.fnal.gov", site="FermiGrid", failed=True, runtime=30.0, step=10.0):
    flagged = False
    for i in range(n):
        flagged = det.observe(t0 + i * step, host, site, failed, runtime)
    return flagged


def test_flags_host_at_threshold_not_before():
    det = BlackHoleDetector(threshold=5, window_s=600, max_runtime_s=300)
    assert _feed(det, 1000, 4) is False
    assert det.flagged_hosts() == []
    assert det.observe(1040, "WN1.fnal.gov", "FermiGrid", True, 12.0) is True  # case-insensitive host
    [flag] = det.flagged_hosts()
    assert (flag.key, flag.site, flag.quick_failures, flag.first, flag.last) == ("wn1.fnal.gov", "FermiGrid", 5, 1000, 1040)


def test_slow_failures_and_successes_do_not_count():
    det = BlackHoleDetector(threshold=3, window_s=600, max_runtime_s=300)
    _feed(det, 0, 5, failed=True, runtime=3600)  # long failures: not a black hole
    _feed(det, 100, 5, failed=False, runtime=5)  # quick successes
    assert det.flagged_hosts() == []
    assert det.is_quick_failure(True, None)  # never started: counts as quick


def test_window_slides():
    det = BlackHoleDetector(threshold=3, window_s=100, max_runtime_s=300)
    _feed(det, 0, 3, step=10)  # t=0,10,20
    assert det.is_black_hole("wn1.fnal.gov")
    # the window is (now - window_s, now]
    assert det.is_black_hole("wn1.fnal.gov", now=99)
    assert not det.is_black_hole("wn1.fnal.gov", now=100)  # t=0 has left the window
    assert not det.is_black_hole("wn1.fnal.gov", now=15)  # t=20 is in the future of now
    # a success later moves "now" on; the old failures age out
    det.observe(200, "wn1.fnal.gov", "FermiGrid", False, 50)
    assert det.flagged_hosts() == []


def test_out_of_order_observations():
    det = BlackHoleDetector(threshold=3, window_s=100, max_runtime_s=300)
    for t in (50, 10, 30):
        det.observe(t, "wn2", "S", True, 1)
    [flag] = det.flagged_hosts()
    assert (flag.first, flag.last) == (10, 50)


def test_site_flag_uses_site_threshold():
    det = BlackHoleDetector(threshold=3, window_s=1000, max_runtime_s=300, site_threshold=6)
    for i in range(5):
        det.observe(i, f"wn{i}.example.edu", "Site_A", True, 5)  # one failure per host
    assert det.flagged_hosts() == [] and det.flagged_sites() == []
    det.observe(6, "wn9.example.edu", "Site_A", True, 5)
    [site] = det.flagged_sites()
    assert (site.kind, site.key, site.quick_failures) == ("site", "Site_A", 6)


def test_min_failure_fraction():
    det = BlackHoleDetector(threshold=3, window_s=1000, max_runtime_s=300, min_failure_fraction=0.5)
    _feed(det, 0, 3)  # 3 quick failures
    _feed(det, 100, 4, failed=False)  # 4 successes -> 3/7 < 0.5
    assert det.flagged_hosts() == []
    _feed(det, 200, 2)  # 5/9 >= 0.5
    [flag] = det.flagged_hosts()
    assert flag.failure_fraction == pytest.approx(5 / 9)


def test_memory_is_bounded():
    det = BlackHoleDetector(threshold=2, window_s=10**9, max_runtime_s=300, max_keys=100, max_events=8)
    for i in range(10_000):
        det.observe(i, f"wn{i % 1000}", f"site{i % 300}", True, 1)
    assert len(det) <= 100 and det.sites_tracked <= 100
    assert all(len(t.quick) <= 8 for t in det._hosts.values())
    # the most recently seen hosts are the ones kept
    assert set(det._hosts) == {f"wn{i}" for i in range(900, 1000)}
    det.observe(10_001, "wn999", "site0", True, 1)
    assert det.is_black_hole("wn999")


def test_prune_forgets_old_hosts():
    det = BlackHoleDetector(threshold=2, window_s=100, max_runtime_s=300)
    det.observe(0, "old", "S", True, 1)
    det.observe(500, "new", "S", True, 1)
    det.prune()
    assert len(det) == 1


@pytest.mark.parametrize("kwargs", [dict(threshold=0), dict(window_s=0), dict(min_failure_fraction=2)])
def test_rejects_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        BlackHoleDetector(**kwargs)
