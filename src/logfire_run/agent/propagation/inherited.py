"""The context this process was started with, as the default context of every thread.

OpenTelemetry's env-carriers spec: a child reads TRACEPARENT, TRACESTATE and BAGGAGE at start-up
(`env_carrier.remember_inherited`). It is the parent process's word, so it is first-party (no policy
warning, honoured under distributed_tracing=False); `env_context=False` ignores it. Joined when the
SDK starts, it becomes the value of the current context wherever nothing is attached (every thread,
before and after every span), so each root span of the process is its child, while an explicit
context (a server span's extracted headers, `attach_context()`) is left alone.

Stdlib only until the SDK starts. Where it stops: it extracts nothing itself (the caller hands it the
extracted context), and it never writes the environment (children get theirs from the subprocess
instrumentor, through `env_carrier`).
"""

from __future__ import annotations

from logfire_run.agent import report
from logfire_run.agent.patching import Patches, applied
from logfire_run.agent.propagation import env_carrier

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from opentelemetry.context import Context

_inherited_context: Context | None = None
_patches = Patches("inherited context")


def inherited_context() -> Context | None:
    """The context joined from this process's environment, or None (none there, ignored, malformed)."""
    return _inherited_context


def join(extracted: Context) -> None:
    """Make `extracted` (the environment's carrier, extracted first-party) the default context."""
    global _inherited_context
    joined = _with_default_context(extracted)
    if joined is not None:
        _inherited_context = joined


def _with_default_context(extracted: Context) -> Context | None:
    """Make `extracted` the current context wherever none is attached; None when it cannot be."""
    import contextvars

    from opentelemetry import context as context_api
    from opentelemetry import trace

    span_context = trace.get_current_span(extracted).get_span_context()
    if not span_context.is_valid:
        shown = {name: value[:80] for name, value in env_carrier.inherited.items()}
        report.debug(f"no valid trace context in the environment ({shown}); ignored")
        return None
    runtime = getattr(context_api, "_RUNTIME_CONTEXT", None)
    get_current = getattr(runtime, "get_current", None)
    if (
        runtime is None
        or get_current is None
        or applied(context_api, "_RUNTIME_CONTEXT", _patches.instrumentor)
    ):
        return None
    # The value the runtime context has where nothing was attached: a fresh contextvars.Context
    # has no value set, so this is the ContextVar's default, the same object in every thread.
    unset = contextvars.Context().run(get_current)
    if contextvars.Context().run(get_current) is not unset:
        report.debug(f"the runtime context {type(runtime).__name__} has no shared default; not joined")
        return None
    _patches.replace(context_api, "_RUNTIME_CONTEXT", _InheritedDefault(runtime, unset, extracted))
    report.debug(
        f"root spans are children of trace {span_context.trace_id:032x} span {span_context.span_id:016x} "
        "(TRACEPARENT in the environment)"
    )
    return extracted


class _InheritedDefault:
    """OpenTelemetry's runtime context, whose value where nothing is attached is the inherited one.

    Tokens and attached contexts are the wrapped runtime's own: attach and detach pass through, so
    nothing attached before or after the switch is lost.
    """

    def __init__(self, runtime: Any, unset: Context, inherited: Context) -> None:
        self._runtime = runtime
        self._unset = unset
        self._inherited = inherited

    def get_current(self) -> Context:
        current: Context = self._runtime.get_current()
        return self._inherited if current is self._unset else current

    def attach(self, context: Context) -> object:
        return self._runtime.attach(context)

    def detach(self, token: object) -> None:
        self._runtime.detach(token)
