"""Where spans go: OTLP over HTTP/protobuf and gRPC to receivers on 127.0.0.1, every OTEL_EXPORTER_OTLP_*
variable, the validation of OpenTelemetry's variables, exporters of other packages, and `--info`.

The receivers are oteltest's sinks (a third-party OTLP receiver from PyPI) where they can do what a test
needs, and this project's own gRPC and HTTP servers for TLS, gzip bodies and request paths
(tests/otlp_receivers.py). Every process runs through the launcher or through `LOGFIRE_RUN=1`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    OtlpReceiver,
    SpanRecord,
    agent_env,
    assert_clean_stderr,
    free_port,
    render_tree,
    run_launcher,
    without_fastapi_operations,
)
from http_services import EXAMPLE, running
from otlp_receivers import GrpcReceiver, HttpReceiver, ThirdPartyReceiver, make_certificates

VIEWER = shutil.which("logfire-run-view", path=os.path.dirname(sys.executable)) or "logfire-run-view"
PROTOCOLS = ["http/protobuf", "grpc"]
ONE_SPAN = "import logfire_run\nwith logfire_run.span('hello'):\n    pass\nprint('app ran')\n"


@pytest.fixture(params=PROTOCOLS)
def third_party(request: pytest.FixtureRequest) -> Iterator[ThirdPartyReceiver]:
    receiver = ThirdPartyReceiver(request.param)
    yield receiver
    receiver.close()


def destination_env(**extra: str) -> dict[str, str]:
    """agent_env() without the receiver: the test sets every destination variable itself.

    Metrics are off: these tests give the traces signal its own variables (a certificate, a path)
    that metrics, sent by the general ones, would not have (tests/test_metrics.py covers metrics)."""
    env = agent_env(OTEL_METRICS_EXPORTER="none")
    env.update(extra)
    return env


def env_only(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a script with the agent activated by LOGFIRE_RUN=1 (no launcher)."""
    return subprocess.run(
        [sys.executable, str(script)],
        env={**env, "LOGFIRE_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def store_spans(store: Path) -> list[SpanRecord]:
    """The spans of the newest trace in the local store, read back with logfire-run-view --json."""
    result = subprocess.run(
        [VIEWER, "--store", str(store), "--json", "last"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    return [
        SpanRecord(
            trace_id=span["trace_id"],
            span_id=span["span_id"],
            parent_id=span["parent_id"],
            name=span["name"],
            kind=span["kind"],
            service=span["service"],
            pid=None,
            attributes={},
            links=[],
            events=[],
            status=0,
            start=span["start_ns"],
            end=span["start_ns"],
        )
        for span in document["spans"]
    ]


# The 3-service chain, over each protocol, to the third-party receiver and the local store at once.

EXPECTED_TREE = """\
CLIENT GET [client]
  SERVER GET /chain [service-a]
    CLIENT GET [service-a]
      SERVER GET /greet [service-b]
    CLIENT GET [service-a]
      SERVER GET /greet [service-b]"""


@pytest.mark.slow
def test_chain_arrives_whole_over_each_protocol(third_party: ThirdPartyReceiver, tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    common = {
        **third_party.env(),
        "LOGFIRE_EXPORTER": "otlp,store",
        "LOGFIRE_STORE": str(store),
        "LOGFIRE_DISTRIBUTED_TRACING": "true",
    }
    logs = tmp_path / "logs"
    with running("uvicorn", destination_env(**common, LOGFIRE_SERVICE_NAME="service-b"), logs, name="b") as b:
        a_env = destination_env(**common, LOGFIRE_SERVICE_NAME="service-a", B_URL=b.url)
        with running("werkzeug", a_env, logs, name="a") as a:
            client = run_launcher(
                ["python", "client.py"],
                destination_env(**common, LOGFIRE_SERVICE_NAME="client", A_URL=a.url),
                cwd=EXAMPLE,
            )
            assert client.returncode == 0, client.stderr
            assert_clean_stderr(client.stderr)
            third_party.wait_count(6)
        assert_clean_stderr(a.stderr())
    assert_clean_stderr(b.stderr())

    received = without_fastapi_operations(third_party.spans)
    assert render_tree(received) == EXPECTED_TREE, render_tree(received)
    assert len({span.trace_id for span in received}) == 1
    stored = without_fastapi_operations(store_spans(store))
    assert render_tree(stored) == EXPECTED_TREE
    assert {(s.span_id, s.parent_id) for s in stored} == {(s.span_id, s.parent_id) for s in received}
    from logfire_run import __version__

    for span in received:
        assert span.resource["telemetry.distro.name"] == "logfire-run"
        assert span.resource["telemetry.distro.version"] == __version__
        assert span.resource["telemetry.auto.version"]


def test_env_only_activation_sends_over_each_protocol(
    third_party: ThirdPartyReceiver, tmp_path: Path
) -> None:
    script = tmp_path / "app.py"
    script.write_text(ONE_SPAN)
    result = env_only(script, destination_env(**third_party.env()))
    assert result.returncode == 0 and result.stdout == "app ran\n"
    assert_clean_stderr(result.stderr)
    assert [span.name for span in third_party.wait_count(1)] == ["hello"]


def test_protocol_flag_chooses_grpc(tmp_path: Path) -> None:
    receiver = ThirdPartyReceiver("grpc")
    try:
        env = destination_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        result = run_launcher(["--otlp-protocol", "grpc", "python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
    finally:
        receiver.close()


def test_headers_are_percent_decoded_and_reach_the_receiver(third_party: ThirdPartyReceiver) -> None:
    env = destination_env(
        **third_party.env(),
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=acme%2Cinc,Authorization=Bearer%20s3cret",
    )
    result = run_launcher(["python", "-c", ONE_SPAN], env)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    third_party.wait_count(1)
    assert third_party.header_values("x-tenant") == {"acme,inc"}
    assert third_party.header_values("authorization") == {"Bearer s3cret"}


def test_traces_headers_take_precedence_over_the_general_ones(third_party: ThirdPartyReceiver) -> None:
    env = destination_env(
        **third_party.env(),
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=general",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="x-tenant=traces",
    )
    assert run_launcher(["python", "-c", ONE_SPAN], env).returncode == 0
    third_party.wait_count(1)
    assert third_party.header_values("x-tenant") == {"traces"}


def test_gzip_over_grpc() -> None:
    receiver = ThirdPartyReceiver("grpc")
    try:
        env = destination_env(**receiver.env(), OTEL_EXPORTER_OTLP_COMPRESSION="gzip")
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
        assert receiver.header_values("grpc-accept-encoding") or True  # gRPC decompressed it for us
    finally:
        receiver.close()


def test_gzip_over_http() -> None:
    # oteltest's HTTP sink cannot read a gzip body: this project's receiver decompresses and records it.
    receiver = HttpReceiver()
    try:
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_TRACES_COMPRESSION="gzip"
        )
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
        assert receiver.header_values("content-encoding") == {"gzip"}
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("variables", "path"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "{base}"}, "/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "{base}/"}, "/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "{base}/otlp/"}, "/otlp/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "{base}/custom/spans"}, "/custom/spans"),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "{base}/as/given",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "{base}/x",
            },
            "/as/given",
        ),
    ],
)
def test_endpoint_path_rules(variables: dict[str, str], path: str) -> None:
    receiver = HttpReceiver()
    try:
        env = destination_env(
            **{key: value.format(base=receiver.endpoint) for key, value in variables.items()}
        )
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        receiver.wait_count(1)
        assert receiver.paths == [path]
    finally:
        receiver.close()


def test_tls_with_a_self_signed_certificate_over_http(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    receiver = HttpReceiver(certificates)
    try:
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_CERTIFICATE=str(certificates.cert),
        )
        assert receiver.endpoint.startswith("https://")
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
    finally:
        receiver.close()


def test_tls_with_a_self_signed_certificate_over_grpc(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    receiver = GrpcReceiver(certificates)
    try:
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_CERTIFICATE=str(certificates.cert),
        )
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
    finally:
        receiver.close()


def test_grpc_without_scheme_uses_tls_unless_insecure() -> None:
    receiver = GrpcReceiver()  # plaintext
    try:
        target = f"127.0.0.1:{receiver.port}"
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=target,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_INSECURE="true",
        )
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
        info = run_launcher(["--info"], {**env, "OTEL_EXPORTER_OTLP_INSECURE": "false"}).stdout
        tls = next(line for line in info.splitlines() if line.strip().startswith("tls"))
        assert " on " in tls
    finally:
        receiver.close()


