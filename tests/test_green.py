"""gevent and eventlet under logfire-run: apps that monkey-patch, gunicorn's green workers, agent threads.

The agent must start nothing that monkey-patching has to see first (no SDK, thread, socket or
select) until the patching is done, and then work as it does with threads: greenlets spawned inside
a span are its children, the app's log records are captured under their spans, SIGTERM ends the
process as it would without the agent, and the app's stdout and stderr are those of a run without
it. Celery's gevent and eventlet workers are in test_celery.py. Every app runs in a real interpreter,
through the launcher or `LOGFIRE_RUN=1`, and sends to a real OTLP receiver.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SpanRecord, agent_env, child_env, launch, render_tree, run_without_agent
from http_services import get, running
from otlp_receivers import HttpReceiver

GREEN_SUPPORT = Path(__file__).resolve().parent / "green_support"
GREENLETS = 50


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.server.shutdown()


# Telling a process that will monkey-patch from its command line (pure parsing: no process needed).


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["celery", "-A", "app", "worker", "-P", "gevent"], {}, "gevent"),
        (["celery", "-A", "app", "worker", "--pool", "eventlet"], {}, "eventlet"),
        (["celery", "-A", "app", "worker", "--pool=gevent", "-c", "100"], {}, "gevent"),
        (["celery", "worker", "-A", "app", "-Peventlet"], {}, "eventlet"),
        (["celery", "-A", "app", "worker"], {"CELERYD_POOL": "gevent"}, "gevent"),
        (["celery", "-A", "app", "worker", "-P", "threads"], {}, None),
        (["celery", "-A", "app", "worker"], {}, None),
        (["celery", "-A", "app", "beat"], {"CELERYD_POOL": "gevent"}, None),
        # An app module called "worker" does not make `beat` a worker.
        (["celery", "-A", "worker", "beat", "-P", "gevent"], {}, None),
        (["celery", "--app=worker", "inspect", "ping"], {"CELERYD_POOL": "gevent"}, None),
        (["gunicorn", "-k", "gevent", "app:app"], {}, "gevent"),
        (["gunicorn", "-kgevent_pywsgi", "app:app"], {}, "gevent"),
        (["gunicorn", "--worker-class", "gunicorn.workers.ggevent.GeventWorker", "app:app"], {}, "gevent"),
        (["gunicorn", "--worker-class=eventlet", "app:app"], {}, "eventlet"),
        # geventlet is eventlet's module, whatever its name starts with.
        (["gunicorn", "-k", "gunicorn.workers.geventlet.EventletWorker", "app:app"], {}, "eventlet"),
        (["gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "--bind 127.0.0.1:0 -k eventlet"}, "eventlet"),
        # The command line wins over GUNICORN_CMD_ARGS, as in gunicorn.
        (["gunicorn", "-k", "sync", "app:app"], {"GUNICORN_CMD_ARGS": "-k gevent"}, None),
        (["gunicorn", "-w", "4", "app:app"], {}, None),
        (["python", "-k", "gevent"], {}, None),
    ],
)
def test_a_green_worker_is_told_from_its_command_line(
    argv: list[str], environ: dict[str, str], expected: str | None, tmp_path: Path, monkeypatch: Any
) -> None:
    from logfire_run.agent.process import green

    monkeypatch.chdir(tmp_path)  # no ./gunicorn.conf.py here
    assert green.detect(argv, environ)[0] == expected


def test_a_gunicorn_config_file_names_the_worker_class(tmp_path: Path, monkeypatch: Any) -> None:
    from logfire_run.agent.process import green

    (tmp_path / "gunicorn.conf.py").write_text('bind = "127.0.0.1:8000"\nworker_class = "gevent"  # green\n')
    (tmp_path / "other.py").write_text("workers = 2\nworker_class = 'eventlet'\n")
    monkeypatch.chdir(tmp_path)
    assert green.detect(["gunicorn", "app:app"], {})[0] == "gevent"
    assert green.detect(["gunicorn", "-c", "other.py", "app:app"], {})[0] == "eventlet"
    assert green.detect(["gunicorn", "--config=python:settings", "app:app"], {})[0] is None


def test_a_preloading_gunicorn_master_is_told(tmp_path: Path, monkeypatch: Any) -> None:
    from logfire_run.agent.process import green

    monkeypatch.chdir(tmp_path)
    assert green._gunicorn_preloads(["gunicorn", "-k", "gevent", "--preload", "app:app"], {})
    assert green._gunicorn_preloads(["gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "--preload"})
    assert not green._gunicorn_preloads(["gunicorn", "-k", "gevent", "app:app"], {})
    (tmp_path / "gunicorn.conf.py").write_text("preload_app = True\n")
    assert green._gunicorn_preloads(["gunicorn", "app:app"], {})
    assert not green._gunicorn_preloads(["celery", "--preload"], {})


# Apps that monkey-patch on their first line: greenlets, records, output.

GEVENT_APP = """
from gevent import monkey

