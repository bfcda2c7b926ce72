"""OTLP log encoding: captured records (`agent.logs.Captured`) to the bytes of an `ExportLogsServiceRequest`.

The records are written straight into the protobuf wire format with `otlp_encoding`'s primitives,
instead of building OpenTelemetry's SDK log records, then its protobuf messages, one by one: what
records share is encoded once (the resource, the scope of each logger, the attributes of each call
site). The request decodes to the message OpenTelemetry's encoder gives for the same records
(tests/test_logs.py holds it to that), and OpenTelemetry's OTLP/HTTP log exporter sends it: its
endpoint, headers, compression, retries and timeouts are all OpenTelemetry's.

Where it stops: OTLP/HTTP only (`send_encoded` says whether the exporter took the bytes); gRPC and
an OpenTelemetry release without the HTTP client seam get OpenTelemetry's own path.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.instrumentation.log_utils import std_to_otel
from opentelemetry.sdk.resources import Resource

from logfire_run.agent.export.otlp_encoding import _field, _key_value, _resource_field, _text, _varint
from logfire_run.store_format import site_attributes

__all__ = ["encode_logs_request", "send_encoded"]

_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_LOG_ATTRIBUTE = 0x32  # LogRecord.attributes (6)
_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def _severity(levelno: int, levelname: str) -> bytes:
    number = int(getattr(std_to_otel(levelno), "value", 0))
    return (b"\x10" + _varint(number) if number else b"") + _text(
        0x1A, _SEVERITY_TEXT.get(levelname, levelname)
    )


def encode_logs_request(batch: Sequence[Any], resource: Resource, observed_ns: int) -> bytes:
    """The protobuf bytes of an OTLP `ExportLogsServiceRequest` carrying `batch`, one scope per logger."""
    scopes: dict[str, list[bytes]] = {}
    sites: dict[Any, bytes] = {}
    severities: dict[tuple[int, str], bytes] = {}
    observed = b"\x59" + _pack_fixed64(observed_ns)
    for when, levelno, levelname, logger, message, exception, trace_id, span_id, flags, site in batch:
        attributes = sites.get(site)
        if attributes is None:
            attributes = sites[site] = b"".join(
                [_key_value(_LOG_ATTRIBUTE, key, value) for key, value in site_attributes(site).items()]
            )
        severity = severities.get((levelno, levelname))
        if severity is None:
            severity = severities[(levelno, levelname)] = _severity(levelno, levelname)
        parts = [
            b"\x09" + _pack_fixed64(when),
            severity,
            _field(0x2A, _text(0x0A, message)),
            attributes,
        ]
        if exception is not None:
            parts.append(_key_value(_LOG_ATTRIBUTE, "exception.stacktrace", exception))
        parts.append(b"\x45" + _pack_fixed32(flags))
        if trace_id:
            parts.append(b"\x4a\x10" + trace_id.to_bytes(16, "big"))
        if span_id:
            parts.append(b"\x52\x08" + span_id.to_bytes(8, "big"))
        parts.append(observed)
        scopes.setdefault(logger, []).append(_field(0x12, b"".join(parts)))
    resource_logs = [_resource_field(resource)]
    for logger, records in scopes.items():
        scope = _field(0x0A, _text(0x0A, logger) if logger else b"")
        payload = b"".join([scope, *records])
        resource_logs.append(bytes((0x12,)) + _varint(len(payload)) + payload)
    body = b"".join(resource_logs)
    return bytes((0x0A,)) + _varint(len(body)) + body


def send_encoded(exporter: Any, body: bytes) -> bool | None:
    """Send `body` through OpenTelemetry's OTLP/HTTP log exporter; None when it has no seam for it."""
    client = getattr(exporter, "_client", None)
    export = getattr(client, "export", None)
    if not callable(export):
        return None
    result = export(body)
    return bool(getattr(result, "success", False))
