"""The shape every logfire-run instrumentor shares: its declarations, and running OpenTelemetry's.

An instrumentor of this project is an OpenTelemetry `BaseInstrumentor` (so `opentelemetry-instrument`
can load it too) that declares, as class attributes next to its class:

- `targets`: the modules it waits for; its hook runs when the app first imports one of them;
- `supported`: the versions of its library it supports, as requirement strings (checked before
  `instrument()`, and what `instrumentation_dependencies()` returns);
- `options`: the keyword arguments the loader passes to its `instrument()`;
- `supersedes`: entry-point values (`module:Class`) of instrumentors it replaces while it is enabled.

The loader reads these declarations from the source file, without importing it (importing an
instrumentor imports OpenTelemetry's instrumentation package, which the start-up never pays for);
so they must be literals. A test checks that every entry point of the project declares all four.

An instrumentor that corrects one of OpenTelemetry's (Celery, FastAPI) supersedes it and runs it
with `run_opentelemetry_instrumentor`, after its own patches; `--disable NAME` turns both off.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from logfire_run.agent import importhooks, report
from logfire_run.agent.patching import Patches
from logfire_run.instrumentors.loader import DECLARATIONS

__all__ = [
    "DECLARATIONS",
    "Instrumentor",
    "PatchingInstrumentor",
    "run_opentelemetry_instrumentor",
    "stop_opentelemetry_instrumentor",
]


class Instrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Base of logfire-run's instrumentors: the four declarations, and the dependencies they imply."""

    targets: ClassVar[tuple[str, ...]] = ()
    supported: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes: ClassVar[tuple[str, ...]] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        return self.supported


class PatchingInstrumentor(Instrumentor):
    """An instrumentor whose patches go through one `Patches`, next to OpenTelemetry's instrumentor.

    `BaseInstrumentor` makes every instance of a class the same object, and `__init__` runs again on
    each `Class()`: the state is made by the first instance only (`_patches`, `_otel`, and what
    `_first_instance` adds), and later calls keep it.
    """

    #: The name the patches are reported under in `--debug` lines (the entry-point name).
    patches_name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        if hasattr(self, "_patches"):
            return
        self._patches = Patches(self.patches_name)
        #: OpenTelemetry's instrumentor, once `run_opentelemetry_instrumentor` has run it.
        self._otel: Any = None
        #: Between `_instrument` and `_uninstrument` (set by the subclass's own): hooks deferred to a
        #: module's import patch nothing once it is off.
        self.active = False
        self._first_instance()

    def _first_instance(self) -> None:
        """More state of the first instance, for a subclass that needs some."""

    def patch_on_import(self, module_name: str, patch: Callable[[Any], None]) -> None:
        """Run `patch(module)` now if `module_name` is imported, else at its first import if this
        instrumentor is still active then."""
        importhooks.on_import(module_name, patch, self._is_active)

    def _is_active(self) -> bool:
        return self.active


def run_opentelemetry_instrumentor(value: str, **options: Any) -> Any | None:
    """Instrument with OpenTelemetry's instrumentor `value` (`module:Class`); None when it cannot run.

    It refuses, with one `--debug` line and no exception, when the package is not installed or the
    installed library is outside the versions it supports (OpenTelemetry itself would log an error).
    """
    module_name, _, class_name = value.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        report.debug(f"{value} is not installed ({error}); nothing to run")
        return None
    instrumentor = getattr(module, class_name)()
    if instrumentor.is_instrumented_by_opentelemetry:
        return instrumentor
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    conflict = get_dependency_conflicts(list(instrumentor.instrumentation_dependencies()))
    if conflict is not None:
        report.debug(f"{value} skipped: {conflict}")
        return None
    instrumentor.instrument(skip_dep_check=True, **options)
    return instrumentor


def stop_opentelemetry_instrumentor(instrumentor: Any | None) -> None:
    """Undo `run_opentelemetry_instrumentor` (nothing when it did not run)."""
    if instrumentor is not None and instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
