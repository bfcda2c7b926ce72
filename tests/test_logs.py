"""The app's own `logging` records: correlated, captured with their span, shown, exported over OTLP.

Every test runs a real app in a real interpreter (through `logfire-run`, or with `LOGFIRE_RUN=1`),
and checks what a user sees: the app's stdout and stderr byte for byte against the same app without
the agent, the records under their spans in `logfire-run-view`'s tree and JSON, and the records an
OTLP receiver got.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from logfire_run.store_format import SCHEMA_VERSION

from conftest import (
    FORK_WARNINGS,
    LAUNCHER,
    NO_AGENT_CHECK,
    VIEWER,
    agent_env,
    child_env,
    free_port,
    run_launcher,
    run_process,
    run_without_agent,
    write_app,
)
from otlp_receivers import ThirdPartyReceiver


def store_of(tmp_path: Path) -> Path:
    return tmp_path / "traces.db"


def view_json(store: Path, *args: str) -> Any:
    result = run_process([VIEWER, "--store", str(store), "--json", *args], child_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def view_text(store: Path, *args: str) -> str:
    result = run_process([VIEWER, "--store", str(store), "--plain", *args], child_env())
    assert result.returncode == 0, result.stderr
    return result.stdout


def trace_rooted_at(store: Path, root: str) -> dict[str, Any]:
    listing = view_json(store, "--limit", "50")
    ids = [item["trace_id"] for item in listing if item["root"] == root]
    assert len(ids) == 1, listing
    return view_json(store, ids[0])  # type: ignore[no-any-return]


def logs_of(trace: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(span name, level, message) of every record in the trace, in tree order."""
    found = []
    for span in trace["spans"]:
        for log in span["logs"]:
            found.append((span["name"], log["level"], log["message"]))
    assert trace["unattached_logs"] == [], trace["unattached_logs"]
    return found


def descends_from(trace: dict[str, Any], span_id: str, ancestor: str) -> bool:
    parents = {span["span_id"]: span["parent_id"] for span in trace["spans"]}
    while span_id is not None:
        if span_id == ancestor:
            return True
        span_id = parents.get(span_id)  # type: ignore[assignment]
    return False


# A Flask app: its output with the agent is the output without it, and its records sit under the
# request's server span.

FLASK_APP = """
    import logging
    import sys
    import http.client
    import threading

    from flask import Flask

    app = Flask("shop")
    log = logging.getLogger("shop.orders")
    log.setLevel(logging.INFO)  # no handler: WARNING and up reach stderr through logging.lastResort

    @app.route("/order")
    def order():
        log.info("order %s received", 42)
        log.warning("stock low for %s", "widgets")
        try:
            {}["card"]
        except KeyError:
            log.exception("payment failed")
        print("handled", flush=True)
        return "ok"

    port = int(sys.argv[1])
    threading.Thread(
        target=app.run, kwargs={"port": port, "use_reloader": False}, daemon=True
    ).start()
    import socket, time
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    # http.client, which nothing instruments: the request carries no trace context, and the server
    # span is the root of its trace (urllib.request would be a client span, its parent).
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("GET", "/order")
    print("client got", connection.getresponse().read().decode(), flush=True)
    time.sleep(0.2)  # the access log line is written by the server thread
"""

#: werkzeug's access log stamps each line with the time: the only bytes that differ between runs.
ACCESS_TIME = re.compile(r"\[\d\d/\w{3}/\d{4} \d\d:\d\d:\d\d\]")


