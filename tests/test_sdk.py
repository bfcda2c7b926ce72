"""SDK setup as a user sees it: service names, OTEL_* variables, flushing at every kind of exit, an app
with its own TracerProvider, and a backend that is down."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import (
    FORK_WARNINGS,
    LAUNCHER,
    OtlpReceiver,
    agent_env,
    assert_clean_stderr,
    child_env,
    free_port,
    run_launcher,
    run_process,
)

SPAN = "import logfire_run\nwith logfire_run.span('work'):\n    pass\n"


def _service_of_one_span(receiver: OtlpReceiver, args: list[str], cwd: Path | None = None, **env: str) -> str:
    result = run_launcher(args, agent_env(receiver, **env), cwd=cwd)
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_count(1)
    assert len(spans) == 1
    return spans[0].service


def test_default_service_name_is_the_script(receiver: OtlpReceiver, tmp_path: Path) -> None:
    (tmp_path / "billing_api.py").write_text(SPAN)
    assert _service_of_one_span(receiver, ["python", str(tmp_path / "billing_api.py")]) == "billing_api"


@pytest.mark.slow
def test_default_service_name_is_the_module(receiver: OtlpReceiver, tmp_path: Path) -> None:
    (tmp_path / "shipping").mkdir()
    (tmp_path / "shipping" / "__init__.py").write_text("")
    (tmp_path / "shipping" / "__main__.py").write_text(SPAN)
    assert _service_of_one_span(receiver, ["-m", "shipping"], cwd=tmp_path) == "shipping"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource,team=a"}, "from-resource"),
        pytest.param(
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource", "OTEL_SERVICE_NAME": "from-otel"},
            "from-otel",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"OTEL_SERVICE_NAME": "from-otel", "LOGFIRE_SERVICE_NAME": "from-logfire"},
            "from-logfire",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_service_name_precedence(receiver: OtlpReceiver, env: dict[str, str], expected: str) -> None:
    assert _service_of_one_span(receiver, ["python", "-c", SPAN], **env) == expected


@pytest.mark.slow
def test_flag_beats_env_and_resource_attributes_are_kept(receiver: OtlpReceiver) -> None:
    result = run_launcher(
        ["--service-name", "from-flag", "python", "-c", SPAN],
        agent_env(
            receiver, OTEL_SERVICE_NAME="from-otel", OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test"
        ),
    )
    assert result.returncode == 0
    (span,) = receiver.wait_count(1)
    assert span.service == "from-flag"
    assert span.resource["deployment.environment"] == "test"


def test_configure_service_name_after_setup(receiver: OtlpReceiver) -> None:
    code = SPAN + "logfire_run.configure(service_name='renamed')\nwith logfire_run.span('later'):\n    pass\n"
    result = run_launcher(["python", "-c", code], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    spans = {span.name: span for span in receiver.wait_count(2)}
    assert spans["later"].service == "renamed"


@pytest.mark.slow
def test_sampler_variables_are_honoured(receiver: OtlpReceiver) -> None:
    code = SPAN + "with logfire_run.span('x') as s:\n    print(s.is_recording())\n"
    result = run_launcher(["python", "-c", code], agent_env(receiver, OTEL_TRACES_SAMPLER="always_off"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "False\n"
    ratio = run_launcher(
        ["python", "-c", code],
        agent_env(receiver, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="1.0"),
    )
    assert ratio.stdout == "True\n"


def test_sdk_disabled_runs_the_app_untraced(receiver: OtlpReceiver) -> None:
    code = SPAN + "from opentelemetry import trace\nprint(type(trace.get_tracer_provider()).__name__)\n"
    result = run_launcher(["python", "-c", code], agent_env(receiver, OTEL_SDK_DISABLED="true"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ProxyTracerProvider\n"


@pytest.mark.slow
def test_otlp_endpoint_alone_selects_otlp(receiver: OtlpReceiver) -> None:
    env = agent_env(receiver)
    del env["LOGFIRE_EXPORTER"]
    result = run_launcher(["python", "-c", SPAN], env)
    assert result.returncode == 0, result.stderr
    assert [span.name for span in receiver.wait_count(1)] == ["work"]


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        pytest.param("pass", 0, marks=pytest.mark.slow),
        pytest.param("import sys; sys.exit(4)", 4, marks=pytest.mark.slow),
        ("raise KeyError('uncaught')", 1),
        ("import os; os._exit(5)", 5),
    ],
)
def test_spans_are_flushed_at_every_exit(receiver: OtlpReceiver, ending: str, status: int) -> None:
    code = (
        "import logfire_run\nfor i in range(50):\n    with logfire_run.span(f's{i}'):\n        pass\n"
        + ending
    )
    # The uncaught exception's traceback is Python's own, and the only thing on stderr.
    uncaught = re.compile(
        r"Traceback \(most recent call last\):\n(?:(?!logfire-run).*\n)*KeyError: 'uncaught'\n"
    )
    result = run_launcher(
        ["python", "-c", code],
        agent_env(receiver, OTEL_BSP_SCHEDULE_DELAY="60000"),
        expect_stderr=uncaught if status == 1 else "",
    )
    assert result.returncode == status
    assert len(receiver.wait_count(50)) == 50


def test_sigterm_without_handler_flushes_and_keeps_the_signal_status(receiver: OtlpReceiver) -> None:
    code = (
        "import logfire_run, time\n"
        "for i in range(20):\n    with logfire_run.span(f's{i}'):\n        pass\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    env = agent_env(receiver, OTEL_BSP_SCHEDULE_DELAY="60000")
    process = subprocess.Popen(
        [LAUNCHER, "python", "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM
    assert len(receiver.wait_count(20)) == 20
    assert_clean_stderr(err)


def test_app_provider_set_first_is_kept_without_duplicates(receiver: OtlpReceiver) -> None:
    code = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "app-owned"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)

        import logfire_run
        with logfire_run.span("through the agent api"):
            with trace.get_tracer("app").start_as_current_span("through the app tracer"):
                pass
        """
    )
    result = run_launcher(["python", "-c", code], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    # The app has exited, and each export waited for the receiver's answer: all it sent is here.
    spans = receiver.spans
    assert sorted((span.name, span.service) for span in spans) == [
        ("through the agent api", "app-owned"),
        ("through the app tracer", "app-owned"),
    ]
    by_name = {span.name: span for span in spans}
    assert by_name["through the app tracer"].parent_id == by_name["through the agent api"].span_id


@pytest.mark.slow
def test_app_provider_set_later_is_refused_by_opentelemetry_and_nothing_is_duplicated(
    receiver: OtlpReceiver,
) -> None:
    code = textwrap.dedent(
        """
        import logfire_run
        logfire_run.info("before")
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        with trace.get_tracer("app").start_as_current_span("app span"):
            pass
        """
    )
    result = run_launcher(
        ["--service-name", "agent-owned", "python", "-c", code],
        agent_env(receiver),
        # OpenTelemetry's own warning, as one line of the agent's (the app configured no logging that
        # would show it), and nothing else.
        expect_stderr=re.compile(
            r"logfire-run: OpenTelemetry \(opentelemetry\.trace\): Overriding of current TracerProvider "
            r"is not allowed \(said once per process; LOGFIRE_DEBUG=1 shows every occurrence\)\n"
        ),
    )
    assert result.returncode == 0, result.stderr
    # The app has exited, and each export waited for the receiver's answer: all it sent is here.
    assert sorted((span.name, span.service) for span in receiver.spans) == [
        ("app span", "agent-owned"),
        ("before", "agent-owned"),
    ]


@pytest.mark.slow  # the exporter's retries against a closed port take seconds
def test_backend_down_is_reported_once_and_the_app_is_unchanged() -> None:
    code = (
        "import logfire_run\nfor i in range(200):\n    with logfire_run.span('x'):\n        pass\n"
        "print('app done')\n"
    )
    env = agent_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        LOGFIRE_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TIMEOUT="2000",  # milliseconds, as the specification says
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
    )
    result = run_launcher(
        ["python", "-c", code],
        env,
        timeout=120,
        # Two lines: the export failure (once, not once per batch), and at exit what was dropped (the
        # backend being down, exit does not wait for every batch to time out), counted.
        expect_stderr=re.compile(
            r"logfire-run: exporting spans failed:[^\n]*\n"
            r"logfire-run: [\d,]+ spans dropped in this process: [^\n]*\n"
        ),
    )
    assert result.returncode == 0
    assert result.stdout == "app done\n"