def test_mutual_tls_over_grpc(tmp_path: Path) -> None:
    server = make_certificates(tmp_path, "server")
    client = make_certificates(tmp_path, "client")
    receiver = GrpcReceiver(server, client_ca=client.cert)
    try:
        env = destination_env(
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_CERTIFICATE=str(server.cert),
            OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY=str(client.key),
            OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(client.cert),
        )
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
    finally:
        receiver.close()


def test_mutual_tls_over_http(tmp_path: Path) -> None:
    server = make_certificates(tmp_path, "server")
    client = make_certificates(tmp_path, "client")
    receiver = HttpReceiver(server, client_ca=client.cert)
    try:
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE=str(server.cert),
            OTEL_EXPORTER_OTLP_CLIENT_KEY=str(client.key),
            OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE=str(client.cert),
        )
        result = run_launcher(["python", "-c", ONE_SPAN], env)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
    finally:
        receiver.close()


def test_a_client_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    client = make_certificates(tmp_path, "client")
    env = agent_env(
        OTEL_EXPORTER_OTLP_ENDPOINT="https://127.0.0.1:1", OTEL_EXPORTER_OTLP_CLIENT_KEY=str(client.key)
    )
    result = run_launcher(["python", "-c", "pass"], env, expect_stderr=None)  # checked below
    assert result.returncode == 2
    assert result.stderr.startswith("logfire-run: OTEL_EXPORTER_OTLP_CLIENT_KEY: a client key needs ")


