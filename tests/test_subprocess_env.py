"""Child processes join the trace through their environment (TRACEPARENT, TRACESTATE, BAGGAGE).

Outbound: a child started inside a span, by `subprocess`, `os.exec*`, `os.spawn*` or
`os.posix_spawn*`, Python or shell, gets the current context; started outside any span, it gets no
stale value; the caller's own `env=` is copied, never changed. Inbound: a process started with
TRACEPARENT makes its root spans children of it, first-party (no warning, honoured under
`distributed_tracing=false`), unless `env_context` is off; a malformed value is ignored silently.

Every process is real: the app through `logfire-run` or `LOGFIRE_RUN=1`, its children, a Flask
server on 127.0.0.1, and the OTLP receiver the spans are read back from.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

import http_services
from conftest import (
    DEBUG_LINES,
    OtlpReceiver,
    SpanRecord,
    agent_env,
    assert_child,
    child_env,
    only,
    render_tree,
    run_launcher,
    run_process,
)

INBOUND_TRACE = "0af7651916cd43dd8448eb211c80319c"
INBOUND_SPAN = "b7ad6b7169203331"
INBOUND = f"00-{INBOUND_TRACE}-{INBOUND_SPAN}-01"


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def run_app(
    tmp_path: Path, script: Path, env: dict[str, str], via: str, *flags: str, expect_stderr: object = ""
) -> str:
    """Run `script` with the agent, through the launcher or LOGFIRE_RUN=1; its stdout."""
    if via == "launcher":
        result = run_launcher(
            [*flags, "python", str(script)],
            env,
            cwd=tmp_path,
            expect_stderr=expect_stderr,  # type: ignore[arg-type]
        )
    else:
        assert not flags
        result = run_process(
            [sys.executable, str(script)],
            {**env, "LOGFIRE_RUN": "1"},
            cwd=tmp_path,
            expect_stderr=expect_stderr,  # type: ignore[arg-type]
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


# A parent span -> subprocess.run of a Python child -> requests -> a Flask server

PARENT_APP = """
    import subprocess, sys
    import logfire_run

    with logfire_run.span("parent"):
        subprocess.run([sys.executable, "child.py"], check=True)
"""

CHILD_APP = """
    import os
    import requests

    requests.get(os.environ["SERVER_URL"] + "/health", timeout=10).raise_for_status()