monkey.patch_all()

import logging
import sys

import gevent
import gevent.pool
from opentelemetry import trace

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout)
log = logging.getLogger("app")
tracer = trace.get_tracer("app")


def work(number):
    with tracer.start_as_current_span("greenlet work", attributes={"number": number}):
        log.info("greenlet %d", number)
        gevent.sleep(0)
        return number


with tracer.start_as_current_span("request"):
    log.info("request")
    spawned = [gevent.spawn(work, number) for number in range(20)]
    pooled = gevent.pool.Pool(5).map(work, range(20, 40))
    group = gevent.pool.Group()
    grouped = [group.spawn(work, number) for number in range(40, 45)]
    started = [gevent.Greenlet(work, number) for number in range(45, 50)]
    for greenlet in started:
        greenlet.start()
    gevent.joinall(spawned + grouped + started, raise_error=True)
print(sorted([greenlet.value for greenlet in spawned + grouped + started] + pooled) == list(range(50)))
"""

EVENTLET_APP = """
import eventlet

eventlet.monkey_patch()

import logging
import sys

from opentelemetry import trace

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stdout)
log = logging.getLogger("app")
tracer = trace.get_tracer("app")
done = []


def work(number):
    with tracer.start_as_current_span("greenlet work", attributes={"number": number}):
        log.info("greenlet %d", number)
        eventlet.sleep(0)
        done.append(number)
        return number


with tracer.start_as_current_span("request"):
    log.info("request")
    spawned = [eventlet.spawn(work, number) for number in range(20)]
    pool = eventlet.GreenPool(5)
    pooled = list(pool.imap(work, range(20, 40)))
    for number in range(40, 45):
        eventlet.spawn_n(work, number)
    for number in range(45, 50):
        pool.spawn_n(work, number)
    results = [thread.wait() for thread in spawned]
    pool.waitall()
    while len(done) < 50:
        eventlet.sleep(0.01)
