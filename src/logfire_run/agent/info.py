"""`logfire-run --info`: the resolved configuration, where each value came from, and the instrumentors.

Runs in the launcher, never inside the app, so it may take its time: it rescans the entry points
instead of trusting the cache.
"""

from __future__ import annotations

import os
import sys

from logfire_run.agent.config import Config
from logfire_run.agent.settings import SETTINGS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from logfire_run.instrumentors.loader import Instrumentor


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return ",".join(value) or "-"
    return str(value)


def print_info(config: Config, flag_settings: dict[str, str]) -> int:
    from logfire_run import __version__
    from logfire_run.instrumentors import loader

    out = sys.stdout
    out.write(f"logfire-run {__version__} on Python {sys.version.split()[0]} ({sys.executable})\n\n")
    out.write("configuration:\n")
    resolved = {
        "service_name": config.resolved_service_name() if config.service_name else None,
        "exporters": config.resolved_exporters(),
        "store_path": config.resolved_store_path(),
    }
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        source = config.sources.get(setting.name, "default")
        if setting.env in flag_settings:
            source = f"flag {setting.flag}"
        shown = _show(resolved.get(setting.name, value)) if value in (None, ()) else _show(value)
        if setting.name == "distributed_tracing" and value is None:
            shown = "warn"
        if setting.name == "service_name" and not config.service_name:
            shown = "(the script or module name of each process)"
        out.write(f"  {setting.name:<27} {shown:<40} {source}\n")
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        out.write("  OTEL_SDK_DISABLED=true: the agent does nothing\n")
    out.write("\ninstrumentors (entry points; each loads when your code first imports its target):\n")
    instrumentors = loader.discover(use_cache=False)
    disabled_by = _disabled_source(config, flag_settings)
    enabled = {item.value for item in instrumentors if not config.instrumentation_disabled(item.name)}
    for instrumentor in sorted(instrumentors, key=lambda item: item.name):
        state, detail = _state(instrumentor, config, disabled_by, enabled)
        out.write(f"  {instrumentor.name:<16} {state:<9} {detail}\n")
    if not instrumentors:
        out.write("  none found: pip install 'logfire-run[http,celery]'\n")
    missing = libraries_without_instrumentor({_normalize(item.dist) for item in instrumentors})
    if missing:
        out.write("\ninstalled libraries without an instrumentor:\n")
        for library, version, package in missing:
            out.write(f"  {library + ' ' + version:<28} pip install '{package}'\n")
    return 0


def _disabled_source(config: Config, flag_settings: dict[str, str]) -> str:
    if "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS" in flag_settings:
        return "--disable"
    source = config.sources.get("disabled_instrumentations", "")
    return source.removeprefix("env ") or "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"


def _state(
    instrumentor: Instrumentor, config: Config, disabled_by: str, enabled: set[str]
) -> tuple[str, str]:
    """(state, why) of one instrumentor: enabled, disabled (by which setting), replaced or skipped."""
    from importlib.util import find_spec

    from logfire_run.instrumentors import loader

    origin = f"({instrumentor.dist} {instrumentor.version})"
    if config.instrumentation_disabled(instrumentor.name):
        how = "'*'" if "*" in config.disabled_instrumentations else "its name"
        return "disabled", f"by {disabled_by} ({how})  {origin}"
    replacement = loader.SUPERSEDED_BY.get(instrumentor.value)
    if replacement in enabled:
        # One of ours does the same and more; both would wrap the same functions.
        return "replaced", f"by {replacement.partition(':')[0]}  {origin}"
    try:
        conflict = loader.version_conflict(instrumentor)
    except Exception as error:
        conflict = f"its requirements could not be checked ({error})"
    if conflict:
        return "skipped", f"{conflict}  {origin}"
    targets = []
    for module in instrumentor.modules:
        try:
            installed = find_spec(module) is not None
        except (ImportError, ValueError):
            installed = False
        targets.append(module if installed else f"{module} (not installed)")
    return "enabled", f"on import of {', '.join(targets)}  {origin}"


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


#: Libraries OpenTelemetry's list names only beside another one (pydantic for tortoise-orm): having them
#: installed says nothing about needing that instrumentation.
_COMPANIONS = frozenset({"pydantic"})


def libraries_without_instrumentor(installed_instrumentors: set[str]) -> list[tuple[str, str, str]]:
    """(library, installed version, instrumentation requirement) for each installed library that
    OpenTelemetry has an instrumentation for, when that instrumentation is not installed.

    The list of known libraries is the one `opentelemetry-bootstrap` uses (its version pins match the
    installed opentelemetry-instrumentation). An instrumentation installed without an entry point of
    its own (the ASGI and WSGI middlewares, which the framework instrumentors use) counts as installed.
    """
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        from opentelemetry.instrumentation.bootstrap_gen import libraries
    except ImportError:
        return []
    missing: dict[str, tuple[str, str, str]] = {}
    for entry in libraries:
        try:
            library = Requirement(entry["library"])
            instrumentation = Requirement(entry["instrumentation"])
        except (InvalidRequirement, KeyError, TypeError):
            continue
        if _normalize(instrumentation.name) in installed_instrumentors or library.name in _COMPANIONS:
            continue
        try:
            metadata.version(instrumentation.name)
            continue
        except metadata.PackageNotFoundError:
            pass
        try:
            version = metadata.version(library.name)
        except metadata.PackageNotFoundError:
            continue
        if library.specifier and not library.specifier.contains(version, prereleases=True):
            continue
        missing.setdefault(str(instrumentation), (library.name, version, str(instrumentation)))
    return sorted(missing.values())
