"""Where OTLP sends a signal: OpenTelemetry's exporter variables, validated and resolved in one place.

For a signal (`traces` today, `logs` next), every value is read from the signal's own variable
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), else the general one (`OTEL_EXPORTER_OTLP_ENDPOINT`), else the
default, as OpenTelemetry's exporter specification says, with these rules:

- endpoint: a signal variable is used as given; the general one is a base URL that gets the signal's
  path (`/v1/traces`) after its own path, trailing slashes dropped (`http://c:4318/otlp/` sends to
  `http://c:4318/otlp/v1/traces`). gRPC takes `host:port` only; the scheme decides TLS (`https` on,
  `http` off) and `OTEL_EXPORTER_OTLP_INSECURE` decides it for an endpoint given without one.
- headers: `key=value` pairs separated by commas, percent-decoded (W3C Baggage's format).
- timeout: milliseconds, as the specification says. opentelemetry-python's exporters read it as
  seconds; the agent passes the converted value to them, so `10000` means ten seconds here.
- compression: `none`, `gzip` (and `deflate`, which both of OpenTelemetry's exporters accept).
- certificate, client key and client certificate (mTLS): files that must exist.

The agent passes every resolved value to OpenTelemetry's exporters explicitly instead of letting them
read the environment: the gRPC exporter would otherwise mix the two spellings inconsistently (a
general certificate with a signal client key is ignored) and read the timeout in seconds.

Stdlib only and cheap: the launcher validates with it, and every process resolves through it.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from logfire_run.agent.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

PROTOCOLS = ("http/protobuf", "grpc")
COMPRESSIONS = ("none", "gzip", "deflate")
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_TIMEOUT_MILLIS = 10_000
DEFAULT_ENDPOINTS = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}
SIGNAL_PATHS = {"traces": "v1/traces", "logs": "v1/logs", "metrics": "v1/metrics"}
#: The extra that brings each protocol's exporter, and the module it provides.
PROTOCOL_EXTRAS = {
    "grpc": ("logfire-run[grpc]", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
    "http/protobuf": ("logfire-run", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
}
_HEADER_NAME_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def variables(signal: str, option: str) -> tuple[str, str]:
    """(the signal's variable, the general variable) of one option: ENDPOINT, HEADERS, ..."""
    return f"OTEL_EXPORTER_OTLP_{signal.upper()}_{option}", f"OTEL_EXPORTER_OTLP_{option}"


def parse_protocol(raw: str) -> str:
    value = raw.strip().lower()
    if value in PROTOCOLS:
        return value
    if value == "http/json":
        raise ConfigError(
            "protocol 'http/json' is not supported: use http/protobuf (every OTLP/HTTP receiver, the "
            "Collector's included, accepts it on the same endpoint) or grpc"
        )
    raise ConfigError(f"invalid protocol {raw!r}: use one of {', '.join(PROTOCOLS)}")


def parse_headers(raw: str) -> dict[str, str]:
    """`key=value,key2=value2`, percent-decoded; header names lower-cased."""
    headers: dict[str, str] = {}
    for pair in raw.split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        name = unquote(key.strip()).lower()
        if not sep or not name or not set(name) <= _HEADER_NAME_CHARS:
            raise ConfigError(
                f"invalid header {pair.strip()!r}: use comma-separated name=value pairs "
                "(names are HTTP header names; percent-encode ',' and '=' in values)"
            )
        headers[name] = unquote(value.strip())
    return headers


def parse_compression(raw: str) -> str:
    value = raw.strip().lower()
    if value not in COMPRESSIONS:
        raise ConfigError(f"invalid compression {raw!r}: use one of {', '.join(COMPRESSIONS)}")
    return value


def parse_timeout(raw: str) -> int:
    value = raw.strip()
    if not value.isdigit() or int(value) <= 0:
        raise ConfigError(
            f"invalid timeout {raw!r}: use a positive whole number of milliseconds (10000 = 10 s)"
        )
    return int(value)


def parse_insecure(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "false"):
        return value == "true"
    raise ConfigError(f"invalid value {raw!r}: use true or false")


def parse_file(raw: str) -> str:
    path = os.path.expanduser(raw.strip())
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{raw!r} is not a readable file: give the path of a PEM file")
    return path


def parse_endpoint(raw: str, protocol: str) -> str:
    value = raw.strip()
    parts = urlsplit(value) if "://" in value else None
    if parts is not None and parts.scheme in ("http", "https") and parts.hostname:
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            pass
        else:
            return value
    if parts is None and protocol == "grpc" and _is_host_port(value):
        return value
    accepted = "an http:// or https:// URL" + (" or host:port" if protocol == "grpc" else "")
    raise ConfigError(f"invalid endpoint {raw!r}: use {accepted}")


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and "/" not in value)


