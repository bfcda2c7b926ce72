"""The agent's configuration object: resolved from the environment, updated by `configure()`.

Precedence: `configure()` in code > flags (which the launcher turned into env vars) and env vars >
the OpenTelemetry spellings (`OTEL_SERVICE_NAME`, `OTEL_TRACES_EXPORTER`, ...) > defaults.
Resolution is a handful of dictionary lookups: it runs in every process the agent starts in.
Which object is *the* configuration of a process is `state`'s business; this module only builds one.
"""

from __future__ import annotations

import os

from logfire_run.agent.errors import ConfigError
from logfire_run.agent.settings import SETTINGS, SETTINGS_BY_NAME, lookup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from logfire_run.agent.settings import DistributedTracing, Setting


class Config:
    """Resolved settings, one attribute per row of the settings table; `sources` says where each
    value came from (for `--info`): "default", "env VARIABLE" or "configure()"."""

    # The typed view of the table (`settings.SETTINGS`); a test checks that the two agree.
    service_name: str | None
    distributed_tracing: DistributedTracing
    celery_third_party: bool
    rq_third_party: bool
    env_context: bool
    broker_spans: bool
    exporters: tuple[str, ...]
    otlp_protocol: str | None
    disabled_instrumentations: tuple[str, ...]
    store_path: str | None
    store_max_spans: int
    store_max_days: float
    exit_budget: float
    log_level: int | None
    green: str
    debug: bool
    inherit: bool

    def __init__(self) -> None:
        for setting in SETTINGS:
            setattr(self, setting.name, setting.unset)
        self.sources: dict[str, str] = {}

    def effective(self, name: str, environ: Mapping[str, str] | None = None) -> object:
        """The value in effect: the setting's resolver applied to its value (see `Setting.resolve`)."""
        setting = SETTINGS_BY_NAME[name]
        value = getattr(self, name)
        if setting.resolve is None:
            return value
        return setting.resolve(value, os.environ if environ is None else environ)

    def resolved_service_name(self) -> str:
        return str(self.effective("service_name"))

    def resolved_exporters(self) -> tuple[str, ...]:
        exporters = self.effective("exporters")
        return exporters if isinstance(exporters, tuple) else ()

    def resolved_otlp_protocol(self) -> str:
        return self.otlp_protocol or "http/protobuf"

    def resolved_store_path(self) -> str:
        return str(self.effective("store_path"))

    def instrumentation_disabled(self, name: str) -> bool:
        return "*" in self.disabled_instrumentations or name in self.disabled_instrumentations


def resolve(environ: Mapping[str, str]) -> tuple[Config, list[ConfigError]]:
    """Read every setting from `environ`; invalid values are returned as errors and left at the default."""
    config = Config()
    errors: list[ConfigError] = []
    for setting in SETTINGS:
        found = lookup(setting, environ)
        if found is None:
            config.sources[setting.name] = "default"
            continue
        raw, variable = found
        kind = setting.kind if variable == setting.env else (setting.fallback_kind or setting.kind)
        try:
            value = kind.parse(raw)
        except ConfigError as error:
            errors.append(ConfigError(f"{variable}: {error}", variable=variable, usable_raw=error.usable_raw))
            if error.usable is None:
                config.sources[setting.name] = f"default ({variable} is invalid)"
                continue
            value = error.usable
            config.sources[setting.name] = f"env {variable} (without what is not accepted)"
        else:
            config.sources[setting.name] = f"env {variable}"
        setattr(config, setting.name, value)
    errors.extend(_opentelemetry_errors(environ))
    return config, errors


#: The OTLP variables of the traces signal (its own and the general spelling of each option).
_OTLP_TRACES_VARIABLES = tuple(
    f"OTEL_EXPORTER_OTLP_{part}{option}"
    for option in (
        "ENDPOINT",
        "HEADERS",
        "COMPRESSION",
        "TIMEOUT",
        "CERTIFICATE",
        "CLIENT_KEY",
        "CLIENT_CERTIFICATE",
        "INSECURE",
    )
    for part in ("TRACES_", "")
)


def _opentelemetry_errors(environ: Mapping[str, str]) -> list[ConfigError]:
    """OpenTelemetry's own variables that the agent reads, checked (a few lookups when none is set)."""
    from logfire_run.agent import otel_env

    errors = otel_env.validate(environ)
    if any(name in environ for name in _OTLP_TRACES_VARIABLES):
        from logfire_run.agent import destination

        # The protocol is a setting (its errors are reported above): resolve the rest with it.
        protocol = SETTINGS_BY_NAME["otlp_protocol"]
        found = lookup(protocol, environ)
        try:
            value = protocol.parse(found[0]) if found else None
        except ConfigError:
            value = None
        _, otlp_errors = destination.resolve(
            "traces", environ, (str(value or destination.DEFAULT_PROTOCOL), "")
        )
        errors.extend(otlp_errors)
    for signal in ("metrics", "logs"):
        # Their own variables; the general ones are the traces' (checked above).
        prefix = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
        if any(name.startswith(prefix) for name in environ):
            from logfire_run.agent import destination

            _, signal_errors = destination.resolve(signal, environ)
            errors.extend(error for error in signal_errors if (error.variable or "").startswith(prefix))
    return errors


def update(
    config: Config, overrides: Mapping[str, object], source: str
) -> tuple[list[Setting], list[ConfigError]]:
    """Apply `configure()` keywords; strings are parsed like env values. Returns (applied, errors)."""
    applied: list[Setting] = []
    errors: list[ConfigError] = []
    for name, value in overrides.items():
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            accepted = ", ".join(sorted(SETTINGS_BY_NAME))
            errors.append(ConfigError(f"configure() got an unknown setting {name!r}; accepted: {accepted}"))
            continue
        try:
            parsed = setting.kind.coerce(value)
        except ConfigError as error:
            errors.append(ConfigError(f"configure({name}=...): {error}"))
            continue
        setattr(config, name, parsed)
        config.sources[name] = source
        applied.append(setting)
    return applied, errors
