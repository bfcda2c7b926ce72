"""Celery under logfire-run: a real Redis, real `celery worker` processes, real producers.

Every worker and producer is started through the launcher with no tracing code (the app in
`celery_support/` uses only Celery, Flask, requests and the OpenTelemetry API). One prefork worker is
shared by the tests that only read their own trace (each producer scenario runs in a root span of its
own, and a test looks only at that trace id); the tests that need other worker flags start their own,
each on its own queue.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    LAUNCHER,
    OtlpReceiver,
    SpanRecord,
    agent_env,
    assert_clean_stderr,
    free_port,
    render_tree,
    run_launcher,
    run_process,
    wait_for_port,
)

SUPPORT = Path(__file__).resolve().parent / "celery_support"
CELERY = os.path.join(os.path.dirname(sys.executable), "celery")
WARNING_FRAGMENT = "distributed_tracing is not set"


# Fixtures: Redis, the OTLP receiver and workers


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


def app_env(receiver: OtlpReceiver | None, redis: str, queue: str, **extra: str) -> dict[str, str]:
    env = agent_env(receiver, BROKER_URL=redis, CELERY_QUEUE=queue, **extra)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Celery's own warning about running as root (this CI runs as root): not the agent's output.
        # A message filter with no category does not import celery at interpreter start.
        env["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    return env


class Worker:
    """A `celery worker` on a queue of its own, under logfire-run unless `agent=False`.

    Celery's log goes to a file (`--logfile`), so stderr holds only what is written outside logging;
    warnings raised inside tasks go to the log file (Celery redirects them there).
    """

    def __init__(
        self,
        name: str,
        receiver: OtlpReceiver | None,
        redis: str,
        directory: Path,
        *,
        pool: str = "prefork",
        agent_flags: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
        agent: bool = True,
        broker_chatter: bool = False,
        **env: str,
    ) -> None:
        self.name = name
        self.queue = f"{name}-{uuid.uuid4().hex[:8]}"
        self.redis = redis
        self.log = directory / f"{name}.log"
        self.err = directory / f"{name}.stderr"
        celery = [
            "celery", "-A", "celery_tasks", "worker", "--pool", pool, "-Q", self.queue,
            "--loglevel", "WARNING", "--logfile", str(self.log), *worker_args,
        ]  # fmt: skip
        if not broker_chatter:  # gossip, mingle and heartbeats: Redis traffic while the worker waits
            celery[4:4] = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        launch = [LAUNCHER, "--service-name", name, *agent_flags]
        command = [*launch, *celery] if agent else [CELERY, *celery[1:]]
        with open(self.err, "w") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=SUPPORT,
                env=app_env(receiver, redis, self.queue, **env),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def stop(self) -> int:
        """Warm shutdown, as a supervisor does it: SIGTERM, then wait for the pool to finish."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise AssertionError(f"worker {self.name} did not stop on SIGTERM") from None
        return self.process.returncode

    def stderr(self) -> str:
        return self.err.read_text()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def assert_quiet(self, *, expected_errors: str = "", stderr: str = "") -> None:
        """Nothing on stderr (or `stderr`: a plain worker's own); the log holds no warning, and only
        errors of tasks expected to fail."""
        assert self.stderr() == stderr, f"unexpected stderr:\n{self.stderr()}"
        for line in self.log_text().splitlines():
            assert "logfire-run" not in line and WARNING_FRAGMENT not in line, line
            assert "WARNING/" not in line, f"unexpected warning in the worker log: {line}"
            if "ERROR/" in line:
                assert expected_errors and expected_errors in line, f"unexpected error: {line}"


@pytest.fixture(scope="module")
def worker(redis_url: str, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The shared prefork worker; it runs with distributed_tracing=false, like a public web tier."""
    started = Worker(
        "worker",
        otlp,
        redis_url,
        tmp_path_factory.mktemp("worker"),
        agent_flags=("--distributed-tracing", "false"),
        worker_args=("--concurrency", "2"),
    )
    yield started
    assert started.stop() == 0
    started.assert_quiet(expected_errors="celery_tasks.fail")


def produce(
    worker: Worker, receiver: OtlpReceiver | None, *scenarios: str, agent: bool = True
) -> dict[str, Any]:
    """Run produce.py against `worker`'s queue, under the launcher unless `agent=False`."""
    env = app_env(receiver, worker.redis, worker.queue)
    if agent:
        command = ["--service-name", "producer", "python", "produce.py", *scenarios]
        result = run_launcher(command, env, cwd=SUPPORT, timeout=120)
    else:
        result = run_process([sys.executable, "produce.py", *scenarios], env, cwd=SUPPORT, timeout=120)
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout)
    return output


