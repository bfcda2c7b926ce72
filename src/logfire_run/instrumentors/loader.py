"""Discovery of instrumentors through entry points, cached, and their lazy activation on first import.

Discovery reads the `opentelemetry_instrumentor` entry-point group (what OpenTelemetry's packages
register) and this project's `logfire_run_instrumentor` group. What an OpenTelemetry instrumentor
instruments comes from its distribution's `instruments` extras; what one of this project's does
comes from the declarations next to its class (`targets`, `supported`, `options`, `supersedes`; see
`instrumentors._base`), read from its source file without importing it. That scan reads every
installed distribution's metadata, tens of milliseconds, so its result is kept in a cache file
keyed by the interpreter and `sys.path`, and checked against the modification times of the
`sys.path` directories: installing or removing a distribution changes its directory, which
invalidates the cache. A warm start is one `marshal.loads`, a stat of the cache folder and one per
`sys.path` entry.

Activation registers one post-import hook per target module. When the app first imports it, the
hook asks the process state to run the instrumentor once the SDK is up (`state.when_sdk_ready`),
which checks the installed version against the instrumentor's requirements and calls
`instrument()`. An instrumentor that fails is reported once and the others still run.

Stdlib only at import time: the bootstrap imports this module in every process.
"""

from __future__ import annotations

import marshal
import os
import sys

from logfire_run.agent import importhooks, report
from logfire_run.agent.process import state
from logfire_run.files import cache_dir, read_private_file, write_private_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    from logfire_run.agent.config import Config

GROUPS = ("opentelemetry_instrumentor", "logfire_run_instrumentor")
_CACHE_FORMAT = 4
#: Entry points whose value starts with this are this project's: their declarations are read.
_OWN_PREFIX = "logfire_run."
#: What this project's instrumentors declare, next to their class (see instrumentors._base).
DECLARATIONS = ("targets", "supported", "options", "supersedes")


class EntryPointRecord:
    """What the cache knows about one instrumentor's entry point, without importing it."""

    __slots__ = (
        "dist",
        "group",
        "modules",
        "name",
        "options",
        "requires",
        "requires_any",
        "supersedes",
        "value",
        "version",
    )

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
        options: dict[str, object],
        supersedes: tuple[str, ...],
    ) -> None:
        self.name = name
        self.group = group
        self.value = value
        self.dist = dist
        self.version = version
        #: The modules whose first import activates it.
        self.modules = modules
        self.requires = requires
        self.requires_any = requires_any
        #: Keyword arguments for its `instrument()`.
        self.options = options
        #: Entry-point values of the instrumentors it replaces while enabled.
        self.supersedes = supersedes

    def as_tuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)