class OtlpDestination:
    """Where and how one signal is exported over OTLP; `sources` says where each value came from."""

    __slots__ = (
        "certificate",
        "client_certificate",
        "client_key",
        "compression",
        "endpoint",
        "headers",
        "insecure",
        "protocol",
        "signal",
        "sources",
        "timeout_millis",
    )

    def __init__(self, signal: str, protocol: str) -> None:
        self.signal = signal
        self.protocol = protocol
        self.endpoint = ""
        self.headers: dict[str, str] = {}
        self.compression = "none"
        self.timeout_millis = DEFAULT_TIMEOUT_MILLIS
        self.certificate: str | None = None
        self.client_key: str | None = None
        self.client_certificate: str | None = None
        #: gRPC only: plaintext (True) or TLS (False).
        self.insecure = False
        self.sources: dict[str, str] = {}

    def grpc_target(self) -> str:
        """`host:port` for gRPC's channel."""
        if "://" in self.endpoint:
            return urlsplit(self.endpoint).netloc
        return self.endpoint


#: option -> (attribute, parser) for the options read the same way for every protocol.
_OPTIONS = {
    "HEADERS": ("headers", parse_headers),
    "COMPRESSION": ("compression", parse_compression),
    "TIMEOUT": ("timeout_millis", parse_timeout),
    "CERTIFICATE": ("certificate", parse_file),
    "CLIENT_KEY": ("client_key", parse_file),
    "CLIENT_CERTIFICATE": ("client_certificate", parse_file),
    "INSECURE": ("insecure", parse_insecure),
}


