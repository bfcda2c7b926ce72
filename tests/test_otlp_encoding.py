"""The direct OTLP span encoder is interchangeable with OpenTelemetry's, and the OTLP exporter sends it.

Every comparison decodes our bytes with the official `opentelemetry-proto` messages and compares
them with what OpenTelemetry's encoder (`encode_spans`) builds for the same spans, field by field,
and then compares the serialized bytes too.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as OfficialExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from logfire_run.agent.export.otlp_encoding import encode_export_request
from logfire_run.agent.export.otlp_http import OTLPSpanExporter

from conftest import serve_in_thread

HUGE = "x" * 1_000_000 + "é"


def assert_same_as_official(spans: Sequence[ReadableSpan]) -> None:
    ours = encode_export_request(spans)
    official = encode_spans(spans)
    decoded = ExportTraceServiceRequest.FromString(ours)
    assert_messages_equal(decoded, official)
    assert ours == official.SerializeToString()


def assert_messages_equal(ours: Any, official: Any, path: str = "request") -> None:
    """Field by field, so that a difference names the field (and NaN equals NaN)."""
    ours_fields = {field.name: value for field, value in ours.ListFields()}
    official_fields = {field.name: value for field, value in official.ListFields()}
    assert set(ours_fields) == set(official_fields), f"{path}: fields differ"
    for name, official_value in official_fields.items():
        ours_value = ours_fields[name]
        where = f"{path}.{name}"
        if hasattr(official_value, "ListFields"):
            assert_messages_equal(ours_value, official_value, where)
        elif isinstance(official_value, (str, bytes, int, float)):
            same = ours_value == official_value or (
                isinstance(official_value, float) and math.isnan(official_value) and math.isnan(ours_value)
            )
            assert same, f"{where}: {ours_value!r} != {official_value!r}"
        else:  # a repeated field
            assert len(ours_value) == len(official_value), f"{where}: lengths differ"
            for index, (mine, theirs) in enumerate(zip(ours_value, official_value, strict=True)):
                if hasattr(theirs, "ListFields"):
                    assert_messages_equal(mine, theirs, f"{where}[{index}]")
                else:
                    assert mine == theirs, f"{where}[{index}]"


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def sdk_spans() -> list[ReadableSpan]:
    """Real SDK spans using every field the SDK fills, under two resources and several scopes."""
    keep = Keep()
    limits = SpanLimits(max_span_attributes=20, max_events=3, max_links=2, max_event_attributes=2)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop", "deployment.environment": "ünïcode ✓"}),
        span_limits=limits,
    )
    provider.add_span_processor(keep)
    other = TracerProvider(resource=Resource({"service.name": "other"}, schema_url="https://schema/1"))
    other.add_span_processor(keep)
    scoped = provider.get_tracer(
        "scope.with.everything", "1.2.3", schema_url="https://schema/scope", attributes={"scope.key": 1}
    )
    plain = provider.get_tracer("plain")
    nameless = provider.get_tracer("")
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("other@tenant", "x=y")]),
    )
    every_type = {
        "text": "value",
        "empty": "",
        "unicode": "日本語 😀 \x00 control",
        "huge": HUGE,
        "true": True,
        "false": False,
        "zero": 0,
        "negative": -1,
        "int64 max": 2**63 - 1,
        "int64 min": -(2**63),
        "float": 1.5,
        "negative zero": -0.0,
        "infinity": math.inf,
        "texts": ("a", "", "ü"),
        "bools": (True, False),
        "ints": (1, -2, 2**40),
        "floats": (0.25, -1e300),
        "empty sequence": (),
        "with none": ("a", None, "b"),
    }
    with scoped.start_as_current_span(
        "root ✓", kind=SpanKind.SERVER, context=set_span_in_context(NonRecordingSpan(remote))
    ) as root:
        root.set_attributes(every_type)
        root.set_attribute("one too many", "dropped")
        root.set_attribute("two too many", "dropped")
        root.add_event("event", {"a": 1, "b": "two", "c": "dropped"})
        root.add_event("", {})
        root.add_event("third", timestamp=1)
        root.add_event("fourth, dropped")
        root.add_link(SpanContext(1, 2, is_remote=False))  # the oldest link goes past the limit
        root.add_link(SpanContext(3, 4, is_remote=False))
        root.add_link(remote, {"link.attr": "x"})
        root.set_status(Status(StatusCode.ERROR, "it broke: ✗"))
        for kind in SpanKind:
            with plain.start_as_current_span(f"child {kind.name}", kind=kind) as child:
                child.set_status(Status(StatusCode.OK))
        with nameless.start_as_current_span(""):
            pass
        with other.get_tracer("plain").start_as_current_span("other resource"):
            pass
        with scoped.start_as_current_span("back to the first scope", attributes={"huge": HUGE}):
            pass
    # Another tracer object for an equal scope, and another Resource object equal to the first:
    # OpenTelemetry groups by equality, so must we.
    again = TracerProvider(
        resource=Resource.create({"service.name": "shop", "deployment.environment": "ünïcode ✓"})
    )
    again.add_span_processor(keep)
    with again.get_tracer("plain").start_as_current_span("equal resource, new object"):
        pass
    return keep.spans


def test_sdk_spans_with_every_field_encode_as_opentelemetry_does() -> None:
    spans = sdk_spans()
    assert any(span.dropped_attributes for span in spans)
    assert any(span.dropped_events for span in spans)
    assert any(span.dropped_links for span in spans)
    assert any(link.context.is_remote for span in spans for link in span.links)
    assert any(span.parent is not None and span.parent.is_remote for span in spans)
    assert any(span.get_span_context().trace_state for span in spans)
    assert_same_as_official(spans)
    for span in spans:
        assert_same_as_official([span])
    assert_same_as_official(list(reversed(spans)))
    assert_same_as_official([])
    # Resources and scopes are cached across batches: a second run must give the same bytes.
    assert encode_export_request(spans) == encode_export_request(spans)


def test_values_beyond_the_sdk_types_encode_as_opentelemetry_does() -> None:
    """Bytes, mappings and nesting (what a ReadableSpan built by hand may hold), and unset fields."""
    span = ReadableSpan(
        name="hand made",
        context=SpanContext(5, 6, is_remote=False),
        attributes={
            "bytes": b"\x00\xff",
            "empty bytes": b"",
            "mapping": {"inner": [1, "two", {"deep": None}], "": "empty key"},
            "nested": [[1, 2], [], ["x"]],
            "none": None,
            "": "empty key",
        },
        events=[Event("plain dict", {"k": "v"}, timestamp=10)],
        links=[Link(SpanContext(7, 8, is_remote=True), {"k": (1, 2)})],
        resource=Resource({}),
        start_time=None,
        end_time=None,
    )
    assert_same_as_official([span])


def test_an_attribute_that_cannot_be_encoded_is_left_out_as_opentelemetry_leaves_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    span = ReadableSpan(
        name="bad values",
        context=SpanContext(5, 6, is_remote=False),
        attributes={"too big": 2**64, "kept": "yes", "object": object()},
        resource=Resource({}),
    )
    decoded = ExportTraceServiceRequest.FromString(encode_export_request([span]))
    (kept,) = decoded.resource_spans[0].scope_spans[0].spans[0].attributes
    assert kept.key == "kept"
    assert encode_export_request([span]) == encode_spans([span]).SerializeToString()
    assert "could not be encoded" in capsys.readouterr().err


def test_text_utf8_cannot_encode_is_kept_with_replacement_where_opentelemetry_fails() -> None:
    # A lone surrogate (os.fsdecode of a name that is not UTF-8) in a name, a key, a value, an event,
    # the status or the resource: OpenTelemetry's encoder drops the attribute or fails the batch.
    def span_of(text: str, pair: str) -> ReadableSpan:
        return ReadableSpan(
            name=text,
            context=SpanContext(5, 6, is_remote=False),
            attributes={text: text, "list": ("x", text), "pair": pair},
            events=[Event(text, {"k": text}, timestamp=1)],
            status=Status(StatusCode.ERROR, text),
            resource=Resource({"service.name": text}),
        )

    span = span_of("caf\udce9", "\ud83d\ude00")
    same_replaced = span_of("caf\ufffd", "\U0001f600")
    with pytest.raises(UnicodeEncodeError):
        encode_spans([span]).SerializeToString()
    assert encode_export_request([span]) == encode_spans([same_replaced]).SerializeToString()


attribute_values = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.lists(st.text(), max_size=4).map(tuple),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4).map(tuple),
    st.lists(st.floats(), max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
    st.binary(max_size=20),
)
attributes = st.dictionaries(st.text(max_size=20), attribute_values, max_size=8)
ids = st.integers(min_value=1, max_value=2**64 - 1)
trace_ids = st.integers(min_value=1, max_value=2**128 - 1)
contexts = st.builds(
    SpanContext,
    trace_id=trace_ids,
    span_id=ids,
    is_remote=st.booleans(),
    trace_flags=st.sampled_from([TraceFlags(0), TraceFlags(1)]),
    trace_state=st.one_of(st.none(), st.sampled_from([TraceState(), TraceState([("a", "1"), ("b@c", "2")])])),
)
resources = st.sampled_from(
    [Resource({"service.name": "a"}), Resource({"service.name": "b", "n": 1}, "https://s"), Resource({})]
)
scopes = st.sampled_from(
    [None, InstrumentationScope("s"), InstrumentationScope("t", "1.0", "https://t", {"k": "v"})]
)
events = st.builds(Event, name=st.text(), attributes=attributes, timestamp=st.integers(0, 2**64 - 1))
links = st.builds(Link, context=contexts, attributes=attributes)
statuses = st.one_of(
    st.just(Status()),
    st.builds(Status, st.sampled_from([StatusCode.OK, StatusCode.ERROR]), st.one_of(st.none(), st.text())),
)
spans = st.builds(
    ReadableSpan,
    name=st.text(),
    context=contexts,
    parent=st.one_of(st.none(), contexts),
    resource=resources,
    attributes=attributes,
    events=st.lists(events, max_size=3),
    links=st.lists(links, max_size=3),
    kind=st.sampled_from(list(SpanKind)),
    status=statuses,
    start_time=st.integers(0, 2**64 - 1),
    end_time=st.integers(0, 2**64 - 1),
    instrumentation_scope=scopes,
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans, max_size=6))
def test_generated_spans_encode_as_opentelemetry_does(batch: list[ReadableSpan]) -> None:
    assert_same_as_official(batch)


class RawReceiver:
    """An OTLP/HTTP endpoint that keeps each request body as it arrived (decompressed)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.encodings: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding")
                receiver.encodings.append(encoding)
                receiver.bodies.append(gzip.decompress(body) if encoding == "gzip" else body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        serve_in_thread(self.server)


@pytest.fixture
def raw_receiver() -> Iterator[RawReceiver]:
    receiver = RawReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_otlp_exporter_sends_what_opentelemetrys_exporter_sends(
    raw_receiver: RawReceiver, compression: Compression
) -> None:
    spans = sdk_spans()
    ours = OTLPSpanExporter(endpoint=raw_receiver.endpoint, compression=compression)
    theirs = OfficialExporter(endpoint=raw_receiver.endpoint, compression=compression)
    assert ours.export(spans) is SpanExportResult.SUCCESS
    assert theirs.export(spans) is SpanExportResult.SUCCESS
    ours.shutdown()
    theirs.shutdown()
    sent_by_us, sent_by_them = raw_receiver.bodies
    assert sent_by_us == sent_by_them == encode_export_request(spans)
    expected = "gzip" if compression is Compression.Gzip else None
    assert raw_receiver.encodings == [expected, expected]


def test_the_otlp_exporter_reports_a_dead_endpoint_as_a_failure() -> None:
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=1)
    assert exporter.export(sdk_spans()[:1]) is SpanExportResult.FAILURE