@pytest.mark.parametrize("activation", ["launcher", "env-only"])
def test_flask_output_is_unchanged_and_records_sit_under_the_server_span(
    tmp_path: Path, activation: str
) -> None:
    port = free_port()
    # One file for both runs (tracebacks name it), the check that no agent is loaded at its end.
    app = write_app(tmp_path, textwrap.dedent(FLASK_APP) + NO_AGENT_CHECK, "shop.py")
    without = run_process(
        [sys.executable, str(app), str(port)], child_env(), cwd=tmp_path, expect_stderr=None
    )
    assert without.returncode == 0, without.stderr
    write_app(tmp_path, FLASK_APP, "shop.py")
    env = agent_env(None, LOGFIRE_STORE=str(store_of(tmp_path)))
    if activation == "launcher":
        command = [LAUNCHER, "python", str(app), str(port)]
    else:
        command = [sys.executable, str(app), str(port)]
        env["LOGFIRE_RUN"] = "1"
    with_agent = run_process(command, env, cwd=tmp_path, expect_stderr=None)
    assert with_agent.returncode == 0, with_agent.stderr
    # What the app printed, byte for byte: its own lines, werkzeug's banner and access log, and the
    # records that logging.lastResort writes (WARNING and ERROR, with the traceback).
    assert with_agent.stdout == without.stdout
    assert ACCESS_TIME.sub("[time]", with_agent.stderr) == ACCESS_TIME.sub("[time]", without.stderr)
    assert "Running on http://127.0.0.1:" in without.stderr
    assert '"GET /order HTTP/1.1" 200' in without.stderr
    assert "stock low for widgets\npayment failed\nTraceback" in without.stderr

    trace = trace_rooted_at(store_of(tmp_path), "GET /order")
    server = trace["spans"][0]
    assert server["kind"] == "SERVER"
    assert logs_of(trace) == [
        ("GET /order", "INFO", "order 42 received"),
        ("GET /order", "WARNING", "stock low for widgets"),
        ("GET /order", "ERROR", "payment failed"),
    ]
    failed = server["logs"][2]
    assert failed["logger"] == "shop.orders"
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].rstrip().endswith("KeyError: 'card'")
    # werkzeug's own access log line is written after the request span ended: not in the trace.
    tree = view_text(store_of(tmp_path), trace["trace"]["trace_id"])
    assert re.search(
        r"^GET /order  \[shop\] SERVER [^\n]*\n"
        r"  \| INFO shop\.orders: order 42 received\n"
        r"  \| WARNING shop\.orders: stock low for widgets\n"
        r"  \| ERROR shop\.orders: payment failed\n"
        r"  \|   Traceback \(most recent call last\):\n",
        tree,
        re.MULTILINE,
    ), tree


# Correlation: the ids in a format, inside and outside spans, with and without the SDK.

FORMAT_APP = """
    import logging
    import sys

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(levelname)s trace=%(otelTraceID)s span=%(otelSpanID)s sampled=%(otelTraceSampled)s "
        "service=[%(otelServiceName)s] %(message)s",
    )
    log = logging.getLogger("app")
    log.info("before")
    if sys.argv[1] == "spans":
        import logfire_run

        with logfire_run.span("work") as span:
            context = span.get_span_context()
            print(f"ids {context.trace_id:032x} {context.span_id:016x}")
            log.info("inside")
    log.info("after")
"""


