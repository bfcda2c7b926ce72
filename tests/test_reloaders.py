"""Reloaders as a developer runs them: `flask run --reload`, `uvicorn --reload`, Django's `runserver`
and `gunicorn --reload`, under the launcher and under `LOGFIRE_RUN=1`, with the default batching.

Each test serves two requests, changes the app file, waits until a new serving process answers,
serves one more, then stops the top process (the watcher) with SIGTERM or SIGINT, as a container
runtime or a process manager does, or the whole process group with SIGINT, as Ctrl-C does. Every
request's server span must arrive exactly once, from the process that served it (the watcher makes
none), and stderr holds only the server's own lines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_exit_budget import BUDGET, SLACK, _Blackhole

from conftest import LAUNCHER, OtlpReceiver, agent_env, free_port, render_tree, without_fastapi_operations
from http_services import get

BIN = Path(sys.executable).parent

FLASK_APP = """
import os

from flask import Flask

app = Flask(__name__)


@app.get("/pid")
def pid():
    return str(os.getpid())
"""

FASTAPI_APP = """
import os

from fastapi import FastAPI

app = FastAPI()


@app.get("/pid")
async def pid():
    return os.getpid()
"""

# A single-file Django app: it configures its own settings (what the agent must never do first).
DJANGO_APP = """
import os
import sys

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from django.http import HttpResponse
from django.urls import path


def pid(request):
    return HttpResponse(str(os.getpid()))


