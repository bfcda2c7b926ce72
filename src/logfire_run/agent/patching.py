"""The one patch helper of the instrumentors: change an attribute somewhere, and take it back later.

Each instrumentor keeps one `Patches`. `wrap` puts a wrapt function wrapper around a function or
method; `replace` sets a plain attribute (a function, a class, a value) and gives a function or class
the original's name, qualified name, module, docstring and `__wrapped__`, so tracebacks, `repr` and
introspection read as without the agent. `restore` undoes them in reverse order.

Where it stops: an attribute that someone else replaced after us is left as it is (one `--debug`
line): taking their layer off would break them, and leaving ours under theirs is harmless once the
instrumentor is off. wrapt is imported on the first `wrap`, never before (about 90 ms with wrapt 2).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from typing import Any

from logfire_run.agent import report

_MISSING = object()


class Patches:
    """What one instrumentor changed in other modules, classes and objects, so it can be undone."""

    def __init__(self, instrumentor: str) -> None:
        self.instrumentor = instrumentor
        # (owner, name, what was there or _MISSING if the owner had none of its own, what we put there)
        self._done: list[tuple[Any, str, Any, Any]] = []

    def wrap(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        """Wrap `owner.name` with wrapt: `wrapper(wrapped, instance, args, kwargs)`. Idempotent."""
        import wrapt

        current = _own_attribute(owner, name)
        if getattr(current, "_self_wrapper", None) is wrapper:
            return  # already ours (a hook left from an earlier instrument() ran as well)
        wrapt.wrap_function_wrapper(owner, name, wrapper)
        self._done.append((owner, name, current, _own_attribute(owner, name)))

    def replace(self, owner: Any, name: str, replacement: Any, *, copy_metadata: bool = True) -> None:
        """Set `owner.name` to `replacement`; a function or class takes the original's metadata."""
        current = _own_attribute(owner, name)
        original = getattr(owner, name, None) if current is _MISSING else current
        if copy_metadata and original is not None:
            _copy_metadata(replacement, original)
        setattr(owner, name, replacement)
        self._done.append((owner, name, current, replacement))

    def restore(self) -> None:
        """Undo every patch, newest first; a patch someone has since replaced is left in place."""
        while self._done:
            owner, name, previous, ours = self._done.pop()
            if _own_attribute(owner, name) is not ours:
                report.debug(
                    f"{self.instrumentor}: {_describe(owner)}.{name} was replaced again after us; "
                    "left as it is"
                )
                continue
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)

    def __bool__(self) -> bool:
        return bool(self._done)


def _own_attribute(owner: Any, name: str) -> Any:
    """`owner`'s own attribute `name` (not one it inherits), or _MISSING."""
    namespace = getattr(owner, "__dict__", None)
    if namespace is not None:
        return namespace.get(name, _MISSING)
    return getattr(owner, name, _MISSING)


def _copy_metadata(replacement: Any, original: Any) -> None:
    if isinstance(replacement, type):
        for attribute in ("__name__", "__qualname__", "__module__", "__doc__"):
            value = getattr(original, attribute, None)
            if isinstance(value, str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(replacement, attribute, value)
        return
    if isinstance(replacement, types.FunctionType):
        for attribute in ("__name__", "__qualname__", "__module__", "__doc__"):
            value = getattr(original, attribute, None)
            if isinstance(value, str):
                setattr(replacement, attribute, value)
        replacement.__wrapped__ = original  # type: ignore[attr-defined]


def _describe(owner: Any) -> str:
    name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None)
    return str(name) if name else type(owner).__name__