class RawGrpcReceiver:
    """An OTLP/gRPC endpoint that keeps each request's raw bytes (no protobuf decoding on the way in)."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc

        self.bodies: list[bytes] = []
        self.compressions: list[str | None] = []

        def export(body: bytes, context: Any) -> bytes:
            self.bodies.append(body)
            self.compressions.append(dict(context.invocation_metadata()).get("grpc-encoding"))
            return b""  # an empty ExportTraceServiceResponse

        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)},  # raw bytes in and out
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.mark.parametrize("gzip_compressed", [False, True], ids=["none", "gzip"])
def test_the_grpc_exporter_sends_what_opentelemetrys_grpc_exporter_sends(gzip_compressed: bool) -> None:
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as OfficialGrpc

    from logfire_run.agent.export.otlp_grpc import OTLPSpanExporter as OurGrpc

    receiver = RawGrpcReceiver()
    compression = grpc.Compression.Gzip if gzip_compressed else grpc.Compression.NoCompression
    try:
        spans = sdk_spans()
        options = {"endpoint": f"127.0.0.1:{receiver.port}", "insecure": True, "compression": compression}
        ours, theirs = OurGrpc(**options), OfficialGrpc(**options)
        # Ours sends the direct encoder's bytes, not a message object it serializes.
        assert type(ours._translate_data(spans)).__name__ == "EncodedBatch"
        assert ours.export(spans) is SpanExportResult.SUCCESS
        assert theirs.export(spans) is SpanExportResult.SUCCESS
        ours.shutdown()
        theirs.shutdown()
    finally:
        receiver.server.stop(grace=None)
    sent_by_us, sent_by_them = receiver.bodies
    assert sent_by_us == sent_by_them == encode_export_request(spans)
    assert receiver.compressions[0] == receiver.compressions[1]


def test_the_grpc_exporter_reports_a_dead_endpoint_as_a_failure() -> None:
    from logfire_run.agent.export.otlp_grpc import OTLPSpanExporter as OurGrpc

    exporter = OurGrpc(endpoint="127.0.0.1:9", insecure=True, timeout=1)
    assert exporter.export(sdk_spans()[:1]) is SpanExportResult.FAILURE