# Bad values: the launcher refuses them before running anything; env-only reports one line and goes on.

BAD_VALUES = [
    ("OTEL_BSP_MAX_QUEUE_SIZE", "-1", "use a positive whole number"),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0", "use a positive whole number"),
    ("OTEL_BSP_SCHEDULE_DELAY", "soon", "use a positive whole number"),
    ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "-5", "use a non-negative whole number"),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1", "use a non-negative whole number"),
    ("OTEL_PROPAGATORS", "tracecontext,nope", "unknown propagator 'nope'"),
    ("OTEL_TRACES_SAMPLER", "sometimes", "unknown sampler 'sometimes'"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon", "invalid protocol 'carrier-pigeon'"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json", "protocol 'http/json' is not supported"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "use one of none, gzip, deflate"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "positive whole number of milliseconds"),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "no-equals-sign", "invalid header 'no-equals-sign'"),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem", "is not a readable file"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4318", "use an http:// or https:// URL"),
    ("OTEL_EXPORTER_OTLP_INSECURE", "maybe", "use true or false"),
    ("OTEL_TRACES_EXPORTER", "otlp,zipkin", "unknown exporter 'zipkin'"),
    # OpenTelemetry itself logs an unprefixed warning per member it cannot use.
    ("OTEL_RESOURCE_ATTRIBUTES", "team=a,no-equals,=x", "invalid member 'no-equals', '=x'"),
]


