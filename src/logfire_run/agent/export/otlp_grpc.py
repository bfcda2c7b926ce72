"""OTLP/gRPC with the direct span encoder: OpenTelemetry's exporter, sending `otlp_encoding`'s bytes.

`OTLPSpanExporter` is OpenTelemetry's own OTLP/gRPC span exporter with two steps replaced: the request
it hands to its gRPC client is an `EncodedBatch` written by `encode_export_request`, and the client
is a stub of the same `TraceService/Export` method whose request serializer asks the request for its
bytes (`SerializeToString`, which a protobuf message has too) instead of calling the protobuf
class's own method. The channel, credentials, headers, compression, retries and their back-off,
the reconnection on UNAVAILABLE, timeouts, the exporter's metrics and its error reporting are
OpenTelemetry's, unchanged.

Imported only when the exporter is built with protocol `grpc` (the `grpc` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as _OtelGrpcExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan

from logfire_run.agent import report
from logfire_run.agent.export.otlp_encoding import EncodedBatch, encode_export_request

__all__ = ["OTLPSpanExporter"]

_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _serialize(request: Any) -> bytes:
    return bytes(request.SerializeToString())


class _TraceServiceStub:
    """The generated stub's one method, with a serializer that takes a message or an `EncodedBatch`."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(
            _EXPORT_METHOD,
            request_serializer=_serialize,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


class OTLPSpanExporter(_OtelGrpcExporter):
    """OpenTelemetry's OTLP/gRPC span exporter, with the request written by `encode_export_request`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # OpenTelemetry makes a new client from `_stub` whenever it reconnects: ours from now on.
        self._stub = _TraceServiceStub
        self._client = _TraceServiceStub(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Sequence[ReadableSpan]) -> Any:
        try:
            return EncodedBatch(data, encode_export_request(data))
        except Exception as error:
            # OpenTelemetry's own encoder then meets the same span, and reports it its own way.
            report.fallback("otlp-encode", f"the OTLP span encoder failed ({type(error).__name__}: {error})")
            return super()._translate_data(data)
