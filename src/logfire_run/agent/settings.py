"""The one table of settings: launcher flag, environment variable, type, default and accepted values.

The launcher turns flags into environment variables through this table, the agent reads the same
variables back through it, `configure()` checks its keywords against it, and `--help`, `--info` and
docs/configuration.md's table are written from it. Everything that differs between two settings
is a field of its row (`Setting`) or of its type (`Kind`): adding a setting is adding a row.

Nothing here imports OpenTelemetry: the launcher and the bootstrap both load this module in every
process, so it is stdlib only and defines no dataclasses (their import costs milliseconds).
"""

from __future__ import annotations

from collections.abc import Mapping

from logfire_run.agent.errors import ConfigError
from logfire_run.files import store_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    #: What `distributed_tracing` may hold: None (warn), True, False or "link".
    DistributedTracing = bool | None | str

_TRUE = ("1", "true", "t", "yes", "on")
_FALSE = ("0", "false", "f", "no", "off")

EXPORTER_NAMES = ("store", "otlp", "console", "none")
#: Where exporters of other packages are found (OpenTelemetry's group: `zipkin`, ...).
EXPORTER_ENTRY_POINT_GROUP = "opentelemetry_traces_exporter"


# Kinds: how a type of setting is read from text (flag, environment) and from Python (`configure()`).


class Kind:
    """Text: the value as given, without surrounding whitespace."""

    def parse(self, raw: str) -> object:
        """The value of an environment variable or flag; raises ConfigError when it is not accepted."""
        return raw.strip()

    def coerce(self, value: object) -> object:
        """The value of a `configure()` keyword: text is parsed as `parse` does, other types checked."""
        if isinstance(value, str) or value is None:
            return self.parse(value or "")
        raise ConfigError(f"expected a string, got {value!r}")

    def show(self, value: object) -> str:
        """The value as `--info` prints it."""
        if value is None or value == "" or value == ():
            return "-"
        return str(value)


class BoolKind(Kind):
    def parse(self, raw: str) -> object:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE or value == "":
            return False
        raise ConfigError(f"invalid boolean {raw!r}: use one of {', '.join(_TRUE + _FALSE)}")

    def coerce(self, value: object) -> object:
        if isinstance(value, bool):
            return value
        return super().coerce(value)

    def show(self, value: object) -> str:
        return "on" if value else "off"


class NameListKind(Kind):
    """A comma-separated list of names; `configure()` also takes a list or tuple."""

    def parse(self, raw: str) -> object:
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def coerce(self, value: object) -> object:
        if isinstance(value, (list, tuple)):
            return self.parse(",".join(str(item) for item in value))
        return super().coerce(value)

    def show(self, value: object) -> str:
        return ",".join(value) if isinstance(value, tuple) and value else "-"


class ExportersKind(NameListKind):
    """Exporter names: the agent's own, or any installed `opentelemetry_traces_exporter` entry point
    (`zipkin`, ...). Duplicates are collapsed; a name that is neither is an error whose `usable` part
    keeps the others (so env-only activation still exports to them)."""

    def parse(self, raw: str) -> object:
        names = tuple(dict.fromkeys(str(name).lower() for name in super().parse(raw)))  # type: ignore[attr-defined]
        unknown = [name for name in names if name not in EXPORTER_NAMES]
        if unknown:
            from logfire_run.agent.otel_env import entry_point_names

            installed = entry_point_names(EXPORTER_ENTRY_POINT_GROUP)
            unknown = [name for name in unknown if name not in installed]
        if unknown:
            kept = tuple(name for name in names if name not in unknown)
            raise ConfigError(
                f"unknown exporter {', '.join(map(repr, unknown))}: use a comma-separated list of "
                f"{', '.join(EXPORTER_NAMES)}, or the name of an installed exporter "
                f"({EXPORTER_ENTRY_POINT_GROUP} entry point, like zipkin from opentelemetry-exporter-zipkin)",
                usable=kept or None,
                usable_raw=",".join(kept) or None,
            )
        if "none" in names and len(names) > 1:
            raise ConfigError("exporter 'none' cannot be combined with other exporters")
        return names


class OtelTracesExporterKind(ExportersKind):
    """OTEL_TRACES_EXPORTER: OpenTelemetry's spelling, read with the same names and rules."""


class ProtocolKind(Kind):
    """The OTLP protocol: http/protobuf or grpc (http/json is refused, see agent/destination.py)."""

    def parse(self, raw: str) -> object:
        from logfire_run.agent.destination import parse_protocol

        return parse_protocol(raw) if raw.strip() else None

    def show(self, value: object) -> str:
        return str(value) if value else "http/protobuf"


