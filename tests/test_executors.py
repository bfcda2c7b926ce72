"""Threads, thread pools and process pools: every task's spans arrive, as children of the submitting span.

Each test writes a small app, runs it with real interpreters (through `logfire-run`, or plainly when
the point is to compare with the app as it runs without the agent), and reads the spans back from
the OTLP receiver.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from conftest import (
    DEBUG_LINES,
    ROOT,
    OtlpReceiver,
    SpanRecord,
    StderrExpectation,
    agent_env,
    assert_child,
    launch,
    only,
    render_tree,
    run_launcher,
    run_process,
    run_without_agent,
    write_app,
)

START_METHODS = ["fork", "spawn", "forkserver"]


def run_plain(
    tmp_path: Path,
    source: str,
    *args: str,
    env: dict[str, str],
    timeout: float = 120,
    expect_stderr: StderrExpectation = "",
) -> subprocess.CompletedProcess[str]:
    """The app without the launcher, in `env`: it starts the agent (or its instrumentors) itself."""
    script = write_app(tmp_path, source)
    return run_process(
        [sys.executable, str(script), *args], env, cwd=tmp_path, timeout=timeout, expect_stderr=expect_stderr
    )


# Threads and thread pools

THREAD_POOL_APP = """
    import asyncio
    import concurrent.futures as cf

    import logfire_run

    def task(name):
        logfire_run.info(name)
        return name

    with logfire_run.span("parent"):
        with cf.ThreadPoolExecutor(2) as pool:
            assert pool.submit(task, "submit").result() == "submit"
            assert list(pool.map(task, ["map 1", "map 2"])) == ["map 1", "map 2"]

        async def main():
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, task, "default executor")
            with cf.ThreadPoolExecutor(1) as own:
                await loop.run_in_executor(own, task, "own executor")

        asyncio.run(main())
"""


def test_thread_pool_submit_map_and_run_in_executor(tmp_path: Path, receiver: OtlpReceiver) -> None:
    launch(tmp_path, receiver, THREAD_POOL_APP)
    spans = receiver.wait_count(6)
    parent = only(spans, "parent")
    for name in ("submit", "map 1", "map 2", "default executor", "own executor"):
        assert_child(only(spans, name), parent, spans)


REUSED_WORKER_APP = """
    import concurrent.futures as cf

    import logfire_run
    from opentelemetry import context, trace

    def init():
        logfire_run.info("initializer")

    def leaky(name):
        logfire_run.info(name)
        # Attach a context and never detach it: the next task must not inherit it.
        stray = trace.get_tracer("test").start_span("stray")
        context.attach(trace.set_span_in_context(stray))
        stray.end()

    def task(name):
        logfire_run.info(name)

    with cf.ThreadPoolExecutor(1, initializer=init) as pool:
        with logfire_run.span("first"):
            # The worker thread is started here, inside "first": it must not keep that context.
            pool.submit(leaky, "in first").result()
        pool.submit(task, "outside any span").result()
        with logfire_run.span("second"):
            pool.submit(task, "in second").result()