def _found(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        raw = environ.get(name)
        if raw is not None and raw.strip():
            return raw, name
    return None


def resolve(
    signal: str, environ: Mapping[str, str], protocol: tuple[str, str] | None = None
) -> tuple[OtlpDestination, list[ConfigError]]:
    """The destination of `signal` from `environ`; invalid values are errors and left at the default.

    `protocol` is (value, source) when the caller resolved it already (the `--otlp-protocol` setting).
    """
    errors: list[ConfigError] = []

    def fail(variable: str, error: ConfigError) -> None:
        errors.append(ConfigError(f"{variable}: {error}", variable=variable))

    if protocol is None:
        protocol = (DEFAULT_PROTOCOL, "default")
        found = _found(environ, variables(signal, "PROTOCOL"))
        if found is not None:
            try:
                protocol = (parse_protocol(found[0]), f"env {found[1]}")
            except ConfigError as error:
                fail(found[1], error)
    destination = OtlpDestination(signal, protocol[0])
    destination.sources["protocol"] = protocol[1]

    own, general = variables(signal, "ENDPOINT")
    endpoint = DEFAULT_ENDPOINTS[destination.protocol]
    source = "default"
    for variable in (own, general):
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        try:
            endpoint = parse_endpoint(raw, destination.protocol)
        except ConfigError as error:
            fail(variable, error)
            continue
        source = f"env {variable}"
        if variable == general and destination.protocol != "grpc":
            endpoint = f"{endpoint.rstrip('/')}/{SIGNAL_PATHS[signal]}"
        break
    else:
        if destination.protocol != "grpc":
            endpoint = f"{endpoint}/{SIGNAL_PATHS[signal]}"
    destination.endpoint = endpoint
    destination.sources["endpoint"] = source

    for option, (attribute, parser) in _OPTIONS.items():
        destination.sources[attribute] = "default"
        for variable in variables(signal, option):
            raw = environ.get(variable, "")
            if not raw.strip():
                continue
            try:
                value: object = parser(raw)
            except ConfigError as error:
                fail(variable, error)
                continue
            setattr(destination, attribute, value)
            destination.sources[attribute] = f"env {variable}"
            break

    if "://" in endpoint:
        # The scheme decides TLS; OTEL_EXPORTER_OTLP_INSECURE is for endpoints given without one.
        destination.insecure = urlsplit(endpoint).scheme == "http"
        destination.sources["insecure"] = f"the {urlsplit(endpoint).scheme} scheme"
    if (destination.client_key is None) != (destination.client_certificate is None):
        present = "CLIENT_KEY" if destination.client_key else "CLIENT_CERTIFICATE"
        missing = "CLIENT_CERTIFICATE" if destination.client_key else "CLIENT_KEY"
        variable = destination.sources["client_key" if destination.client_key else "client_certificate"]
        errors.append(
            ConfigError(
                f"{variable.removeprefix('env ')}: a {present.lower().replace('_', ' ')} needs "
                f"OTEL_EXPORTER_OTLP_{missing} (or the {signal.upper()} one) too, for mTLS",
                variable=variable.removeprefix("env "),
            )
        )
        destination.client_key = destination.client_certificate = None
    return destination, errors


def signal_destination(
    signal: str, environ: Mapping[str, str], spans_protocol: tuple[str, str]
) -> OtlpDestination:
    """Where OTLP sends `signal` (logs, metrics): its own variables, else the general ones, else the
    spans' protocol (`spans_protocol`: value and source). Invalid values are said on stderr when the
    signal's own variables were set; otherwise they belong to the general and traces variables,
    which spans report (a traces-only client certificate leaves this signal with half a pair: it goes
    without one)."""
    from logfire_run.agent import report

    own, general = variables(signal, "PROTOCOL")
    protocol = None
    if not (environ.get(own, "").strip() or environ.get(general, "").strip()):
        protocol = spans_protocol
    found, errors = resolve(signal, environ, protocol)
    prefix = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
    own_variables = any(name.startswith(prefix) for name in environ)
    for error in errors:
        if own_variables:
            report.problem(f"{signal}:config:{error}", f"{error}; using the default")
        else:
            report.debug(f"OTLP {signal}: {error}; using the default")
    return found


def exporter_missing(protocol: str) -> str | None:
    """Why OpenTelemetry's exporter for `protocol` cannot be loaded here, or None when it can."""
    from importlib.util import find_spec

    extra, module = PROTOCOL_EXTRAS[protocol]
    try:
        if find_spec(module) is not None:
            return None
    except (ImportError, ValueError):
        pass
    return f"OTLP over {protocol} needs OpenTelemetry's exporter for it: pip install '{extra}'"


#: (text in an exporter's error, what it means): the usual failures, in words a person can act on.
_EXPLANATIONS = (
    ("connection refused", "nothing is listening there (connection refused)"),
    ("failed to connect", "nothing is listening there (connection refused)"),
    ("certificate verify failed", "its TLS certificate is not trusted (set OTEL_EXPORTER_OTLP_CERTIFICATE)"),
    ("handshake", "the TLS handshake failed (TLS against a plaintext port, or the reverse?)"),
    ("wrong version number", "the TLS handshake failed (https:// against a plaintext port?)"),
    ("badstatusline", "the server there does not speak OTLP/HTTP (a gRPC port? set the protocol to grpc)"),
    ("remotedisconnected", "the server closed the connection (a gRPC port? set the protocol to grpc)"),
    ("401", "the backend refused the credentials (check OTEL_EXPORTER_OTLP_HEADERS)"),
    ("403", "the backend refused the credentials (check OTEL_EXPORTER_OTLP_HEADERS)"),
    ("unauthenticated", "the backend refused the credentials (check OTEL_EXPORTER_OTLP_HEADERS)"),
    ("404", "the backend has no OTLP endpoint at that path (check the endpoint's path)"),
    ("405", "the backend takes no OTLP export at that path (405 Method Not Allowed: check the path)"),
    ("unimplemented", "the server there does not speak OTLP over gRPC (an HTTP port? use http/protobuf)"),
    ("timed out", "no answer within the timeout"),
    ("deadline", "no answer within the timeout"),
    ("due to timeout", "no answer within the timeout, or every retry failed"),
)


#: What an endpoint that takes traces but not another signal answers for it: OTLP/HTTP 404 or 405 on
#: `/v1/logs`, gRPC UNIMPLEMENTED for the LogsService. Several tracing backends are such: advice to
#: check the path or switch protocol would be wrong there, the spans went through.
_SIGNAL_REFUSED = ("404", "405", "not found", "method not allowed", "unimplemented")


def _mentions(lowered: str, needle: str) -> bool:
    """Whether `needle` is in the message; a status code only as a number of its own, never inside a
    port or another number (`127.0.0.1:44047` holds no 404)."""
    if not needle.isdigit():
        return needle in lowered
    import re

    return re.search(rf"(?<![\d:.]){needle}(?![\d])", lowered) is not None


def explain(message: str, signal: str = "spans") -> str:
    """An exporter's error with what it usually means in front, when it is a usual one; for a signal
    other than spans, refusals that mean "this backend does not take it" say so."""
    text = message.strip()
    lowered = message.lower()
    if signal != "spans" and any(_mentions(lowered, needle) for needle in _SIGNAL_REFUSED):
        variable = {"logs": "OTEL_LOGS_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER"}.get(signal, "")
        meaning = (
            f"the backend there does not take OTLP {signal} (it may take traces only; "
            f"{variable}=none stops sending {signal}, OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT "
            "sends them elsewhere)"
        )
        return f"{meaning} [{text}]"
    for needle, meaning in _EXPLANATIONS:
        if _mentions(lowered, needle):
            return f"{meaning} [{text}]"
    return text
