"""Post-import hooks: run a function right after a module is first imported, before the importer gets it.

This is the agent's whole startup cost for instrumentation: one finder at the front of `sys.meta_path`
whose `find_spec` is a set lookup for every import the app makes. When a watched module is imported,
the finder asks the rest of `sys.meta_path` for the real spec and wraps its loader so the hooks run as
soon as the module body has executed. `from flask import Flask` therefore sees whatever the hook
patched into `flask`.

It stops there: it does not patch anything itself, and a module that was imported before the hook was
registered is not watched (the caller decides what to do with those, see `already_imported`).

Why not wrapt's importer: wrapt 2 imports asyncio and importlib.metadata when it is imported, about
90 ms on this project's reference machine; this module is stdlib-only and imports nothing new.
"""

from __future__ import annotations

import _thread
import sys

from logfire_run.agent import report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    Hook = Callable[[ModuleType], None]

_hooks: dict[str, list[Hook]] = {}
_lock = _thread.RLock()
# Names whose real spec is being looked up right now. Without this, asking the rest of meta_path for
# the spec would come back to our own find_spec and recurse forever.
_in_progress: set[str] = set()


class _HookedLoader:
    """Delegates to the real loader and runs the module's hooks after `exec_module`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # Put the real loader back so that code reading module.__loader__ (resources, pkgutil) sees it.
        # The body has run: the module no longer counts as half-imported for what the hooks check.
        try:
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
                module.__spec__._initializing = False  # type: ignore[attr-defined]
        except Exception:
            pass
        run_hooks(module.__name__, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


# `exec_module` is on the stack while the module's body runs. Named as the import system's own frames
# are, it is one of them for what reads the stack: a warning the module raises for its importer
# (`stacklevel=2`, as eventlet's deprecation warning is) names the same line as without the agent,
# and a traceback of an error in the module's body leaves it out with the import system's frames.
_HookedLoader.exec_module.__code__ = _HookedLoader.exec_module.__code__.replace(
    co_filename="<frozen importlib._bootstrap_external>"
)


class _PostImportFinder:
    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        if fullname not in _hooks or fullname in _in_progress:
            return None
        _in_progress.add(fullname)
        try:
            spec = _find_real_spec(fullname, path, target)
        finally:
            _in_progress.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader)  # type: ignore[assignment]
        return spec

    def invalidate_caches(self) -> None:
        pass


def _find_real_spec(fullname: str, path: Sequence[str] | None, target: Any) -> ModuleSpec | None:
    for finder in sys.meta_path:
        if isinstance(finder, _PostImportFinder):
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec  # type: ignore[no-any-return]
    return None


_finder = _PostImportFinder()


def install() -> None:
    """Put the finder first on `sys.meta_path` (once)."""
    if not any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _finder)


def register(module_name: str, hook: Hook) -> None:
    """Run `hook(module)` when `module_name` is first imported. Not run for an already imported module."""
    with _lock:
        _hooks.setdefault(module_name, []).append(hook)
    install()


def on_import(module_name: str, hook: Hook, active: Callable[[], bool] | None = None) -> None:
    """Run `hook(module)` now when `module_name` is imported already, else at its first import.

    With `active`, a deferred hook runs only if `active()` is still true at that import: an
    instrumentor turned off in between patches nothing.
    """
    if already_imported(module_name):
        hook(sys.modules[module_name])
    elif active is None:
        register(module_name, hook)
    else:
        register(module_name, lambda module: hook(module) if active() else None)


def already_imported(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    return module is not None and not _initializing(module)


def _initializing(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def run_hooks(module_name: str, module: ModuleType) -> None:
    """Run and forget the hooks of `module_name`. Each hook is isolated: one that raises is reported."""
    with _lock:
        hooks = _hooks.pop(module_name, [])
    for hook in hooks:
        try:
            hook(module)
        except Exception as error:
            report.problem(
                f"hook:{module_name}:{getattr(hook, '__name__', hook)}",
                f"a post-import hook for {module_name} failed ({type(error).__name__}: {error}); "
                "the app continues without it",
            )


def initializing(prefix: str, *, but: str = "") -> bool:
    """Whether a module named `prefix` or `prefix.*` (other than `but`) is half-way through its import."""
    dotted = prefix + "."
    for name, module in list(sys.modules.items()):
        if (name == prefix or name.startswith(dotted)) and name != but and _initializing(module):
            return True
    return False


def importer() -> str:
    """`__name__` of the module whose code is importing the module whose hooks are running."""
    frame = sys._getframe(1)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not name.startswith(("importlib", "_frozen_importlib", "logfire_run.")):
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return ""
