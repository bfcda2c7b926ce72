"""OpenTelemetry's instrumentors of no library (`exceptions`) and of asyncio, under lazy loading.

`exceptions` (opentelemetry-instrumentation-exceptions) names no target library: it used to wait for
the import of a module called `exceptions`, which never comes, and `--info` called it "not installed".
It now runs when the SDK starts. The asyncio instrumentor failed with a circular import of wrapt
whenever wrapt was imported before asyncio (wrapt imports asyncio: the asyncio hook fired inside
wrapt's import, and the instrumentor imports wrapt); `import requests` was enough, since the agent's
requests instrumentor imports wrapt. It now waits for wrapt's import to finish; so does the httpx
instrumentor when httpx2's activation is importing their shared module.

Both packages are installed for these tests only (`--target`, on PYTHONPATH), at the release of the
installed opentelemetry-instrumentation: in the shared venv they would add spans to every other test.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import agent_env, child_env, run_launcher, run_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def extra_instrumentors(tmp_path_factory: pytest.TempPathFactory) -> str:
    target = tmp_path_factory.mktemp("instrumentors")
    release = metadata.version("opentelemetry-instrumentation")
    packages = [f"opentelemetry-instrumentation-{name}=={release}" for name in ("asyncio", "exceptions")]
    # httpx2 (with httpx already in the venv): the httpx instrumentation registers an entry point for each.
    packages += ["httpx2==2.16.2", "httpcore2==2.16.2", "truststore==0.10.5"]
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *packages],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        pytest.skip(f"could not install {packages}: {completed.stderr[-500:]}")
    return str(target)


ASYNCIO_APP = """
import requests  # the agent's requests instrumentor imports wrapt, which imports asyncio

import asyncio


async def work():
    return "done"


async def main():
    return (await asyncio.gather(work()))[0]


print(asyncio.run(main()))
"""


def test_asyncio_is_instrumented_when_wrapt_was_imported_first(
    extra_instrumentors: str, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(ASYNCIO_APP)
    store = tmp_path / "traces.db"
    env = agent_env(
        PYTHONPATH=extra_instrumentors,
        LOGFIRE_STORE=str(store),
        OTEL_PYTHON_ASYNCIO_COROUTINE_NAMES_TO_TRACE="work",
        # The exceptions instrumentor imports asyncio before wrapt when it starts: without it, wrapt's
        # import is the asyncio instrumentor's trigger.
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="exceptions",
    )
    traced = run_launcher(["python", str(app)], env)  # no "instrumentor asyncio failed" line
    assert (traced.returncode, traced.stdout) == (0, "done\n")
    with sqlite3.connect(store) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM spans")]
    assert names == ["asyncio coro-work"], names


EXCEPTIONS_APP = """
import sys

import requests  # starts the SDK

print(type(sys.excepthook).__name__)
raise ValueError("boom")
"""


def test_the_exceptions_instrumentor_runs_when_the_sdk_starts(
    extra_instrumentors: str, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(EXCEPTIONS_APP)
    plain = run_process(
        [sys.executable, str(app)], child_env(PYTHONPATH=extra_instrumentors), expect_stderr=None
    )
    assert (plain.returncode, plain.stdout) == (1, "builtin_function_or_method\n")
    env = agent_env(PYTHONPATH=extra_instrumentors, LOGFIRE_STORE=str(tmp_path / "traces.db"))
    traced = run_launcher(["python", str(app)], env, expect_stderr=plain.stderr.replace(str(app), str(app)))
    # The uncaught exception went through OpenTelemetry's excepthook, and was printed as without it.
    assert (traced.returncode, traced.stdout) == (1, "FunctionWrapper\n")


def test_info_lists_the_exceptions_instrumentor_as_running_with_the_sdk(extra_instrumentors: str) -> None:
    env = child_env(PYTHONPATH=extra_instrumentors)
    info = run_launcher(["--info"], env)
    rows = {
        line.split()[0]: line for line in info.stdout.splitlines() if line.startswith("  ") and line.split()
    }
    assert "when the SDK starts (no target library)" in rows["exceptions"], rows["exceptions"]
    assert "not installed" not in rows["exceptions"]
    assert os.path.basename(extra_instrumentors)  # the fixture's folder, not the venv's


HTTPX2_APP = """
import httpx2  # its activation imports OpenTelemetry's httpx instrumentation, which imports httpx

import httpx

print(httpx2.__name__, httpx.__name__)
"""


def test_httpx_is_instrumented_when_httpx2_was_imported_first(
    extra_instrumentors: str, tmp_path: Path
) -> None:
    app = tmp_path / "app.py"
    app.write_text(HTTPX2_APP)
    env = agent_env(PYTHONPATH=extra_instrumentors, LOGFIRE_STORE=str(tmp_path / "traces.db"))
    traced = run_launcher(["python", str(app)], env)  # no "instrumentor httpx failed" line
    assert (traced.returncode, traced.stdout) == (0, "httpx2 httpx\n")