@pytest.mark.slow
def test_console_exporter_writes_to_stderr_only() -> None:
    result = run_launcher(
        ["--exporter", "console", "python", "-c", SPAN + "print('out')"],
        agent_env(),
        expect_stderr=lambda stderr: '"name": "work"' in stderr,  # the console exporter's output
    )
    assert result.returncode == 0
    assert result.stdout == "out\n"


def test_fork_during_an_export_does_not_hang_the_child(tmp_path: Path) -> None:
    # An export that imports a module lazily (as requests does with netrc) is in flight when the app
    # forks; the child then imports the same module. Without the guard the child inherits the
    # module's import lock held by a thread it does not have, and hangs.
    #
    # The module tells the app (through a pipe) that the export is inside its import, then takes a
    # second to finish: the app forks right after that message, so the fork always lands during the
    # import, and only the guard's wait for the export in flight (2 s at most) keeps the child whole.
    (tmp_path / "slow_module.py").write_text(
        "import os, time\nos.write(int(os.environ['INSIDE_IMPORT_FD']), b'x')\ntime.sleep(1.0)\n"
    )
    code = textwrap.dedent(
        """
        import os, select, signal, sys, threading
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
        from logfire_run.agent.export.exporters import ForkSafeExporter

        class LazyImportingExporter(SpanExporter):
            def export(self, spans):
                import slow_module  # noqa: F401
                return SpanExportResult.SUCCESS

        read_end, write_end = os.pipe()
        os.environ["INSIDE_IMPORT_FD"] = str(write_end)
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(ForkSafeExporter(LazyImportingExporter())))
        with provider.get_tracer("t").start_as_current_span("s"):
            pass
        threading.Thread(target=provider.force_flush).start()
        if not select.select([read_end], [], [], 30)[0]:
            sys.exit("the export never started importing slow_module")
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)
            import slow_module  # noqa: F401
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """
    )
    # The app forks with threads of its own running (the batch processor's, the flush): Python's warning.
    # The agent runs (LOGFIRE_RUN=1): its fork hooks (`process.fork`) are what guard the exporter.
    env = agent_env(LOGFIRE_RUN="1", LOGFIRE_EXPORTER="none")
    result = run_process([sys.executable, "-c", code], env, cwd=tmp_path, expect_stderr=FORK_WARNINGS)
    assert result.stdout == "child 0\n", f"a child that hangs is killed by its alarm (-14): {result}"


FORKING_APP = """
import os
from opentelemetry import trace

trace.get_tracer("app").start_span("before the fork").end()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("forked")
"""


def test_an_app_that_forks_gets_no_warning_it_would_not_get_without_the_agent(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    app = tmp_path / "forking_app.py"
    app.write_text(FORKING_APP)
    without = run_process([sys.executable, str(app)], child_env())
    assert without.stdout == "forked\n"
    with_agent = run_launcher(["python", str(app)], agent_env(receiver), expect_stderr=without.stderr)
    assert with_agent.stdout == "forked\n"
    assert [span.name for span in receiver.wait_count(1)] == ["before the fork"]
