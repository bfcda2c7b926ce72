"""multiprocessing: processes and pool tasks are children of the span that started or submitted them,
for fork, spawn and forkserver, and every worker's spans arrive however the pool ends.

Each test writes a small app, runs it with real interpreters (through `logfire-run` or `LOGFIRE_RUN=1`,
or with no agent at all to compare what the app sees), and reads the spans back from the OTLP receiver.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    OtlpReceiver,
    agent_env,
    assert_child,
    launch,
    only,
    render_tree,
    run_without_agent,
    write_app,
)

START_METHODS = ["fork", "spawn", "forkserver"]


# Only the OpenTelemetry API in the task code: importing logfire_run in a worker would start the agent
# there on its own, and the point is that the carrier does it.
POOL_APP = """
    import multiprocessing as mp
    import os
    import sys

    from opentelemetry import trace

    tracer = trace.get_tracer("pool-app")

    def task(i):
        with tracer.start_as_current_span("task", attributes={"i": i, "pid": os.getpid()}):
            return i

    def run(pool, count):
        third = count // 3
        assert pool.map(task, range(third)) == list(range(third))
        unordered = sorted(pool.imap_unordered(task, range(third, 2 * third)))
        assert unordered == list(range(third, 2 * third))
        results = [pool.apply_async(task, (i,)) for i in range(2 * third, count)]
        assert [result.get() for result in results] == list(range(2 * third, count))

    if __name__ == "__main__":
        method, ending, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
        context = mp.get_context(method)
        options = {"maxtasksperchild": 5} if ending == "recycle" else {}
        with tracer.start_as_current_span("parent"):
            if ending == "with":  # Pool.__exit__ calls terminate()
                with context.Pool(2, **options) as pool:
                    run(pool, count)
            else:
                pool = context.Pool(2, **options)
                run(pool, count)
                pool.close()
                pool.join()
        print(os.getpid())
"""


def check_pool_run(receiver: OtlpReceiver, result: subprocess.CompletedProcess[str], count: int) -> None:
    # launch() returned once the app and every process it started had ended (their output pipes
    # closed): nothing more is sent, and all that was is read once no connection is open.
    spans = receiver.wait_settled(count + 1, timeout=30)
    parent = only(spans, "parent")
    tasks = [span for span in spans if span.name == "task"]
    assert sorted(span.attributes["i"] for span in tasks) == list(range(count)), (
        f"{len(tasks)} task spans of {count}"
    )
    assert {(span.trace_id, span.parent_id) for span in tasks} == {(parent.trace_id, parent.span_id)}
    assert int(result.stdout) not in {span.attributes["pid"] for span in tasks}
    # The workers are the app's service too, whatever the start method.
    assert {span.service for span in spans} == {"app"}
    assert len(spans) == count + 1


@pytest.mark.parametrize(
    ("ending", "method"),
    [
        # A new spawn or forkserver worker every 5 tasks: slow (see tests/costs.py).
        pytest.param(
            ending, method, marks=[pytest.mark.slow] if ending == "recycle" and method != "fork" else []
        )
        for ending in ("with", "close", "recycle")
        for method in START_METHODS
    ],
)
def test_pool_tasks_are_children_of_the_submitting_span(
    tmp_path: Path, receiver: OtlpReceiver, method: str, ending: str
) -> None:
    count = 60
    result = launch(tmp_path, receiver, POOL_APP, method, ending, str(count))
    check_pool_run(receiver, result, count)


@pytest.mark.parametrize("method", START_METHODS)
def test_pool_through_logfire_run_variable(tmp_path: Path, receiver: OtlpReceiver, method: str) -> None:
    result = launch(tmp_path, receiver, POOL_APP, method, "with", "30", via="env")
    check_pool_run(receiver, result, 30)


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("ending", ["with", "close", "recycle"])
def test_two_thousand_pool_tasks_two_thousand_child_spans(
    tmp_path: Path, receiver: OtlpReceiver, method: str, ending: str
) -> None:
    result = launch(tmp_path, receiver, POOL_APP, method, ending, "2000")
    check_pool_run(receiver, result, 2000)


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("method", START_METHODS)
def test_terminate_by_with_loses_nothing_in_twenty_runs(tmp_path: Path, method: str) -> None:
    for run in range(20):
        receiver = OtlpReceiver()
        try:
            folder = tmp_path / f"run-{run}"
            folder.mkdir()
            result = launch(folder, receiver, POOL_APP, method, "with", "2000")
            check_pool_run(receiver, result, 2000)
        finally:
            receiver.close()


# Context at submission, not at pool creation; a task submitted outside any span is a root.
SUBMITTERS_APP = """
    import multiprocessing as mp
    import sys

    from opentelemetry import trace

    tracer = trace.get_tracer("submitters")

    def task(name):
        tracer.start_span(name).end()
        return name

    def pair(name, suffix):
        return task(name + suffix)

    def submit_everything(pool, label):
        pool.apply(task, (label + " apply",))
        pool.apply_async(task, (label + " apply_async",)).get()
        pool.map(task, [label + " map"])
        pool.map_async(task, [label + " map_async"]).get()
        list(pool.imap(task, [label + " imap"]))
        list(pool.imap(task, [label + " imap chunked", label + " imap chunked 2"], chunksize=2))
        list(pool.imap_unordered(task, [label + " imap_unordered"]))
        pool.starmap(pair, [(label, " starmap")])
        pool.starmap_async(pair, [(label, " starmap_async")]).get()

    if __name__ == "__main__":
        kind = sys.argv[1]
        if kind == "thread":
            from multiprocessing.pool import ThreadPool as make_pool
        else:
            make_pool = mp.get_context(kind).Pool
        with tracer.start_as_current_span("created"):
            pool = make_pool(2)
        with tracer.start_as_current_span("first"):
            submit_everything(pool, "first")
        with tracer.start_as_current_span("second"):
            submit_everything(pool, "second")
        submit_everything(pool, "outside")
        pool.close()
        pool.join()