class DistributedTracingKind(Kind):
    def parse(self, raw: str) -> object:
        value = raw.strip().lower()
        if value in ("", "warn"):
            return None
        if value in ("true", "1", "t"):
            return True
        if value in ("false", "0", "f"):
            return False
        if value == "link":
            return "link"
        raise ConfigError(
            f"invalid distributed tracing value {raw!r}: use warn, true (1, t), false (0, f) or link"
        )

    def coerce(self, value: object) -> object:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self.parse(value)
        raise ConfigError(f"expected None, True, False or 'link', got {value!r}")

    def show(self, value: object) -> str:
        return "warn" if value is None else str(value)


class NumberKind(Kind):
    """A number from `low` to `high` (an integer with `integer`); `configure()` also takes a number."""

    def __init__(
        self, low: float, high: float, *, integer: bool = False, unit: str = "", what: str = "value"
    ) -> None:
        self.low, self.high, self.integer, self.unit, self.what = low, high, integer, unit, what

    def parse(self, raw: str) -> object:
        number = "a whole number" if self.integer else "a number"
        problem = f"invalid {self.what} {raw!r}: use {number} from {self.low:g} to {self.high:g}"
        try:
            value: float = int(raw.strip().replace("_", "")) if self.integer else float(raw.strip())
        except ValueError:
            raise ConfigError(problem) from None
        if not self.low <= value <= self.high:
            raise ConfigError(problem)
        return value

    def coerce(self, value: object) -> object:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self.parse(str(value))
        return super().coerce(value)

    def show(self, value: object) -> str:
        return f"{value:g}{self.unit}" if isinstance(value, (int, float)) else str(value)


class LogLevelKind(Kind):
    """A `logging` level: a name (debug, info, warning, error, critical), a number, or `off`.

    The value is the level as a number, or None for `off` (nothing is captured)."""

    NAMES: Mapping[str, int] = {
        "debug": 10,
        "info": 20,
        "warning": 30,
        "warn": 30,
        "error": 40,
        "critical": 50,
        "fatal": 50,
    }

    def parse(self, raw: str) -> object:
        value = raw.strip().lower()
        if value in ("off", "none", "false", "0"):
            return None
        if value in self.NAMES:
            return self.NAMES[value]
        if value.isdigit() and 1 <= int(value) <= 100:
            return int(value)
        raise ConfigError(
            f"invalid log level {raw!r}: use debug, info, warning, error, critical, a number from 1 to 100, "
            "or off"
        )

    def coerce(self, value: object) -> object:
        if value is None or value is False:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return self.parse(str(value))
        return super().coerce(value)

    def show(self, value: object) -> str:
        if value is None:
            return "off"
        names = {number: name for name, number in reversed(list(self.NAMES.items()))}
        return names.get(value, str(value)) if isinstance(value, int) else str(value)


class GreenKind(Kind):
    """Which monkey-patching library this process uses: `auto` (detected), `gevent`, `eventlet`, `off`."""

    VALUES = ("auto", "gevent", "eventlet", "off")

    def parse(self, raw: str) -> object:
        value = raw.strip().lower()
        if value == "":
            return "auto"
        if value in self.VALUES:
            return value
        raise ConfigError(f"invalid green value {raw!r}: use {', '.join(self.VALUES)}")


TEXT = Kind()
BOOL = BoolKind()
NAME_LIST = NameListKind()
EXPORTERS = ExportersKind()
DISTRIBUTED_TRACING = DistributedTracingKind()
PROTOCOL = ProtocolKind()
#: A duration in seconds, 0 to 600.
SECONDS = NumberKind(0, 600, unit=" s", what="number of seconds")
LOG_LEVEL = LogLevelKind()
SPAN_COUNT = NumberKind(1_000, 100_000_000, integer=True)
DAYS = NumberKind(0.01, 3650, unit=" days")
GREEN = GreenKind()


# Resolvers: a setting's effective value when it is left unset (or needs the environment to be read).


def resolve_service_name(value: object, environ: Mapping[str, str]) -> object:
    """service.name: the setting, else `service.name` in OTEL_RESOURCE_ATTRIBUTES, else what runs."""
    if value:
        return value
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, found = pair.partition("=")
        if sep and key.strip() == "service.name" and found.strip():
            return found.strip()
    return default_service_name()


_OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def resolve_exporters(value: object, environ: Mapping[str, str]) -> object:
    if value:
        return value
    if any(environ.get(name) for name in _OTLP_ENDPOINT_VARS):
        return ("otlp",)
    return ("store",)


def resolve_store_path(value: object, environ: Mapping[str, str]) -> object:
    return store_path(str(value) if value else None)