# What a trace must look like


def trace_of(receiver: OtlpReceiver, trace_id: str, runs: int, timeout: float = 30) -> list[SpanRecord]:
    """The spans of one trace, once `runs` task-run spans have arrived (or the timeout passed)."""

    def arrived(spans: list[SpanRecord]) -> bool:
        return sum(1 for span in spans if span.trace_id == trace_id and span.kind == "CONSUMER") >= runs

    return [span for span in receiver.wait_for(arrived, timeout) if span.trace_id == trace_id]


def canonical_tree(spans: list[SpanRecord]) -> str:
    """Like render_tree, with siblings sorted: concurrent tasks run in any order, the shape is fixed."""
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else None, []).append(span)

    def lines(span: SpanRecord, depth: int) -> list[str]:
        orphan = " (orphan)" if depth == 0 and span.parent_id else ""
        below = sorted("\n".join(lines(child, depth + 1)) for child in children.get(span.span_id, []))
        return [f"{'  ' * depth}{span.kind} {span.name} [{span.service}]{orphan}", *below]

    return "\n".join(sorted("\n".join(lines(root, 0)) for root in children.get(None, [])))


def assert_publish_parents_run(spans: list[SpanRecord]) -> None:
    """Every run span's parent is the publish span of the same message, and each publish has one run."""
    publishes = {span.span_id: span for span in spans if span.kind == "PRODUCER"}
    runs = [span for span in spans if span.kind == "CONSUMER"]
    tree = render_tree(spans)
    for run in runs:
        publish = publishes.get(run.parent_id or "")
        assert publish is not None, f"{run.name} is not the child of a publish span:\n{tree}"
        assert publish.name == "apply_async/" + run.name.removeprefix("run/"), tree
        message_id = publish.attributes["messaging.message.id"]
        assert run.attributes.get("messaging.message.id") == message_id, (tree, run.attributes)
    parents = Counter(run.parent_id for run in runs)
    assert parents == Counter(list(publishes)), f"a publish without its run, or with two:\n{tree}"


T = "celery_tasks"
EXPECTED_TREES = {
    "delay": f"""
INTERNAL produce delay [producer]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]""",
    "apply_async": f"""
INTERNAL produce apply_async [producer]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]""",
    # The producer does not import the tasks: it publishes by name.
    "send_task": f"""
INTERNAL produce send_task [producer]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]""",
    # The next link of a chain is published by the worker, inside the run of the previous one.
    "chain": f"""
INTERNAL produce chain [producer]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]
      PRODUCER apply_async/{T}.mul [worker]
        CONSUMER run/{T}.mul [worker]""",
    "group": f"""
INTERNAL produce group [producer]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]""",
    # The chord's callback is published by whichever header task finishes last.
    "chord": f"""
INTERNAL produce chord [producer]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]
  PRODUCER apply_async/{T}.add [producer]
    CONSUMER run/{T}.add [worker]
      PRODUCER apply_async/{T}.total [worker]
        CONSUMER run/{T}.total [worker]""",
    # task.retry() republishes the same task id from inside the failed attempt.
    "retry": f"""
INTERNAL produce retry [producer]
  PRODUCER apply_async/{T}.flaky [producer]
    CONSUMER run/{T}.flaky [worker]
      PRODUCER apply_async/{T}.flaky [worker]
        CONSUMER run/{T}.flaky [worker]""",
    "children": f"""
INTERNAL produce children [producer]
  PRODUCER apply_async/{T}.parent [producer]
    CONSUMER run/{T}.parent [worker]
      PRODUCER apply_async/{T}.child [worker]
        CONSUMER run/{T}.child [worker]
          INTERNAL square in thread [worker]
          INTERNAL square in thread [worker]
          INTERNAL square in thread [worker]""",
    "fail": f"""
INTERNAL produce fail [producer]
  PRODUCER apply_async/{T}.fail [producer]
    CONSUMER run/{T}.fail [worker]""",
    # The task logs N records (see log_records_of).
    "logs": f"""
INTERNAL produce logs [producer]
  PRODUCER apply_async/{T}.chatty [producer]
    CONSUMER run/{T}.chatty [worker]""",
}
EXPECTED_RESULTS: dict[str, Any] = {
    "delay": 5,
    "apply_async": 9,
    "send_task": 3,
    "chain": 30,
    "group": [0, 2, 4],
    "chord": 6,
    "retry": "7 ok after 1 retry",
    "children": [0, 1, 4],
    "logs": 3,
}
SCENARIOS = list(EXPECTED_TREES)
THREAD_SPANS = importlib.util.find_spec("logfire_run.instrumentors.executors") is not None


