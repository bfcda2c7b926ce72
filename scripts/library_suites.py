"""Run the instrumented libraries' own test suites without and with the agent, and compare every outcome.

For each library it downloads the pinned sdist from the package index, builds a throwaway venv
holding the library from that sdist, its test requirements and logfire-run (editable, from this
checkout, with the `http` and `celery` extras), then runs the sdist's tests twice: once plain, once
with env-only activation (`LOGFIRE_RUN=1`, spans to a store in the work folder). Both runs write a
junit XML report (pytest's own; Django's suite, which runs on its own unittest runner, gets one from a
small recording runner this script adds to its settings). It then compares the outcome of every test
(passed, failed, error, skipped, xfailed), re-runs the tests whose outcome differs once more both
ways (a difference that does not come back is reported as not reproduced), checks that the agent was
active (spans in the store), and prints the differences against the written list of expected ones
(`EXPECTED`, each with its reason).

    .venv/bin/python scripts/library_suites.py [--work DIR] [--keep] [--fast | --heavy] [NAME ...]

`--fast` runs the suites CI runs (Flask, requests, httpx: a few minutes in all); `--heavy` the
others (Starlette, FastAPI, Celery, Django); no name and neither flag runs all seven. The exit
status is 1 when a difference that is not in the expected list reproduces, when an expected one no
longer happens, or when the agent wrote no span; 3 when a suite could not be set up (pip failed);
docs/library-suites.md has the figures.

Where it stops: it compares outcomes, not timings; tests that fail in both runs are counted and left
alone; tests that reach outside this machine are deselected (each suite says which).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Exit status when a suite could not be set up (no package index, say): nothing was compared.
SET_UP_FAILED = 3
#: Outcomes whose change is a difference the agent must not make (a skip that becomes a pass is
#: reported too: it means the agent changed what the suite could see).
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed")


@dataclass(frozen=True)
class Suite:
    """One library's sdist, what its tests need, and the differences the agent is expected to make."""

    name: str
    version: str
    #: Requirements its tests need, from its own test requirements (those that install here).
    test_requirements: tuple[str, ...]
    #: Extra pytest arguments: what the project's own CI passes.
    pytest_args: tuple[str, ...] = ()
    #: What to run, relative to the unpacked sdist.
    paths: tuple[str, ...] = ("tests",)
    #: Run by CI (scripts run with --fast).
    fast: bool = False
    #: Test id (fnmatch pattern) -> why the agent changes its outcome. The point of instrumentation
    #: (a test asserting the exact headers of a request, which now carry `traceparent`) is a reason;
    #: a bug of the agent is not.
    expected: dict[str, str] = field(default_factory=dict)
    #: Extra environment for both runs.
    env: dict[str, str] = field(default_factory=dict)
    #: Longest a run may take, in seconds.
    timeout: int = 1800


_TRACEPARENT_SENT = (
    "the point of instrumentation: the test compares the exact request headers `httpx -v` prints, and "
    "the request now carries a traceparent header"
)

