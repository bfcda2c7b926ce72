"""Metrics as a user gets them: OTLP (HTTP and gRPC) to a real receiver, per worker under gunicorn and
Celery prefork, the settings checked by the launcher, and the local store read by the viewer.

The apps are plain Flask and Celery code; nothing in them knows about metrics. The HTTP server and
client durations come from OpenTelemetry's instrumentors, the runtime metrics from the agent's (or
OpenTelemetry's system-metrics instrumentation, installed in the test environment).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_celery import SUPPORT, Worker

from conftest import (
    LAUNCHER,
    VIEWER,
    agent_env,
    child_env,
    free_port,
    run_launcher,
    run_process,
    wait_for_port,
)
from otlp_receivers import HttpReceiver, MetricPoint, ThirdPartyReceiver, histogram_total

#: The server duration histogram of OpenTelemetry's WSGI and Flask instrumentation (old semantic
#: conventions, the default of its 0.66 releases).
SERVER_DURATION = "http.server.duration"
CLIENT_DURATION = "http.client.duration"

FLASK_APP = """
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from flask import Flask


class Upstream(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
threading.Thread(target=upstream.serve_forever, daemon=True).start()
app = Flask(__name__)


@app.route("/order/<int:number>")
def order(number):
    requests.get(f"http://127.0.0.1:{upstream.server_address[1]}/stock", timeout=10)
    if number % 5 == 4:
        return "out of stock", 503
    return "ok"


client = app.test_client()
for number in range(10):
    client.get(f"/order/{number}")
print("served")
"""


def _server_points(points: list[MetricPoint]) -> list[MetricPoint]:
    return [point for point in points if point.name == SERVER_DURATION]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_metrics_reach_an_otlp_receiver(tmp_path: Path, protocol: str) -> None:
    receiver = ThirdPartyReceiver(protocol)
    try:
        (tmp_path / "shop.py").write_text(FLASK_APP)
        env = agent_env(**receiver.env(), LOGFIRE_EXPORTER="otlp")
        # The default interval (60 s) is longer than the run: the exit flush sends the only collection.
        result = run_launcher(["python", "shop.py"], env, cwd=tmp_path)
        assert result.stdout == "served\n"
        points = receiver.wait_for_metrics(lambda got: histogram_total(got, SERVER_DURATION) >= 10)
    finally:
        receiver.close()
    assert histogram_total(points, SERVER_DURATION) == 10
    assert histogram_total(points, CLIENT_DURATION) == 10
    statuses = {point.attributes.get("http.status_code") for point in _server_points(points)}
    assert statuses == {200, 503}
    names = {point.name for point in points}
    assert "http.server.active_requests" in names
    # Runtime metrics: OpenTelemetry's system-metrics instrumentation is installed here.
    assert {"process.runtime.cpython.memory", "process.runtime.cpython.thread_count"} <= names, names
    resource = _server_points(points)[0].resource
    assert resource["service.name"] == "shop"
    assert isinstance(resource["process.pid"], int)
    assert len(str(resource["service.instance.id"])) == 36


@pytest.mark.slow
def test_runtime_metrics_without_system_metrics(tmp_path: Path) -> None:
    """The agent's own small set, when OpenTelemetry's system metrics are not there (disabled here)."""
    receiver = HttpReceiver()
    script = tmp_path / "work.py"
    # Runtime gauges alone leave with the periodic collections (not at exit): the script outlives one.
    script.write_text("import sqlite3, time\ntime.sleep(1)\nprint('done')\n")
    env = agent_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        LOGFIRE_EXPORTER="otlp",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="system_metrics",
        OTEL_METRIC_EXPORT_INTERVAL="200",
    )
    try:
        result = run_launcher(["python", str(script)], env)
        assert result.stdout == "done\n"
        points = receiver.wait_for_metrics(lambda got: any(p.name == "process.cpu.time" for p in got))
    finally:
        receiver.server.shutdown()
    names = {point.name for point in points}
    assert {
        "process.cpu.time",
        "process.memory.usage",
        "process.thread.count",
        "cpython.gc.collections",
    } <= names
    assert not any(name.startswith(("system.", "process.runtime.")) for name in names), names
    modes = {point.attributes.get("cpu.mode") for point in points if point.name == "process.cpu.time"}
    assert modes == {"user", "system"}
    memory = [point.value for point in points if point.name == "process.memory.usage"]
    assert memory and all(value > 1_000_000 for value in memory)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_METRICS_EXPORTER", "bogus", "unknown metric exporter 'bogus'"),
        ("OTEL_METRICS_EXPORTER", "otlp,none", "metric exporter 'none' cannot be combined"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "soon", "use a positive whole number"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "0", "use a positive whole number"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes", "cumulative, delta, lowmemory"),
        ("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "buckets", "explicit_bucket_histogram"),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector", "invalid endpoint 'collector'"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json", "'http/json' is not supported"),
        ("OTEL_LOGS_EXPORTER", "file", "unknown log exporter 'file'"),
    ],
)
def test_a_bad_metrics_setting_stops_the_launcher(variable: str, value: str, message: str) -> None:
    env = child_env(**{variable: value})
    result = run_launcher(["python", "-c", "print('ran')"], env, expect_stderr=None)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"logfire-run: {variable}: ") and message in result.stderr, result.stderr


def test_a_bad_metrics_setting_inside_a_running_app_is_said_once(tmp_path: Path) -> None:
    """Env-only activation: the app runs, the value is set aside (OpenTelemetry never sees it)."""
    script = tmp_path / "app.py"
    script.write_text("import os, sqlite3\nprint(os.environ.get('OTEL_METRIC_EXPORT_INTERVAL'))\n")
    env = agent_env(LOGFIRE_RUN="1", OTEL_METRIC_EXPORT_INTERVAL="soon")
    result = run_process(
        [sys.executable, str(script)],
        env,
        expect_stderr="logfire-run: OTEL_METRIC_EXPORT_INTERVAL: invalid value 'soon': use a positive "
        "whole number; using the default\n",
    )
    assert result.stdout == "None\n"


# Pre-fork servers: one series per worker, nothing of the parent's


GUNICORN_APP = """
from flask import Flask

app = Flask(__name__)


@app.route("/hello/<name>")
def hello(name):
    return f"hello {name}"


@app.route("/boom")
def boom():
    return "no", 500


# Served at import: in the master before it forks (--preload), else in each worker.
app.test_client().get("/boom")
"""


@pytest.fixture
def metrics_receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.server.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["workers-import", "preload"])
def test_gunicorn_workers_counts_add_up(
    tmp_path: Path, metrics_receiver: HttpReceiver, preload: bool
) -> None:
    (tmp_path / "webshop.py").write_text(GUNICORN_APP)
    port = free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    command = [gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    command += ["--preload", "webshop:app"] if preload else ["webshop:app"]
    env = agent_env(OTEL_EXPORTER_OTLP_ENDPOINT=metrics_receiver.endpoint, LOGFIRE_EXPORTER="otlp")
    process = subprocess.Popen(
        [LAUNCHER, *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process=process, timeout=30)
        for number in range(40):
            # A new connection each time: the master's listening socket hands them to both workers.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello/{number}", timeout=10) as response:
                assert response.read() == f"hello {number}".encode()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert stderr == ""
    points = metrics_receiver.wait_for_metrics(lambda got: histogram_total(got, SERVER_DURATION) >= 40)
    served = [p for p in _server_points(points) if p.attributes.get("http.status_code") == 200]
    assert histogram_total(served, SERVER_DURATION) == 40
    workers = {point.resource["process.pid"] for point in served}
    instances = {point.resource["service.instance.id"] for point in served}
    assert len(instances) == len(workers) >= 1
    # The request served at import: with --preload, by the master before it forks, counted once and
    # never again by a worker; without, by each worker as it imports the app.
    early = [p for p in _server_points(points) if p.attributes.get("http.status_code") == 500]
    early_pids = {point.resource["process.pid"] for point in early}
    if preload:
        assert histogram_total(early, SERVER_DURATION) == 1
        assert not early_pids & workers
    else:
        assert histogram_total(early, SERVER_DURATION) == 2
        assert workers <= early_pids


@pytest.mark.slow
def test_celery_prefork_task_counts_add_up_after_sigterm(
    tmp_path: Path, metrics_receiver: HttpReceiver, redis_url: str
) -> None:
    worker = Worker(
        "metrics-worker",
        metrics_receiver,  # type: ignore[arg-type]
        redis_url,
        tmp_path,
        worker_args=("--concurrency", "2"),
    )
    try:
        sender = textwrap.dedent(
            """
            import celery_tasks
            results = [celery_tasks.add.delay(n, n) for n in range(12)]
            print(sum(result.get(timeout=60) for result in results))
            """
        )
        env = child_env(BROKER_URL=redis_url, CELERY_QUEUE=worker.queue)
        result = run_process([sys.executable, "-c", sender], env, cwd=SUPPORT, timeout=120)
        assert result.stdout == f"{sum(2 * n for n in range(12))}\n"
    finally:
        assert worker.stop() == 0
    assert worker.stderr() == ""
    name = "flower.task.runtime.seconds"
    points = metrics_receiver.wait_for_metrics(lambda got: histogram_total(got, name) >= 12)
    assert histogram_total(points, name) == 12
    children = {point.resource["process.pid"] for point in points if point.name == name}
    assert worker.process.pid not in children


# The local store, read by the viewer


@pytest.mark.slow
def test_store_and_viewer_show_requests_per_route(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(FLASK_APP)
    env = agent_env()
    result = run_launcher(["python", "shop.py"], env, cwd=tmp_path)
    assert result.stdout == "served\n"
    shown = run_process([VIEWER, "--metrics", "--json"], env)
    rows = json.loads(shown.stdout)
    by_route = {row["route"]: row for row in rows}
    order = by_route["GET /order/<int:number>"]
    assert (order["service"], order["count"], order["errors"]) == ("shop", 10, 2)
    assert 0 <= order["p50"] <= order["p95"] <= order["p99"]
    text = run_process([VIEWER, "--metrics", "--plain"], env).stdout
    assert "GET /order/<int:number>" in text and "shop" in text
    header = text.splitlines()[0].split()
    assert header[:3] == ["service", "route", "requests"], text


@pytest.mark.slow
def test_viewer_metrics_on_a_store_without_metrics(tmp_path: Path) -> None:
    """An empty store (or one written before metrics were kept) says so, and --json gives []."""
    env = agent_env()
    run_launcher(["python", "-c", "import logfire_run\nwith logfire_run.span('only a span'):\n    pass"], env)
    assert json.loads(run_process([VIEWER, "--metrics", "--json"], env).stdout) == []
    assert "no request metrics" in run_process([VIEWER, "--metrics"], env).stdout


FORKING_SCRIPT = """
import os
import sqlite3  # an instrumented library: the SDK starts in the parent, before the fork

pid = os.fork()
if pid == 0:
    import time

    ballast = bytearray(300 * 1024 * 1024)  # the child's own memory, touched page by page
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    time.sleep(1.5)  # a worker living past a collection interval (0.5 s here)
    os._exit(0)
os.waitpid(pid, 0)
print(pid)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("disabled", "name"),
    [("", "process.runtime.cpython.memory"), ("system_metrics", "process.memory.usage")],
    ids=["system-metrics", "built-in"],
)
def test_a_forked_child_measures_itself(tmp_path: Path, disabled: str, name: str) -> None:
    """Each process's runtime gauges are its own: a child does not report its parent's memory."""
    receiver = HttpReceiver()
    script = tmp_path / "forks.py"
    script.write_text(FORKING_SCRIPT)
    env = agent_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        LOGFIRE_EXPORTER="otlp",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled,
        OTEL_METRIC_EXPORT_INTERVAL="500",
    )
    try:
        result = run_launcher(["python", str(script)], env)
        child = int(result.stdout)

        def memory(points: list[MetricPoint]) -> dict[int, float]:
            found = {}
            for point in points:
                if point.name == name and point.attributes.get("type", "rss") == "rss":
                    pid = point.resource["process.pid"]
                    found[pid] = max(found.get(pid, 0), point.value)
            return found

        points = receiver.wait_for_metrics(lambda got: len(memory(got)) == 2)
    finally:
        receiver.server.shutdown()
    by_pid = memory(points)  # each process's largest value
    assert set(by_pid) == {child, result_pid(points, child)}
    parent = result_pid(points, child)
    assert by_pid[child] > 300 * 1024 * 1024 > by_pid[parent], by_pid