"""

SUBMITTED = [
    "apply",
    "apply_async",
    "map",
    "map_async",
    "imap",
    "imap chunked",
    "imap chunked 2",
    "imap_unordered",
    "starmap",
    "starmap_async",
]


@pytest.mark.parametrize("kind", [*START_METHODS, "thread"])
def test_every_pool_method_carries_the_context_at_submission(
    tmp_path: Path, receiver: OtlpReceiver, kind: str
) -> None:
    launch(tmp_path, receiver, SUBMITTERS_APP, kind)
    spans = receiver.wait_count(3 + 3 * len(SUBMITTED))
    only(spans, "created")
    for label in ("first", "second"):
        parent = only(spans, label)
        for name in SUBMITTED:
            assert_child(only(spans, f"{label} {name}"), parent, spans)
    for name in SUBMITTED:
        assert only(spans, f"outside {name}").parent_id is None, render_tree(spans)
    assert len(spans) == 3 + 3 * len(SUBMITTED)


PROCESS_APP = """
    import multiprocessing as mp
    import sys

    from opentelemetry import trace

    tracer = trace.get_tracer("processes")

    def target(name):
        tracer.start_span(name).end()

    class Overriding(mp.Process):
        def __init__(self, name):
            super().__init__()
            self.label = name

        def run(self):
            tracer.start_span(self.label).end()

    if __name__ == "__main__":
        method = sys.argv[1]
        context = mp.get_context(method)
        with tracer.start_as_current_span("parent"):
            for process in (
                context.Process(target=target, args=("target",)),
                type("Sub", (Overriding, context.Process), {})("overriding run"),
            ):
                process.start()
                process.join()
                assert process.exitcode == 0
        mp.set_start_method(method, force=True)
        with tracer.start_as_current_span("default context"):
            process = mp.Process(target=target, args=("default target",))
            process.start()
            process.join()
        process = context.Process(target=target, args=("outside",))
        process.start()
        process.join()
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_process_targets_and_overriding_runs_are_children(
    tmp_path: Path, receiver: OtlpReceiver, method: str
) -> None:
    launch(tmp_path, receiver, PROCESS_APP, method)
    spans = receiver.wait_count(6)
    parent = only(spans, "parent")
    assert_child(only(spans, "target"), parent, spans)
    assert_child(only(spans, "overriding run"), parent, spans)
    assert_child(only(spans, "default target"), only(spans, "default context"), spans)
    assert only(spans, "outside").parent_id is None
    assert len(spans) == 6


