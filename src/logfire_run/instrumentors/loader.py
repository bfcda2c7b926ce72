"""Discovery of instrumentors through entry points, cached, and their lazy activation on first import.

Discovery reads the `opentelemetry_instrumentor` entry-point group (what OpenTelemetry's packages
register) and this project's `logfire_run_instrumentor` group, and works out which module each one
instruments from its distribution's `instruments` extras. That scan reads every installed
distribution's metadata, tens of milliseconds, so its result is kept in a cache file keyed by the
interpreter and `sys.path`, and checked against the modification times of the `sys.path` directories:
installing or removing a distribution changes its directory, which invalidates the cache. A warm start
is one `marshal.load` and a stat per `sys.path` entry.

Activation registers one post-import hook per target module. When the app first imports it, the hook
sets the SDK up, checks the installed version against the instrumentor's requirements, and calls
`instrument()`. An instrumentor that fails is reported once and the others still run.

Stdlib only at import time: the bootstrap imports this module in every process.
"""

from __future__ import annotations

import marshal
import os
import sys

from logfire_run.agent import importhooks, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from logfire_run.agent.config import Config

GROUPS = ("opentelemetry_instrumentor", "logfire_run_instrumentor")
_CACHE_FORMAT = 1

#: Our own instrumentors say here what they instrument; OpenTelemetry's say it in their metadata.
OWN_TARGETS: dict[str, tuple[str, ...]] = {
    "logfire_run.instrumentors.executors": ("threading", "concurrent.futures"),
    "logfire_run.instrumentors.celery": ("celery",),
}

#: Keyword arguments given to `instrument()`, by entry-point name. The ASGI middleware's per-message
#: `http send` / `http receive` spans are left out: a request is one server span, as under WSGI, and a
#: trace across services reads client -> server -> client -> server (docs/http.md).
INSTRUMENT_OPTIONS: dict[str, dict[str, object]] = {
    "fastapi": {"exclude_spans": ["receive", "send"]},
}

#: OpenTelemetry instrumentors that one of ours replaces: not loaded while ours is enabled.
SUPERSEDED_BY: dict[str, str] = {
    # The executors instrumentor propagates into threads and thread pools too; both would wrap twice.
    "opentelemetry.instrumentation.threading:ThreadingInstrumentor": (
        "logfire_run.instrumentors.executors:ExecutorInstrumentor"
    ),
}


class Instrumentor:
    """What the cache knows about one entry point, without importing it."""

    __slots__ = ("dist", "group", "modules", "name", "requires", "requires_any", "value", "version")

    def __init__(
        self,
        name: str,
        group: str,
        value: str,
        dist: str,
        version: str,
        modules: tuple[str, ...],
        requires: tuple[str, ...],
        requires_any: tuple[str, ...],
    ) -> None:
        self.name = name
        self.group = group
        self.value = value
        self.dist = dist
        self.version = version
        self.modules = modules
        self.requires = requires
        self.requires_any = requires_any

    def as_tuple(self) -> tuple[object, ...]:
        return (
            self.name,
            self.group,
            self.value,
            self.dist,
            self.version,
            self.modules,
            self.requires,
            self.requires_any,
        )


# Discovery and its cache


def _fingerprint() -> tuple[tuple[str, int], ...]:
    stamps = []
    for entry in sys.path:
        try:
            stamps.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamps.append((entry, -1))
    return tuple(stamps)


def cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = _fnv1a(repr((sys.executable, sys.version, sys.path)))
    return os.path.join(base, "logfire-run", f"instrumentors-{key:08x}.marshal")


def _fnv1a(text: str) -> int:
    # A stable 32-bit hash without zlib or hashlib: loading either costs more than hashing this string.
    value = 0x811C9DC5
    for char in text:
        value = ((value ^ ord(char)) * 0x01000193) & 0xFFFFFFFF
    return value


def discover(*, use_cache: bool = True) -> list[Instrumentor]:
    """Every instrumentor installed for this interpreter, from the cache when it is still valid."""
    fingerprint = _fingerprint()
    path = cache_path()
    if use_cache:
        try:
            with open(path, "rb") as file:
                cached = marshal.load(file)
            if cached[0] == _CACHE_FORMAT and cached[1] == fingerprint:
                return [Instrumentor(*row) for row in cached[2]]
        except (OSError, EOFError, ValueError, TypeError, IndexError):
            pass
    found = scan()
    _write_cache(path, fingerprint, found)
    return found


def _write_cache(path: str, fingerprint: tuple[tuple[str, int], ...], found: list[Instrumentor]) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "wb") as file:
            marshal.dump((_CACHE_FORMAT, fingerprint, [row.as_tuple() for row in found]), file)
        os.replace(temporary, path)
    except OSError as error:
        # A read-only home directory costs a rescan per process, nothing more.
        report.debug(f"could not write the instrumentor cache {path}: {error}")