def result_pid(points: list[MetricPoint], child: int) -> int:
    """The pid of the process other than `child` that sent metrics (the parent)."""
    pids = {point.resource["process.pid"] for point in points} - {child}
    assert len(pids) == 1, pids
    return pids.pop()


@pytest.mark.slow
def test_info_says_where_metrics_go() -> None:
    env = child_env(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="grpc",
        OTEL_METRIC_EXPORT_INTERVAL="15000",
        OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta",
    )
    text = run_launcher(["--info"], env).stdout
    section = text[text.index("\nmetrics (") : text.index("\ninstrumentors")]
    assert [line.split() for line in section.strip().splitlines()[1:]] == [
        ["otlp", "endpoint", "http://collector:4318", "env", "OTEL_EXPORTER_OTLP_ENDPOINT"],
        ["protocol", "grpc", "env", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"],
        ["temporality", "delta", "env", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"],
        ["every", "15", "s", "and", "at", "exit", "env", "OTEL_METRIC_EXPORT_INTERVAL"],
    ]
    store = run_launcher(["--info"], child_env()).stdout
    assert "  store     metrics table of" in store
    none = run_launcher(["--info"], child_env(OTEL_METRICS_EXPORTER="none")).stdout
    assert "metrics are not exported" in none


@pytest.mark.slow
def test_a_dead_metrics_backend_is_one_line_at_exit(tmp_path: Path) -> None:
    """Spans to the store, metrics to an OTLP endpoint where nothing listens: the app runs and exits
    as it would, and the one line says what was dropped and why."""
    script = tmp_path / "app.py"
    script.write_text(
        "from opentelemetry import metrics\n"
        "metrics.get_meter('app').create_counter('jobs').add(1)\n"  # starts the SDK, measures once
        "print('done')\n"
    )
    env = agent_env(
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"http://127.0.0.1:{free_port()}/v1/metrics",
        LOGFIRE_EXIT_BUDGET="1",
    )
    result = run_launcher(["python", str(script)], env, expect_stderr=None)
    assert (result.returncode, result.stdout) == (0, "done\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "logfire-run: 1 metric collection dropped in this process: 1 not sent within the exit budget "
        "(1 s, at exit); the backend: nothing is listening there (connection refused)"
    ), lines[0]
    assert "connection refused" in lines[0].lower() or "failed to establish" in lines[0].lower(), lines[0]


def test_fast_attribute_keys_keep_series_apart_as_the_sdk_does() -> None:
    """The agent's shortcuts for attribute sets (agent/export/metrics.py) clean, split and merge
    series as the SDK's own code does: values of different types apart, the order of the keys not
    counted, empty keys dropped."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from logfire_run.agent.export import metrics

    sets: list[dict[str, object]] = [
        {"a": 1, "b": "x"},
        {"b": "x", "a": 1},  # the same set
        {"a": True, "b": "x"},
        {"a": 1.0, "b": "x"},
        {"a": None},
        {"a": (1, 2)},  # not flat: the SDK's own key
        {"a": (1, 2)},
        {},
        {"": 1, "b": "kept"},  # an empty key: dropped by the SDK's own cleaning
        {"a": [1, 2]},  # a list: a tuple once cleaned
    ]

    def series() -> list[tuple[tuple[tuple[str, object], ...], int]]:
        reader = InMemoryMetricReader()
        counter = MeterProvider(metric_readers=[reader]).get_meter("t").create_counter("c")
        for attributes in sets:
            counter.add(1, attributes)
        data = reader.get_metrics_data()
        assert data is not None
        points = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        return sorted(
            ((tuple((k, repr(v)) for k, v in sorted(p.attributes.items())), p.value) for p in points),
            key=repr,
        )

    sdk_series = series()
    metrics._use_fast_attribute_keys()
    try:
        assert series() == sdk_series
    finally:
        metrics._patches.restore()
    assert len(sdk_series) == 7


@pytest.mark.slow
def test_a_version_2_store_is_read_and_upgraded(tmp_path: Path) -> None:
    """A store written before metrics were kept: the viewer reads it as it is, the next writer adds
    the metrics table."""
    import sqlite3

    from logfire_run.store_format import SCHEMA_VERSION

    (tmp_path / "shop.py").write_text(FLASK_APP)
    store = tmp_path / "traces.db"
    env = agent_env(LOGFIRE_STORE=str(store))
    run_launcher(["python", "shop.py"], env, cwd=tmp_path)
    with sqlite3.connect(store) as connection:
        connection.execute("DROP TABLE metrics")
        connection.execute("PRAGMA user_version=2")
    assert json.loads(run_process([VIEWER, "--store", str(store), "--metrics", "--json"], env).stdout) == []
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (2,)  # the viewer wrote nothing
    run_launcher(["python", "shop.py"], env, cwd=tmp_path)
    rows = json.loads(run_process([VIEWER, "--store", str(store), "--metrics", "--json"], env).stdout)
    assert [(row["route"], row["count"]) for row in rows] == [("GET /order/<int:number>", 10)]
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