SUITES = {
    "flask": Suite(
        "flask",
        "3.1.3",
        # Flask 3.1.3's conftest uses a pytest internal that pytest 9 removed.
        ("asgiref", "greenlet", "pytest<9", "python-dotenv"),
        fast=True,
    ),
    "requests": Suite(
        "requests",
        "2.34.2",
        (
            "PySocks>=1.5.6,!=1.5.7",
            "pytest-httpbin==2.1.0",
            "httpbin~=0.10.0",
            "pytest-mock",
            "pytest>=3",
            "trustme",
        ),
        # Its pyproject adds --doctest-modules, which would collect the installed package's docstrings.
        # The connect-timeout tests connect to 10.255.255.1, an address outside this machine.
        (
            "-o",
            "addopts=",
            "--deselect=tests/test_requests.py::TestTimeout::test_connect_timeout",
            "--deselect=tests/test_requests.py::TestTimeout::test_total_timeout_connect",
        ),
        fast=True,
        expected={
            "tests/test_requests.py::TestRequests::test_response_iter_lines_reentrant": (
                "xfail -> pass: httpbin's stream/N echoes the request's headers in every line, and the "
                "request now carries traceparent; the longer lines move where iter_lines' 512-byte "
                "chunks end, so the second iter_lines happens to find all 3 remaining lines"
            ),
        },
    ),
    "httpx": Suite(
        "httpx",
        "0.28.1",
        # Its repository's requirements.txt (not in the sdist): the extras and the test tools.
        (
            "httpx[brotli,cli,http2,socks,zstd]==0.28.1",
            "pytest",
            "trio",
            "trustme",
            "uvicorn",
            "chardet",
            "anyio",
        ),
        # Its `network` tests reach outside this machine (10.255.255.1, the internet).
        ("-m", "not network"),
        fast=True,
        expected={
            "tests/test_main.py::test_verbose": _TRACEPARENT_SENT,
            "tests/test_main.py::test_auth": _TRACEPARENT_SENT,
        },
    ),
    "starlette": Suite(
        "starlette",
        "1.10.0",
        ("starlette[full]==1.10.0", "httpx2[zstd]>=2.0.0", "opentelemetry-sdk>=1.44.0", "pytest", "trio"),
    ),
    "fastapi": Suite(
        "fastapi",
        "0.165.0",
        # Its `tests` dependency group, less the type checkers, coverage and benchmark plugins.
        (
            "opentelemetry-instrumentation-fastapi>=0.65b0",
            "opentelemetry-sdk>=1.44.0",
            "opentelemetry-exporter-otlp-proto-http>=1.44.0",
            "logfire>=5.1.0",
            "sentry-sdk>=2.70.0",
            "httpx>=0.23.0,<1.0.0",
            "httpx2>=2.0.0",
            "python-slugify",
            "anyio[trio]>=4.1.0,<5.0.0",
            "dirty-equals",
            "flask>=3.0.0,<4.0.0",
            "inline-snapshot",
            "pwdlib[argon2]",
            "pyjwt",
            "pytest>=9.0.0,<9.2",
            "pyyaml",
            "sqlmodel",
            "strawberry-graphql<1.0.0",
            "typer",
            "a2wsgi",
            "pytest-timeout",
            "pytest-xdist",  # its tests use the xdist_group mark (they run serially here)
            "fastapi[standard]==0.165.0",
        ),
        expected={
            "tests/test_telemetry/test_runtime.py::test_concurrent_provider_owner_wins[[]*[]]": (
                "the point of the agent: the test expects no global tracer provider in the process, so "
                "that FastAPI's auto-configuration makes its own; under the agent one is set (FastAPI's "
                "spans go to the agent's exporters), and FastAPI adds its exporter to it instead"
            ),
        },
    ),
    "celery": Suite(
        "celery",
        "5.7.0",
        # requirements/test.txt, less the cloud backends' SDKs (their tests skip without them).
        (
            "pytest==9.1.1",
            "pytest-celery>=1.3.0",
            "pytest-subtests==0.15.0",
            "pytest-timeout==2.4.0",
            "pytest-click==1.1.0",
            "pytest-order==1.5.0",
            "freezegun==1.5.5",
            "celery[auth,yaml,msgpack,pydantic,redis]==5.7.0",
        ),
        # The modules of the backends left out fail to import, the same way in both runs.
        ("--continue-on-collection-errors",),
        paths=("t/unit",),
    ),
    "django": Suite(
        "django",
        "5.2.19",
        # tests/requirements/py3.txt, less what needs system libraries, a browser or a server.
        (
            "asgiref>=3.8.1",
            "argon2-cffi>=19.2.0",
            "bcrypt",
            "docutils>=0.19",
            "jinja2>=2.11.0",
            "Pillow>=6.2.1",
            "PyYAML",
            "sqlparse>=0.3.1",
            "tblib>=1.5.0",
            "tzdata",
        ),
        paths=("tests/runtests.py",),
        timeout=3600,
    ),
}