def scan() -> list[Instrumentor]:
    """Read the entry points and distribution metadata (slow: tens of milliseconds)."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    module_names = _top_level_modules(metadata)
    found: list[Instrumentor] = []
    seen_values: set[str] = set()
    for group in GROUPS:
        for entry_point in metadata.entry_points(group=group):
            if entry_point.value in seen_values:
                continue
            seen_values.add(entry_point.value)
            dist = getattr(entry_point, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ""
            version = dist.version if dist is not None else ""
            requires: list[str] = []
            requires_any: list[str] = []
            for line in (dist.requires if dist is not None else None) or ():
                try:
                    requirement = Requirement(line)
                except InvalidRequirement:
                    continue
                marker = str(requirement.marker or "")
                if "instruments-any" in marker:
                    requires_any.append(_without_marker(requirement))
                elif "'instruments'" in marker or '"instruments"' in marker:
                    requires.append(_without_marker(requirement))
            module = entry_point.value.partition(":")[0]
            modules = OWN_TARGETS.get(module) or _targets(
                entry_point.name, requires + requires_any, module_names, Requirement
            )
            found.append(
                Instrumentor(
                    entry_point.name,
                    group,
                    entry_point.value,
                    dist_name,
                    version,
                    modules,
                    tuple(requires),
                    tuple(requires_any),
                )
            )
    return found


def _without_marker(requirement: object) -> str:
    text = str(requirement)
    return text.partition(";")[0].strip()


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _top_level_modules(metadata: ModuleType) -> dict[str, list[str]]:
    """Normalized distribution name -> the top-level modules it installs."""
    by_dist: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(_normalize(dist), []).append(module)
    return by_dist


def _targets(
    entry_name: str, requirements: list[str], module_names: dict[str, list[str]], requirement_type: type
) -> tuple[str, ...]:
    names = [_normalize(requirement_type(text).name) for text in requirements]
    # One distribution may carry several entry points (httpx and httpx2): each instruments its own.
    if _normalize(entry_name) in names:
        names = [_normalize(entry_name)]
    modules: list[str] = []
    for name in names:
        installed = module_names.get(name)
        modules.extend(sorted(installed) if installed else [name.replace("-", "_")])
    if not modules:
        modules.append(entry_name)  # stdlib targets such as threading declare no requirement
    return tuple(dict.fromkeys(modules))


# Activation


def register_hooks(config: Config) -> list[Instrumentor]:
    """Register a post-import hook for each enabled instrumentor; return the ones registered."""
    registered: list[Instrumentor] = []
    found = discover()
    enabled = {item.value for item in found if not config.instrumentation_disabled(item.name)}
    for instrumentor in found:
        if config.instrumentation_disabled(instrumentor.name):
            report.debug(f"instrumentor {instrumentor.name} is disabled")
            continue
        if SUPERSEDED_BY.get(instrumentor.value) in enabled:
            report.debug(
                f"instrumentor {instrumentor.name} is superseded by {SUPERSEDED_BY[instrumentor.value]}"
            )
            continue
        for module_name in instrumentor.modules:
            importhooks.register(module_name, _hook_for(instrumentor))
        registered.append(instrumentor)
    return registered


def _hook_for(instrumentor: Instrumentor) -> importhooks.Hook:
    def activate(module: ModuleType) -> None:
        from logfire_run.agent import bootstrap

        # A standard-library target (threading, concurrent.futures) is often imported half-way through
        # another stdlib import that the SDK itself needs, and it needs no import-time class swap: it
        # waits until the SDK is up. So does a target imported while the SDK is being set up, or by
        # OpenTelemetry's own code (the OTLP exporter imports requests): an app that imports the exporter
        # to build its own TracerProvider must still be able to install it.
        stdlib = module.__name__.partition(".")[0] in getattr(sys, "stdlib_module_names", ())
        by_opentelemetry = importhooks.importer().startswith("opentelemetry")
        if not bootstrap.sdk_ready() and (stdlib or by_opentelemetry or bootstrap.sdk_starting()):
            bootstrap.defer(lambda: activate_now(instrumentor))
            return
        activate_now(instrumentor)

    activate.__name__ = f"activate_{instrumentor.name}"
    return activate


_activated: set[str] = set()


def activate_now(instrumentor: Instrumentor) -> bool:
    """Set the SDK up and run one instrumentor; a failure is reported once and returns False."""
    from logfire_run.agent import bootstrap

    if instrumentor.value in _activated:
        return True
    _activated.add(instrumentor.value)
    try:
        if not bootstrap.ensure_sdk():
            if bootstrap.sdk_may_start():
                _activated.discard(instrumentor.value)
                bootstrap.defer(lambda: activate_now(instrumentor))
            return False
        conflict = version_conflict(instrumentor)
        if conflict:
            report.debug(f"instrumentor {instrumentor.name} skipped: {conflict}")
            return False
        target = _load(instrumentor.value)
        instance = target()
        instance.instrument(skip_dep_check=True, **INSTRUMENT_OPTIONS.get(instrumentor.name, {}))
        report.debug(f"instrumented {', '.join(instrumentor.modules)} with {instrumentor.name}")
        return True
    except Exception as error:
        report.problem(
            f"instrumentor:{instrumentor.name}",
            f"instrumentor {instrumentor.name} ({instrumentor.value}) failed: "
            f"{type(error).__name__}: {error}; the app runs on without it",
        )
        return False


def version_conflict(instrumentor: Instrumentor) -> str | None:
    """Why the installed library does not fit the instrumentor's requirements, or None when it does."""
    if not instrumentor.requires and not instrumentor.requires_any:
        return None
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    conflict = get_dependency_conflicts(list(instrumentor.requires), list(instrumentor.requires_any) or None)
    if conflict is None:
        return None
    required = conflict.required or " or ".join(str(item) for item in conflict.required_any or ())
    found = conflict.found or ", ".join(str(item) for item in conflict.found_any or ())
    return f"it supports {required}, installed: {found or 'none'}"


def _load(value: str) -> type:
    import importlib

    module_name, _, qualname = value.partition(":")
    target: object = importlib.import_module(module_name)
    for part in qualname.split(".") if qualname else ():
        target = getattr(target, part)
    if not isinstance(target, type):
        raise TypeError(f"{value} is not a class")
    return target