"""


def test_reused_worker_thread_starts_each_task_from_its_own_context(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    launch(tmp_path, receiver, REUSED_WORKER_APP)
    spans = receiver.wait_count(6)
    first, second = only(spans, "first"), only(spans, "second")
    assert_child(only(spans, "in first"), first, spans)
    assert_child(only(spans, "in second"), second, spans)
    assert only(spans, "initializer").parent_id is None
    orphan = only(spans, "outside any span")
    assert orphan.parent_id is None, render_tree(spans)
    assert orphan.trace_id not in (first.trace_id, only(spans, "stray").trace_id)


THREADS_APP = """
    import concurrent.futures as cf
    import threading

    import logfire_run

    class OwnPool(cf.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            return super().submit(fn, *args, **kwargs)

    class Worker(threading.Thread):
        def run(self):
            logfire_run.info("thread subclass")

    inner = cf.ThreadPoolExecutor(2)

    def outer_task():
        with logfire_run.span("outer task"):
            inner.submit(logfire_run.info, "inner task").result()

    with logfire_run.span("parent"):
        with OwnPool(2) as pool:
            pool.submit(outer_task).result()
            pool.submit(logfire_run.info, "subclass submit").result()
        thread = threading.Thread(target=logfire_run.info, args=("thread",))
        thread.start()
        thread.join()
        timer = threading.Timer(0.01, logfire_run.info, args=("timer",))
        timer.start()
        timer.join()
        worker = Worker()
        worker.start()
        worker.join()
    inner.shutdown()
    # Started outside any span: no parent.
    thread = threading.Thread(target=logfire_run.info, args=("thread outside",))
    thread.start()
    thread.join()
"""


def test_subclassed_and_nested_pools_threads_and_timers(tmp_path: Path, receiver: OtlpReceiver) -> None:
    launch(tmp_path, receiver, THREADS_APP)
    spans = receiver.wait_count(8)
    parent = only(spans, "parent")
    outer = only(spans, "outer task")
    assert_child(outer, parent, spans)
    assert_child(only(spans, "inner task"), outer, spans)
    for name in ("subclass submit", "thread", "timer", "thread subclass"):
        assert_child(only(spans, name), parent, spans)
    assert only(spans, "thread outside").parent_id is None


BEHAVIOUR_APP = """
    import concurrent.futures as cf
    import multiprocessing as mp
    import re
    import sys
    import threading
    import traceback

    def show(label, value):
        # Addresses differ from run to run; everything else must not.
        print(label, re.sub(r"0x[0-9a-f]+", "0x?", str(value)))

    def echo(*args, **kwargs):
        return args, kwargs

    MODULE_LAMBDA = lambda: 1  # noqa: E731

    def fail(message):
        raise ValueError(message)

    def frames(error):
        return [frame.name for frame in traceback.extract_tb(error.__traceback__)]

    def check_threads():
        with cf.ThreadPoolExecutor(2) as pool:
            argument = object()
            (args, kwargs) = pool.submit(echo, argument, key=argument).result()
            show("same objects", args[0] is argument and kwargs["key"] is argument)
            future = pool.submit(fail, "boom")
            try:
                future.result()
            except ValueError as error:
                show("thread error", repr(error))
                show("same error", error is future.exception())
                show("thread frames", frames(error))

    def check_processes(method):
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as pool:
            show(method + " result", pool.submit(echo, 1, key=[2]).result())
            try:
                pool.submit(fail, "remote boom").result()
            except ValueError as error:
                show(method + " error", repr(error))
                show(method + " remote traceback", error.__cause__)
            for label, submit in (
                ("lambda", lambda: pool.submit(MODULE_LAMBDA)),
                ("local lambda", lambda: pool.submit(lambda: 1)),
                ("lock argument", lambda: pool.submit(echo, threading.Lock())),
            ):
                try:
                    submit().result()
                except Exception as error:
                    show(method + " " + label, type(error).__qualname__ + ": " + str(error))
                    show(method + " " + label + " cause", error.__cause__)
            show(method + " still works", pool.submit(echo, 3).result())

    if __name__ == "__main__":
        check_threads()
        for method in ("fork", "spawn", "forkserver"):
            check_processes(method)
"""


def test_callables_arguments_results_errors_and_pickling_errors_are_untouched(tmp_path: Path) -> None:
    with_agent = launch(tmp_path, None, BEHAVIOUR_APP, LOGFIRE_EXPORTER="none")
    without = run_without_agent(tmp_path, BEHAVIOUR_APP)
    assert without.returncode == 0, without.stderr
    assert with_agent.stdout == without.stdout
    # The comparison means something only if the app saw what it is meant to see.
    assert "same objects True" in without.stdout
    assert "thread frames ['check_threads', 'result', '__get_result', 'run', 'fail']" in without.stdout
    assert (
        "spawn lambda PicklingError: Can't pickle <function <lambda> at 0x?>: "
        "attribute lookup <lambda> on __main__ failed" in without.stdout
    )
    # "Can't pickle local object" up to 3.12, "Can't get local object" from 3.13: the same with the agent.
    assert re.search(r"fork local lambda AttributeError: Can't (pickle|get) local object", without.stdout)
    assert "fork lock argument TypeError: cannot pickle '_thread.lock' object" in without.stdout
    assert "in fail\n    raise ValueError(message)\nValueError: remote boom" in without.stdout


INTEROP_APP = """
    import concurrent.futures as cf
    import sys
    import threading

    from opentelemetry import trace

    def layers(function):
        count = 0
        while hasattr(function, "__wrapped__"):
            function, count = function.__wrapped__, count + 1
        return count

    def show_layers(label):
        print(
            label,
            "start", layers(threading.Thread.__dict__["start"]),
            "run", layers(threading.Thread.__dict__["run"]),
            "timer run", layers(threading.Timer.__dict__["run"]),
            "submit", layers(cf.ThreadPoolExecutor.__dict__["submit"]),
        )

    tracer = trace.get_tracer("interop")

    def task(name):
        tracer.start_span(name).end()

    def traced(label):
        with tracer.start_as_current_span(label):
            with cf.ThreadPoolExecutor(2) as pool:
                pool.submit(task, label + " pool task").result()
            thread = threading.Thread(target=task, args=(label + " thread",))
            thread.start()
            thread.join()
"""

MANUAL_ORDER = """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from logfire_run.instrumentors.executors import ExecutorInstrumentor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    first, second = (
        (ThreadingInstrumentor(), ExecutorInstrumentor())
        if sys.argv[1] == "otel-first"
        else (ExecutorInstrumentor(), ThreadingInstrumentor())
    )
    first.instrument()
    second.instrument()
    show_layers("both")
    traced("both")
    ExecutorInstrumentor().uninstrument()
    show_layers("otel only")
    traced("otel only")
    ThreadingInstrumentor().uninstrument()
    show_layers("none")
    provider.shutdown()
"""


@pytest.mark.parametrize("order", ["otel-first", pytest.param("ours-first", marks=pytest.mark.slow)])
def test_with_opentelemetry_threading_instrumentor_in_either_order(
    tmp_path: Path, receiver: OtlpReceiver, order: str
) -> None:
    env = agent_env(receiver)
    result = run_plain(tmp_path, textwrap.dedent(INTEROP_APP) + textwrap.dedent(MANUAL_ORDER), order, env=env)
    assert result.returncode == 0, result.stderr
    # One wrapper on Thread.start, none on submit (ours patches the work item), none of theirs on run;
    # once ours is gone, theirs is back in full.
    assert result.stdout.splitlines() == [
        "both start 1 run 0 timer run 0 submit 0",
        "otel only start 1 run 1 timer run 1 submit 1",
        "none start 0 run 0 timer run 0 submit 0",
    ]
    spans = receiver.wait_count(6)
    for label in ("both", "otel only"):
        parent = only(spans, label)
        assert_child(only(spans, label + " pool task"), parent, spans)
        assert_child(only(spans, label + " thread"), parent, spans)


def test_launcher_does_not_load_opentelemetry_threading_instrumentor(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    source = textwrap.dedent(INTEROP_APP) + textwrap.dedent(
        """
        traced("launcher")
        show_layers("launcher")
        print("otel threading imported", "opentelemetry.instrumentation.threading" in sys.modules)
        # Asked for by hand while ours is active: it stays out of the way.
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor
        ThreadingInstrumentor().instrument()
        show_layers("by hand")
        traced("by hand")
        """
    )
    result = launch(tmp_path, receiver, source)
    assert result.stdout.splitlines() == [
        "launcher start 1 run 0 timer run 0 submit 0",
        "otel threading imported False",
        "by hand start 1 run 0 timer run 0 submit 0",
    ]
    spans = receiver.wait_count(6)
    for label in ("launcher", "by hand"):
        parent = only(spans, label)
        assert_child(only(spans, label + " pool task"), parent, spans)
        assert_child(only(spans, label + " thread"), parent, spans)


# Process pools

PROCESS_POOL_APP = """
    import concurrent.futures as cf
    import gc
    import multiprocessing as mp
    import os
    import sys

    import logfire_run

    def task(i):
        with logfire_run.span("task", i=i, pid=os.getpid()):
            return i

    def run_pool(label, count, ending, mp_context=None):
        with logfire_run.span(label):
            if ending == "with":
                with cf.ProcessPoolExecutor(2, mp_context=mp_context) as pool:
                    futures = [pool.submit(task, i) for i in range(count)]
                    assert [future.result() for future in futures] == list(range(count))
            elif ending == "shutdown":
                pool = cf.ProcessPoolExecutor(2, mp_context=mp_context)
                futures = [pool.submit(task, i) for i in range(count)]
                assert [future.result() for future in futures] == list(range(count))
                pool.shutdown()
            else:  # garbage-collected, never shut down
                pool = cf.ProcessPoolExecutor(2, mp_context=mp_context)
                assert list(pool.map(task, range(count), chunksize=3)) == list(range(count))
                del pool
                gc.collect()

    if __name__ == "__main__":
        if sys.argv[1] == "matrix":
            for method in ("fork", "spawn", "forkserver"):
                for ending in ("with", "shutdown", "gc"):
                    run_pool(f"{method} {ending}", 10, ending, mp.get_context(method))
                mp.set_start_method(method, force=True)
                run_pool(f"{method} default", 10, "with")
        else:
            method, ending, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
            run_pool("parent", count, ending, mp.get_context(method))
        logfire_run.info("parent done")
        print(os.getpid())
"""


def children_by_parent(spans: list[SpanRecord]) -> dict[str, list[SpanRecord]]:
    grouped: dict[str, list[SpanRecord]] = {}
    for span in spans:
        if span.name == "task" and span.parent_id:
            grouped.setdefault(span.parent_id, []).append(span)
    return grouped


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "ending"), [("fork", "gc"), ("spawn", "shutdown"), ("forkserver", "with")]
)
def test_two_thousand_tasks_two_thousand_child_spans(
    tmp_path: Path, receiver: OtlpReceiver, method: str, ending: str
) -> None:
    count = 2000
    result = launch(tmp_path, receiver, PROCESS_POOL_APP, method, ending, str(count))
    spans = receiver.wait_count(count + 2, timeout=30)
    parent = only(spans, "parent")
    only(spans, "parent done")
    tasks = [span for span in spans if span.name == "task"]
    assert len(tasks) == count
    assert sorted(span.attributes["i"] for span in tasks) == list(range(count))
    assert {(span.trace_id, span.parent_id) for span in tasks} == {(parent.trace_id, parent.span_id)}
    # The work really ran in other processes, which are the app's service too.
    worker_pids = {span.attributes["pid"] for span in tasks}
    assert int(result.stdout) not in worker_pids and 1 <= len(worker_pids) <= 2
    assert {span.service for span in spans} == {"app"}
    assert len(spans) == count + 2


@pytest.mark.slow
def test_every_start_method_and_every_way_a_pool_ends(tmp_path: Path, receiver: OtlpReceiver) -> None:
    launch(tmp_path, receiver, PROCESS_POOL_APP, "matrix")
    labels = [f"{m} {e}" for m in START_METHODS for e in ("with", "shutdown", "gc", "default")]
    spans = receiver.wait_count(len(labels) * 11 + 1, timeout=30)
    grouped = children_by_parent(spans)
    for label in labels:
        parent = only(spans, label)
        children = grouped.get(parent.span_id, [])
        assert sorted(span.attributes["i"] for span in children) == list(range(10)), (
            f"{label}:\n{render_tree(spans)}"
        )
        assert {span.trace_id for span in children} == {parent.trace_id}
    assert len(spans) == len(labels) * 11 + 1


FORKED_CHILD_APP = """
    import multiprocessing as mp
    import os

    import logfire_run

    def child(how):
        logfire_run.info("in child " + how)
        if how == "os._exit":
            os._exit(0)

    if __name__ == "__main__":
        logfire_run.info("parent up")
        for how in ("return", "os._exit"):
            process = mp.get_context("fork").Process(target=child, args=(how,))
            process.start()
            process.join(30)
            assert process.exitcode == 0
"""


def test_forked_children_flush_although_they_skip_atexit(tmp_path: Path, receiver: OtlpReceiver) -> None:
    launch(tmp_path, receiver, FORKED_CHILD_APP)
    spans = receiver.wait_count(3)
    only(spans, "in child return")
    only(spans, "in child os._exit")


# Only the OpenTelemetry API (a no-op without the agent), never logfire_run: importing logfire_run
# would start the agent in the run that is meant to be without it.
DYING_WORKER_APP = """
    import concurrent.futures as cf
    import multiprocessing as mp
    import os
    import signal
    import sys

    from opentelemetry import trace

    tracer = trace.get_tracer("dying-worker")

    def task(i):
        with tracer.start_as_current_span("task", attributes={"i": i, "pid": os.getpid()}):
            return os.getpid()

    def die(how, path):
        with open(path, "w") as file:
            file.write(str(os.getpid()))
        if how == "os._exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        method, how, path = sys.argv[1:]
        with tracer.start_as_current_span("parent"):
            pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method))
            pids = list(pool.map(task, range(20)))
            print("two workers", len(set(pids)) <= 2)
            try:
                pool.submit(die, how, path).result()
            except Exception as error:
                print(type(error).__qualname__, error)
            try:
                pool.submit(task, 99)
            except Exception as error:
                print(type(error).__qualname__, error)
            pool.shutdown()
            print("finished", ",".join(map(str, pids)))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("method", "how"), [("fork", "os._exit"), ("spawn", "SIGKILL")])