def expected_tree(scenario: str, service: str = "worker") -> str:
    return EXPECTED_TREES[scenario].strip("\n").replace("[worker]", f"[{service}]")


def without_thread_spans(spans: list[SpanRecord]) -> list[SpanRecord]:
    return [span for span in spans if span.name != "square in thread"]


def assert_scenario_tree(scenario: str, spans: list[SpanRecord], service: str = "worker") -> None:
    expected = expected_tree(scenario, service)
    if scenario == "children" and not THREAD_SPANS:
        # Thread-pool propagation is logfire_run.instrumentors.executors' job: without it, the tree is
        # checked strictly down to the child task, and the spans made in its pool threads only counted.
        assert sum(1 for span in spans if span.name == "square in thread") == 3, render_tree(spans)
        spans = without_thread_spans(spans)
        expected = "\n".join(line for line in expected.splitlines() if "square in thread" not in line)
    assert canonical_tree(spans) == expected, render_tree(spans)
    assert_publish_parents_run(spans)


@pytest.fixture(scope="module")
def produced(worker: Worker, otlp: OtlpReceiver) -> dict[str, Any]:
    """One producer process runs every scenario against the shared worker, each in its own trace."""
    return produce(worker, otlp, *(f"{name}:7" if name == "fail" else name for name in SCENARIOS))


# The shared prefork worker


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_publish_is_the_parent_of_its_run(
    scenario: str, produced: dict[str, Any], otlp: OtlpReceiver
) -> None:
    output = produced[scenario]
    runs = expected_tree(scenario).count("CONSUMER")
    spans = trace_of(otlp, output["trace_id"], runs)
    assert_scenario_tree(scenario, spans)
    if scenario in EXPECTED_RESULTS:
        assert output["results"] == EXPECTED_RESULTS[scenario]


def test_publish_and_run_are_in_different_processes(produced: dict[str, Any], otlp: OtlpReceiver) -> None:
    spans = trace_of(otlp, produced["delay"]["trace_id"], 1)
    publish = next(span for span in spans if span.kind == "PRODUCER")
    run = next(span for span in spans if span.kind == "CONSUMER")
    assert (publish.service, run.service) == ("producer", "worker")
    assert run.parent_id == publish.span_id
    assert run.attributes["celery.action"] == "run"
    assert publish.attributes["celery.task_name"] == "celery_tasks.add"


def test_a_failing_task_records_its_exception(produced: dict[str, Any], otlp: OtlpReceiver) -> None:
    output = produced["fail"]
    spans = trace_of(otlp, output["trace_id"], 1)
    run = next(span for span in spans if span.kind == "CONSUMER")
    assert run.status == 2  # ERROR
    assert "exception" in run.events
    assert output["results"]["state"] == "FAILURE"
    assert output["results"]["raised"] == "ValueError('boom 7')"


def test_worker_with_distributed_tracing_false_continues_and_does_not_warn(
    produced: dict[str, Any], worker: Worker
) -> None:
    # Every tree above came from this worker, which refuses third-party context: task context is
    # first-party. It has not warned either (the fixture checks again once the worker has stopped).
    assert produced["delay"]["trace_id"]
    assert_clean_stderr(worker.stderr())
    assert WARNING_FRAGMENT not in worker.log_text()
    assert "WARNING/" not in worker.log_text()


