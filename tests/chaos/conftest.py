"""The chaos suite: real clusters, real faults, every result checked.

Each scenario takes the ``chaos`` fixture, seeds its randomness from ``chaos.seed`` (fixed per
scenario, so a failure replays), records each fault it injects with ``chaos.fault(...)`` and each
check that held with ``chaos.verified(...)``. At the end of the run pytest prints one block per
scenario: its seed, the faults and what was verified, pass or fail.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

import attrs
import pytest

_reports: list[ChaosReport] = []


@attrs.define
class ChaosReport:
    scenario: str
    seed: int
    faults: list[str] = attrs.Factory(list)
    checks: list[str] = attrs.Factory(list)
    outcome: str = "running"
    rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def fault(self, what: str) -> None:
        self.faults.append(what)

    def verified(self, what: str) -> None:
        self.checks.append(what)


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Any:
    """This scenario's report; its seed is fixed by the scenario's name."""
    name = request.node.name
    report = ChaosReport(name, zlib.crc32(name.encode()) & 0xFFFF)
    _reports.append(report)
    yield report
    call = getattr(request.node, "_chaos_call", None)
    report.outcome = "passed" if call is not None and call.passed else "FAILED"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item._chaos_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _reports:
        return
    terminalreporter.section("chaos scenarios")
    for report in _reports:
        terminalreporter.write_line(f"{report.scenario} (seed {report.seed}): {report.outcome}")
        for fault in report.faults:
            terminalreporter.write_line(f"    fault:    {fault}")
        for check in report.checks:
            terminalreporter.write_line(f"    verified: {check}")
