"""SDK setup as a user sees it: service names, OTEL_* variables, flushing at every kind of exit, an app
with its own TracerProvider, and a backend that is down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import LAUNCHER, OtlpReceiver, agent_env, assert_clean_stderr, free_port, run_launcher

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


def test_default_service_name_is_the_module(receiver: OtlpReceiver, tmp_path: Path) -> None:
    (tmp_path / "shipping").mkdir()
    (tmp_path / "shipping" / "__init__.py").write_text("")
    (tmp_path / "shipping" / "__main__.py").write_text(SPAN)
    assert _service_of_one_span(receiver, ["-m", "shipping"], cwd=tmp_path) == "shipping"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource,team=a"}, "from-resource"),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource", "OTEL_SERVICE_NAME": "from-otel"},
            "from-otel",
        ),
        ({"OTEL_SERVICE_NAME": "from-otel", "LOGFIRE_SERVICE_NAME": "from-logfire"}, "from-logfire"),
    ],
)
def test_service_name_precedence(receiver: OtlpReceiver, env: dict[str, str], expected: str) -> None:
    assert _service_of_one_span(receiver, ["python", "-c", SPAN], **env) == expected


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
    assert_clean_stderr(result.stderr)


def test_otlp_endpoint_alone_selects_otlp(receiver: OtlpReceiver) -> None:
    env = agent_env(receiver)
    del env["LOGFIRE_EXPORTER"]
    result = run_launcher(["python", "-c", SPAN], env)
    assert result.returncode == 0, result.stderr
    assert [span.name for span in receiver.wait_count(1)] == ["work"]


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        ("pass", 0),
        ("import sys; sys.exit(4)", 4),
        ("raise KeyError('uncaught')", 1),
        ("import os; os._exit(5)", 5),
    ],
)
def test_spans_are_flushed_at_every_exit(receiver: OtlpReceiver, ending: str, status: int) -> None:
    code = (
        "import logfire_run\nfor i in range(50):\n    with logfire_run.span(f's{i}'):\n        pass\n"
        + ending
    )
    result = run_launcher(["python", "-c", code], agent_env(receiver, OTEL_BSP_SCHEDULE_DELAY="60000"))
    assert result.returncode == status
    assert len(receiver.wait_count(50)) == 50
    if status == 1:
        assert "KeyError: 'uncaught'" in result.stderr
        assert "logfire-run" not in result.stderr


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
    assert_clean_stderr(result.stderr)
    spans = receiver.wait_count(2)
    receiver.wait_count(3, timeout=1.0)
    assert sorted((span.name, span.service) for span in receiver.spans) == [
        ("through the agent api", "app-owned"),
        ("through the app tracer", "app-owned"),
    ]
    by_name = {span.name: span for span in spans}
    assert by_name["through the app tracer"].parent_id == by_name["through the agent api"].span_id


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
    result = run_launcher(["--service-name", "agent-owned", "python", "-c", code], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    assert "Overriding of current TracerProvider is not allowed" in result.stderr
    receiver.wait_count(2)
    receiver.wait_count(3, timeout=1.0)
    assert sorted((span.name, span.service) for span in receiver.spans) == [
        ("app span", "agent-owned"),
        ("before", "agent-owned"),
    ]


def test_backend_down_is_reported_once_and_the_app_is_unchanged() -> None:
    code = (
        "import logfire_run\nfor i in range(200):\n    with logfire_run.span('x'):\n        pass\n"
        "print('app done')\n"
    )
    env = agent_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        LOGFIRE_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TIMEOUT="2",
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
    )
    result = run_launcher(["python", "-c", code], env, timeout=120)
    assert result.returncode == 0
    assert result.stdout == "app done\n"
    lines = [line for line in result.stderr.splitlines() if line]
    # Two problems, one line each: the export failure (once, not once per batch), and what the exit
    # budget dropped (the backend being down, exit does not wait for every batch to time out).
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("logfire-run: exporting spans failed:")
    assert lines[1].startswith("logfire-run: ") and "spans were not sent within the exit budget" in lines[1]


def test_console_exporter_writes_to_stderr_only() -> None:
    result = run_launcher(["--exporter", "console", "python", "-c", SPAN + "print('out')"], agent_env())
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert '"name": "work"' in result.stderr


def test_fork_during_an_export_does_not_hang_the_child(tmp_path: Path) -> None:
    # An export that imports a module lazily (as requests does with netrc) is in flight when the app
    # forks; the child then imports the same module. Without the guard the child inherits the
    # module's import lock held by a thread it does not have, and hangs.
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(1.0)\n")
    code = textwrap.dedent(
        """
        import os, signal, sys, threading, time
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
        from logfire_run.agent.exporters import ForkSafeExporter

        class LazyImportingExporter(SpanExporter):
            def export(self, spans):
                import slow_module  # noqa: F401
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(ForkSafeExporter(LazyImportingExporter())))
        with provider.get_tracer("t").start_as_current_span("s"):
            pass
        threading.Thread(target=provider.force_flush).start()
        time.sleep(0.3)  # the export is now importing slow_module
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)
            import slow_module  # noqa: F401
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=agent_env(),
    )
    assert result.stdout == "child 0\n", result.stderr