#: The differences the agent is expected to make, with their reasons (filled in from measured runs).
EXPECTED: dict[str, dict[str, str]] = {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("libraries", nargs="*", help=f"which suites (default: all of {', '.join(SUITES)})")
    parser.add_argument("--work", type=Path, help="sdists, venvs and reports (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fast", action="store_true", help="the suites CI runs: " + ", ".join(fast_names()))
    which.add_argument("--heavy", action="store_true", help="the others")
    parser.add_argument(
        "--agent-only", action="store_true", help="reuse the plain run's report from an earlier run in --work"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.libraries) - set(SUITES))
    if unknown:
        parser.error(f"unknown libraries {unknown}; known: {sorted(SUITES)}")
    names = args.libraries or [
        name for name in SUITES if not (args.fast or args.heavy) or SUITES[name].fast == args.fast
    ]
    work = args.work or Path(tempfile.mkdtemp(prefix="logfire-run-suites-"))
    work.mkdir(parents=True, exist_ok=True)
    failed = []
    try:
        for name in names:
            if not run_suite(SUITES[name], work, reuse_plain=args.agent_only):
                failed.append(name)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n== {len(names) - len(failed)} of {len(names)} suites as expected; not: {failed or 'none'}")
    return 1 if failed else 0


def fast_names() -> list[str]:
    return [name for name, suite in SUITES.items() if suite.fast]


def run_suite(suite: Suite, work: Path, *, reuse_plain: bool = False) -> bool:
    """Set up and run one suite both ways; print what differs; True when it is what is expected."""
    started = time.monotonic()
    source = fetch_sdist(suite, work)
    python = make_venv(suite, source, work)
    set_up = time.monotonic() - started
    plain_report = work / f"{suite.name}-plain.xml"
    if reuse_plain and plain_report.exists():
        plain = read_report(plain_report)
    else:
        plain = run_tests(python, source, plain_report, suite, agent=False)
    store = work / f"{suite.name}-agent.db"
    store.unlink(missing_ok=True)
    agent = run_tests(python, source, work / f"{suite.name}-agent.xml", suite, agent=True, store=store)
    differing = differences(plain, agent)
    not_reproduced: dict[str, tuple[str, str]] = {}
    if any("absent" not in change for change in differing.values()):
        # Once more both ways, for just those tests: a difference that does not come back is a flake.
        again_plain = run_tests(
            python,
            source,
            work / f"{suite.name}-plain-again.xml",
            suite,
            agent=False,
            only=[test for test, change in differing.items() if "absent" not in change],
        )
        again_agent = run_tests(
            python,
            source,
            work / f"{suite.name}-agent-again.xml",
            suite,
            agent=True,
            store=store,
            only=[test for test, change in differing.items() if "absent" not in change],
        )
        for test in list(differing):
            # A test missing from one full run was not discovered there: run alone, it says nothing.
            if "absent" not in differing[test] and again_plain.get(test) == again_agent.get(test):
                not_reproduced[test] = differing.pop(test)
    spans = count_spans(store)
    expected = {**suite.expected, **EXPECTED.get(suite.name, {})}
    unexpected = {test: change for test, change in differing.items() if reason_for(test, expected) is None}
    explained = {test: change for test, change in differing.items() if test not in unexpected}
    gone = [pattern for pattern in expected if not any(fnmatch.fnmatchcase(t, pattern) for t in differing)]
    took = minutes(time.monotonic() - started)
    print(f"\n== {suite.name} {suite.version}: {len(plain.outcomes)} tests, {took}")
    print(f"set-up {minutes(set_up)}; plain {minutes(plain.seconds)}, agent {minutes(agent.seconds)}")
    print(f"without the agent: {summary(plain)}")
    print(f"with LOGFIRE_RUN=1: {summary(agent)}; {spans} spans in the store")
    for title, changes in (
        ("unexpected differences", unexpected),
        ("expected differences", explained),
        ("differences not reproduced on a second run (flaky)", not_reproduced),
    ):
        print(f"{title}: {len(changes) or 'none'}")
        for test, (before, after) in sorted(changes.items()):
            reason = reason_for(test, expected)
            print(f"  {test}: {before} -> {after}" + (f" ({reason})" if reason else ""))
    if gone:
        print(f"expected but not seen (remove them from the list): {gone}")
    if spans == 0:
        print("the agent wrote no span: it was not active")
    return not unexpected and not gone and spans > 0


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def reason_for(test: str, expected: dict[str, str]) -> str | None:
    for pattern, reason in expected.items():
        if fnmatch.fnmatchcase(test, pattern):
            return reason
    return None