def test_a_dying_worker_breaks_the_pool_as_without_the_agent(
    tmp_path: Path, receiver: OtlpReceiver, method: str, how: str
) -> None:
    killed = tmp_path / "killed.pid"
    with_agent = launch(tmp_path, receiver, DYING_WORKER_APP, method, how, str(killed))
    without = run_without_agent(
        tmp_path, DYING_WORKER_APP, method, how, str(tmp_path / "killed without agent.pid")
    )
    assert without.returncode == 0, without.stderr

    def outcome(stdout: str) -> list[str]:
        return [line for line in stdout.splitlines() if not line.startswith("finished")]

    assert outcome(with_agent.stdout) == outcome(without.stdout)
    assert "BrokenProcessPool A process in the process pool was terminated abruptly" in without.stdout
    # Every task that ended in a worker that was not SIGKILLed has its span (a SIGKILLed worker's spans
    # arrive only if its batch was exported before it died).
    finished = with_agent.stdout.splitlines()[-1].split()[1].split(",")
    dead = killed.read_text() if how == "SIGKILL" else None
    expected = sorted(i for i, pid in enumerate(finished) if pid != dead)
    spans = receiver.wait_count(len(expected) + 1)
    parent = only(spans, "parent")
    tasks = [span for span in spans if span.name == "task"]
    arrived = sorted(span.attributes["i"] for span in tasks)
    assert set(expected) <= set(arrived) <= set(range(20)) and len(arrived) == len(set(arrived))
    if how == "os._exit":
        assert arrived == list(range(20))
    assert all(span.parent_id == parent.span_id for span in tasks)