def test_a_format_naming_the_ids_works_inside_and_outside_spans(tmp_path: Path) -> None:
    write_app(tmp_path, FORMAT_APP)
    result = run_launcher(["--service-name", "fmt", "python", "app.py", "spans"], agent_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before, ids, inside, after = result.stdout.splitlines()
    trace_id, span_id = ids.split()[1:]
    assert before == "INFO trace=0 span=0 sampled=False service=[] before"
    assert inside == f"INFO trace={trace_id} span={span_id} sampled=True service=[fmt] inside"
    assert after == "INFO trace=0 span=0 sampled=False service=[fmt] after"


@pytest.mark.parametrize("sdk", ["never started", "disabled"])
def test_a_format_naming_the_ids_works_without_the_sdk(tmp_path: Path, sdk: str) -> None:
    write_app(tmp_path, FORMAT_APP)
    extra = {"OTEL_SDK_DISABLED": "true"} if sdk == "disabled" else {}
    script = (
        "import sys; exec(open('app.py').read()); "
        "print('sdk' if 'opentelemetry.sdk' in sys.modules else 'no sdk')"
    )
    result = run_launcher(["python", "-c", script, "none"], agent_env(**extra), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "INFO trace=0 span=0 sampled=False service=[] before\n"
        "INFO trace=0 span=0 sampled=False service=[] after\n"
        "no sdk\n"
    )


def test_log_correlation_variable_sets_opentelemetry_format(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        import logging
        import logfire_run

        with logfire_run.span("work") as span:
            context = span.get_span_context()
            print(f"{context.trace_id:032x} {context.span_id:016x}", flush=True)
            logging.getLogger("app").info("inside")
        logging.warning("outside")
        """,
    )
    result = run_launcher(
        ["--service-name", "corr", "python", "app.py"],
        agent_env(OTEL_PYTHON_LOG_CORRELATION="true"),
        cwd=tmp_path,
        expect_stderr=None,
    )
    assert result.returncode == 0, result.stderr
    trace_id, span_id = result.stdout.split()
    inside, outside = result.stderr.splitlines()
    assert re.fullmatch(
        rf"\S+ \S+ INFO \[app\] \[app\.py:8\] \[trace_id={trace_id} span_id={span_id} "
        r"resource\.service\.name=corr trace_sampled=True\] - inside",
        inside,
    ), inside
    assert outside.endswith(
        "WARNING [root] [app.py:9] [trace_id=0 span_id=0 resource.service.name=corr trace_sampled=False]"
        " - outside"
    ), outside


# Capture: levels, exclusions, pools and exits.


def without_fork_warnings(stderr: str) -> str:
    return FORK_WARNINGS.sub("", stderr) if isinstance(FORK_WARNINGS, re.Pattern) else stderr


POOL_APP = """
    import concurrent.futures as cf
    import logging
    import multiprocessing
    import sys

    import logfire_run

    log = logging.getLogger("pool")
    log.setLevel(logging.INFO)

    def task(name):
        log.info("task %s in its worker", name)
        return name

    if __name__ == "__main__":
        method = sys.argv[1]
        with logfire_run.span("parent"):
            if method == "thread":
                pool = cf.ThreadPoolExecutor(2)
            else:
                pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))
            with pool:
                assert list(pool.map(task, ["a", "b", "c"])) == ["a", "b", "c"]
            log.warning("all done")
