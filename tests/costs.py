"""What each test costs, and the check that keeps the `slow` marks true.

A test's cost is the wall time and the CPU seconds (user + system, of the pytest process and of every
child process it reaped: `getrusage(RUSAGE_SELF)` + `getrusage(RUSAGE_CHILDREN)`) from the start of its
setup to the end of its teardown, less the setup and teardown of the fixtures it shares with other
tests (module, class and session scope: a Celery worker, the servers of a module). Those are counted
apart, each against the test that set it up. A process nobody waits for (a forkserver, an orphan) is
in the wall time only.

The check: a test that passes and is not marked `slow` fails the session when it costs more than
`WALL_LIMIT` seconds of wall time or `CPU_LIMIT` CPU seconds, or when a shared fixture set up for it
does (the inner loop, `-m "not slow"`, pays for that fixture too). Mark a test `slow` when it costs more
than half a limit on an idle machine: the other half is for a loaded one (CI runs suites side by
side), so that the check stays steady. The CPU measure hardly depends on the load; the wall-time
limit is for the test that waits (a budget, a timeout, a retry) rather than works.

`--costs=N` prints the N costliest tests and shared fixtures with both measures (`--costs=0`: all).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

#: Over either, a test must be marked slow (mark it from half of either, see above).
WALL_LIMIT = 3.0
CPU_LIMIT = 2.0


@dataclass(frozen=True)
class Usage:
    wall: float
    cpu: float

    @staticmethod
    def now() -> Usage:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        return Usage(time.perf_counter(), cpu)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.wall - other.wall, self.cpu - other.cpu)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.wall + other.wall, self.cpu + other.cpu)

    def over(self) -> bool:
        return self.wall > WALL_LIMIT or self.cpu > CPU_LIMIT

    def __str__(self) -> str:
        return f"{self.wall:7.2f} {self.cpu:7.2f}"


NOTHING = Usage(0.0, 0.0)


@dataclass
class Cost:
    """One test: its own cost, and the shared fixtures set up or torn down while it ran."""

    nodeid: str
    slow: bool
    usage: Usage = NOTHING
    passed: bool = True
    #: (fixture name, "setup" or "teardown", cost)
    shared: list[tuple[str, str, Usage]] = field(default_factory=list)

    def over(self) -> list[str]:
        """Why this test must be marked slow, if it must."""
        if not self.passed or self.slow:
            return []
        reasons = []
        if self.usage.over():
            reasons.append(f"{self.usage.wall:6.2f} s wall {self.usage.cpu:6.2f} s CPU")
        reasons += [
            f"{usage.wall:6.2f} s wall {usage.cpu:6.2f} s CPU to set up the shared fixture {name}"
            for name, phase, usage in self.shared
            if phase == "setup" and usage.over()
        ]
        return reasons


class CostCheck:
    """The pytest plugin: measures each test (see the module docstring), reports and checks at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.costs: dict[str, Cost] = {}
        self._running: Cost | None = None
        #: Shared fixtures being set up or torn down now (one may set up another: the outermost one
        #: is charged), and when the outermost started.
        self._depth = 0
        self._shared_started = NOTHING
        #: The shared fixtures set up and not torn down yet (by id).
        self._set_up: set[int] = set()

    # Shared fixtures: counted apart from the test that happens to set them up or tear them down.

    def _enter_shared(self) -> None:
        if self._depth == 0:
            self._shared_started = Usage.now()
        self._depth += 1

    def _leave_shared(self, name: str, phase: str) -> None:
        self._depth -= 1
        if self._depth == 0 and self._running is not None:
            self._running.shared.append((name, phase, Usage.now() - self._shared_started))

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
        if fixturedef.scope == "function":
            return (yield)
        self._enter_shared()
        try:
            return (yield)
        finally:
            self._leave_shared(fixturedef.argname, "setup")
            # Finalizers run last-added first: this one runs before the fixture's own teardown, and
            # pytest_fixture_post_finalizer after it.
            fixturedef.addfinalizer(self._enter_shared)
            self._set_up.add(id(fixturedef))

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        if id(fixturedef) in self._set_up:
            self._set_up.discard(id(fixturedef))
            self._leave_shared(fixturedef.argname, "teardown")

    # Each test, from the start of its setup to the end of its teardown.

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        cost = Cost(item.nodeid, slow=item.get_closest_marker("slow") is not None)
        self.costs[item.nodeid] = self._running = cost
        started = Usage.now()
        try:
            return (yield)
        finally:
            usage = Usage.now() - started
            for _, _, shared in cost.shared:
                usage = usage - shared
            cost.usage = usage
            self._running = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.nodeid in self.costs:
            self.costs[report.nodeid].passed = False

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if session.exitstatus == pytest.ExitCode.OK and any(cost.over() for cost in self.costs.values()):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        shown = self.config.getoption("costs")
        if shown is not None:
            rows = [(cost.usage, cost.slow, cost.nodeid) for cost in self.costs.values()]
            rows += [
                (usage, cost.slow, f"{cost.nodeid}: {phase} of the shared fixture {name}")
                for cost in self.costs.values()
                for name, phase, usage in cost.shared
                if usage.wall >= 0.01  # the folders of each module, say
            ]
            rows.sort(key=lambda row: -max(row[0].wall / WALL_LIMIT, row[0].cpu / CPU_LIMIT))
            terminalreporter.write_sep("=", "costs: wall s, CPU s (this process and the children it reaped)")
            for usage, slow, what in rows[:shown] if shown else rows:
                terminalreporter.write_line(f"{usage}  {'slow' if slow else '    '}  {what}")
        over = sorted((cost.nodeid, cost.over()) for cost in self.costs.values() if cost.over())
        if over:
            terminalreporter.write_sep("=", "tests not marked slow that are", red=True)
            terminalreporter.write_line(
                f"over {WALL_LIMIT} s of wall time or {CPU_LIMIT} s of CPU (tests/costs.py): mark them "
                "@pytest.mark.slow, or make them cheaper",
                red=True,
            )
            for nodeid, reasons in over:
                for reason in reasons:
                    terminalreporter.write_line(f"  {reason}  {nodeid}", red=True)


def add_options(parser: pytest.Parser) -> None:
    """Called from conftest.py's pytest_addoption (a plugin registered later is too late for options)."""
    parser.addoption(
        "--costs",
        type=int,
        default=None,
        metavar="N",
        help="show the N costliest tests and shared fixtures, wall time and CPU seconds (0: all)",
    )