print(sorted(done) == list(range(50)))
"""


def assert_greenlets_are_children(spans: list[SpanRecord], count: int) -> SpanRecord:
    """`count` "greenlet work" spans, each a child of the one "request" span; returns that span."""
    tree = render_tree(spans)
    request = next(span for span in spans if span.name == "request")
    work = [span for span in spans if span.name == "greenlet work"]
    assert len(work) == count, tree
    assert all((span.trace_id, span.parent_id) == (request.trace_id, request.span_id) for span in work), tree
    return request


def assert_records_under_their_spans(
    receiver: HttpReceiver, spans: list[SpanRecord], parent: SpanRecord, first: str, count: int
) -> None:
    """The record `first` under `parent`, and each greenlet's record under its own span. Records made
    outside any span (gunicorn's own start-up warnings, for one) are captured too, and left aside."""
    deadline = time.monotonic() + 20
    while True:
        logs = [log for log in receiver.wait_for_logs(count + 1) if log["trace_id"]]
        if len(logs) >= count + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by_body = {log["body"]: log for log in logs}
    assert len(logs) == count + 1, sorted(by_body)
    assert (by_body[first]["trace_id"], by_body[first]["span_id"]) == (parent.trace_id, parent.span_id)
    for span in spans:
        if span.name == "greenlet work":
            record = by_body[f"greenlet {span.attributes['number']}"]
            assert (record["trace_id"], record["span_id"]) == (span.trace_id, span.span_id), record


@pytest.mark.slow
@pytest.mark.parametrize("library", ["gevent", "eventlet"])
@pytest.mark.parametrize("via", ["launcher", "env"])
def test_an_app_that_patches_first_gets_its_greenlets_and_records(
    library: str, via: str, receiver: HttpReceiver, tmp_path: Path
) -> None:
    source = GEVENT_APP if library == "gevent" else EVENTLET_APP
    plain = run_without_agent(tmp_path, source, expect_stderr=None)
    assert plain.returncode == 0, plain.stderr
    traced = launch(tmp_path, receiver, source, via=via, expect_stderr=plain.stderr)
    assert traced.stdout == plain.stdout
    assert traced.stdout.splitlines()[-1] == "True"
    spans = receiver.wait_for(lambda spans: len(spans) >= GREENLETS + 1)
    request = assert_greenlets_are_children(spans, GREENLETS)
    assert_records_under_their_spans(receiver, spans, request, "request", GREENLETS)


# Patching that nothing shows in advance: LOGFIRE_GREEN says it.

LATE_PATCH_APP = """
import json
import threading

from opentelemetry import trace

tracer = trace.get_tracer("app")  # would start the SDK, and its threads, before the patching

from gevent import monkey

monkey.patch_all()

import gevent

def work():
    with tracer.start_as_current_span("greenlet work"):
        pass


with tracer.start_as_current_span("request"):
    gevent.joinall([gevent.spawn(work)])
main = threading.main_thread().native_id
agent = [thread for thread in threading.enumerate() if thread.name.startswith(("Otel", "logfire"))]
print(json.dumps({thread.name: thread.native_id == main for thread in agent}))
"""


@pytest.mark.slow
def test_logfire_green_makes_the_sdk_wait_for_a_late_patch(receiver: HttpReceiver, tmp_path: Path) -> None:
    # Not told, the SDK would start at get_tracer(), before the patching: its exporter's imports
    # (ssl) make gevent warn, and its threads stay real threads (docs/configuration.md says so).
    result = launch(tmp_path, receiver, LATE_PATCH_APP, LOGFIRE_GREEN="gevent")
    in_the_main_thread = json.loads(result.stdout)
    # Told, it starts after the patching: its threads are greenlets of the main thread.
    assert in_the_main_thread and all(in_the_main_thread.values()), in_the_main_thread
    spans = receiver.wait_for(lambda spans: len(spans) >= 2)
    request = next(span for span in spans if span.name == "request")
    work = next(span for span in spans if span.name == "greenlet work")
    assert work.parent_id == request.span_id, render_tree(spans)


# gunicorn's gevent and eventlet workers.


@pytest.fixture(scope="module")
def gunicorn_with_eventlet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """gunicorn 25.3, the last release with an eventlet worker, in a folder for PYTHONPATH."""
    target = tmp_path_factory.mktemp("gunicorn-eventlet")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    installed = subprocess.run(
        [*pip, "--target", str(target), "gunicorn==25.3.0"], capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0, installed.stderr
    return str(target)


def gunicorn_command(worker: str, *options: str) -> list[str]:
    return [
        "gunicorn", "-k", worker, "-w", "1", "-b", "127.0.0.1:{port}", "--log-level", "warning",
        "--graceful-timeout", "5", *options, "fanout:app",
    ]  # fmt: skip


def serve_and_fan_out(
    worker: str, env: dict[str, str], logs: Path, *options: str, agent: bool
) -> tuple[Any, str, str, int | None, bool]:
    """Run the fanout app under gunicorn `-k worker`, make one request, stop it with SIGTERM:
    (body, stdout, stderr, exit status, whether a process of its group outlived the master)."""
    name = f"{worker}{''.join(options)}-{'agent' if agent else 'plain'}"
    command = gunicorn_command(worker, *options)
    with running(
        name, env, logs, command=command, cwd=GREEN_SUPPORT, agent=agent, expect_stderr=None
    ) as service:
        status, body = get(f"{service.url}/fanout/{GREENLETS}")
        assert status == 200, body
    # Stopped by SIGTERM (the block's end): a Service that needed SIGKILL would show -9 here. On
    # Python 3.13, gunicorn 25's eventlet worker outlives its master, with the agent or without.
    left = _outlived(service.process.pid)
    stderr = _GUNICORN_PREFIX.sub("", service.stderr())
    return body, service.stdout(), stderr, service.process.returncode, left


def _outlived(group: int) -> bool:
    """Whether a process of the group is still there once its leader has ended; it is killed."""
    for _ in range(50):
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    os.killpg(group, signal.SIGKILL)
    return True


#: The time and process id that start each line gunicorn logs (its eventlet worker warns).
_GUNICORN_PREFIX = re.compile(r"^\[[^\]]+\] \[\d+\] ", re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("worker", "options"),
    # With --preload the master imports the app (Flask) and never patches: its workers do, after the fork.
    [("gevent", ()), ("eventlet", ()), ("gevent", ("--preload",))],
    ids=["gevent", "eventlet", "gevent-preload"],
)
def test_gunicorn_green_workers_trace_greenlets_and_capture_records(
    worker: str,
    options: tuple[str, ...],
    receiver: HttpReceiver,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    extra = {"GREEN": worker}
    if worker == "eventlet":
        extra["PYTHONPATH"] = request.getfixturevalue("gunicorn_with_eventlet")
    plain = serve_and_fan_out(worker, child_env(**extra), tmp_path, *options, agent=False)
    traced = serve_and_fan_out(worker, agent_env(receiver, **extra), tmp_path, *options, agent=True)
    assert traced == plain  # the response, the app's stdout and stderr, the exit status
    assert plain[0] == [number * number for number in range(GREENLETS)]
    spans = receiver.wait_for(lambda spans: len(spans) >= GREENLETS + 1)
    server = next(span for span in spans if span.kind == "SERVER")
    # The records first: each greenlet's is captured under that greenlet's own span, wherever it sits.
    first = f"fanning out to {GREENLETS} greenlets"
    assert_records_under_their_spans(receiver, spans, server, first, GREENLETS)
    tree = render_tree(spans)
    work = [span for span in spans if span.name == "greenlet work"]
    assert len(work) == GREENLETS, tree
    assert all(span.parent_id == server.span_id and span.trace_id == server.trace_id for span in work), tree


# Every thread of the agent is born with the SDK, with SIGTERM blocked.

THREADS_APP = """
import json
import logging
import os
import threading

logging.basicConfig(level=logging.INFO, format="%(message)s")
log = logging.getLogger("app")


def agent_threads():
    return sorted(thread.name for thread in threading.enumerate() if thread is not threading.main_thread())


def sigterm_blocked():
    blocked = {}
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            with open(f"/proc/self/task/{thread.native_id}/status") as status:
                mask = next(line for line in status if line.startswith("SigBlk:")).split()[1]
            blocked[thread.name] = bool(int(mask, 16) & (1 << 14))  # SIGTERM is 15
    return blocked


from opentelemetry import trace

tracer = trace.get_tracer("app")  # the SDK starts here
born_with_the_sdk = agent_threads()
with tracer.start_as_current_span("work"):
    log.warning("the first captured record")
after_the_first_record = agent_threads()
read, write = os.pipe()
child = os.fork()
if child == 0:
    in_the_child = agent_threads()
    log.warning("the child's first record")
    os.write(write, json.dumps([in_the_child, agent_threads()]).encode())
    os._exit(0)
os.waitpid(child, 0)
child_threads = json.loads(os.read(read, 65536))
print(json.dumps({
    "born_with_the_sdk": born_with_the_sdk,
    "after_the_first_record": after_the_first_record,
    "child_at_fork": child_threads[0],
    "child_after_its_first_record": child_threads[1],
    "sigterm_blocked": sigterm_blocked(),
}))
"""


@pytest.mark.slow
def test_every_agent_thread_is_born_with_the_sdk_with_sigterm_blocked(
    receiver: HttpReceiver, tmp_path: Path
) -> None:
    result = launch(tmp_path, receiver, THREADS_APP, expect_stderr="the first captured record\n"
                    "the child's first record\n")  # fmt: skip
    found = json.loads(result.stdout)
    assert "logfire-run logs" in found["born_with_the_sdk"], found
    assert found["after_the_first_record"] == found["born_with_the_sdk"], found
    assert "logfire-run logs" in found["child_at_fork"], found
    assert found["child_after_its_first_record"] == found["child_at_fork"], found
    assert found["sigterm_blocked"] and all(found["sigterm_blocked"].values()), found
    assert len(receiver.wait_for_logs(2)) == 2