# What the app sees: results, exceptions with their remote tracebacks, pickling errors.
BEHAVIOUR_APP = """
    import multiprocessing as mp
    import sys
    import threading
    import traceback
    from multiprocessing.pool import ThreadPool

    from opentelemetry import trace

    def fail(message):
        raise ValueError(message)

    def echo(value):
        return value

    def lock(_):
        return threading.Lock()

    def show(label, call):
        try:
            print(label, "result", repr(call()))
        except Exception as error:
            print(label, "error", "".join(traceback.format_exception(error)).replace(str(id(error)), "?"))
            cause = error.__cause__
            if cause is not None:
                print(label, "cause", type(cause).__name__, str(cause))

    def check(kind):
        pool = ThreadPool(2) if kind == "thread" else mp.get_context(kind).Pool(2)
        with pool:
            show(kind + " map", lambda: pool.map(echo, [1, "two", (3,)]))
            show(kind + " apply error", lambda: pool.apply(fail, ("boom",)))
            show(kind + " map error", lambda: pool.map(fail, ["map boom"]))
            show(kind + " imap error", lambda: list(pool.imap(fail, ["imap boom"])))
            show(kind + " starmap error", lambda: pool.starmap(fail, [("starmap boom",)]))
            if kind != "thread":
                show(kind + " unpicklable argument", lambda: pool.apply(echo, (threading.Lock(),)))
                show(kind + " unpicklable in map", lambda: pool.map(echo, [1, threading.Lock()]))
                show(kind + " unpicklable result", lambda: pool.apply(lock, (1,)))
                try:
                    pool.apply(lambda: 1)
                except Exception as error:
                    print(kind, "lambda", type(error).__name__, str(error).replace(hex(id(error)), "?"))
            show(kind + " still works", lambda: pool.apply(echo, (3,)))

    if __name__ == "__main__":
        # In a span, so there is a context to carry (and the agent's SDK is up, with the instrumentor).
        with trace.get_tracer("behaviour").start_as_current_span("parent"):
            for kind in ("fork", "spawn", "forkserver", "thread"):
                check(kind)
            from multiprocessing import pool as pool_module

            # The comparison is worth something only if the instrumentor was at work.
            print("instrumented", hasattr(pool_module.Pool.apply_async, "__wrapped__"))
"""


def without_addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x?", text)


def test_results_errors_tracebacks_and_pickling_errors_are_untouched(tmp_path: Path) -> None:
    with_agent = launch(tmp_path, None, BEHAVIOUR_APP, LOGFIRE_EXPORTER="none")
    without = run_without_agent(tmp_path, BEHAVIOUR_APP, name="plain.py")
    assert without.returncode == 0, without.stderr
    # The comparison is worth something only if the instrumentor was at work in one run and not the other.
    seen, instrumented = with_agent.stdout.rsplit("instrumented ", 1)
    plain, not_instrumented = without.stdout.rsplit("instrumented ", 1)
    assert (instrumented, not_instrumented) == ("True\n", "False\n")
    assert without_addresses(seen.replace("app.py", "plain.py")) == without_addresses(plain)
    # The comparison means something only if the app saw what it is meant to see.
    assert "spawn unpicklable argument error" in without.stdout
    assert "TypeError: cannot pickle '_thread.lock' object" in without.stdout
    assert "MaybeEncodingError" in without.stdout
    assert "in fail\n    raise ValueError(message)\nValueError: map boom" in without.stdout
    # Python 3.13 says "Can't get local object", older ones "Can't pickle local object".
    assert re.search(r"spawn lambda AttributeError Can't (pickle|get) local object", without.stdout)


# SIGTERM to the whole process group (what a service manager sends at stop) while workers are busy.
SIGTERM_APP = """
    import multiprocessing as mp
    import os
    import sys
    import time

    from opentelemetry import trace

    tracer = trace.get_tracer("sigterm")

    def task(arguments):
        i, path = arguments
        with tracer.start_as_current_span("task", attributes={"i": i}):
            time.sleep(0.002)
        with open(path, "a") as done:
            done.write(f"{i}\\n")

    if __name__ == "__main__":
        method, path = sys.argv[1], sys.argv[2]
        tracer.start_span("before").end()
        with tracer.start_as_current_span("parent"):
            with mp.get_context(method).Pool(2) as pool:
                pool.map(task, [(i, path) for i in range(100000)], chunksize=1)
"""