def default_service_name() -> str:
    """The name of what this process runs when nothing names it (see `service_names`)."""
    from logfire_run.agent.service_names import derive

    return derive()[0]


class Setting:
    """One configuration value, spelled three ways: `configure()` keyword, flag and env var."""

    __slots__ = (
        "accepted",
        "applies",
        "default",
        "env",
        "fallback_kind",
        "fallbacks",
        "flag",
        "help",
        "kind",
        "name",
        "per_process",
        "resolve",
        "switch",
        "switch_value",
        "unset",
    )

    def __init__(
        self,
        *,
        name: str,
        flag: str,
        env: str,
        kind: Kind,
        default: str,
        accepted: str,
        help: str,
        switch: bool = False,
        switch_value: str = "1",
        fallbacks: tuple[str, ...] = (),
        fallback_kind: Kind | None = None,
        resolve: Callable[[object, Mapping[str, str]], object] | None = None,
        applies: str = "",
        per_process: bool = False,
        unset: object = None,
    ) -> None:
        self.name = name
        self.flag = flag
        self.env = env
        self.kind = kind
        self.default = default
        self.accepted = accepted
        self.help = help
        #: Takes no argument on the command line; the flag sets the env var to `switch_value`.
        self.switch = switch
        self.switch_value = switch_value
        #: Other variables read, in order, when `env` is unset (OpenTelemetry's own spellings) ...
        self.fallbacks = fallbacks
        #: ... and how they are read, when not as `kind`.
        self.fallback_kind = fallback_kind
        #: (value, environ) -> the value in effect; None when the value is used as it is.
        self.resolve = resolve
        #: What a change at run time (`configure()`) must be applied to in a running SDK:
        #: "exporters" (rebuilt), "resource" (its attributes replaced), "policy" (its mode), or "".
        self.applies = applies
        #: Left unset, its value differs per process (the service name): `--info` shows `default`.
        self.per_process = per_process
        #: The value while nothing sets it.
        self.unset = unset

    def parse(self, raw: str) -> object:
        return self.kind.parse(raw)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="service_name",
        flag="--service-name",
        env="LOGFIRE_SERVICE_NAME",
        kind=TEXT,
        default="derived from what runs",
        accepted="any text",
        help="service.name of every span; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read too",
        fallbacks=("OTEL_SERVICE_NAME",),
        resolve=resolve_service_name,
        applies="resource",
        per_process=True,
    ),
    Setting(
        name="distributed_tracing",
        flag="--distributed-tracing",
        env="LOGFIRE_DISTRIBUTED_TRACING",
        kind=DISTRIBUTED_TRACING,
        default="warn",
        accepted="warn, true, false, link",
        help="whether inbound trace context from third parties is accepted (see docs/distributed-tracing.md)",
        applies="policy",
    ),
    Setting(
        name="celery_third_party",
        flag="--celery-third-party",
        env="LOGFIRE_CELERY_THIRD_PARTY",
        kind=BOOL,
        default="off",
        accepted="1/true/on or 0/false/off",
        help="trace context in Celery task messages obeys distributed_tracing like inbound HTTP "
        "(for brokers shared with untrusted producers; see docs/celery.md)",
        switch=True,
        unset=False,
    ),
    Setting(
        name="rq_third_party",
        flag="--rq-third-party",
        env="LOGFIRE_RQ_THIRD_PARTY",
        kind=BOOL,
        default="off",
        accepted="1/true/on or 0/false/off",
        help="trace context carried in RQ jobs obeys distributed_tracing like inbound HTTP "
        "(for Redis servers shared with untrusted producers; see docs/rq.md)",
        switch=True,
        unset=False,
    ),
    Setting(
        name="env_context",
        flag="--no-env-context",
        env="LOGFIRE_ENV_CONTEXT",
        kind=BOOL,
        default="on",
        accepted="1/true/on or 0/false/off",
        help="with 0, TRACEPARENT/TRACESTATE/BAGGAGE in this process's environment are ignored: its "
        "spans start their own traces (for a service whose environment an outsider controls; see "
        "docs/process-boundaries.md)",
        switch=True,
        switch_value="0",
        unset=True,
    ),
    Setting(
        name="broker_spans",
        flag="--broker-spans",
        env="LOGFIRE_BROKER_SPANS",
        kind=BOOL,
        default="off",
        accepted="1/true/on or 0/false/off",
        help="record the Redis commands Celery's broker and result backend and RQ's workers send on "
        "their own (heartbeats, polling, bookkeeping), which are left out by default (see docs/celery.md)",
        switch=True,
        unset=False,
    ),
    Setting(
        name="exporters",
        flag="--exporter",
        env="LOGFIRE_EXPORTER",
        kind=EXPORTERS,
        default="store; otlp when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set",
        accepted="comma list of store, otlp, console, none, or an installed exporter's entry-point name",
        help="where spans go; OTEL_TRACES_EXPORTER is read when this is unset",
        fallbacks=("OTEL_TRACES_EXPORTER",),
        fallback_kind=OtelTracesExporterKind(),
        resolve=resolve_exporters,
        applies="exporters",
        unset=(),
    ),
    Setting(
        name="otlp_protocol",
        flag="--otlp-protocol",
        env="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        kind=PROTOCOL,
        default="http/protobuf",
        accepted="http/protobuf, grpc (needs logfire-run[grpc])",
        help="how the otlp exporter sends spans; OTEL_EXPORTER_OTLP_PROTOCOL is read too",
        fallbacks=("OTEL_EXPORTER_OTLP_PROTOCOL",),
        applies="exporters",
    ),
    Setting(
        name="disabled_instrumentations",
        flag="--disable",
        env="OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        kind=NAME_LIST,
        default="none disabled",
        accepted="comma list of entry-point names, or *",
        help="instrumentors not to load (names as in `logfire-run --info`)",
        unset=(),
    ),
    Setting(
        name="store_path",
        flag="--store",
        env="LOGFIRE_STORE",
        kind=TEXT,
        default="$XDG_DATA_HOME/logfire-run/traces.db",
        accepted="a file path",
        help="the SQLite trace store used by the store exporter and the viewer",
        resolve=resolve_store_path,
        applies="exporters",
    ),
    Setting(
        name="store_max_spans",
        flag="--store-max-spans",
        env="LOGFIRE_STORE_MAX_SPANS",
        kind=SPAN_COUNT,
        default="200000",
        accepted="a whole number, 1000 to 100000000",
        help="the store keeps this many of the newest spans; older ones are deleted (see docs/viewer.md)",
        applies="exporters",
        unset=200_000,
    ),
    Setting(
        name="store_max_days",
        flag="--store-max-days",
        env="LOGFIRE_STORE_MAX_DAYS",
        kind=DAYS,
        default="7",
        accepted="days, 0.01 to 3650",
        help="the store deletes spans and log records written longer ago than this",
        applies="exporters",
        unset=7.0,
    ),
    Setting(
        name="exit_budget",
        flag="--exit-budget",
        env="LOGFIRE_EXIT_BUDGET",
        kind=SECONDS,
        default="2",
        accepted="seconds, 0 to 600",
        help="the longest a process's exit (normal, SIGTERM, os._exit) waits for its spans to be sent; "
        "what is left then is dropped and counted on stderr",
        unset=2.0,
    ),
    Setting(
        name="log_level",
        flag="--log-level",
        env="LOGFIRE_LOG_LEVEL",
        kind=LOG_LEVEL,
        default="info",
        accepted="debug, info, warning, error, critical, a number, or off",
        help="the app's `logging` records at or above this level are captured with their span "
        "(to the store, and over OTLP as logs); off captures none (see docs/logs.md)",
        applies="logs",
        unset=20,
    ),
    Setting(
        name="green",
        flag="--green",
        env="LOGFIRE_GREEN",
        kind=GREEN,
        default="auto",
        accepted="auto, gevent, eventlet, off",
        help="gevent or eventlet: the SDK and the agent's threads wait until the process has "
        "monkey-patched (auto detects Celery -P, gunicorn -k and gevent.monkey or eventlet imports; "
        "off never waits; see docs/configuration.md)",
        unset="auto",
    ),
    Setting(
        name="debug",
        flag="--debug",
        env="LOGFIRE_DEBUG",
        kind=BOOL,
        default="off",
        accepted="1/true/on or 0/false/off",
        help="explain on stderr what the agent does in each process",
        switch=True,
        unset=False,
    ),
    Setting(
        name="inherit",
        flag="--no-inherit",
        env="LOGFIRE_RUN_INHERIT",
        kind=BOOL,
        default="on",
        accepted="1/true/on or 0/false/off",
        help="with 0, child processes started by the app run without the agent",
        switch=True,
        switch_value="0",
        unset=True,
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
SETTINGS_BY_FLAG: dict[str, Setting] = {setting.flag: setting for setting in SETTINGS}


def lookup(setting: Setting, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The raw value of a setting and the variable it came from, or None when none is set."""
    for variable in (setting.env, *setting.fallbacks):
        raw = environ.get(variable)
        if raw is not None and raw.strip() != "":
            return raw, variable
    return None