def test_producer_keeps_no_span_open_after_a_task_sent_by_name(worker: Worker, otlp: OtlpReceiver) -> None:
    # A task sent by name has no Task object in the producer, where OpenTelemetry's instrumentor keeps
    # the publish span; the span must still end, and end its context: the next root is a new trace.
    output = produce(worker, otlp, "send_task", "delay")
    first = trace_of(otlp, output["send_task"]["trace_id"], 1)
    second = trace_of(otlp, output["delay"]["trace_id"], 1)
    assert output["send_task"]["trace_id"] != output["delay"]["trace_id"]
    assert canonical_tree(first) == expected_tree("send_task")
    assert canonical_tree(second) == expected_tree("delay")


@pytest.mark.slow
def test_results_states_and_failures_are_the_same_without_the_agent(
    produced: dict[str, Any], redis_url: str, tmp_path: Path
) -> None:
    plain_worker = Worker("plain", None, redis_url, tmp_path, agent=False, worker_args=("--concurrency", "2"))
    try:
        plain = produce(
            plain_worker, None, *(f"{name}:7" if name == "fail" else name for name in SCENARIOS), agent=False
        )
    finally:
        assert plain_worker.stop() == 0
    for scenario in SCENARIOS:
        assert plain[scenario]["trace_id"] == ""
        assert produced[scenario]["results"] == plain[scenario]["results"], scenario
    plain_worker.assert_quiet(expected_errors="celery_tasks.fail")


