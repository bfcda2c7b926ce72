"""The one patch helper: every attribute the agent or an instrumentor changes elsewhere goes through it.

Each instrumentor keeps one `Patches`, and so does each mechanism of the agent that patches (the exit
flushes' `os._exit`, the quiet `os.fork`, the log capture's record factory and `Logger.callHandlers`,
the SDK's start on first use of `opentelemetry.trace`, the policy's `set_global_textmap`, the
inherited context's `_RUNTIME_CONTEXT`). `wrap` puts a wrapt function wrapper around a function or
method; `replace` sets a plain attribute (a function, a class, a value) and gives a function or class
the original's name, qualified name, module, docstring and `__wrapped__`, so tracebacks, `repr` and
introspection read as without the agent. `restore` undoes them in reverse order.

One idempotence rule for all: a patch is made once. `wrap` and `replace` leave an attribute alone
when it holds what a `Patches` of the same name put there (`applied()` says so), and patch anything
else, on top of what is there: the original, or someone's replacement put over ours since.

Where it stops: an attribute that someone else replaced after us is left as it is by `restore` (one
`--debug` line): taking their layer off would break them, and leaving ours under theirs is harmless
once the patch is off. wrapt is imported on the first `wrap`, never before (about 90 ms with wrapt 2).
Stdlib only otherwise: the agent's bottom layer.
"""

from __future__ import annotations

import _thread
import contextlib
import types
from collections.abc import Callable
from typing import Any

from logfire_run.agent import report

_MISSING = object()
_restoring = _thread.allocate_lock()
#: What every `Patches` of the process has in place: (id(owner), attribute) -> (patches' name, value).
_in_place: dict[tuple[int, str], tuple[str, Any]] = {}


def applied(owner: Any, name: str, patches: str) -> bool:
    """Whether `owner.name` holds what the `Patches` called `patches` put there."""
    entry = _in_place.get((id(owner), name))
    return entry is not None and entry[0] == patches and _own_attribute(owner, name) is entry[1]


class Patches:
    """What one instrumentor changed in other modules, classes and objects, so it can be undone."""

    def __init__(self, instrumentor: str) -> None:
        #: The name patches are reported under, and what `applied()` recognises them by.
        self.instrumentor = instrumentor
        # (owner, name, what was there or _MISSING if the owner had none of its own, what we put there)
        self._done: list[tuple[Any, str, Any, Any]] = []

    def wrap(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        """Wrap `owner.name` with wrapt: `wrapper(wrapped, instance, args, kwargs)`, once."""
        import wrapt

        if applied(owner, name, self.instrumentor):
            return  # already ours (a hook left from an earlier instrument() ran as well)
        current = _own_attribute(owner, name)
        wrapt.wrap_function_wrapper(owner, name, wrapper)
        self._record(owner, name, current, _own_attribute(owner, name))

    def replace(self, owner: Any, name: str, replacement: Any, *, copy_metadata: bool = True) -> None:
        """Set `owner.name` to `replacement`, once; a function or class takes the original's metadata."""
        if applied(owner, name, self.instrumentor):
            return
        current = _own_attribute(owner, name)
        original = getattr(owner, name, None) if current is _MISSING else current
        if copy_metadata and original is not None:
            _copy_metadata(replacement, original)
        setattr(owner, name, replacement)
        self._record(owner, name, current, replacement)

    def _record(self, owner: Any, name: str, previous: Any, ours: Any) -> None:
        self._done.append((owner, name, previous, ours))
        _in_place[(id(owner), name)] = (self.instrumentor, ours)

    def restore(self) -> None:
        """Undo every patch, newest first; a patch someone has since replaced is left in place."""
        with _restoring:  # two threads may restore at once (the first use of opentelemetry.trace)
            done, self._done = self._done, []
        while done:
            owner, name, previous, ours = done.pop()
            if _in_place.get((id(owner), name), (None, None))[1] is ours:
                del _in_place[(id(owner), name)]
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
