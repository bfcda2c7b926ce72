"""Run the instrumented libraries' own test suites without and with the agent; print both failure sets.

For each library (Flask 3.1.3, requests 2.34.2) it downloads the sdist from the package index,
builds a throwaway venv holding the library from that sdist, its test requirements and logfire-run
(editable, from this worktree, with the `http` extra), then runs the sdist's tests twice with pytest:
once plain, once with env-only activation (`LOGFIRE_RUN=1`, spans to a store in the work folder).
The goal is that every library we instrument fails exactly the same tests in both runs; the exit
status is 1 when a run under the agent fails a test the plain run does not (or the reverse).

    .venv/bin/python scripts/library_suites.py [--work DIR] [--keep] [flask] [requests]

Where it stops: it compares failures, not timings, and tests that fail in both runs (a test that
needs the internet, say) are reported and left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Suite:
    """One library's sdist and what its tests need."""

    name: str
    version: str
    #: Requirements its tests need, from its pyproject's test dependency group.
    test_requirements: tuple[str, ...]
    #: Extra pytest arguments: what the project's own CI passes.
    pytest_args: tuple[str, ...] = ()


SUITES = {
    "flask": Suite("flask", "3.1.3", ("asgiref", "greenlet", "pytest<9", "python-dotenv")),
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
        ("-o", "addopts="),
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("libraries", nargs="*", help=f"which suites (default: all of {', '.join(SUITES)})")
    parser.add_argument(
        "--work", type=Path, help="folder for sdists, venvs and reports (default: a temp one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.libraries) - set(SUITES))
    if unknown:
        parser.error(f"unknown libraries {unknown}; known: {sorted(SUITES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="logfire-run-suites-"))
    work.mkdir(parents=True, exist_ok=True)
    different = False
    try:
        for name in args.libraries or list(SUITES):
            different |= run_suite(SUITES[name], work)
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if different else 0


def run_suite(suite: Suite, work: Path) -> bool:
    """Set up and run one suite both ways; print the failure sets; True when they differ."""
    label = f"{suite.name} {suite.version}"
    source = fetch_sdist(suite, work)
    python = make_venv(suite, source, work)
    plain = run_tests(python, source, work / f"{suite.name}-plain.xml", suite, agent=False)
    agent = run_tests(python, source, work / f"{suite.name}-agent.xml", suite, agent=True)
    print(f"\n== {label}: {plain.total} tests")
    print(f"without the agent: {len(plain.failed)} failed")
    for test in sorted(plain.failed):
        print(f"  {test}")
    print(f"with LOGFIRE_RUN=1: {len(agent.failed)} failed")
    for test in sorted(agent.failed):
        print(f"  {test}")
    only_agent, only_plain = agent.failed - plain.failed, plain.failed - agent.failed
    print(f"only with the agent: {sorted(only_agent) or 'none'}")
    print(f"only without the agent: {sorted(only_plain) or 'none'}")
    return bool(only_agent or only_plain)


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
    archive = work / f"{suite.name}-{suite.version}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return source


def make_venv(suite: Suite, source: Path, work: Path) -> Path:
    """A venv with the library from its sdist, its test requirements and logfire-run[http] (editable)."""
    venv = work / f"venv-{suite.name}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(str(python), "install", str(source), *suite.test_requirements, "-e", f"{ROOT}[http]")
    return python


def pip(python: str, *args: str) -> None:
    completed = subprocess.run(
        [python, "-m", "pip", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise SystemExit(f"pip {' '.join(args)} failed with {completed.returncode}")


@dataclass
class Outcome:
    total: int
    failed: set[str]


def run_tests(python: Path, source: Path, report: Path, suite: Suite, *, agent: bool) -> Outcome:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
    env.pop("PYTHONPATH", None)
    if agent:
        env["LOGFIRE_RUN"] = "1"
        env["LOGFIRE_STORE"] = str(report.with_suffix(".db"))
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    print(f"-- {suite.name}: {'LOGFIRE_RUN=1 ' if agent else ''}{' '.join(command[1:])}", flush=True)
    subprocess.run(
        [*command, *suite.pytest_args, "tests"],
        cwd=source,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return read_report(report)


def read_report(report: Path) -> Outcome:
    """The tests that failed or errored, as `file::Class::test`, from a junit XML report."""
    failed: set[str] = set()
    total = 0
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            classname = case.get("classname", "").replace(".", "/")
            failed.add(f"{classname}::{case.get('name', '')}")
    return Outcome(total, failed)


if __name__ == "__main__":
    sys.exit(main())