LEAKED_SEMAPHORES = re.compile(
    r"\S*resource_tracker.py:\d+: UserWarning: resource_tracker: There appear to be \d+ leaked "
    r"semaphore objects to clean up at shutdown[^\n]*\n  warnings.warn\([^\n]*\n"  # 3.13 names them
)
ORPHAN_ERRORS = ("BrokenPipeError", "EOFError", "ConnectionResetError")


def assert_only_orphans_complain(stderr: str) -> None:
    """What multiprocessing itself prints when a pool is stopped by SIGTERM, and nothing else.

    The resource tracker of spawn and forkserver sees the pool's semaphores left behind, as without
    the agent. And the parent flushes before it dies (some milliseconds), while its pool's threads
    run on: a worker that died of the same SIGTERM may be replaced meanwhile, and the replacement,
    which never got the signal, finds the parent gone (multiprocessing prints the broken pipe).
    """
    assert "logfire-run" not in stderr, stderr
    framing = {
        "Traceback (most recent call last):",
        "During handling of the above exception, another exception occurred:",
    }
    for line in LEAKED_SEMAPHORES.sub("", stderr).splitlines():
        if not line or line.startswith(" ") or line in framing or re.fullmatch(r"Process \S+:", line):
            continue  # a traceback's frames and framing
        assert line.startswith(ORPHAN_ERRORS), stderr


@pytest.mark.parametrize("method", START_METHODS)
def test_sigterm_to_a_pool_delivers_every_finished_task(
    tmp_path: Path, receiver: OtlpReceiver, method: str
) -> None:
    done = tmp_path / "done.txt"
    script = write_app(tmp_path, SIGTERM_APP)
    process = subprocess.Popen(
        ["logfire-run", "python", str(script), method, str(done)],
        env=agent_env(receiver),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if done.exists() and len(done.read_text().splitlines()) >= 200:
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGTERM, stderr
    assert_only_orphans_complain(stderr)
    finished = {int(line) for line in done.read_text().splitlines()}
    assert len(finished) >= 200
    spans = receiver.wait_for(
        lambda spans: finished <= {span.attributes.get("i") for span in spans if span.name == "task"}
    )
    only(spans, "before")
    tasks = [span for span in spans if span.name == "task"]
    arrived = {span.attributes["i"] for span in tasks}
    assert finished <= arrived, f"{len(finished - arrived)} finished tasks have no span"
    assert len(arrived) == len(tasks)
    # The parent span was still open: it never ends, but every task names the same one.
    assert len({(span.trace_id, span.parent_id) for span in tasks}) == 1
    assert tasks[0].parent_id is not None


CONFIGURED_IN_CODE_APP = """
    import multiprocessing as mp
    import os

    import logfire_run
    from opentelemetry import trace

    def initializer(tag):
        print("initializer", tag, flush=True)

    def task(i):
        trace.get_tracer("configured").start_span("task", attributes={"i": i}).end()
        return os.getpid()

    if __name__ == "__main__":
        logfire_run.configure(service_name="configured-in-code")
        for method in ("spawn", "forkserver"):
            with logfire_run.span(method):
                pool = mp.get_context(method).Pool(2, initializer, ("tag",))
                pool.map(task, range(10))
                pool.close()
                pool.join()
"""


@pytest.mark.slow
def test_configuration_set_in_code_reaches_spawned_pool_workers(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    result = launch(tmp_path, receiver, CONFIGURED_IN_CODE_APP)
    # The app's own initializer still runs, once per worker, with its arguments.
    assert result.stdout == "initializer tag\n" * 4
    spans = receiver.wait_count(22)
    for method in ("spawn", "forkserver"):
        parent = only(spans, method)
        tasks = [span for span in spans if span.parent_id == parent.span_id]
        assert sorted(span.attributes["i"] for span in tasks) == list(range(10)), render_tree(spans)
    assert {span.service for span in spans} == {"configured-in-code"}
