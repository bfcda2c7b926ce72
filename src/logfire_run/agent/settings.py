"""The one table of settings: launcher flag, environment variable, default and accepted values.

The launcher turns flags into environment variables through this table, the agent reads the same
variables back through it, and `--help`, `--info` and the README's configuration table are written
from it. Nothing here imports OpenTelemetry: the launcher and the bootstrap both load this module.
"""

from __future__ import annotations

from logfire_run.agent.errors import ConfigError

# The bootstrap runs this module in every process: no typing, dataclasses or collections.abc at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    #: What `distributed_tracing` may hold: None (warn), True, False or "link".
    DistributedTracing = bool | None | str

_TRUE = ("1", "true", "t", "yes", "on")
_FALSE = ("0", "false", "f", "no", "off")

EXPORTER_NAMES = ("store", "otlp", "console", "none")


def parse_distributed_tracing(raw: str) -> DistributedTracing:
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


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE or value == "":
        return False
    raise ConfigError(f"invalid boolean {raw!r}: use one of {', '.join(_TRUE + _FALSE)}")


def parse_name_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_exporters(raw: str) -> tuple[str, ...]:
    names = tuple(name.lower() for name in parse_name_list(raw))
    unknown = [name for name in names if name not in EXPORTER_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown exporter {', '.join(map(repr, unknown))}: use a comma-separated list of "
            f"{', '.join(EXPORTER_NAMES)}"
        )
    if "none" in names and len(names) > 1:
        raise ConfigError("exporter 'none' cannot be combined with other exporters")
    return names


def parse_text(raw: str) -> str:
    return raw.strip()


class Setting:
    """One configuration value, spelled three ways: `configure()` keyword, flag and env var."""

    __slots__ = (
        "accepted",
        "default",
        "env",
        "fallbacks",
        "flag",
        "help",
        "name",
        "parse",
        "switch",
        "switch_value",
    )

    def __init__(
        self,
        *,
        name: str,
        flag: str,
        env: str,
        parse: Callable[[str], object],
        default: str,
        accepted: str,
        help: str,
        switch: bool = False,
        switch_value: str = "1",
        fallbacks: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.flag = flag
        self.env = env
        self.parse = parse
        self.default = default
        self.accepted = accepted
        self.help = help
        #: Takes no argument on the command line; the flag sets the env var to `switch_value`.
        self.switch = switch
        self.switch_value = switch_value
        #: Other variables read, in order, when `env` is unset (OpenTelemetry's own spellings).
        self.fallbacks = fallbacks


SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="service_name",
        flag="--service-name",
        env="LOGFIRE_SERVICE_NAME",
        parse=parse_text,
        default="the script or module name",
        accepted="any text",
        help="service.name of every span; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read too",
        fallbacks=("OTEL_SERVICE_NAME",),
    ),
    Setting(
        name="distributed_tracing",
        flag="--distributed-tracing",
        env="LOGFIRE_DISTRIBUTED_TRACING",
        parse=parse_distributed_tracing,
        default="warn",
        accepted="warn, true, false, link",
        help="whether inbound trace context from third parties is accepted (see docs/distributed-tracing.md)",
    ),
    Setting(
        name="celery_third_party",
        flag="--celery-third-party",
        env="LOGFIRE_CELERY_THIRD_PARTY",
        parse=parse_bool,
        default="off",
        accepted="1/true/on or 0/false/off",
        help="trace context in Celery task messages obeys distributed_tracing like inbound HTTP "
        "(for brokers shared with untrusted producers; see docs/celery.md)",
        switch=True,
    ),
    Setting(
        name="exporters",
        flag="--exporter",
        env="LOGFIRE_EXPORTER",
        parse=parse_exporters,
        default="store; otlp when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set",
        accepted="comma list of store, otlp, console, none",
        help="where spans go; OTEL_TRACES_EXPORTER is read when this is unset",
        fallbacks=("OTEL_TRACES_EXPORTER",),
    ),
    Setting(
        name="disabled_instrumentations",
        flag="--disable",
        env="OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        parse=parse_name_list,
        default="none disabled",
        accepted="comma list of entry-point names, or *",
        help="instrumentors not to load (names as in `logfire-run --info`)",
    ),
    Setting(
        name="store_path",
        flag="--store",
        env="LOGFIRE_STORE",
        parse=parse_text,
        default="$XDG_DATA_HOME/logfire-run/traces.db",
        accepted="a file path",
        help="the SQLite trace store used by the store exporter and the viewer",
    ),
    Setting(
        name="debug",
        flag="--debug",
        env="LOGFIRE_DEBUG",
        parse=parse_bool,
        default="off",
        accepted="1/true/on or 0/false/off",
        help="explain on stderr what the agent does in each process",
        switch=True,
    ),
    Setting(
        name="inherit",
        flag="--no-inherit",
        env="LOGFIRE_RUN_INHERIT",
        parse=parse_bool,
        default="on",
        accepted="1/true/on or 0/false/off",
        help="with 0, child processes started by the app run without the agent",
        switch=True,
        switch_value="0",
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