def fetch_sdist(suite: Suite, work: Path) -> Path:
    """Download and unpack the sdist (kept in `work` between runs)."""
    source = work / f"{suite.name}-{suite.version}"
    if source.is_dir():
        return source
    pip(
        sys.executable,
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"{suite.name}=={suite.version}",
        "-d",
        str(work),
    )
    archive = next(
        path for path in work.glob(f"*-{suite.version}.tar.gz") if path.name.lower().startswith(suite.name)
    )
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    unpacked = work / archive.name.removesuffix(".tar.gz")
    if unpacked != source:
        unpacked.rename(source)
    return source


def make_venv(suite: Suite, source: Path, work: Path) -> Path:
    """A venv with the library from its sdist, its test requirements and logfire-run (editable)."""
    venv = work / f"venv-{suite.name}"
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    # logfire-run is installed editable: its entry points change with its pyproject.toml.
    wanted = repr((str(source), suite.test_requirements, (ROOT / "pyproject.toml").read_text()))
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(str(python), "install", str(source), *suite.test_requirements, "-e", f"{ROOT}[http,celery]")
    stamp.write_text(wanted)
    return python


def pip(python: str, *args: str) -> None:
    completed = subprocess.run(
        [python, "-m", "pip", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        sys.stderr.write(f"pip {' '.join(args)} failed with {completed.returncode}\n")
        raise SystemExit(SET_UP_FAILED)


@dataclass
class Outcome:
    #: Test id -> one of OUTCOMES.
    outcomes: dict[str, str]
    seconds: float = 0.0

    def get(self, test: str) -> str | None:
        return self.outcomes.get(test)


def run_tests(
    python: Path,
    source: Path,
    report: Path,
    suite: Suite,
    *,
    agent: bool,
    store: Path | None = None,
    only: list[str] | None = None,
) -> Outcome:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    # The agent's instrumentor cache (and a default store) in the work folder, not the user's home.
    env["XDG_CACHE_HOME"] = str(report.parent / "cache")
    env["XDG_DATA_HOME"] = str(report.parent / "data")
    env.update(suite.env)
    if agent:
        env["LOGFIRE_RUN"] = "1"
        env["LOGFIRE_STORE"] = str(store)
    report.unlink(missing_ok=True)
    env["SUITE_JUNIT_XML"] = str(report)  # where Django's recording runner writes
    if suite.name == "django":
        command = django_command(python, source, only)
    else:
        command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
        command += [f"--junitxml={report}", *suite.pytest_args]
        command += only or list(suite.paths)
    shown = " ".join([*command[1:4], f"... ({len(only)} tests)"]) if only else " ".join(command[1:])
    print(f"-- {suite.name}: {'LOGFIRE_RUN=1 ' if agent else ''}{shown}", flush=True)
    started = time.monotonic()
    before = {entry.name for entry in source.iterdir()}
    with open(report.with_suffix(".log"), "w") as log:
        try:
            subprocess.run(
                command, cwd=source, env=env, stdout=log, stderr=log, timeout=suite.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            print(f"   timed out after {suite.timeout} s (what the report holds is compared)")
    seconds = time.monotonic() - started
    # What a run leaves in the folder it runs from must not change what the next run sees: one of
    # Django's cache tests leaves an empty `cache` folder there, and Django's runner then takes the
    # label `cache` for that folder and finds no test in it (608 tests missing from the second run).
    left = sorted(entry for entry in source.iterdir() if entry.name not in before)
    for entry in left:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if left:
        print(f"   removed what the run left in {source.name}/: {', '.join(entry.name for entry in left)}")
    if not report.exists():
        raise SystemExit(f"{suite.name}: no report at {report}; see {report.with_suffix('.log')}")
    outcome = read_report(report)
    outcome.seconds = seconds
    return outcome


def read_report(report: Path) -> Outcome:
    """Every test's outcome, by `file::Class::test` id, from a junit XML report.

    A test reported twice (a teardown error after a pass) keeps its worst outcome.
    """
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        test = test_id(case)
        if case.find("failure") is not None:
            outcome = "failed"
        elif case.find("error") is not None:
            outcome = "error"
        elif (skipped := case.find("skipped")) is not None:
            outcome = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        else:
            outcome = "passed"
        previous = outcomes.get(test)
        if previous is None or _rank(outcome) > _rank(previous):
            outcomes[test] = outcome
    return Outcome(outcomes)


def _rank(outcome: str) -> int:
    return ("skipped", "passed", "xfailed", "failed", "error").index(outcome)


def test_id(case: ElementTree.Element) -> str:
    """`path/to/file.py::Class::name` from xunit1's file and classname (the pytest node id)."""
    classname, name, path = case.get("classname", ""), case.get("name", ""), case.get("file")
    if path:
        module = path.removesuffix(".py").replace("/", ".")
        rest = classname.removeprefix(module).strip(".")
        return "::".join([path, *(rest.split(".") if rest else []), name])
    return f"{classname}::{name}"


def differences(plain: Outcome, agent: Outcome) -> dict[str, tuple[str, str]]:
    """Test id -> (outcome without, outcome with the agent), for every test whose outcome differs."""
    changed = {}
    for test in sorted(set(plain.outcomes) | set(agent.outcomes)):
        before, after = plain.outcomes.get(test, "absent"), agent.outcomes.get(test, "absent")
        if before != after:
            changed[test] = (before, after)
    return changed


def summary(outcome: Outcome) -> str:
    counts = {name: 0 for name in OUTCOMES}
    for value in outcome.outcomes.values():
        counts[value] += 1
    return ", ".join(f"{count} {name}" for name, count in counts.items() if count)


def count_spans(store: Path) -> int:
    """How many spans the agent wrote to the store (0 when there is none)."""
    if not store.exists():
        return 0
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM spans").fetchone()[0])
        except sqlite3.Error:
            return 0


# Django runs its suite with its own runner (tests/runtests.py); a recording runner in its settings
# writes the same junit XML pytest writes, so both are read the same way.
DJANGO_SETTINGS = """
from test_sqlite import *  # noqa: F403

TEST_RUNNER = "logfire_suite_runner.RecordingRunner"
"""

DJANGO_RUNNER = '''
"""Django's DiscoverRunner, writing each test's outcome as junit XML (xunit1) to $SUITE_JUNIT_XML."""

import os
import unittest
from xml.sax.saxutils import quoteattr

from django.test.runner import DiscoverRunner


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded = []

    def _record(self, test, child):
        self.recorded.append((test.id(), child))

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "<failure/>")

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "<error/>")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "<skipped/>")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, '<skipped type="pytest.xfail"/>')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "<failure/>")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "<failure/>" if failed else "<error/>")

    def stopTestRun(self):
        super().stopTestRun()
        with open(os.environ["SUITE_JUNIT_XML"], "w") as report:
            report.write("<testsuites><testsuite>\\n")
            for test_id, child in self.recorded:
                classname, _, name = test_id.rpartition(".")
                attributes = f"classname={quoteattr(classname)} name={quoteattr(name)}"
                report.write(f"<testcase {attributes}>{child}</testcase>\\n")
            report.write("</testsuite></testsuites>\\n")


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self):
        return RecordingResult
'''


def django_command(python: Path, source: Path, only: list[str] | None) -> list[str]:
    tests = source / "tests"
    (tests / "logfire_suite_settings.py").write_text(DJANGO_SETTINGS)
    (tests / "logfire_suite_runner.py").write_text(DJANGO_RUNNER)
    labels = [test.replace("::", ".") for test in only] if only else []
    return [
        str(python),
        "tests/runtests.py",
        "--settings=logfire_suite_settings",
        "--parallel=2",
        "--noinput",
        *labels,
    ]


if __name__ == "__main__":
    sys.exit(main())
