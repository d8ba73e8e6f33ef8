"""Reports, in pytest's terminal summary, what the live dashboard test found: the panels whose
queries returned no series on the dev pool (with the reason where one is known)."""

from __future__ import annotations

REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    if REPORT:
        terminalreporter.section("grafana dashboards: live evaluation against the dev pool")
        for line in REPORT:
            terminalreporter.write_line(line)
