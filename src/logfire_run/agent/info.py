"""`logfire-run --info`: the resolved configuration, where each value came from, and the instrumentors.

Runs in the launcher, never inside the app, so it may take its time: it rescans the entry points
instead of trusting the cache.
"""

from __future__ import annotations

import os
import sys

from logfire_run.agent.config import Config
from logfire_run.agent.settings import SETTINGS
from logfire_run.instrumentors.loader import GROUPS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from logfire_run.instrumentors.loader import EntryPointRecord


def print_info(config: Config, flag_settings: dict[str, str]) -> int:
    from logfire_run import __version__
    from logfire_run.instrumentors import loader

    out = sys.stdout
    out.write(f"logfire-run {__version__} on Python {sys.version.split()[0]} ({sys.executable})\n\n")
    out.write("configuration:\n")
    for setting in SETTINGS:
        source = config.sources.get(setting.name, "default")
        if setting.env in flag_settings:
            source = f"flag {setting.flag}"
        if setting.per_process and getattr(config, setting.name) == setting.unset:
            shown = f"({setting.default} of each process)"
        else:
            shown = setting.kind.show(config.effective(setting.name))
        out.write(f"  {setting.name:<27} {shown:<40} {source}\n")
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        out.write("  OTEL_SDK_DISABLED=true: the agent does nothing\n")
    out.write("\ninstrumentors (entry points; each loads when your code first imports its target):\n")
    instrumentors = loader.discover(use_cache=False)
    disabled_by = _disabled_source(config, flag_settings)
    replaced = loader.superseded(instrumentors, config)
    for instrumentor in sorted(instrumentors, key=lambda item: (item.name, item.group != GROUPS[1])):
        state, detail = _state(instrumentor, config, disabled_by, replaced)
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
    instrumentor: EntryPointRecord, config: Config, disabled_by: str, replaced: dict[str, str]
) -> tuple[str, str]:
    """(state, why) of one instrumentor: enabled, disabled (by which setting), replaced or skipped."""
    from importlib.util import find_spec

    from logfire_run.instrumentors import loader

    origin = f"({instrumentor.dist} {instrumentor.version})"
    if config.instrumentation_disabled(instrumentor.name):
        how = "'*'" if "*" in config.disabled_instrumentations else "its name"
        return "disabled", f"by {disabled_by} ({how})  {origin}"
    replacement = replaced.get(instrumentor.value)
    if replacement is not None:
        # One of ours does the same and more (or corrects it and runs it): both would patch the same.
        return "replaced", f"by logfire-run's {replacement}  {origin}"
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