@pytest.mark.parametrize(("variable", "value", "accepted"), BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_bad_value_stops_the_launcher(variable: str, value: str, accepted: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = agent_env(**{variable: value})
    # stderr is checked below: exactly one line, naming the variable, the value and what is accepted.
    result = run_launcher(["python", "-c", f"open({str(marker)!r}, 'w')"], env, expect_stderr=None)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"logfire-run: {variable}: "), lines[0]
    assert repr(value.split(",")[-1]) in lines[0] or repr(value) in lines[0], lines[0]
    assert accepted in lines[0]
    assert not marker.exists()
    if variable == "OTEL_TRACES_SAMPLER":  # the SDK registers its built-in samplers as entry points too
        names = lines[0].partition("use one of ")[2].split(", ")
        assert len(names) == len(set(names)), lines[0]


@pytest.mark.parametrize(("variable", "value", "accepted"), BAD_VALUES, ids=[row[0] for row in BAD_VALUES])
def test_bad_value_in_env_only_mode_is_one_line_and_spans_flow(
    variable: str, value: str, accepted: str, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    script = tmp_path / "app.py"
    script.write_text(ONE_SPAN)
    env = agent_env(receiver, **{variable: value})
    del env["LOGFIRE_EXPORTER"]  # OTEL_EXPORTER_OTLP_ENDPOINT chooses otlp; OTEL_TRACES_EXPORTER is read
    result = env_only(script, env)
    assert result.returncode == 0 and result.stdout == "app ran\n", result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"logfire-run: {variable}: ") and accepted in lines[0], lines[0]
    assert [span.name for span in receiver.wait_count(1)] == ["hello"]


def test_an_otel_traces_exporter_that_is_not_installed_keeps_the_others(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    script = tmp_path / "app.py"
    script.write_text(ONE_SPAN)
    env = agent_env(receiver, OTEL_TRACES_EXPORTER="otlp,zipkin")
    env.pop("LOGFIRE_EXPORTER")
    result = env_only(script, env)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        line for line in result.stderr.splitlines() if line.startswith("logfire-run: OTEL_TRACES_EXPORTER")
    ]
    assert "using OTEL_TRACES_EXPORTER=otlp" in result.stderr
    assert [span.name for span in receiver.wait_count(1)] == ["hello"]


# Exporters of other packages, and duplicates.


def _install_file_exporter(site: Path, out: Path) -> None:
    """A tiny distribution with an `opentelemetry_traces_exporter` entry point, as a package provides one."""
    (site / "fileexporter.py").write_text(
        "from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult\n"
        "class FileExporter(SpanExporter):\n"
        "    def export(self, spans):\n"
        f"        with open({str(out)!r}, 'a') as f:\n"
        "            f.writelines(span.name + '\\n' for span in spans)\n"
        "        return SpanExportResult.SUCCESS\n"
    )
    info = site / "fileexporter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fileexporter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_traces_exporter]\nfile = fileexporter:FileExporter\n"
    )


def test_an_installed_exporter_loads_through_its_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    out = tmp_path / "spans.txt"
    _install_file_exporter(site, out)
    env = agent_env(PYTHONPATH=str(site), OTEL_TRACES_EXPORTER="file")
    result = run_launcher(["python", "-c", ONE_SPAN], env)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    assert out.read_text() == "hello\n"
    info = run_launcher(["--info"], env).stdout
    assert "fileexporter:FileExporter (fileexporter 0.1)" in info


def test_a_repeated_exporter_exports_once(tmp_path: Path) -> None:
    store = tmp_path / "traces.db"
    env = agent_env(LOGFIRE_STORE=str(store))
    result = run_launcher(["--exporter", "store,store,STORE", "python", "-c", ONE_SPAN], env)
    assert result.returncode == 0, result.stderr
    assert [span.name for span in store_spans(store)] == ["hello"]


# gRPC chosen without its exporter installed. The module is hidden from the interpreter the way a
# missing package is (an entry of None in sys.modules makes its import fail); nothing else changes.

HIDE_GRPC = "import sys; sys.modules['opentelemetry.exporter.otlp.proto.grpc'] = None\n"