"""


@pytest.mark.parametrize("via", ["launcher", pytest.param("LOGFIRE_RUN=1", marks=pytest.mark.slow)])
def test_a_python_child_and_its_requests_call_join_the_parent_span(
    tmp_path: Path, receiver: OtlpReceiver, via: str
) -> None:
    write(tmp_path, "child.py", CHILD_APP)
    script = write(tmp_path, "parent.py", PARENT_APP)
    env = agent_env(receiver)
    server_env = {**env, "LOGFIRE_DISTRIBUTED_TRACING": "true"}
    with http_services.running("werkzeug", server_env, tmp_path / "logs") as server:
        run_app(tmp_path, script, {**env, "SERVER_URL": server.url}, via)
        spans = receiver.wait_for(lambda found: {"parent", "GET", "GET /health"} <= {s.name for s in found})
    parent, client, served = only(spans, "parent"), only(spans, "GET"), only(spans, "GET /health")
    assert (parent.service, client.service, served.service) == ("parent", "child", "service_a")
    assert parent.parent_id is None
    assert_child(client, parent, spans)
    assert_child(served, client, spans)
    assert (client.kind, served.kind) == ("CLIENT", "SERVER")
    assert len({span.trace_id for span in spans}) == 1, render_tree(spans)


# Every way of starting a child, inside and outside a span, with the caller's own env respected

CARRIERS_APP = """
    import os, subprocess, sys
    import logfire_run
    from opentelemetry import trace

    def show(label, command, **kwargs):
        result = subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)
        print(label, result.stdout.strip())

    def echo(label):
        return ["/bin/sh", "-c", f'echo "{label} [$TRACEPARENT] [$TRACESTATE] [$BAGGAGE] [$OWN]"']

    def spawned(label, start):
        read, write = os.pipe()
        saved = os.dup(1)
        os.dup2(write, 1)
        try:
            pid = start(echo(label))
        finally:
            os.dup2(saved, 1)
            os.close(write)
            os.close(saved)
        os.waitpid(pid, 0)
        with os.fdopen(read) as output:
            print(output.read().strip())

    with logfire_run.span("parent") as span:
        ids = span.get_span_context()
        print("span", format(ids.trace_id, "032x"), format(ids.span_id, "016x"))
        print("environ", os.environ.get("TRACEPARENT"))
        show("python", [sys.executable, "-c", "import os; print(os.environ.get('TRACEPARENT'))"])
        print(subprocess.check_output(echo("shell"), text=True).strip())
        print(subprocess.check_output(echo("empty-env"), env={}, text=True).strip())
        custom = {"OWN": "mine", "PATH": os.environ["PATH"]}
        before = dict(custom)
        print(subprocess.check_output(echo("custom-env"), env=custom, text=True).strip())
        print("custom unchanged", custom == before)
        app_own = dict(os.environ, TRACEPARENT="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
        print(subprocess.check_output(echo("app-own"), env=app_own, text=True).strip())
        spawned("spawnv", lambda cmd: os.spawnv(os.P_NOWAIT, cmd[0], cmd))
        spawned("spawnvpe", lambda cmd: os.spawnvpe(os.P_NOWAIT, "sh", cmd, {"OWN": "x"}))
        spawned("posix_spawn", lambda cmd: os.posix_spawn(cmd[0], cmd, os.environ))
        own_path = {"OWN": "y", "PATH": os.environ["PATH"]}
        spawned("posix_spawnp", lambda cmd: os.posix_spawnp("sh", cmd, own_path))

        def exec_in_child(cmd):
            pid = os.fork()
            if pid == 0:
                os.execv(cmd[0], cmd)
            return pid

        spawned("execv", exec_in_child)

        def execle_in_child(cmd):
            pid = os.fork()
            if pid == 0:
                os.execle(cmd[0], *cmd, {"OWN": "z"})
            return pid

        spawned("execle", execle_in_child)
    def in_thread():
        with logfire_run.span("in-thread"):
            pass

    import threading
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    print("environ-after", os.environ.get("TRACEPARENT"))
    print(subprocess.check_output(echo("outside"), text=True).strip())
    print(subprocess.check_output(echo("outside-copy"), env=dict(os.environ), text=True).strip())
    spawned("outside-spawnv", lambda cmd: os.spawnv(os.P_NOWAIT, cmd[0], cmd))
"""


def parse_lines(stdout: str) -> dict[str, str]:
    lines: dict[str, str] = {}
    for line in stdout.splitlines():
        label, _, rest = line.partition(" ")
        lines[label] = rest
    return lines


def carriers_run(
    tmp_path: Path, receiver: OtlpReceiver, via: str, *flags: str, expect_stderr: object = "", **env: str
) -> tuple[dict[str, str], list[SpanRecord]]:
    script = write(tmp_path, "app.py", CARRIERS_APP)
    stdout = run_app(tmp_path, script, agent_env(receiver, **env), via, *flags, expect_stderr=expect_stderr)
    spans = receiver.wait_for(lambda found: {"parent", "in-thread"} <= {s.name for s in found})
    return parse_lines(stdout), spans


def assert_children_get_the_span(lines: dict[str, str], inbound: str | None) -> None:
    trace_id, span_id = lines["span"].split()
    ours = f"00-{trace_id}-{span_id}-"
    assert lines["environ"] == str(inbound), "os.environ was changed"
    assert lines["environ-after"] == str(inbound)
    assert lines["python"].startswith(ours), lines
    # A shell sees the same; TRACESTATE and BAGGAGE are empty (none in this context), OWN is the caller's.
    expected_own = {
        "shell": "",
        "empty-env": "",
        "custom-env": "mine",
        "spawnv": "",
        "spawnvpe": "x",
        "posix_spawn": "",
        "posix_spawnp": "y",
        "execv": "",
        "execle": "z",
    }
    for label, own in expected_own.items():
        assert re.fullmatch(rf"\[{ours}0[13]\] \[\] \[\] \[{own}\]", lines[label]), (
            label,
            lines[label],
            ours,
        )
    assert lines["custom"] == "unchanged True"
    # A TRACEPARENT the app set itself is its own.
    assert lines["app-own"] == f"[00-{'1' * 32}-{'2' * 16}-01] [] [] []"
    # Outside any span: nothing, not even the value this process was started with.
    for label in ("outside", "outside-copy", "outside-spawnv"):
        assert lines[label] == "[] [] [] []", (label, lines[label])


@pytest.mark.parametrize("via", ["launcher", pytest.param("LOGFIRE_RUN=1", marks=pytest.mark.slow)])
def test_every_way_of_starting_a_child_carries_the_span_and_respects_env(
    tmp_path: Path, receiver: OtlpReceiver, via: str
) -> None:
    lines, spans = carriers_run(tmp_path, receiver, via)
    assert_children_get_the_span(lines, None)
    assert only(spans, "parent").parent_id is None


@pytest.mark.parametrize(
    ("mode", "flags", "env"),
    [
        ("default", (), {}),
        pytest.param("false", (), {"LOGFIRE_DISTRIBUTED_TRACING": "false"}, marks=pytest.mark.slow),
        pytest.param("link", ("--distributed-tracing", "link"), {}, marks=pytest.mark.slow),
    ],
)
def test_an_inbound_traceparent_parents_the_root_spans_first_party(
    tmp_path: Path, receiver: OtlpReceiver, mode: str, flags: tuple[str, ...], env: dict[str, str]
) -> None:
    # No warning under the default policy, honoured under false and link: the parent's word.
    lines, spans = carriers_run(
        tmp_path, receiver, "launcher", *flags, TRACEPARENT=INBOUND, BAGGAGE="build=42", **env
    )
    parent = only(spans, "parent")
    assert (parent.trace_id, parent.parent_id) == (INBOUND_TRACE, INBOUND_SPAN), render_tree(spans)
    # A root span of another thread, too.
    in_thread = only(spans, "in-thread")
    assert (in_thread.trace_id, in_thread.parent_id) == (INBOUND_TRACE, INBOUND_SPAN), render_tree(spans)
    trace_id, span_id = lines["span"].split()
    assert (trace_id, span_id) == (parent.trace_id, parent.span_id)
    # The children get this process's span, not the inbound one; baggage travels on.
    assert lines["shell"].startswith(f"[00-{INBOUND_TRACE}-{span_id}-"), lines["shell"]
    assert lines["shell"].endswith("[] [build=42] []"), lines["shell"]
    assert lines["outside"] == "[] [] [] []", "a stale inbound context reached a child started outside spans"
    assert lines["environ"] == INBOUND


@pytest.mark.parametrize(
    ("flags", "env"),
    [((), {"LOGFIRE_ENV_CONTEXT": "0"}), pytest.param(("--no-env-context",), {}, marks=pytest.mark.slow)],
)
def test_env_context_off_ignores_the_inbound_traceparent(
    tmp_path: Path, receiver: OtlpReceiver, flags: tuple[str, ...], env: dict[str, str]
) -> None:
    lines, spans = carriers_run(tmp_path, receiver, "launcher", *flags, TRACEPARENT=INBOUND, **env)
    for name in ("parent", "in-thread"):
        span = only(spans, name)
        assert span.parent_id is None and span.trace_id != INBOUND_TRACE, render_tree(spans)
    # Outbound is unchanged: children get this process's span, and no stale value outside spans.
    assert_children_get_the_span(lines, INBOUND)


MALFORMED = [
    "garbage",
    "00-" + "0" * 32 + "-" + INBOUND_SPAN + "-01",  # an all-zero trace id is invalid
    "ff-" + INBOUND_TRACE + "-" + INBOUND_SPAN + "-01",  # version ff is forbidden
    "00-" + INBOUND_TRACE.upper() + "-" + INBOUND_SPAN + "-01",  # upper-case hex is not W3C
    "00-" + INBOUND_TRACE + "-" + INBOUND_SPAN + "-01-extra" * 200,
]


@pytest.mark.parametrize(
    "value", [MALFORMED[0], *(pytest.param(v, marks=pytest.mark.slow) for v in MALFORMED[1:])]
)
def test_a_malformed_inbound_traceparent_is_ignored_silently(
    tmp_path: Path, receiver: OtlpReceiver, value: str
) -> None:
    lines, spans = carriers_run(tmp_path, receiver, "launcher", TRACEPARENT=value, TRACESTATE="a=b")
    parent = only(spans, "parent")
    assert parent.parent_id is None and parent.trace_id != INBOUND_TRACE, render_tree(spans)
    assert lines["outside"] == "[] [] [] []"
    assert lines["shell"].endswith("[] [] []"), lines["shell"]  # the inbound TRACESTATE is not passed on


def test_a_malformed_inbound_traceparent_says_one_debug_line(tmp_path: Path, receiver: OtlpReceiver) -> None:
    def one_line_about_it(stderr: str) -> bool:
        about = [line for line in stderr.splitlines() if "trace context in the environment" in line]
        return bool(DEBUG_LINES.fullmatch(stderr)) and len(about) == 1

    carriers_run(
        tmp_path, receiver, "launcher", "--debug", TRACEPARENT="garbage", expect_stderr=one_line_about_it
    )


# Errors, return codes and output are what they are without the agent

ERRORS_APP = """
    import os, subprocess, sys
    from opentelemetry import trace

    def attempt(label, call):
        try:
            print(label, "->", repr(call()))
        except BaseException as error:
            print(label, "raised", type(error).__name__, error)

    with trace.get_tracer("app").start_as_current_span("parent"):
        attempt("false", lambda: subprocess.run(["false"]).returncode)
        attempt("check_call", lambda: subprocess.check_call(["sh", "-c", "exit 3"]))
        attempt("missing", lambda: subprocess.run(["/no/such/program"]))
        attempt("bad env", lambda: subprocess.run(["true"], env="not a mapping"))
        attempt("bad env value", lambda: subprocess.run(["true"], env={"A": 1}))
        attempt("bytes env", lambda: subprocess.check_output(["/bin/sh", "-c", "echo $A"], env={b"A": b"b"}))
        attempt("positional env", lambda: subprocess.Popen(["/bin/sh", "-c", "echo $A"], -1, None, None,
            subprocess.PIPE, None, None, True, False, None, {"A": "p"}).communicate()[0])
        attempt("posix_spawn bad", lambda: os.posix_spawn("/no/such", ["x"], os.environ))
        attempt("posix_spawn env", lambda: os.posix_spawn("/bin/true", ["true"], "nope"))
        attempt("execv bad", lambda: os.execv("/no/such", ["x"]))
        attempt("execve bad", lambda: os.execve("/bin/true", ["true"], {"A": 1}))
        attempt("spawnv", lambda: os.spawnv(os.P_WAIT, "/bin/sh", ["sh", "-c", "exit 5"]))
        attempt("spawnv missing", lambda: os.spawnv(os.P_WAIT, "/no/such", ["x"]))
"""


@pytest.mark.parametrize("via", ["launcher", pytest.param("LOGFIRE_RUN=1", marks=pytest.mark.slow)])
def test_errors_and_return_codes_are_what_they_are_without_the_agent(tmp_path: Path, via: str) -> None:
    script = write(tmp_path, "errors.py", ERRORS_APP)
    plain = run_process([sys.executable, str(script)], child_env(), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    traced = run_app(tmp_path, script, agent_env(LOGFIRE_EXPORTER="none"), via)
    assert traced == plain.stdout


# os.exec* replaces the process: what it ended before is sent first

EXEC_APP = """
    import os, sys
    import logfire_run

    with logfire_run.span("before exec") as span:
        with logfire_run.span("ended child"):
            pass
        # The new program (no agent: -I) prints what it was given; its parent is the open span.
        os.execv(sys.executable, [sys.executable, "-I", "-c", "import os; print(os.environ['TRACEPARENT'])"])
"""


@pytest.mark.parametrize("via", ["launcher", pytest.param("LOGFIRE_RUN=1", marks=pytest.mark.slow)])
def test_exec_sends_the_ended_spans_first_and_passes_the_open_one_on(
    tmp_path: Path, receiver: OtlpReceiver, via: str
) -> None:
    script = write(tmp_path, "execs.py", EXEC_APP)
    # A long schedule delay: without a flush before exec, the ended span would still be queued.
    stdout = run_app(tmp_path, script, agent_env(receiver, OTEL_BSP_SCHEDULE_DELAY="30000"), via)
    spans = receiver.wait_count(1, timeout=5)
    ended = only(spans, "ended child")
    assert stdout.startswith(f"00-{ended.trace_id}-{ended.parent_id}-"), (stdout, render_tree(spans))