@pytest.mark.slow
def test_flask_request_to_thread_pool_in_a_child_task_is_one_trace(
    worker: Worker, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    port = free_port()
    env = app_env(otlp, worker.redis, worker.queue)
    # The web tier trusts its own client's context; the worker (distributed_tracing=false) continues
    # the trace all the same, because task context is first-party.
    web_tier = [LAUNCHER, "--service-name", "web", "--distributed-tracing", "true"]
    with open(tmp_path / "web.stderr", "w") as web_stderr:
        web = subprocess.Popen(
            [*web_tier, "python", "web.py", str(port)],
            cwd=SUPPORT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=web_stderr,
        )
    try:
        wait_for_port(port, timeout=30, process=web)
        client = run_launcher(
            ["--service-name", "client", "python", "client.py", f"http://127.0.0.1:{port}/enqueue/3"],
            env,
            cwd=SUPPORT,
        )
        assert client.returncode == 0, client.stderr
        task_id = json.loads(client.stdout)["task_id"]

        def complete(spans: list[SpanRecord]) -> bool:
            names = [span.name for span in spans if span.trace_id == trace_id(spans)]
            runs = {f"run/{T}.child", f"run/{T}.parent"}
            return names.count("square in thread") >= 3 and runs <= set(names)

        def trace_id(spans: list[SpanRecord]) -> str | None:
            return next(
                (
                    span.trace_id
                    for span in spans
                    if span.kind == "PRODUCER" and span.attributes.get("messaging.message.id") == task_id
                ),
                None,
            )

        everything = otlp.wait_for(complete, timeout=30)
    finally:
        web.terminate()
        web.wait(timeout=30)
    assert_clean_stderr((tmp_path / "web.stderr").read_text())
    spans = [span for span in everything if span.trace_id == trace_id(everything)]
    tree = render_tree(spans)
    by_name = {span.name: span for span in spans}
    client_span = next(span for span in spans if span.kind == "CLIENT")
    server_span = next(span for span in spans if span.kind == "SERVER")
    assert client_span.parent_id is None and client_span.service == "client", tree
    assert server_span.parent_id == client_span.span_id and server_span.service == "web", tree
    publish = by_name[f"apply_async/{T}.parent"]
    assert publish.parent_id == server_span.span_id and publish.service == "web", tree
    assert by_name[f"run/{T}.parent"].parent_id == publish.span_id, tree
    child_publish = by_name[f"apply_async/{T}.child"]
    assert child_publish.parent_id == by_name[f"run/{T}.parent"].span_id, tree
    child_run = by_name[f"run/{T}.child"]
    assert child_run.parent_id == child_publish.span_id and child_run.service == "worker", tree
    squares = [span for span in spans if span.name == "square in thread"]
    assert len(squares) == 3, tree
    if THREAD_SPANS:
        assert all(span.parent_id == child_run.span_id for span in squares), tree


# Workers with other pools and flags


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pool", "scenarios"),
    [("threads", ("children", "retry", "chord")), ("solo", ("chain", "send_task", "fail"))],
)
def test_threads_and_solo_pools(
    pool: str, scenarios: tuple[str, ...], redis_url: str, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    # distributed_tracing left at its default: first-party task context does not warn either.
    own = Worker(pool, otlp, redis_url, tmp_path, pool=pool, worker_args=("--concurrency", "2"))
    try:
        output = produce(own, otlp, *(f"{name}:7" if name == "fail" else name for name in scenarios))
        for scenario in scenarios:
            spans = trace_of(otlp, output[scenario]["trace_id"], expected_tree(scenario).count("CONSUMER"))
            assert_scenario_tree(scenario, spans, service=pool)
    finally:
        assert own.stop() == 0
    own.assert_quiet(expected_errors="celery_tasks.fail")


def log_records_of(receiver: OtlpReceiver, trace_id: str, count: int) -> list[tuple[str, str]]:
    """(span id, body) of the OTLP log records of one trace, once `count` have arrived (or 30 s)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    def records() -> list[tuple[str, str]]:
        found = []
        for body in list(receiver.log_bodies):
            request = ExportLogsServiceRequest()
            request.ParseFromString(body)
            for resource_logs in request.resource_logs:
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        if record.trace_id.hex() == trace_id:
                            found.append((record.span_id.hex(), record.body.string_value))
        return found

    receiver.wait_for(lambda spans: len(records()) >= count, timeout=30)
    return records()


GREEN_SCENARIOS = ("children", "chain", "retry", "fail", "logs")


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_gevent_and_eventlet_pools_run_trace_log_and_stop(
    pool: str, redis_url: str, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    # Celery imports `celery` before it monkey-patches for the pool: the agent must start nothing the
    # patching has to see first (no SDK, thread, socket or select), or the worker waits in an unpatched
    # select, runs no task and ignores SIGTERM.
    arguments = ("--concurrency", "4")
    green = Worker(pool, otlp, redis_url, tmp_path, pool=pool, worker_args=arguments)
    try:
        output = produce(green, otlp, *(f"{name}:7" if name == "fail" else name for name in GREEN_SCENARIOS))
        for scenario in GREEN_SCENARIOS:
            spans = trace_of(otlp, output[scenario]["trace_id"], expected_tree(scenario).count("CONSUMER"))
            assert_scenario_tree(scenario, spans, service=pool)
            if scenario in EXPECTED_RESULTS:
                assert output[scenario]["results"] == EXPECTED_RESULTS[scenario]
    finally:
        # SIGTERM: a warm shutdown, exit status 0, within Worker.stop's wait.
        assert green.stop() == 0
    # The task's records, captured in the greenlet that ran it, under its run span.
    trace_id = output["logs"]["trace_id"]
    run = next(span for span in trace_of(otlp, trace_id, 1) if span.kind == "CONSUMER")
    records = log_records_of(otlp, trace_id, 3)
    assert sorted(records) == [(run.span_id, f"record {n} of 3") for n in (1, 2, 3)], records
    # The same worker without the agent writes the same stderr (gevent's and eventlet's own warnings).
    plain = Worker(f"plain-{pool}", None, redis_url, tmp_path, agent=False, pool=pool, worker_args=arguments)
    try:
        produce(plain, None, "logs", agent=False)
    finally:
        assert plain.stop() == 0
    green.assert_quiet(expected_errors="celery_tasks.fail", stderr=plain.stderr())


@pytest.mark.slow
def test_a_worker_whose_green_pool_is_only_configured_still_traces(
    redis_url: str, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    # CELERYD_POOL (like the `worker_pool` setting) is read by nobody that patches: Celery runs its
    # default pool. The agent, told a green pool may come, waits until the app is loaded, then starts.
    configured = Worker("configured", otlp, redis_url, tmp_path, CELERYD_POOL="gevent")
    try:
        output = produce(configured, otlp, "delay")
    finally:
        assert configured.stop() == 0
    spans = trace_of(otlp, output["delay"]["trace_id"], 1)
    assert_scenario_tree("delay", spans, service="configured")
    configured.assert_quiet()


@pytest.mark.slow
def test_recycled_prefork_children_flush_every_span(
    redis_url: str, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    # A 60 s batch delay: only the flush on the way out of each child can deliver its spans in time.
    recycling = Worker(
        "recycling",
        otlp,
        redis_url,
        tmp_path,
        worker_args=("--concurrency", "2", "--max-tasks-per-child", "3"),
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    try:
        output = produce(recycling, otlp, "pids:20")["pids"]
    finally:
        assert recycling.stop() == 0
    assert len(output["results"]) == 20
    assert len(set(output["results"])) >= 7  # 20 tasks, 3 per child: children were recycled
    spans = trace_of(otlp, output["trace_id"], 20)
    runs = [span for span in spans if span.kind == "CONSUMER"]
    assert len(runs) == 20, render_tree(spans)
    assert_publish_parents_run(spans)
    recycling.assert_quiet()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "how"), [("false", "flag"), ("link", "flag"), ("false", "configure")])
def test_celery_third_party_obeys_the_policy(
    mode: str, how: str, redis_url: str, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    by_flag = how == "flag"
    untrusting = Worker(
        f"untrusting-{mode}-{how}",
        otlp,
        redis_url,
        tmp_path,
        pool="solo",
        agent_flags=("--distributed-tracing", mode, *(["--celery-third-party"] if by_flag else [])),
        **({} if by_flag else {"APP_CONFIGURES_CELERY_THIRD_PARTY": "1"}),
    )
    try:
        output = produce(untrusting, otlp, "delay")["delay"]
    finally:
        assert untrusting.stop() == 0
    producer_spans = trace_of(otlp, output["trace_id"], 0)
    publish = next(span for span in producer_spans if span.kind == "PRODUCER")
    runs = otlp.wait_for(
        lambda spans: any(span.service == untrusting.name and span.kind == "CONSUMER" for span in spans)
    )
    run = next(span for span in runs if span.service == untrusting.name and span.kind == "CONSUMER")
    assert run.parent_id is None
    assert run.trace_id != output["trace_id"]
    assert run.links == ([(publish.trace_id, publish.span_id)] if mode == "link" else [])
    untrusting.assert_quiet()


# Broker housekeeping with OpenTelemetry's redis instrumentor installed (conftest's `redis_instrumentor`:
# not in the test extra, it would add Redis spans to every tree above).


BROKER_PRODUCER = """
import sys
from opentelemetry import trace
from celery_tasks import add

with trace.get_tracer("app").start_as_current_span("produce in a span") as span:
    print(format(span.get_span_context().trace_id, "032x"))
    assert add.delay(2, 3).get(timeout=30) == 5
"""


@pytest.mark.slow
@pytest.mark.parametrize("broker_spans", [False, True], ids=["default", "broker-spans"])
def test_broker_housekeeping_is_not_a_trace(
    broker_spans: bool, redis_url: str, redis_instrumentor: str, tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    flags = ("--broker-spans",) if broker_spans else ()
    # Heartbeats, gossip and mingle on (the defaults): the worker talks to Redis while it waits.
    worker = Worker(
        "housekeeping", receiver, redis_url, tmp_path, agent_flags=flags, broker_chatter=True,
        PYTHONPATH=redis_instrumentor,
    )  # fmt: skip
    try:
        env = app_env(receiver, redis_url, worker.queue, PYTHONPATH=redis_instrumentor)
        command = ["--service-name", "producer", *flags, "python", "-c", BROKER_PRODUCER]
        produced = run_launcher(command, env, cwd=SUPPORT, timeout=90)
        assert produced.returncode == 0, produced.stderr
        trace_id = produced.stdout.strip()
        # Let the idle worker poll and send heartbeats for a few seconds.
        receiver.wait_for(lambda spans: False, timeout=5)
    finally:
        assert worker.stop() == 0
    spans = receiver.wait_for(
        lambda spans: any(span.kind == "CONSUMER" and span.trace_id == trace_id for span in spans)
    )
    receiver.close()
    redis = [span for span in spans if span.attributes.get("db.system") == "redis"]
    in_trace = [span for span in redis if span.trace_id == trace_id]
    outside = [span for span in redis if span.parent_id is None]
    # Inside the producer's span, the publish's own Redis commands are children in its trace.
    assert any(span.name.startswith("LPUSH") for span in in_trace), render_tree(spans)
    assert any(span.kind == "CONSUMER" and span.trace_id == trace_id for span in spans), render_tree(spans)
    if broker_spans:
        assert outside, "with --broker-spans the worker's own Redis commands were not recorded"
    else:
        assert outside == [], render_tree(outside)
