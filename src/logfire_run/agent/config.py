"""The agent's one configuration object, resolved from the environment once and updated by `configure()`.

Precedence: `configure()` in code > flags (which the launcher turned into env vars) and env vars >
the OpenTelemetry spellings (`OTEL_SERVICE_NAME`, `OTEL_TRACES_EXPORTER`, ...) > defaults.
Resolution is a handful of dictionary lookups: it runs in every process the agent starts in.
"""

from __future__ import annotations

import os
import sys

from logfire_run.agent.errors import ConfigError
from logfire_run.agent.settings import SETTINGS, SETTINGS_BY_NAME, lookup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from logfire_run.agent.settings import DistributedTracing

_OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Config:
    """Resolved settings; `sources` says where each value came from (for `--info`)."""

    def __init__(self) -> None:
        self.service_name: str | None = None
        self.distributed_tracing: DistributedTracing = None
        self.celery_third_party = False
        self.exporters: tuple[str, ...] = ()
        self.disabled_instrumentations: tuple[str, ...] = ()
        self.store_path: str | None = None
        self.debug = False
        self.inherit = True
        self.sources: dict[str, str] = {}

    def as_dict(self) -> dict[str, object]:
        return {setting.name: getattr(self, setting.name) for setting in SETTINGS}

    def resolved_service_name(self) -> str:
        """service.name: the setting, else `service.name` in OTEL_RESOURCE_ATTRIBUTES, else the program."""
        if self.service_name:
            return self.service_name
        from_resource = _service_name_from_resource_attributes(os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        return from_resource or default_service_name()

    def resolved_exporters(self) -> tuple[str, ...]:
        if self.exporters:
            return self.exporters
        if any(os.environ.get(name) for name in _OTLP_ENDPOINT_VARS):
            return ("otlp",)
        return ("store",)

    def resolved_store_path(self) -> str:
        if self.store_path:
            return os.path.expanduser(self.store_path)
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.join(base, "logfire-run", "traces.db")

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
        try:
            value = setting.parse(raw)
        except ConfigError as error:
            errors.append(ConfigError(f"{variable}: {error}"))
            config.sources[setting.name] = f"default ({variable} is invalid)"
            continue
        if variable == "OTEL_TRACES_EXPORTER":
            # OpenTelemetry's variable also names exporters the agent does not have (zipkin, ...).
            value = tuple(name for name in _as_tuple(value) if name in ("otlp", "console", "none"))
        setattr(config, setting.name, value)
        config.sources[setting.name] = f"env {variable}"
    return config, errors


def update(config: Config, overrides: Mapping[str, Any], source: str) -> tuple[set[str], list[ConfigError]]:
    """Apply `configure()` keywords; strings are parsed like env values. Returns (applied, errors)."""
    applied: set[str] = set()
    errors: list[ConfigError] = []
    for name, value in overrides.items():
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            accepted = ", ".join(sorted(SETTINGS_BY_NAME))
            errors.append(ConfigError(f"configure() got an unknown setting {name!r}; accepted: {accepted}"))
            continue
        try:
            parsed = _coerce(name, value, setting.parse)
        except ConfigError as error:
            errors.append(ConfigError(f"configure({name}=...): {error}"))
            continue
        setattr(config, name, parsed)
        config.sources[name] = source
        applied.add(name)
    return applied, errors


def _coerce(name: str, value: Any, parse: Any) -> Any:
    if name == "distributed_tracing":
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse(value)
        raise ConfigError(f"expected None, True, False or 'link', got {value!r}")
    if name in ("exporters", "disabled_instrumentations") and isinstance(value, (list, tuple)):
        return parse(",".join(str(item) for item in value))
    if isinstance(value, bool) and name in ("debug", "inherit", "celery_third_party"):
        return value
    if isinstance(value, str) or value is None:
        return parse(value or "")
    raise ConfigError(f"expected a string, got {value!r}")


def _as_tuple(value: object) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else ()


def _service_name_from_resource_attributes(raw: str) -> str | None:
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == "service.name" and value.strip():
            return value.strip()
    return None


def default_service_name() -> str:
    """The program as a person would name it: the script's stem, the `-m` module, or the executable.

    `sys.argv[0]` first: runpy sets it to the module's path for `-m`, and multiprocessing's spawn and
    forkserver children take their parent's argv, so pool workers share their parent's name.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and argv0 not in ("-c", "-m"):
        return _stem(argv0) or "python"
    argv: list[str] = list(getattr(sys, "orig_argv", None) or sys.argv)
    args = argv[1:]
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-m" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:]
        if arg == "-c":
            break
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            index += 2
            continue
        if arg.startswith("-"):
            index += 1
            continue
        return _stem(arg)
    return _stem(argv[0]) if argv else "python"


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip(os.sep))
    if name in ("__main__.py", "__init__.py"):
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return name[:-3] if name.endswith(".py") else name