CONFIGURED_IN_CODE_APP = """
    import concurrent.futures as cf
    import multiprocessing as mp
    import os
    import sys

    import logfire_run

    def initializer(tag):
        print("initializer", tag, os.getpid(), flush=True)

    def task(i):
        with logfire_run.span("task", i=i):
            return os.getpid()

    if __name__ == "__main__":
        logfire_run.configure(service_name="configured-in-code", exporters="otlp")
        if sys.argv[1] == "unpicklable":
            from logfire_run.agent.process import state

            class Unpicklable(str):
                def __reduce__(self):
                    raise TypeError("this value cannot be pickled")

            # No setting can hold such a value today; a future one might.
            state.config().sources["store_path"] = "configure()"
            state.config().store_path = Unpicklable("somewhere")
        for method in ("spawn", "forkserver"):
            with logfire_run.span(method):
                with cf.ProcessPoolExecutor(
                    2, mp_context=mp.get_context(method), initializer=initializer, initargs=("tag",)
                ) as pool:
                    pids = [future.result() for future in [pool.submit(task, i) for i in range(20)]]
            print("pids", method, " ".join(sorted(set(map(str, pids)))), flush=True)
"""


@pytest.mark.slow
def test_configuration_set_in_code_reaches_spawned_workers_once_per_worker(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    # No launcher: the app starts the agent itself; LOGFIRE_DEBUG shows each process's start.
    env = agent_env(receiver, LOGFIRE_DEBUG="1")
    env.pop("LOGFIRE_EXPORTER")
    result = run_plain(tmp_path, CONFIGURED_IN_CODE_APP, "ok", env=env, expect_stderr=DEBUG_LINES)
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_count(42)
    worker_pids = set()
    for method in ("spawn", "forkserver"):
        parent = only(spans, method)
        tasks = [span for span in spans if span.name == "task" and span.parent_id == parent.span_id]
        assert sorted(span.attributes["i"] for span in tasks) == list(range(20)), render_tree(spans)
        pids = next(line for line in result.stdout.splitlines() if line.startswith(f"pids {method}"))
        worker_pids.update(pids.split()[2:])
    assert {span.service for span in spans} == {"configured-in-code"}
    # Once per worker: one agent start and one run of the app's own initializer in each worker.
    starts = Counter(re.findall(r"logfire-run\[(\d+)\]: agent started via configure\(\)", result.stderr))
    initializers = Counter(re.findall(r"initializer tag (\d+)", result.stdout))
    assert worker_pids <= set(starts) and worker_pids <= set(initializers)
    assert set(starts.values()) == {1} and set(initializers.values()) == {1}


@pytest.mark.slow
def test_unpicklable_configuration_warns_once_and_tasks_still_run(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    env = agent_env(receiver)
    env.pop("LOGFIRE_EXPORTER")
    result = run_plain(
        tmp_path,
        CONFIGURED_IN_CODE_APP,
        "unpicklable",
        env=env,
        expect_stderr=(
            "logfire-run: the configuration set with logfire_run.configure() cannot be sent to process "
            "pool workers (TypeError: this value cannot be pickled); spawn and forkserver workers of this "
            "process run with the configuration from the environment only\n"
        ),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("initializer tag") >= 2
    assert len([line for line in result.stdout.splitlines() if line.startswith("pids")]) == 2


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is new in Python 3.11")
def test_recycled_workers_deliver_their_spans(tmp_path: Path, receiver: OtlpReceiver) -> None:
    # max_tasks_per_child=1: with more than 1, CPython's ProcessPoolExecutor hangs when it replaces a
    # worker while tasks are queued, with or without the agent (gh-115634; see docs/executors.md).
    source = """
        import concurrent.futures as cf
        import multiprocessing as mp
        import os

        import logfire_run

        def task(i):
            with logfire_run.span("task", i=i):
                return os.getpid()

        if __name__ == "__main__":
            with logfire_run.span("parent"):
                with cf.ProcessPoolExecutor(
                    2, mp_context=mp.get_context("spawn"), max_tasks_per_child=1
                ) as pool:
                    print(len(set(pool.map(task, range(8)))))
    """
    result = launch(tmp_path, receiver, source)
    assert int(result.stdout) == 8  # one worker per task
    spans = receiver.wait_count(9)
    parent = only(spans, "parent")
    assert sorted(span.attributes["i"] for span in spans if span.parent_id == parent.span_id) == list(
        range(8)
    )


OTEL_INSTRUMENT_APP = """
    import concurrent.futures as cf
    import multiprocessing as mp
    import sys

    from opentelemetry import trace

    def task(i):
        with trace.get_tracer("test").start_as_current_span("task") as span:
            span.set_attribute("i", i)
            return i

    if __name__ == "__main__":
        for method in ("fork", "spawn", "forkserver"):
            with trace.get_tracer("test").start_as_current_span(method):
                with cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
                    futures = [pool.submit(task, i) for i in range(300)]
                    assert [future.result() for future in futures] == list(range(300))
"""


@pytest.mark.slow
def test_under_opentelemetry_instrument_process_pools_work_too(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    script = write_app(tmp_path, OTEL_INSTRUMENT_APP)
    env = agent_env(
        receiver,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="otel-instrument",
    )
    env.pop("LOGFIRE_EXPORTER")
    instrument = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    result = run_process([instrument, sys.executable, str(script)], env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_count(903, timeout=30)
    grouped = children_by_parent(spans)
    for method in START_METHODS:
        parent = only(spans, method)
        children = grouped.get(parent.span_id, [])
        assert sorted(span.attributes["i"] for span in children) == list(range(300)), method


@pytest.mark.slow
def test_example_runs(tmp_path: Path, receiver: OtlpReceiver) -> None:
    example = ROOT / "examples" / "executors.py"
    result = run_launcher(["python", str(example)], agent_env(receiver), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_for(lambda spans: any(span.name == "fan out" for span in spans))
    root = only(spans, "fan out")
    work = [span for span in spans if span.name == "work"]
    assert len(work) == 16
    assert all(span.trace_id == root.trace_id for span in work)


def test_info_shows_opentelemetry_threading_replaced_while_executors_is_enabled() -> None:
    def state(*flags: str) -> dict[str, str]:
        result = run_launcher([*flags, "--info"], agent_env())
        assert result.returncode == 0, result.stderr
        rows = [line.split() for line in result.stdout.splitlines() if line.startswith("  ")]
        return {row[0]: row[1] for row in rows if row[0] in ("executors", "threading")}

    assert state() == {"executors": "enabled", "threading": "replaced"}
    assert state("--disable", "executors") == {"executors": "disabled", "threading": "enabled"}