"""


@pytest.mark.parametrize("method", ["thread", "fork", "spawn"])
def test_records_from_pool_workers_arrive_with_their_span(tmp_path: Path, method: str) -> None:
    write_app(tmp_path, POOL_APP)
    result = run_launcher(
        ["python", "app.py", method],
        agent_env(LOGFIRE_STORE=str(store_of(tmp_path))),
        cwd=tmp_path,
        timeout=120,
        # The WARNING record, printed by logging.lastResort, after a fork's warnings (Python 3.12+).
        expect_stderr=lambda stderr: without_fork_warnings(stderr) == "all done\n",
    )
    assert result.returncode == 0, result.stderr
    trace = trace_rooted_at(store_of(tmp_path), "parent")
    parent = trace["spans"][0]
    records = [(span, log) for span in trace["spans"] for log in span["logs"]]
    messages = sorted(log["message"] for _span, log in records)
    assert messages == ["all done", "task a in its worker", "task b in its worker", "task c in its worker"]
    for span, log in records:
        assert descends_from(trace, span["span_id"], parent["span_id"]), (span, log)
        if log["message"].startswith("task") and method != "thread":
            assert log["pid"] != parent["pid"], "a process pool task logged in the parent process"


def test_capture_level_and_off(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        import logging
        import logfire_run

        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
        with logfire_run.span("levels"):
            for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
                logging.getLogger("app").log(level, logging.getLevelName(level).lower())
            logging.getLogger("opentelemetry.sdk").warning("theirs")
            logging.getLogger("logfire_run.agent").warning("ours")
        """,
    )
    stores = {}
    for level in ("default", "warning", "debug", "off"):
        store = tmp_path / f"{level}.db"
        stores[level] = store
        extra = {} if level == "default" else {"LOGFIRE_LOG_LEVEL": level}
        result = run_launcher(
            ["python", "app.py"],
            agent_env(LOGFIRE_STORE=str(store), **extra),
            cwd=tmp_path,
            expect_stderr=None,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == "debug\ninfo\nwarning\nerror\ntheirs\nours\n"  # the app's output, all of it
    captured = {
        level: [m for _s, _l, m in logs_of(trace_rooted_at(store, "levels"))]
        for level, store in stores.items()
    }
    assert captured == {
        "default": ["info", "warning", "error"],
        "warning": ["warning", "error"],
        "debug": ["debug", "info", "warning", "error"],
        "off": [],
    }


FILTERS_APP = """
    import logging
    import logging.handlers
    import queue
    import re

    from opentelemetry import trace

    class Redact(logging.Filter):
        def filter(self, record):
            record.msg = re.sub(r"\\d{4}-\\d{4}", "****", str(record.msg))
            return True

    class NoHealthChecks(logging.Filter):
        def filter(self, record):
            return "healthz" not in record.getMessage()

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    payments = logging.getLogger("payments")
    payments.addFilter(Redact())
    access = logging.getLogger("access")
    access.addFilter(NoHealthChecks())
    # A queue handler whose listener hands each record on to a stream handler, on its own thread.
    records = queue.Queue()
    queued = logging.getLogger("queued")
    queued.propagate = False
    queued.addHandler(logging.handlers.QueueHandler(records))
    listener = logging.handlers.QueueListener(records, *logging.getLogger().handlers)
    listener.start()
    with trace.get_tracer("app").start_as_current_span("filters"):
        payments.info("card 1234-5678 charged")
        access.info("GET /healthz")
        access.info("GET /orders")
        queued.warning("through the queue")
    listener.stop()
"""


def test_logger_filters_decide_what_is_captured(tmp_path: Path) -> None:
    # A filter that drops a record keeps it out of the store too; one that redacts a record is what
    # the store gets; a record a queue listener hands on is captured once, where it was made.
    write_app(tmp_path, FILTERS_APP)
    store = tmp_path / "traces.db"
    result = run_launcher(
        ["python", "app.py"], agent_env(LOGFIRE_STORE=str(store)), cwd=tmp_path, expect_stderr=None
    )
    assert result.returncode == 0, result.stderr
    plain = run_without_agent(tmp_path, FILTERS_APP, name="plain.py", expect_stderr=None)
    assert plain.returncode == 0, plain.stderr
    assert (
        result.stderr
        == plain.stderr
        == ("payments card **** charged\naccess GET /orders\nqueued through the queue\n")
    )
    assert logs_of(trace_rooted_at(store, "filters")) == [
        ("filters", "INFO", "card **** charged"),
        ("filters", "INFO", "GET /orders"),
        ("filters", "WARNING", "through the queue"),
    ]


def test_invalid_log_level_is_a_clear_error(tmp_path: Path) -> None:
    result = run_launcher(["--log-level", "loud", "python", "-c", "pass"], agent_env(), expect_stderr=None)
    assert result.returncode == 2
    assert "invalid log level 'loud'" in result.stderr


def test_records_are_flushed_at_sigterm_and_os_exit(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        import logging
        import os
        import signal
        import sys
        import logfire_run

        log = logging.getLogger("exit")
        log.setLevel(logging.INFO)
        with logfire_run.span("exit " + sys.argv[1]):
            log.info("last words")
            if sys.argv[1] == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                os._exit(3)
        """,
    )
    env = agent_env(LOGFIRE_STORE=str(store_of(tmp_path)), OTEL_BSP_SCHEDULE_DELAY="30000")
    env["OTEL_BLRP_SCHEDULE_DELAY"] = "30000"  # nothing leaves before the exit flush
    for how, status in (("sigterm", -15), ("os._exit", 3)):
        result = run_launcher(["python", "app.py", how], env, cwd=tmp_path)
        assert result.returncode == status
    # The span never ended: its record is under an unknown span in the trace of the span that did.
    store = store_of(tmp_path)
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT message FROM logs").fetchall()
    assert rows == [("last words",), ("last words",)]


def test_a_program_that_never_logs_does_not_import_logging(tmp_path: Path) -> None:
    script = "import sys; print('logging' in sys.modules, 'logfire_run.agent.bootstrap' in sys.modules)"
    workdir = tmp_path / "work"  # sys.path[0] of -c: unchanged, so the second start has a warm cache
    workdir.mkdir()
    run_launcher(["python", "-c", script], agent_env(), cwd=workdir)  # the instrumentor scan needs it
    result = run_launcher(["python", "-c", script], agent_env(), cwd=workdir)
    assert result.stdout == "False True\n"


# OpenTelemetry's logging instrumentor, installed: superseded, and the output is unchanged.


def test_opentelemetry_logging_instrumentor_is_superseded(tmp_path: Path) -> None:
    info = run_launcher(["--info"], agent_env()).stdout
    line = next(line for line in info.splitlines() if "opentelemetry-instrumentation-logging" in line)
    assert re.search(r"logging\s+replaced\s+by logfire-run's logging", line), line
    assert re.search(r"log records \(info and up; see docs/logs.md\):\n  store +logs table of", info), info
    otlp_info = run_launcher(
        ["--info"], agent_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")
    ).stdout
    assert re.search(
        r"  otlp +endpoint +http://collector:4318/v1/logs +env OTEL_EXPORTER_OTLP_ENDPOINT", otlp_info
    )
    # A bare logging.warning() still reaches stderr (its handler on the root logger would silence it).
    result = run_launcher(
        ["python", "-c", "import logging, logfire_run\nwith logfire_run.span('s'): logging.warning('hi')"],
        agent_env(),
        cwd=tmp_path,
        expect_stderr="WARNING:root:hi\n",
    )
    assert result.returncode == 0


# OTLP: records arrive at a real receiver with their ids and the spans' resource.


def test_otlp_logs_arrive_with_their_trace_and_span_ids(tmp_path: Path) -> None:
    receiver = ThirdPartyReceiver("http/protobuf")
    try:
        write_app(
            tmp_path,
            """
            import logging
            import logfire_run

            logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
            with logfire_run.span("sent") as span:
                context = span.get_span_context()
                print(f"{context.trace_id:032x} {context.span_id:016x}", flush=True)
                logging.getLogger("app").warning("over otlp")
                try:
                    1 / 0
                except ZeroDivisionError:
                    logging.getLogger("app").exception("divided")
            logging.getLogger("app").info("no span")
            """,
        )
        env = agent_env(LOGFIRE_SERVICE_NAME="sender", LOGFIRE_LOG_LEVEL="debug", **receiver.env())
        env["LOGFIRE_EXPORTER"] = "otlp"
        # The app's root logger and the capture are at DEBUG: the exporters' HTTP client (urllib3) logs,
        # and its records print, but are never captured and sent (each send would log again).
        result = run_launcher(["python", "app.py"], env, cwd=tmp_path, expect_stderr=None)
        assert result.returncode == 0, result.stderr
        assert "urllib3.connectionpool Starting new HTTP connection" in result.stderr, result.stderr
        trace_id, span_id = result.stdout.split()
        receiver.wait_count(1)
        logs = receiver.wait_for_logs(3)
        assert sorted(log["body"] for log in logs) == ["divided", "no span", "over otlp"], result.stderr
        by_body = {log["body"]: log for log in logs}
        for body in ("over otlp", "divided"):
            assert (by_body[body]["trace_id"], by_body[body]["span_id"]) == (trace_id, span_id)
        assert by_body["no span"]["trace_id"] == ""
        assert by_body["over otlp"]["severity_text"] == "WARN"
        assert by_body["over otlp"]["severity_number"] == 13
        assert by_body["over otlp"]["scope"] == "app"
        assert "ZeroDivisionError" in by_body["divided"]["attributes"]["exception.stacktrace"]
        span = receiver.spans[0]
        assert by_body["over otlp"]["resource"] == span.resource
        assert span.resource["service.name"] == "sender"
    finally:
        receiver.close()


# The store: a store written before logs were kept is read, and upgraded by the next writer.


def test_a_version_1_store_is_read_and_upgraded(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    write_app(tmp_path, "import logfire_run\nwith logfire_run.span('old'):\n    pass\n")
    assert (
        run_launcher(["python", "app.py"], agent_env(LOGFIRE_STORE=str(store)), cwd=tmp_path).returncode == 0
    )
    with sqlite3.connect(store) as connection:
        connection.execute("DROP TABLE logs")
        connection.execute("PRAGMA user_version=1")
    assert [item["root"] for item in view_json(store)] == ["old"]
    old = view_json(store, "last")
    assert old["spans"][0]["logs"] == []
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (1,)  # the viewer wrote nothing
    write_app(
        tmp_path,
        "import logging, logfire_run\nwith logfire_run.span('new'):\n    logging.warning('kept')\n",
    )
    result = run_launcher(
        ["python", "app.py"],
        agent_env(LOGFIRE_STORE=str(store)),
        cwd=tmp_path,
        expect_stderr="WARNING:root:kept\n",
    )
    assert result.returncode == 0
    assert logs_of(trace_rooted_at(store, "new")) == [("new", "WARNING", "kept")]
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_viewer_shows_hostile_log_messages_as_inert_text(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    write_app(
        tmp_path,
        """
        import logging, logfire_run
        with logfire_run.span("hostile"):
            logging.warning("a\\nforged  [x] INTERNAL 1.0 ms \\x1b[2J</script><script>alert(1)</script>")
        """,
    )
    result = run_launcher(
        ["python", "app.py"], agent_env(LOGFIRE_STORE=str(store)), cwd=tmp_path, expect_stderr=None
    )
    assert result.returncode == 0
    tree = view_text(store, "last")
    assert tree.count("\n") == 3, tree  # the trace line, the span line, the record's line
    assert "\x1b" not in tree and "a\\nforged" in tree
    page = tmp_path / "page.html"
    run_process([VIEWER, "--store", str(store), "--html", str(page)], child_env())
    source = page.read_text()
    assert "</script><script>alert" not in source
    assert "\\u003c/script\\u003e" in source
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    dom = run_process(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        child_env(), timeout=120, expect_stderr=None,
    ).stdout  # fmt: skip
    # The page drew the span and, under it, the record: its level and its message, as text.
    assert 'data-rendered="1"' in dom, dom[-2000:]
    assert '<span class="level level-WARNING">WARNING</span><span class="logger">root: </span>' in dom
    message = re.search(r'<span class="message">(.*?)</span>', dom, re.DOTALL)
    assert message is not None
    assert html.unescape(message.group(1)) == (
        "a\nforged  [x] INTERNAL 1.0 ms \x1b[2J</script><script>alert(1)</script>"
    )
    assert "<script>alert" not in dom


def test_launcher_flag_sets_the_level(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        "import logging, logfire_run\n"
        "with logfire_run.span('flag'):\n    logging.warning('w')\n    logging.error('e')\n",
    )
    store = store_of(tmp_path)
    result = run_launcher(
        ["--log-level", "error", "python", "app.py"],
        agent_env(LOGFIRE_STORE=str(store)),
        cwd=tmp_path,
        expect_stderr="WARNING:root:w\nERROR:root:e\n",
    )
    assert result.returncode == 0
    assert logs_of(trace_rooted_at(store, "flag")) == [("flag", "ERROR", "e")]


# Celery: a task's records sit under its run span, from a prefork child of a worker.

CELERY_TASKS = """
    import logging
    import os

    from celery import Celery
    from celery.utils.log import get_task_logger

    app = Celery("logs_tasks", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
    app.conf.update(task_default_queue=os.environ["CELERY_QUEUE"], broker_connection_retry_on_startup=True)
    task_log = get_task_logger(__name__)
    plain_log = logging.getLogger("billing")

    @app.task
    def charge(amount):
        task_log.info("charging %s", amount)
        plain_log.warning("card expires soon")
        return os.getpid()
"""

CELERY_PRODUCER = """
    import json
    import logfire_run
    import logs_tasks

    with logfire_run.span("checkout") as span:
        pid = logs_tasks.charge.delay(12).get(timeout=30)
    print(json.dumps({"trace_id": f"{span.get_span_context().trace_id:032x}", "pid": pid}))
"""


@pytest.fixture
def redis_url(tmp_path: Path) -> Any:
    import shutil

    from conftest import wait_for_port

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
def test_celery_task_records_sit_under_the_task_run_span(tmp_path: Path, redis_url: str) -> None:
    import os
    import signal

    write_app(tmp_path, CELERY_TASKS, "logs_tasks.py")
    write_app(tmp_path, CELERY_PRODUCER, "produce.py")
    store = store_of(tmp_path)
    env = agent_env(LOGFIRE_STORE=str(store), BROKER_URL=redis_url, CELERY_QUEUE=f"logs-{os.getpid()}")
    env["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    log_file = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [LAUNCHER, "--service-name", "worker", "celery", "-A", "logs_tasks", "worker", "--pool", "prefork",
         "--concurrency", "1", "-Q", env["CELERY_QUEUE"], "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--loglevel", "INFO", "--logfile", str(log_file)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        produced = run_launcher(
            ["--service-name", "shop", "python", "produce.py"], env, cwd=tmp_path, timeout=90
        )
        assert produced.returncode == 0, produced.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, worker_stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, worker_stderr
    assert worker_stderr == ""
    result = json.loads(produced.stdout)
    # Celery's own log file still holds the task's records (its handlers are untouched).
    assert "charging 12" in log_file.read_text() and "card expires soon" in log_file.read_text()
    trace = view_json(store, result["trace_id"])
    run = next(span for span in trace["spans"] if span["kind"] == "CONSUMER")
    records = [(log["level"], log["message"], log["pid"]) for log in run["logs"]]
    assert records[:2] == [
        ("INFO", "charging 12", result["pid"]),
        ("WARNING", "card expires soon", result["pid"]),
    ]
    # Then Celery's own record of the task's end, made in the task's span as well.
    assert [(level, message.split("[")[0]) for level, message, _pid in records[2:]] == [
        ("INFO", "Task logs_tasks.charge")
    ]
    assert run["logs"][0]["logger"] == "logs_tasks"
    assert run["logs"][0]["service"] == "worker"


def test_configure_sets_the_level_at_run_time(tmp_path: Path) -> None:
    write_app(
        tmp_path,
        """
        import logging, logfire_run
        log = logging.getLogger("app")
        log.setLevel(logging.INFO)
        with logfire_run.span("configured"):
            log.info("kept at info")
            logfire_run.configure(log_level="error")
            log.warning("not kept at error")
            log.error("kept at error")
        """,
    )
    store = store_of(tmp_path)
    result = run_launcher(
        ["python", "app.py"], agent_env(LOGFIRE_STORE=str(store)), cwd=tmp_path, expect_stderr=None
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "not kept at error\nkept at error\n"
    assert [message for _s, _l, message in logs_of(trace_rooted_at(store, "configured"))] == [
        "kept at info",
        "kept at error",
    ]


def test_direct_log_encoding_decodes_to_opentelemetry_encoding() -> None:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.sdk.resources import Resource

    from logfire_run.agent.export.logs import readable_records
    from logfire_run.agent.export.otlp_logs import encode_logs_request

    resource = Resource.create({"service.name": "enc", "process.pid": 7, "x.list": ("a", "b")})
    site = ("/srv/app.py", 12, "handler", "MainThread")
    batch = [
        (1_000, 20, "INFO", "app", "plain", None, 0xABC << 64 | 1, 0xDEF, 1, site),
        (2_000, 30, "WARNING", "app.db", "ünïcode ✓", None, 1, 2, 0, site),
        (3_000, 40, "ERROR", "app", "x" * 300, "Traceback ...\nKeyError: 'card'", 5, 6, 1, site),
        (4_000, 5, "Level 5", "", "", None, 0, 0, 0, ("/p", 1, "f", "T")),
        (5_000, 50, "CRITICAL", "app.db", "fatal", None, 7, 8, 1, site),
    ]
    ours = ExportLogsServiceRequest()
    ours.ParseFromString(encode_logs_request(batch, resource, 9_000))
    records = readable_records(batch, resource)
    for record in records:
        record.log_record.observed_timestamp = 9_000
    theirs = encode_logs(records)
    assert ours == theirs, f"{ours}\n!=\n{theirs}"
