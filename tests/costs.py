"""What each test costs, and the check that keeps the `slow` marks true.

A test's cost is the wall time and the CPU seconds (user + system, of the pytest process and of every
child process it reaped: `getrusage(RUSAGE_SELF)` + `getrusage(RUSAGE_CHILDREN)`) from the start of its
setup to the end of its teardown, less the setup and teardown of the fixtures it shares with other
tests (module, class and session scope: a Celery worker, the servers of a module). Those are counted
apart, each against the test that set it up. A process nobody waits for (a forkserver, an orphan) is
in the wall time only.

The check: a test that passes and is not marked `slow` fails the session when it costs more than
`CPU_LIMIT` CPU seconds, or when a shared fixture set up for it does (the inner loop, `-m "not
slow"`, pays for that fixture too). CPU seconds hardly depend on the machine's load (five processes
per CPU made them 1.25 times what they are on an idle machine). Wall time does, so a test over
`WALL_LIMIT` seconds of it is listed at the end without failing the session: the test that waits (a
budget, a timeout, a retry) rather than works. Mark a test `slow` when it costs more than half either
limit on an idle machine (1.5 s of wall time, 1 s of CPU): the other half is for a loaded one.

`--costs=N` prints the N costliest tests and shared fixtures with both measures (`--costs=0`: all).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

#: Over CPU_LIMIT a test not marked slow fails the session; over WALL_LIMIT it is listed (see above).
CPU_LIMIT = 2.0
WALL_LIMIT = 3.0


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

    def over(self, measure: str) -> bool:
        return self.cpu > CPU_LIMIT if measure == "CPU" else self.wall > WALL_LIMIT

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

    def over(self, measure: str) -> list[str]:
        """What of this test is over the limit of `measure` ("CPU" or "wall") though not marked slow."""
        if not self.passed or self.slow:
            return []
        parts = [("", self.usage)]
        parts += [
            (f" to set up the shared fixture {name}", usage)
            for name, phase, usage in self.shared
            if phase == "setup"
        ]
        return [
            f"{usage.wall:6.2f} s wall {usage.cpu:6.2f} s CPU{what}"
            for what, usage in parts
            if usage.over(measure)
        ]


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
        if session.exitstatus == pytest.ExitCode.OK and any(cost.over("CPU") for cost in self.costs.values()):
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
        for measure, limit, fails in (("wall", WALL_LIMIT, False), ("CPU", CPU_LIMIT, True)):
            over = sorted(
                (cost.nodeid, cost.over(measure)) for cost in self.costs.values() if cost.over(measure)
            )
            if not over:
                continue
            colour = {"red": True} if fails else {"yellow": True}
            terminalreporter.write_sep("=", f"not marked slow, over {limit} s of {measure}", **colour)
            terminalreporter.write_line(
                "mark them @pytest.mark.slow or make them cheaper (tests/costs.py): "
                + (
                    "the session fails"
                    if fails
                    else "wall time depends on the machine's load, so this is no failure; mark the "
                    "ones over 1.5 s on an idle machine"
                ),
                **colour,
            )
            for nodeid, reasons in over:
                for reason in reasons:
                    terminalreporter.write_line(f"  {reason}  {nodeid}", **colour)


def add_options(parser: pytest.Parser) -> None:
    """Called from conftest.py's pytest_addoption (a plugin registered later is too late for options)."""
    parser.addoption(
        "--costs",
        type=int,
        default=None,
        metavar="N",
        help="show the N costliest tests and shared fixtures, wall time and CPU seconds (0: all)",
    )
