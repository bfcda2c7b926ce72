"""RQ under logfire-run: a real Redis, real `rq worker` processes (a work horse forked per job), a real
Flask app that enqueues. The app (`rq_support/`) has no tracing code but the OpenTelemetry API.

One worker, started with `distributed_tracing=false` as a public web tier's image would be, serves
the tests that read their own traces; the tests that need other flags start their own.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    LAUNCHER,
    OtlpReceiver,
    SpanRecord,
    agent_env,
    child_env,
    free_port,
    render_tree,
    run_launcher,
    run_process,
    wait_for_port,
)

pytestmark = pytest.mark.slow

SUPPORT = Path(__file__).resolve().parent / "rq_support"
RQ = str(Path(sys.executable).with_name("rq"))


class Worker:
    """`rq worker` on a queue of its own, under logfire-run unless `agent=False`."""

    def __init__(
        self,
        receiver: OtlpReceiver | None,
        redis: str,
        directory: Path,
        *,
        agent_flags: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
        agent: bool = True,
        **env: str,
    ) -> None:
        self.queue = f"jobs-{uuid.uuid4().hex[:8]}"
        self.redis = redis
        self.err = directory / f"{self.queue}.stderr"
        self.out = directory / f"{self.queue}.stdout"
        rq = ["worker", "--url", redis, "--path", str(SUPPORT), *worker_args, self.queue]
        command = [LAUNCHER, *agent_flags, "rq", *rq] if agent else [RQ, *rq]
        environment = agent_env(receiver, **env) if agent else child_env(**env)
        with open(self.out, "w") as stdout, open(self.err, "w") as stderr:
            self.process = subprocess.Popen(
                command, cwd=SUPPORT, env=environment, stdout=stdout, stderr=stderr
            )

    def stop(self) -> int:
        """SIGTERM, and a second one if the worker is still there after a few seconds: RQ 3.0's warm
        shutdown after a job waits up to 60 s for its pubsub thread (with or without the agent), and
        a second SIGTERM is RQ's cold shutdown, as a second Ctrl+C is."""
        for wait in (5, 60):
            if self.process.poll() is not None:
                break
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError("the rq worker did not stop on SIGTERM")
        return self.process.returncode

    def stderr(self) -> str:
        return self.err.read_text()

    def output(self) -> str:
        """What RQ printed (its log goes to stdout), then what reached stderr."""
        return self.out.read_text() + self.stderr()

    def assert_quiet(self) -> None:
        """RQ's own log lines only: nothing of the agent's, no warning."""
        for line in self.output().splitlines():
            assert "logfire-run" not in line and "distributed_tracing" not in line, line
            assert "Warning" not in line, line


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def worker(redis_url: str, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    started = Worker(
        otlp,
        redis_url,
        tmp_path_factory.mktemp("worker"),
        agent_flags=("--distributed-tracing", "false"),
        REDIS_URL=redis_url,
    )
    yield started
    assert started.stop() == 0
    started.assert_quiet()


@pytest.fixture(scope="module")
def web(worker: Worker, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Flask app that enqueues onto the shared worker's queue, under the launcher."""
    port = free_port()
    err = tmp_path_factory.mktemp("web") / "web.stderr"
    env = agent_env(otlp, REDIS_URL=worker.redis, RQ_QUEUE=worker.queue, LOGFIRE_DISTRIBUTED_TRACING="false")
    with open(err, "w") as stderr:
        process = subprocess.Popen(
            [LAUNCHER, "--service-name", "web", "python", "web.py", str(port)],
            cwd=SUPPORT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert err.read_text() == ""


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def runs_of(receiver: OtlpReceiver, job_id: str, count: int = 1) -> list[SpanRecord]:
    """Every span of the trace of `job_id`'s enqueue, once `count` runs of it have arrived."""

    def runs(spans: list[SpanRecord]) -> list[SpanRecord]:
        return [
            s for s in spans if s.kind == "CONSUMER" and s.attributes.get("messaging.message.id") == job_id
        ]

    def arrived(spans: list[SpanRecord]) -> bool:
        ids = {span.span_id for span in spans}
        return len(runs(spans)) >= count and all(run.parent_id in ids for run in runs(spans))

    spans = receiver.wait_for(arrived, timeout=30)
    trace_id = runs(spans)[0].trace_id
    return [span for span in spans if span.trace_id == trace_id]


def by_name(spans: list[SpanRecord], name: str) -> list[SpanRecord]:
    return [span for span in spans if span.name == name]


def test_a_request_that_enqueues_is_one_trace_with_the_job(web: str, otlp: OtlpReceiver) -> None:
    job_id = get(f"{web}/signup/ada")["job_id"]
    spans = otlp.wait_for(
        lambda spans: (
            any(s.name == "render welcome mail" for s in spans)
            and any(s.kind == "SERVER" and s.attributes.get("http.route") == "/signup/<user>" for s in spans)
        ),
        timeout=30,
    )
    trace = [s for s in spans if s.trace_id == by_name(spans, "render welcome mail")[0].trace_id]
    tree = render_tree(trace)
    (request,) = [s for s in trace if s.kind == "SERVER"]
    (enqueue,) = by_name(trace, "enqueue jobs.welcome")
    (run,) = by_name(trace, "jobs.welcome")
    (inside,) = by_name(trace, "render welcome mail")
    assert request.parent_id is None, tree
    assert (enqueue.kind, enqueue.parent_id, enqueue.service) == ("PRODUCER", request.span_id, "web"), tree
    assert (run.kind, run.parent_id, inside.parent_id) == ("CONSUMER", enqueue.span_id, run.span_id), tree
    # The run happened in a work horse (its own process), which left by os._exit and flushed first.
    assert run.pid != enqueue.pid and run.service.startswith("rq:jobs-")
    assert run.attributes["messaging.message.id"] == job_id
    assert run.attributes["messaging.destination.name"] == run.service.removeprefix("rq:")
    assert run.attributes["messaging.system"] == "rq"
    assert run.attributes["code.function.name"] == "jobs.welcome"
    assert run.attributes["rq.job.status"] == "finished"
    assert run.status == 0 and "exception" not in run.events
    # The job's log record is attached to the run's span.
    record = (bytes.fromhex(run.trace_id), bytes.fromhex(run.span_id), "welcoming ada")
    otlp.wait_for(lambda spans: record in log_records(otlp))
    assert record in log_records(otlp)


def log_records(receiver: OtlpReceiver) -> list[tuple[bytes, bytes, str]]:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    records = []
    for body in list(receiver.log_bodies):
        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    records.append((record.trace_id, record.span_id, record.body.string_value))
    return records


def test_a_failing_job_is_marked(web: str, otlp: OtlpReceiver) -> None:
    job_id = get(f"{web}/fail")["job_id"]
    trace = runs_of(otlp, job_id)
    (run,) = by_name(trace, "jobs.fail")
    assert run.status == 2 and "exception" in run.events, render_tree(trace)
    assert run.attributes["rq.job.status"] == "failed"
    assert run.attributes["error.type"] == "ValueError"
    assert "rq.job.retried" not in run.attributes
    (enqueue,) = by_name(trace, "enqueue jobs.fail")
    assert run.parent_id == enqueue.span_id


def test_a_retried_job_is_two_runs_under_one_enqueue(web: str, otlp: OtlpReceiver) -> None:
    job_id = get(f"{web}/flaky/{uuid.uuid4().hex}")["job_id"]
    trace = runs_of(otlp, job_id, count=2)
    (enqueue,) = by_name(trace, "enqueue jobs.flaky")
    first, second = sorted(by_name(trace, "jobs.flaky"), key=lambda span: span.start)
    assert first.parent_id == second.parent_id == enqueue.span_id, render_tree(trace)
    assert (first.status, first.attributes["rq.job.status"], first.attributes["rq.job.retried"]) == (
        2,
        "queued",
        True,
    )
    assert first.attributes["error.type"] == "ConnectionError"
    assert (second.status, second.attributes["rq.job.status"]) == (0, "finished")
    assert "rq.job.retried" not in second.attributes


ENQUEUE = """
import os, sys
from redis import Redis
from rq import Queue
from opentelemetry import trace
import jobs

queue = Queue(os.environ["RQ_QUEUE"], connection=Redis.from_url(os.environ["REDIS_URL"]))
with trace.get_tracer("producer").start_as_current_span("produce") as span:
    job = queue.enqueue(jobs.welcome, "grace")
print(job.id, format(span.get_span_context().trace_id, "032x"))
"""


@pytest.mark.parametrize("third_party", [False, True], ids=["first-party", "rq-third-party"])
def test_job_context_is_first_party_unless_told(third_party: bool, redis_url: str, tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    flags = ("--distributed-tracing", "false", *(("--rq-third-party",) if third_party else ()))
    worker = Worker(receiver, redis_url, tmp_path, agent_flags=flags)
    try:
        env = agent_env(receiver, REDIS_URL=redis_url, RQ_QUEUE=worker.queue)
        produced = run_launcher(["python", "-c", ENQUEUE], env, cwd=SUPPORT)
        job_id, trace_id = produced.stdout.split()
        spans = receiver.wait_for(lambda spans: any(s.kind == "CONSUMER" for s in spans), timeout=30)
    finally:
        assert worker.stop() == 0
        receiver.close()
    (run,) = [s for s in spans if s.kind == "CONSUMER"]
    assert run.attributes["messaging.message.id"] == job_id
    if third_party:
        assert (run.parent_id, run.trace_id != trace_id) == (None, True)
    else:
        assert run.trace_id == trace_id and run.parent_id is not None
    worker.assert_quiet()


IDLE_PRODUCER = """
import os
from redis import Redis
from rq import Queue
from opentelemetry import trace
import jobs

queue = Queue(os.environ["RQ_QUEUE"], connection=Redis.from_url(os.environ["REDIS_URL"]))
with trace.get_tracer("producer").start_as_current_span("produce") as span:
    queue.enqueue(jobs.welcome, "linus")
print(format(span.get_span_context().trace_id, "032x"))
"""


@pytest.mark.parametrize("broker_spans", [False, True], ids=["default", "broker-spans"])
def test_an_idle_worker_makes_no_traces(
    broker_spans: bool, redis_url: str, redis_instrumentor: str, tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    flags = ("--broker-spans",) if broker_spans else ()
    # With the scheduler (`--with-scheduler`), which polls Redis every second, and RQ's default timings.
    worker = Worker(
        receiver, redis_url, tmp_path, agent_flags=flags, worker_args=("--with-scheduler",),
        PYTHONPATH=redis_instrumentor,
    )  # fmt: skip
    try:
        env = agent_env(receiver, REDIS_URL=redis_url, RQ_QUEUE=worker.queue, PYTHONPATH=redis_instrumentor)
        produced = run_launcher(["python", "-c", IDLE_PRODUCER], env, cwd=SUPPORT)
        trace_id = produced.stdout.strip()
        receiver.wait_for(lambda spans: any(s.kind == "CONSUMER" for s in spans), timeout=30)
        # A few seconds of the idle worker: the scheduler's polls, the worker's heartbeats.
        receiver.wait_for(lambda spans: False, timeout=5)
    finally:
        assert worker.stop() == 0
    spans = receiver.wait_for(lambda spans: False, timeout=1)
    receiver.close()
    roots = {span.trace_id for span in spans if span.parent_id is None}
    in_trace = [span for span in spans if span.trace_id == trace_id]
    # The producer's enqueue pipeline is traced inside its span; the job ran in the same trace.
    assert any(s.attributes.get("db.system") == "redis" for s in in_trace), render_tree(in_trace)
    assert any(s.kind == "CONSUMER" for s in in_trace), render_tree(spans)
    others = [span for span in spans if span.trace_id != trace_id]
    if broker_spans:
        assert len(roots - {trace_id}) > 3, "with --broker-spans the worker's own commands were not recorded"
    else:
        assert others == [], render_tree(others)
        # Nor is RQ's bookkeeping around the run a part of the job's trace.
        run = next(s for s in in_trace if s.kind == "CONSUMER")
        assert [s.name for s in in_trace if s.parent_id == run.span_id] == ["render welcome mail"]


def test_the_worker_is_named_after_its_queue_and_prints_what_it_prints_without_the_agent(
    redis_url: str, tmp_path: Path
) -> None:
    """One job, a worker with and without the agent: the same lines, on the same streams."""
    receiver = OtlpReceiver()
    outputs = []
    for agent in (False, True):
        worker = Worker(receiver, redis_url, tmp_path, agent=agent)
        try:
            env = child_env(REDIS_URL=redis_url, RQ_QUEUE=worker.queue)
            job_id = run_process([sys.executable, "-c", ENQUEUE], env, cwd=SUPPORT).stdout.split()[0]
            deadline = time.monotonic() + 30
            while "result is kept" not in worker.output() and time.monotonic() < deadline:
                time.sleep(0.05)
            outputs.append(
                (
                    _normalized(worker.out.read_text(), worker, job_id),
                    _normalized(worker.stderr(), worker, job_id),
                )
            )
        finally:
            worker.stop()
    assert outputs[1] == outputs[0]
    assert "Job OK (JOB)" in outputs[0][0] and outputs[0][1] == "welcoming grace\n"
    spans = receiver.wait_for(lambda spans: any(s.kind == "CONSUMER" for s in spans), timeout=30)
    receiver.close()
    assert {s.service for s in spans if s.kind == "CONSUMER"} == {f"rq:{worker.queue}"}


def _normalized(text: str, worker: Worker, job_id: str) -> str:
    text = text.replace(worker.queue, "QUEUE").replace(job_id, "JOB")
    text = re.sub(r"\b[0-9a-f]{32}\b", "NAME", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)
