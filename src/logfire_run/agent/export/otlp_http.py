"""OTLP/HTTP with the direct span encoder: OpenTelemetry's exporter, sending `otlp_encoding`'s bytes.

`OTLPSpanExporter` is OpenTelemetry's own OTLP/HTTP span exporter with one step replaced: the
request body comes from `encode_export_request` instead of OpenTelemetry's message objects. The
endpoint, headers, compression, retries, timeouts, the request-size limit, the exporter's metrics and
its error reporting are all OpenTelemetry's, unchanged.

OpenTelemetry's `export` serializes with `encode_spans(spans).SerializePartialToString()`, a name it
looks up in its module at call time. That name is wrapped, once, so that a batch this exporter has
already encoded is handed back as it is; every other caller, and every other exporter, still gets
OpenTelemetry's encoder. Should a later OpenTelemetry stop calling that name, this exporter sends
OpenTelemetry's own encoding, the same bytes, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http import trace_exporter as _otel_http
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from logfire_run.agent import report
from logfire_run.agent.export.otlp_encoding import EncodedBatch, encode_export_request
from logfire_run.agent.patching import Patches

__all__ = ["OTLPSpanExporter"]


def _wrap_encode_spans() -> None:
    original: Callable[..., Any] | None = getattr(_otel_http, "encode_spans", None)
    if original is None:
        report.fallback("otlp-http-seam", "OpenTelemetry's OTLP/HTTP exporter has no encode_spans to wrap")
        return

    def encode_spans(spans: Sequence[ReadableSpan]) -> Any:
        if type(spans) is EncodedBatch:
            return spans
        return original(spans)

    _patches.replace(_otel_http, "encode_spans", encode_spans)


_patches = Patches("otlp http")


_wrap_encode_spans()


class OTLPSpanExporter(_otel_http.OTLPSpanExporter):
    """OpenTelemetry's OTLP/HTTP span exporter, with the request body written by `encode_export_request`."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            body = encode_export_request(spans)
        except Exception as error:
            # OpenTelemetry's own encoder then meets the same span, and reports it its own way.
            report.fallback("otlp-encode", f"the OTLP span encoder failed ({type(error).__name__}: {error})")
            return super().export(spans)
        return super().export(EncodedBatch(spans, body))