_FIELDS = (
    "name",
    "group",
    "value",
    "dist",
    "version",
    "modules",
    "requires",
    "requires_any",
    "options",
    "supersedes",
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
    key = _fnv1a(repr((sys.executable, sys.version, sys.path)))
    return os.path.join(cache_dir(), f"instrumentors-{key:08x}.marshal")


def _fnv1a(text: str) -> int:
    # A stable 32-bit hash without zlib or hashlib: loading either costs more than hashing this string.
    value = 0x811C9DC5
    for char in text:
        value = ((value ^ ord(char)) * 0x01000193) & 0xFFFFFFFF
    return value


def discover(*, use_cache: bool = True) -> list[EntryPointRecord]:
    """Every instrumentor installed for this interpreter, from the cache when it is still valid."""
    fingerprint = _fingerprint()
    path = cache_path()
    if use_cache:
        try:
            # Only from a folder of this user's that no one else can write to (`files`).
            cached = marshal.loads(read_private_file(path))
            if cached[0] == _CACHE_FORMAT and cached[1] == fingerprint:
                return [EntryPointRecord(*row) for row in cached[2]]
        except (OSError, EOFError, ValueError, TypeError, IndexError):
            pass
    found = scan()
    _write_cache(path, fingerprint, found)
    return found


def _write_cache(path: str, fingerprint: tuple[tuple[str, int], ...], found: list[EntryPointRecord]) -> None:
    try:
        # A fresh, unpredictable name in a private folder, renamed into place: never through a link.
        write_private_file(
            path, marshal.dumps((_CACHE_FORMAT, fingerprint, [row.as_tuple() for row in found]))
        )
    except OSError as error:
        # A read-only home directory costs a rescan per process, nothing more.
        report.debug(f"could not write the instrumentor cache {path}: {error}")


def scan() -> list[EntryPointRecord]:
    """Read the entry points and distribution metadata (slow: tens of milliseconds)."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    module_names = _top_level_modules(metadata)
    found: list[EntryPointRecord] = []
    seen_values: set[str] = set()
    for group in GROUPS:
        for entry_point in metadata.entry_points(group=group):
            if entry_point.value in seen_values:
                continue
            seen_values.add(entry_point.value)
            dist = getattr(entry_point, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ""
            version = dist.version if dist is not None else ""
            options: dict[str, object] = {}
            supersedes: tuple[str, ...] = ()
            modules: tuple[str, ...]
            requires: list[str] = []
            requires_any: list[str] = []
            if entry_point.value.startswith(_OWN_PREFIX):
                try:
                    declared = read_declarations(entry_point.value)
                except (OSError, SyntaxError, ValueError) as error:
                    report.problem(
                        f"declarations:{entry_point.value}",
                        f"instrumentor {entry_point.name} ({entry_point.value}) cannot be read ({error}); "
                        "the app runs on without it",
                    )
                    continue
                modules = declared["targets"]
                requires = list(declared["supported"])
                options = declared["options"]
                supersedes = declared["supersedes"]
            else:
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
                modules = _targets(entry_point.name, requires + requires_any, module_names, Requirement)
            found.append(
                EntryPointRecord(
                    entry_point.name,
                    group,
                    entry_point.value,
                    dist_name,
                    version,
                    modules,
                    tuple(requires),
                    tuple(requires_any),
                    options,
                    supersedes,
                )
            )
    return found


def read_declarations(value: str) -> dict[str, Any]:
    """The declarations of one of this project's instrumentors (`module:Class`), from its source.

    Read with `ast`, not by importing the module: its import would load OpenTelemetry's
    instrumentation package. Each declaration must be a literal; a missing one is its base class's
    default (empty). Raises ValueError when the class is not found or a value is not a literal.
    """
    import ast
    from importlib.util import find_spec

    module_name, _, class_name = value.partition(":")
    spec = find_spec(module_name)
    if spec is None or not spec.origin:
        raise ValueError(f"{module_name} is not installed")
    with open(spec.origin, encoding="utf-8") as file:
        tree = ast.parse(file.read(), spec.origin)
    declared: dict[str, Any] = {"targets": (), "supported": (), "options": {}, "supersedes": ()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            break
    else:
        raise ValueError(f"{value}: no class {class_name} in {spec.origin}")
    constants = _module_constants(tree)
    for statement in node.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, expression = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, expression = statement.target, statement.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in DECLARATIONS:
            declared[target.id] = _literal(expression, constants, f"{value}.{target.id}")
    for name in ("targets", "supported", "supersedes"):
        if not isinstance(declared[name], tuple) or not all(isinstance(item, str) for item in declared[name]):
            raise ValueError(f"{value}.{name} must be a tuple of strings")
    if not isinstance(declared["options"], dict):
        raise ValueError(f"{value}.options must be a dict")
    return declared


def _module_constants(tree: object) -> dict[str, object]:
    """Module-level `NAME = literal` assignments (a declaration may name one, like `_OTEL_INSTRUMENTOR`)."""
    import ast
    import contextlib

    constants: dict[str, object] = {}
    for statement in getattr(tree, "body", ()):
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                with contextlib.suppress(ValueError):
                    constants[target.id] = ast.literal_eval(statement.value)
    return constants


def _literal(expression: object, constants: dict[str, object], where: str) -> object:
    import ast

    if isinstance(expression, ast.Name) and expression.id in constants:
        return constants[expression.id]
    if isinstance(expression, ast.Tuple):
        return tuple(_literal(item, constants, where) for item in expression.elts)
    if isinstance(expression, ast.List):
        return [_literal(item, constants, where) for item in expression.elts]
    try:
        return ast.literal_eval(expression)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(f"{where} must be a literal") from None


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
    if not modules and entry_name in _STDLIB_TARGETS:
        modules.extend(_STDLIB_TARGETS[entry_name])
    elif not modules and entry_name.partition(".")[0] in getattr(sys, "stdlib_module_names", ()):
        # Standard-library targets declare no requirement: the entry point's name is the module
        # (threading, sqlite3, asyncio).
        modules.append(entry_name)
    # Anything else without a requirement has no target library (`exceptions` hooks the process's
    # excepthooks): it runs when the SDK starts.
    return tuple(dict.fromkeys(modules))


#: Entry-point names of standard-library instrumentors whose target is not the module of that name.
#: `urllib` patches `urllib.request`; a hook on `urllib` would fire in nearly every program (pathlib
#: and email import `urllib.parse`).
_STDLIB_TARGETS = {"urllib": ("urllib.request",)}

#: Standard-library modules that nearly every program imports without making a span of them (asyncio
#: imports concurrent.futures, and the SDK itself imports threading and logging): their
#: instrumentors wait for something else to start the SDK, as this project's own ones always do.
_IMPORTED_BY_EVERYONE = frozenset(
    {"threading", "concurrent.futures", "asyncio", "logging", "os", "subprocess"}
)


#: Libraries imported before they monkey-patch, which must come before the SDK (`process.green`):
#: their instrumentors wait for something else to start it.
_GREEN = frozenset({"gevent", "eventlet", "greenlet"})


# Activation


def superseded(records: list[EntryPointRecord], config: Config) -> dict[str, str]:
    """Entry-point value -> name of the enabled instrumentor that replaces it."""
    replaced: dict[str, str] = {}
    for record in records:
        if not config.instrumentation_disabled(record.name):
            for value in record.supersedes:
                replaced.setdefault(value, record.name)
    return replaced


def register_hooks(config: Config) -> list[EntryPointRecord]:
    """Register a post-import hook for each enabled instrumentor; return the ones registered."""
    registered: list[EntryPointRecord] = []
    found = discover()
    note_installed(found)
    replaced = superseded(found, config)
    for record in found:
        if config.instrumentation_disabled(record.name):
            report.debug(f"instrumentor {record.name} is disabled")
            continue
        if record.value in replaced:
            report.debug(f"instrumentor {record.value} is superseded by {replaced[record.value]}")
            continue
        for module_name in record.modules:
            importhooks.register(module_name, _hook_for(record))
        if not record.modules:
            # No target library: it runs when the SDK starts, whatever starts it.
            state.when_sdk_ready(_activation(record), start=False)
        registered.append(record)
    return registered


def starts_sdk(record: EntryPointRecord, module_name: str) -> bool:
    """Whether the app's first import of `module_name` (a target of `record`) starts the SDK.

    A library's first import does: its instrumentor makes spans, which need the SDK. So does a
    standard-library client's (urllib.request, sqlite3), or a program using only the standard library
    would never get a span. Not gevent's and eventlet's (imported before they monkey-patch), nor the
    modules nearly every program imports (threading, logging, asyncio, os, subprocess), nor the
    targets of this project's own context-carrying instrumentors, which make no span of their own:
    those wait until something else starts the SDK. One of ours that supersedes OpenTelemetry's
    (sqlite3) makes that one's spans, and starts it as that one would, if that one is installed.
    """
    top = module_name.partition(".")[0]
    if top in _GREEN:
        return False
    if top not in getattr(sys, "stdlib_module_names", ()):
        return True
    if module_name in _IMPORTED_BY_EVERYONE:
        return False
    if record.value.startswith(_OWN_PREFIX):
        return any(value in _installed for value in record.supersedes)
    return True


#: The entry-point values found when the hooks were registered (`starts_sdk` reads them) ...
_installed: frozenset[str] = frozenset()
#: ... and their names (`is_installed`).
_installed_names: frozenset[str] | None = None


def note_installed(records: list[EntryPointRecord]) -> None:
    global _installed, _installed_names
    _installed = frozenset(record.value for record in records)
    _installed_names = frozenset(record.name for record in records)


def is_installed(name: str) -> bool:
    """Whether an instrumentor entry point called `name` is installed: what this process found when it
    registered its hooks (no second scan, no second cache file), else a discovery now."""
    names = _installed_names
    if names is None:
        names = frozenset(record.name for record in discover())
    return name in names


def _hook_for(record: EntryPointRecord) -> importhooks.Hook:
    def activate(module: ModuleType) -> None:
        # A target imported by OpenTelemetry's own code (the OTLP exporter imports requests) waits
        # until the SDK is up: an app that imports the exporter to build its own TracerProvider must
        # still be able to install it. So does a module that waits by `starts_sdk`: the SDK's set-up
        # may itself be what imports it.
        start = starts_sdk(record, module.__name__) and not importhooks.importer().startswith("opentelemetry")
        sdk_state = state.sdk_state()
        if sdk_state == "off":
            what = "starts the SDK" if start else "waits for something else to start the SDK"
            report.debug(f"{module.__name__} imported: {record.name} {what}")
        elif sdk_state == "starting":
            report.debug(f"{module.__name__} imported by the SDK's set-up: {record.name} runs once it is up")
        state.when_instrumentable(_activation(record), start=start)

    activate.__name__ = f"activate_{record.name}"
    return activate


#: Instrumentors whose activation came while a module they import was half-imported (see _activation).
_waiting: list[EntryPointRecord] = []


def _activation(record: EntryPointRecord) -> Callable[[], None]:
    """`activate_now(record)`, or later when a module it imports is half-way through its import.

    A hook fires inside another module's import: wrapt imports asyncio, so the asyncio hook fires
    inside wrapt's import (when the app, or a Patches.wrap, imports wrapt first); OpenTelemetry's
    httpx instrumentation imports httpx, so with httpx2 imported first the httpx hook fires inside
    the import of that very instrumentation. Run then, the instrumentor failed with a circular import.
    It runs when the activation that imported them ends (as a rule, that is what imported them).
    """

    def activate() -> None:
        if _blocked(record):
            report.debug(f"{record.name} waits for the import of wrapt or its own module to finish")
            _waiting.append(record)
            return
        activate_now(record)

    return activate


def _blocked(record: EntryPointRecord) -> bool:
    own_module = record.value.partition(":")[0]
    return importhooks.initializing("wrapt") or importhooks.initializing(own_module)


def _run_waiting() -> None:
    for record in list(_waiting):
        if record in _waiting and not _blocked(record):
            _waiting.remove(record)
            activate_now(record)


_activated: set[str] = set()


def activate_now(record: EntryPointRecord) -> bool:
    """Run one instrumentor (the SDK is up); a failure is reported once and returns False."""
    if record.value in _activated:
        return True
    _activated.add(record.value)
    try:
        conflict = version_conflict(record)
        if conflict:
            report.debug(f"instrumentor {record.name} skipped: {conflict}")
            return False
        target = _load(record.value)
        instance = target()
        # Its requirements were checked just above, with a debug line instead of OpenTelemetry's error.
        instance.instrument(skip_dep_check=True, **record.options)
        report.debug(f"instrumented {', '.join(record.modules) or 'the process'} with {record.name}")
        return True
    except Exception as error:
        report.problem(
            f"instrumentor:{record.name}",
            f"instrumentor {record.name} ({record.value}) failed: "
            f"{type(error).__name__}: {error}; the app runs on without it",
        )
        return False
    finally:
        # What waited for a module this activation was importing.
        _run_waiting()


def version_conflict(record: EntryPointRecord) -> str | None:
    """Why the installed library does not fit the instrumentor's requirements, or None when it does."""
    if not record.requires and not record.requires_any:
        return None
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    conflict = get_dependency_conflicts(list(record.requires), list(record.requires_any) or None)
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