def test_grpc_without_its_extra_stops_the_launcher(tmp_path: Path) -> None:
    launcher = HIDE_GRPC + "from logfire_run.agent.cli import main; sys.exit(main(sys.argv[1:]))\n"
    env = destination_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    result = subprocess.run(
        [sys.executable, "-c", launcher, "--otlp-protocol", "grpc", "python", "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "logfire-run: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc: OTLP over grpc needs OpenTelemetry's "
        "exporter for it: pip install 'logfire-run[grpc]'\n"
    )


def test_grpc_without_its_extra_in_env_only_mode_is_one_line(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(HIDE_GRPC + ONE_SPAN)
    env = destination_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    result = env_only(script, env)
    assert result.returncode == 0 and result.stdout == "app ran\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("logfire-run: the otlp exporter could not be set up")
    assert "pip install 'logfire-run[grpc]'" in lines[0]


# --info and --info --check


def test_info_shows_the_destination_without_header_values() -> None:
    env = destination_env(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector.internal:4318/otlp/",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20s3cret,x-tenant=acme",
        OTEL_EXPORTER_OTLP_TRACES_COMPRESSION="gzip",
        OTEL_EXPORTER_OTLP_TIMEOUT="2500",
    )
    result = run_launcher(["--info"], env)
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    out = result.stdout
    assert "s3cret" not in out and "acme" not in out
    rows = {line.split()[0]: line for line in out.split("destinations")[1].splitlines()[1:7] if line.strip()}
    exporters = next(line for line in out.splitlines() if line.strip().startswith("exporters"))
    assert "store" not in exporters and "because OTEL_EXPORTER_OTLP_ENDPOINT is set" in exporters
    assert "http://collector.internal:4318/otlp/v1/traces" in rows["otlp"]
    assert "env OTEL_EXPORTER_OTLP_ENDPOINT" in rows["otlp"]
    assert (
        "gzip" in rows["compression"] and "env OTEL_EXPORTER_OTLP_TRACES_COMPRESSION" in rows["compression"]
    )
    assert "2500 ms" in rows["timeout"] and "env OTEL_EXPORTER_OTLP_TIMEOUT" in rows["timeout"]
    assert "authorization, x-tenant" in rows["headers"]
    assert "http/protobuf" in rows["protocol"] and "default" in rows["protocol"]


def test_info_check_says_the_backend_accepted_a_span(third_party: ThirdPartyReceiver) -> None:
    result = run_launcher(["--info", "--check"], destination_env(**third_party.env()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_clean_stderr(result.stderr)
    assert result.stdout.startswith(f"otlp: {third_party.endpoint}")
    assert "accepted a test span" in result.stdout
    assert [span.name for span in third_party.wait_count(1)] == ["logfire-run check"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_info_check_says_in_plain_words_why_not(protocol: str) -> None:
    env = destination_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_TIMEOUT="3000",
    )
    result = run_launcher(["--info", "--check"], env)
    assert result.returncode == 1
    assert_clean_stderr(result.stderr)
    assert "did not accept the test span" in result.stdout or "could not send" in result.stdout
    assert "nothing is listening there" in result.stdout, result.stdout


def _listening_on_a_port_holding(digits: str) -> socket.socket:
    """A socket that listens on 127.0.0.1 and never answers, on a port whose number holds `digits`."""
    for port in range(10_000, 65_000):
        if digits in str(port):
            listener = socket.socket()
            try:
                listener.bind(("127.0.0.1", port))
            except OSError:
                listener.close()
                continue
            listener.listen(8)
            return listener
    pytest.skip(f"no free port holding {digits}")


def test_a_port_that_reads_like_a_status_code_is_not_taken_for_one() -> None:
    # A collector that never answers on 127.0.0.1:14047: "no answer within the timeout", not advice
    # about a 404 that the port number seemed to hold.
    with _listening_on_a_port_holding("404") as silent:
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",  # its error names DEADLINE_EXCEEDED
            OTEL_EXPORTER_OTLP_TIMEOUT="1000",
        )
        result = run_launcher(["--info", "--check"], env)
    assert result.returncode == 1
    assert "no answer within the timeout" in result.stdout, result.stdout
    assert "at that path" not in result.stdout, result.stdout


@pytest.mark.slow  # the check takes 7 s to give up on the certificate
def test_info_check_names_an_untrusted_certificate(tmp_path: Path) -> None:
    receiver = HttpReceiver(make_certificates(tmp_path))
    try:
        result = run_launcher(
            ["--info", "--check"], destination_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        )
        assert result.returncode == 1
        assert "TLS certificate is not trusted" in result.stdout, result.stdout
    finally:
        receiver.close()


# The rules, as data (no process needed).


def test_destination_rules_for_traces_and_logs(tmp_path: Path) -> None:
    from logfire_run.agent import destination

    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example:4318/base//",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    traces, errors = destination.resolve("traces", environ)
    assert errors == [] and traces.endpoint == "https://c.example:4318/base/v1/traces"
    logs, _ = destination.resolve("logs", {**environ, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://l:1/x/"})
    assert (
        logs.endpoint == "http://l:1/x/"
        and logs.sources["endpoint"] == "env OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
    )
    grpc, _ = destination.resolve("traces", {**environ, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert grpc.grpc_target() == "c.example:4318" and grpc.insecure is False  # the https scheme wins
    default, _ = destination.resolve("traces", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert default.endpoint == "http://localhost:4317" and default.insecure is True


# The demo, pointed at a backend: it sends there and still prints its tree from the store.


@pytest.mark.slow
def test_demo_sends_over_otlp_and_prints_from_the_store(tmp_path: Path) -> None:
    from conftest import ROOT

    receiver = ThirdPartyReceiver("grpc")
    try:
        store = tmp_path / "traces.db"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("LOGFIRE_", "OTEL_"))}
        command = [sys.executable, str(ROOT / "examples" / "demo" / "run.py"), "--store", str(store)]
        command += ["--no-celery", "--otlp", receiver.endpoint, "--otlp-protocol", "grpc"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.returncode == 0, report
        assert f"demo: otlp: {receiver.endpoint} (grpc) accepted a test span" in result.stderr, report
        header = next(line for line in result.stdout.splitlines() if line.startswith("trace "))
        assert "services: client, frontend, backend" in header, report
        trace_id = header.split()[1]
        stored = store_spans(store)
        received = receiver.wait_for(
            lambda spans: len([s for s in spans if s.trace_id == trace_id]) >= len(stored)
        )
        assert render_tree([s for s in received if s.trace_id == trace_id]) == render_tree(stored)
    finally:
        receiver.close()


@pytest.mark.slow
def test_http_to_a_grpc_port_says_so_in_one_line() -> None:
    # What a new user does first: the Collector's default port is 4317 (gRPC), the default protocol HTTP.
    receiver = ThirdPartyReceiver("grpc")
    try:
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="2000"
        )
        result = run_launcher(["python", "-c", ONE_SPAN], env, expect_stderr=None)  # checked below
        assert result.returncode == 0 and result.stdout == "app ran\n"
        lines = result.stderr.splitlines()
        # The problem, and at exit the count of what it cost (the one span).
        assert len(lines) == 2, result.stderr
        assert lines[0].startswith(
            "logfire-run: exporting spans failed: the server there does not speak OTLP/HTTP"
        )
        assert lines[1].startswith("logfire-run: 1 span dropped in this process: 1 whose export failed")
        assert "set the protocol to grpc" in lines[0]
        check = run_launcher(["--info", "--check"], env)
        assert check.returncode == 1 and "set the protocol to grpc" in check.stdout, check.stdout
    finally:
        receiver.close()


def test_the_timeout_is_in_milliseconds() -> None:
    # A receiver that never answers: with the timeout read as seconds (opentelemetry-python's reading)
    # the check would wait 500 s and this test would hit its own limit instead of seeing the answer.
    receiver = GrpcReceiver(stall=True)
    try:
        env = destination_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="500",
        )
        result = run_launcher(["--info", "--check"], env, timeout=120)
        assert result.returncode == 1
        assert "no answer within the timeout" in result.stdout, result.stdout
    finally:
        receiver.close()


def test_configure_chooses_the_protocol_in_code(tmp_path: Path) -> None:
    receiver = ThirdPartyReceiver("grpc")
    try:
        script = tmp_path / "app.py"
        script.write_text("import logfire_run\nlogfire_run.configure(otlp_protocol='grpc')\n" + ONE_SPAN)
        result = run_launcher(
            ["python", str(script)], destination_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        )
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        assert [span.name for span in receiver.wait_count(1)] == ["hello"]
    finally:
        receiver.close()