urlpatterns = [path("pid", pid)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

# What each server itself writes to stderr (any other line fails the test): its banners, its request
# log, its reload messages.
_REQUEST_LOG = r'127\.0\.0\.1 - - \[[^]]+\] "GET /pid HTTP/1\.1" 200 .*'
_DJANGO_LOG = r'\[[^]]+\] "GET /pid HTTP/1\.1" 200 \d+'


@dataclass(frozen=True)
class Reloader:
    name: str
    app: str
    command: list[str]  # `{port}` is filled in; the first word is the program
    span_name: str
    stderr_lines: tuple[str, ...]


RELOADERS = {
    "flask": Reloader(
        "flask",
        FLASK_APP,
        ["flask", "--app", "app", "run", "--reload", "--port", "{port}"],
        "GET /pid",
        (
            r".*WARNING: This is a development server\..*",
            r" \* Running on http://127\.0\.0\.1:\d+",
            r".*Press CTRL\+C to quit.*",
            r" \* Restarting with stat",
            r" \* Detected change in '.*app\.py', reloading",
            _REQUEST_LOG,
        ),
    ),
    "uvicorn": Reloader(
        "uvicorn",
        FASTAPI_APP,
        ["uvicorn", "app:app", "--reload", "--port", "{port}", "--log-level", "warning"],
        "GET /pid",
        (r"WARNING:  StatReload detected changes in 'app\.py'\. Reloading\.\.\.",),
    ),
    "django": Reloader(
        "django",
        DJANGO_APP,
        ["python", "app.py", "runserver", "127.0.0.1:{port}"],
        "GET pid",
        (
            r"Watching for file changes with StatReloader",
            r".*app\.py changed, reloading\.",
            _DJANGO_LOG,
        ),
    ),
    "gunicorn": Reloader(
        "gunicorn",
        FLASK_APP,
        ["gunicorn", "--reload", "-b", "127.0.0.1:{port}", "--log-level", "warning", "app:app"],
        "GET /pid",
        (r"\[[^]]+\] \[\d+\] \[WARNING\] Reloader is on\. Use in development only!",),
    ),
}


class Client:
    """GET /pid until a process answers; every answer is kept (each is a request whose span is due)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[str] = []

    def serving_pid(
        self, timeout: float = 30.0, other_than: str | None = None, touching: Path | None = None
    ) -> str:
        """The pid that answers, polling until one does (and, with `other_than`, a new one).

        `touching` is a file changed every 1.5 s meanwhile: a reloader that takes its first look at
        the files only after it serves (Django's) would take a single change for the initial state.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        touched = 0.0
        while time.monotonic() < deadline:
            if touching is not None and time.monotonic() - touched > 1.5:
                _touch(touching)
                touched = time.monotonic()
            try:
                status, body = get(self.url + "/pid", timeout=5)
            except OSError as error:
                last = error
            else:
                last = (status, body)
                if status == 200:
                    self.answers.append(str(body))
                    if str(body) != other_than:
                        return str(body)
            time.sleep(0.1)
        raise AssertionError(f"no {'new ' if other_than else ''}serving process answered: {last}")


def _touch(path: Path) -> None:
    later = path.stat().st_mtime + 2  # later than any mtime a reloader has seen, whatever its clock
    os.utime(path, (later, later))


# (reloader, how the agent is activated, the signal that stops the top process)
CASES = [
    ("flask", "launcher", "SIGTERM"),
    ("flask", "env", "SIGINT"),
    ("uvicorn", "launcher", "SIGINT"),
    ("uvicorn", "env", "SIGTERM"),
    ("django", "launcher", "SIGTERM"),
    ("django", "env", "SIGINT"),
    ("gunicorn", "launcher", "SIGTERM"),
    ("gunicorn", "env", "SIGTERM"),
]
FAST_CASE = ("uvicorn", "launcher", "SIGINT")


@pytest.mark.parametrize(
    ("name", "activation", "stop"),
    # The inner loop's reloader test is uvicorn's (its reloader looks for changes 4 times a second).
    [pytest.param(*case, marks=[] if case == FAST_CASE else [pytest.mark.slow]) for case in CASES],
    ids=["-".join(case) for case in CASES],
)
def test_every_request_span_arrives_once_across_a_reload_and_a_stop(
    receiver: OtlpReceiver, tmp_path: Path, name: str, activation: str, stop: str
) -> None:
    _reload_then_stop(receiver, tmp_path, name, activation, stop)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flask", "django"])
def test_ctrl_c_reaches_watcher_and_server_at_once_and_cuts_no_flush_short(
    receiver: OtlpReceiver, tmp_path: Path, name: str
) -> None:
    # Ctrl-C in a terminal: SIGINT to the whole process group. The serving process starts its exit
    # flush on its own, and the watcher's SIGTERM reaches it during that flush; a backend that from
    # then on takes a moment to answer makes sure the flush is still waiting then.
    add = receiver._add

    def slowly(request: object) -> None:
        time.sleep(0.5)
        add(request)  # type: ignore[arg-type]

    def slow_backend() -> None:
        receiver._add = slowly  # type: ignore[method-assign]

    _reload_then_stop(receiver, tmp_path, name, "launcher", "Ctrl-C", before_stop=slow_backend)


def _reload_then_stop(
    receiver: OtlpReceiver,
    tmp_path: Path,
    name: str,
    activation: str,
    stop: str,
    before_stop: Callable[[], None] = lambda: None,
) -> None:
    reloader = RELOADERS[name]
    app = tmp_path / "app.py"
    app.write_text(reloader.app)
    port = free_port()
    words = [word.replace("{port}", str(port)) for word in reloader.command]
    env = agent_env(receiver)
    del env["OTEL_BSP_SCHEDULE_DELAY"]  # the default batching: spans wait up to 5 s in the queue
    if activation == "launcher":
        command = [LAUNCHER, *words]
    else:
        env["LOGFIRE_RUN"] = "1"
        command = [sys.executable if words[0] == "python" else str(BIN / words[0]), *words[1:]]
    client = Client(f"http://127.0.0.1:{port}")
    stderr_path = tmp_path / "stderr"
    with open(tmp_path / "stdout", "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        first = client.serving_pid()
        assert client.serving_pid() == first
        second = client.serving_pid(other_than=first, touching=app)  # served after the reload
        before_stop()
        if stop == "Ctrl-C":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(getattr(signal, stop))
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    answers = client.answers
    assert answers.count(first) >= 2 and answers[-1] == second, answers
    spans = without_fastapi_operations(
        receiver.wait_for(lambda found: len(without_fastapi_operations(found)) >= len(answers), timeout=5)
    )
    tree = render_tree(spans)
    served = sorted((span.kind, span.name, str(span.pid)) for span in spans)
    assert served == sorted(("SERVER", reloader.span_name, pid) for pid in answers), tree
    assert len({span.trace_id for span in spans}) == len(answers), tree
    stderr = stderr_path.read_text()
    unexpected = [
        line
        for line in stderr.splitlines()
        if not any(re.fullmatch(pattern, line) for pattern in reloader.stderr_lines)
    ]
    assert not unexpected, f"unexpected stderr lines {unexpected}:\n{stderr}"


@pytest.mark.slow
def test_a_dead_backend_holds_a_stop_up_for_the_exit_budget_only(tmp_path: Path) -> None:
    # A backend that accepts and never answers: the serving process's exit flush waits its whole
    # budget, then counts what it drops; the watcher waits for it no longer than that (and a grace).
    backend = _Blackhole()
    try:
        app = tmp_path / "app.py"
        app.write_text(FLASK_APP)
        port = free_port()
        env = agent_env(OTEL_EXPORTER_OTLP_ENDPOINT=backend.endpoint, LOGFIRE_EXPORTER="otlp")
        command = [LAUNCHER, "flask", "--app", "app", "run", "--reload", "--port", str(port)]
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            client = Client(f"http://127.0.0.1:{port}")
            client.serving_pid()
            client.serving_pid()
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    finally:
        backend.close()
    assert process.returncode == 0, stderr
    assert elapsed < BUDGET + 1 + SLACK, f"the stop took {elapsed:.1f} s\n{stderr}"
    ours = [line for line in stderr.splitlines() if line.startswith("logfire-run")]
    # The serving process says what its two requests' spans became, at its own exit, in one line: this
    # backend holds what was sent unanswered ("sent ... got no answer within the exit budget"), and a
    # span still queued behind that export is "not sent within the exit budget" (whether the two
    # spans went in one export or two is the scheduler's). The watcher may say the same of log
    # records of its own (Werkzeug's " * Restarting with stat"), at the reloader stop.
    said = [line for line in ours if "the exit budget" in line]
    served = [line for line in said if "at exit)" in line]
    assert len(served) == 1, stderr
    not_sent = re.match(r"logfire-run: (\d+) spans? dropped in this process: \1 not sent within", served[0])
    unanswered = re.search(
        r"(?:^logfire-run: |; )(\d+) spans?(?: and \d+ log records?)? sent at exit got", served[0]
    )
    counted = (int(not_sent.group(1)) if not_sent else 0) + (int(unanswered.group(1)) if unanswered else 0)
    assert counted == 2, stderr
    assert all("at exit)" in line or "at reloader stop)" in line for line in said), stderr
    assert all(line.startswith("logfire-run: ") for line in ours), stderr
