"""OTLP receivers the destination tests send to, on 127.0.0.1, each keeping the spans and headers it got.

Each keeps spans, log records and metric points (`MetricPoint`; `histogram_total` adds a histogram up
across processes, whatever its temporality).

- `ThirdPartyReceiver`: oteltest's `GrpcSink` / `HttpSink` (oteltest on PyPI, by an OpenTelemetry
  Python maintainer): a receiver this project did not write, over gRPC and over HTTP/protobuf.
- `GrpcReceiver`: a gRPC server built from grpcio and opentelemetry-proto's `TraceServiceServicer`,
  for what oteltest's sink cannot do: TLS and mutual TLS.
- `HttpReceiver`: an HTTP(S) server for what oteltest's HTTP sink cannot do: TLS, gzip bodies, and
  recording the path each request was posted to.
- `make_certificates()`: a self-signed certificate for 127.0.0.1, made with `cryptography`.

All of them reuse `conftest.OtlpReceiver`'s decoding and waiting (they subclass it, and replace only
how the requests arrive).
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import ipaddress
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import OtlpReceiver, free_port, serve_in_thread, wait_for_port


class _Collecting(OtlpReceiver):
    """OtlpReceiver's span records and waiting, fed by another server; also keeps request headers."""

    def __init__(self) -> None:  # deliberately not OtlpReceiver's: no server of its own
        self.spans = []
        self.requests = 0
        self._lock = threading.Lock()
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        #: Each span request's client address (gRPC's peer, HTTP's host:port: the connection it came
        #: on) and the `process.pid` of its spans.
        self.peers: list[tuple[str, int | None]] = []
        #: Log records received (OTLP logs), decoded: see `collect_logs`.
        self.logs: list[dict[str, Any]] = []
        #: Metric points received (OTLP metrics), decoded: see `collect_metrics`.
        self.metrics: list[MetricPoint] = []

    def collect(
        self, request: ExportTraceServiceRequest, headers: dict[str, str], path: str = "", peer: str = ""
    ) -> None:
        from conftest import _attrs

        with self._lock:
            self.headers.append({key.lower(): value for key, value in headers.items()})
            self.paths.append(path)
            for resource_spans in request.resource_spans:
                self.peers.append((peer, _attrs(resource_spans.resource.attributes).get("process.pid")))
        self._add(request)

    def collect_logs(self, request: Any) -> None:
        """An ExportLogsServiceRequest: each record with its ids, body, severity and resource."""
        from conftest import _attrs

        records = []
        for resource_logs in request.resource_logs:
            resource = _attrs(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    records.append(
                        {
                            "trace_id": record.trace_id.hex(),
                            "span_id": record.span_id.hex(),
                            "body": record.body.string_value,
                            "severity_text": record.severity_text,
                            "severity_number": record.severity_number,
                            "scope": scope_logs.scope.name,
                            "attributes": _attrs(record.attributes),
                            "resource": resource,
                        }
                    )
        with self._lock:
            self.logs.extend(records)

    def collect_metrics(self, request: Any) -> None:
        """An ExportMetricsServiceRequest: one `MetricPoint` per data point."""
        from conftest import _attrs

        points = []
        for resource_metrics in request.resource_metrics:
            resource = _attrs(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    temporality = getattr(data, "aggregation_temporality", 0)
                    for point in data.data_points:
                        value = None
                        if kind in ("sum", "gauge"):
                            value = getattr(point, point.WhichOneof("value"))
                        points.append(
                            MetricPoint(
                                name=metric.name,
                                kind=kind,
                                delta=temporality == 1,
                                resource=resource,
                                attributes=_attrs(point.attributes),
                                start=point.start_time_unix_nano,
                                time=point.time_unix_nano,
                                count=getattr(point, "count", 0),
                                value=value,
                            )
                        )
        with self._lock:
            self.metrics.extend(points)

    def wait_for_metrics(self, predicate: Any, timeout: float = 20.0) -> list[MetricPoint]:
        """Wait until `predicate(points)` holds; return the points either way (the test asserts)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                snapshot = list(self.metrics)
            if predicate(snapshot) or time.monotonic() >= deadline:
                return snapshot
            time.sleep(0.05)

    def wait_for_logs(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.logs) >= count:
                    break
            time.sleep(0.05)
        with self._lock:
            return list(self.logs)

    def header_values(self, name: str) -> set[str]:
        with self._lock:
            return {headers[name] for headers in self.headers if name in headers}


class ThirdPartyReceiver(_Collecting):
    """oteltest's sink, gRPC (`grpc`) or HTTP/protobuf (`http/protobuf`), on a free port."""

    def __init__(self, protocol: str) -> None:
        import logging

        from oteltest.sink import GrpcSink, HttpSink
        from oteltest.sink.handler import RequestHandler

        super().__init__()
        receiver = self

        class Handler(RequestHandler):
            def handle_logs(self, request: Any, headers: Any) -> None:
                receiver.collect_logs(request)

            def handle_metrics(self, request: Any, headers: Any) -> None:
                receiver.collect_metrics(request)

            def handle_trace(self, request: Any, headers: Any) -> None:
                receiver.collect(request, dict(headers))

        self.protocol = protocol
        self.port = free_port()
        logger = logging.getLogger("oteltest-sink")
        if protocol == "grpc":
            self._sink: Any = GrpcSink(Handler(), logger, port=self.port)
        else:
            self._sink = HttpSink(Handler(), logger, port=self.port)
        self._sink.start()
        wait_for_port(self.port)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables a user sets to send here."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": self.protocol,
        }

    def close(self) -> None:
        if self.protocol == "grpc":
            self._sink.stop()
            return
        # oteltest's HTTP sink looks whether it is asked to stop every 0.5 s (`serve_forever()`'s
        # default), or when a connection comes: one comes until it has stopped.
        stopping = threading.Thread(target=self._sink.stop)
        stopping.start()
        while stopping.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            stopping.join(0.02)


class GrpcReceiver(_Collecting):
    """An OTLP/gRPC server on 127.0.0.1, TLS when given certificates (mutual when given a client CA)."""

    def __init__(
        self,
        certificate: Certificates | None = None,
        client_ca: Path | None = None,
        stall: bool = False,
        logs: bool = True,
    ) -> None:
        """`logs=False`: the server has no LogsService (a backend that takes traces only)."""
        super().__init__()
        receiver = self
        #: With `stall`, every export waits (until the receiver closes) before it is answered.
        self.released = threading.Event()
        if not stall:
            self.released.set()

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver.released.wait(60)
                receiver.collect(request, dict(context.invocation_metadata()), peer=context.peer())
                return trace_service_pb2.ExportTraceServiceResponse()

        class LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver.collect_logs(request)
                return logs_service_pb2.ExportLogsServiceResponse()

        class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver.collect_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        if logs:
            logs_service_pb2_grpc.add_LogsServiceServicer_to_server(LogsServicer(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(), self.server)
        if certificate is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            scheme = "http"
        else:
            credentials = grpc.ssl_server_credentials(
                [(certificate.key.read_bytes(), certificate.cert.read_bytes())],
                root_certificates=client_ca.read_bytes() if client_ca else None,
                require_client_auth=client_ca is not None,
            )
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
            scheme = "https"
        self.server.start()
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.released.set()
        self.server.stop(grace=None)


class HttpReceiver(_Collecting):
    """OTLP/HTTP protobuf on 127.0.0.1: any path, gzip or deflate bodies, HTTPS when given a certificate
    (mutual TLS when given a client CA); connections kept alive between requests (HTTP/1.1), as a
    collector keeps them. `hold` seconds pass between a request's arrival and its answer."""

    def __init__(
        self,
        certificate: Certificates | None = None,
        client_ca: Path | None = None,
        hold: float = 0.0,
        answer: Callable[[str, int], int] | None = None,
    ) -> None:
        """`answer(path, number)` is the HTTP status of the `number`th request (from 0) to `path`;
        200 by default. Only the spans of requests answered 2xx are kept."""
        super().__init__()
        receiver = self
        counts: dict[str, int] = {}
        #: (monotonic time of arrival, of the answer, path) of each request.
        self.timeline: list[tuple[float, float, str]] = []
        #: Request bodies that were not an OTLP message (two requests written into one connection).
        self.corrupt = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                import time

                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with receiver._lock:
                    number = counts[self.path] = counts.get(self.path, -1) + 1
                status = answer(self.path, number) if answer is not None else 200
                if status >= 300:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.endswith("/v1/logs"):
                    logs_request = ExportLogsServiceRequest()
                    logs_request.ParseFromString(body)
                    receiver.collect_logs(logs_request)
                elif self.path.endswith("/v1/metrics"):
                    metrics_request = ExportMetricsServiceRequest()
                    metrics_request.ParseFromString(body)
                    receiver.collect_metrics(metrics_request)
                else:
                    request = ExportTraceServiceRequest()
                    try:
                        request.ParseFromString(body)
                    except Exception:
                        with receiver._lock:
                            receiver.corrupt += 1
                        self.send_response(400)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    peer = f"{self.client_address[0]}:{self.client_address[1]}"
                    receiver.collect(request, dict(self.headers.items()), self.path, peer)
                if hold:
                    time.sleep(hold)
                with receiver._lock:
                    receiver.timeline.append((arrived, time.monotonic(), self.path))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificate.cert, certificate.key)
            if client_ca is not None:
                context.load_verify_locations(client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.port = self.server.server_address[1]
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = serve_in_thread(self.server)


@pytest.fixture(params=["http/protobuf", "grpc"])
def otlp(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """(protocol, receiver): an `HttpReceiver` and a `GrpcReceiver`, one test each."""
    receiver: Any = HttpReceiver() if request.param == "http/protobuf" else GrpcReceiver()
    try:
        yield request.param, receiver
    finally:
        receiver.close()


@dataclass
class MetricPoint:
    """One data point of an OTLP metric, as a receiver decoded it."""

    name: str
    kind: str  # sum, gauge, histogram, exponential_histogram
    delta: bool
    resource: dict[str, Any]
    attributes: dict[str, Any]
    start: int
    time: int
    count: int = 0
    value: Any = None


def histogram_total(points: list[MetricPoint], name: str) -> int:
    """How many measurements the histogram `name` holds across every process that sent it.

    A cumulative point holds everything its series (one process's resource, one attribute set, one
    start time) measured so far, so each series counts by its last point; delta points add up.
    """
    last: dict[tuple[Any, ...], MetricPoint] = {}
    total = 0
    for point in points:
        if point.name != name:
            continue
        if point.delta:
            total += point.count
            continue
        key = (repr(sorted(point.resource.items())), repr(sorted(point.attributes.items())), point.start)
        if key not in last or point.time >= last[key].time:
            last[key] = point
    return total + sum(point.count for point in last.values())


@dataclass
class Certificates:
    cert: Path
    key: Path


def make_certificates(directory: Path, name: str = "server") -> Certificates:
    """A self-signed certificate (its own CA) for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"logfire-run test {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificates(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    paths.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths
