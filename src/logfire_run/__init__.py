"""logfire-run: zero-code OpenTelemetry for Python services.

Most users never import this package: `logfire-run python app.py` is enough. In code:

    import logfire_run

    logfire_run.configure(service_name="billing", distributed_tracing=False)
    with logfire_run.span("charge card", customer_id=42):
        logfire_run.info("charged", amount_cents=1999)

Importing it is cheap; OpenTelemetry is loaded by the first call that needs it.
"""

from __future__ import annotations

from logfire_run._version import __version__
from logfire_run.agent.errors import ConfigError, LogfireRunError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Any

    from opentelemetry.trace import Span

__all__ = [
    "ConfigError",
    "LogfireRunError",
    "__version__",
    "configure",
    "debug",
    "error",
    "force_flush",
    "info",
    "shutdown",
    "span",
    "warn",
]


def configure(**settings: Any) -> None:
    """Change settings at run time; keywords are the names in `logfire-run --help` (`service_name`,
    `distributed_tracing`, `exporters`, `disabled_instrumentations`, `store_path`, `debug`, `inherit`).

    Starts the agent in this process if the launcher did not. A value that is not accepted is
    reported on stderr and the setting keeps its previous value; the app is never stopped by it.
    """
    from logfire_run.agent import bootstrap

    bootstrap.configure(**settings)


def span(name: str, **attributes: Any) -> AbstractContextManager[Span]:
    """A context manager that runs its block inside a new span, child of the current one."""
    manager: AbstractContextManager[Span] = _tracer().start_as_current_span(
        name, attributes=_clean(attributes)
    )
    return manager


def debug(message: str, **attributes: Any) -> None:
    """Record a log line as a zero-length span at level debug, child of the current span."""
    _log("debug", message, attributes)


def info(message: str, **attributes: Any) -> None:
    """Record a log line as a zero-length span at level info, child of the current span."""
    _log("info", message, attributes)


def warn(message: str, **attributes: Any) -> None:
    """Record a log line as a zero-length span at level warn, child of the current span."""
    _log("warn", message, attributes)


def error(message: str, **attributes: Any) -> None:
    """Record a log line as a zero-length span at level error, child of the current span."""
    _log("error", message, attributes)


def force_flush(timeout_millis: int = 30000) -> bool:
    """Export every ended span now; True when all exporters finished in time."""
    from logfire_run._internal import running_sdk

    sdk = running_sdk()
    return sdk.force_flush(timeout_millis) if sdk is not None else True


def shutdown() -> None:
    """Flush and stop exporting; spans ended afterwards are dropped. Runs by itself at exit."""
    from logfire_run.agent.process import state

    state.shutdown()


_cached_tracer: Any = None


def _tracer() -> Any:
    global _cached_tracer
    tracer = _cached_tracer
    if tracer is not None:
        return tracer
    from opentelemetry import trace

    from logfire_run._internal import running_sdk

    sdk = running_sdk()
    tracer = trace.get_tracer("logfire_run", __version__)
    if sdk is not None:
        # Kept once the SDK is up: a tracer from the installed provider stays valid for the process.
        _cached_tracer = tracer
    return tracer


def _log(level: str, message: str, attributes: dict[str, Any]) -> None:
    tracer = _tracer()
    span = tracer.start_span(
        message,
        attributes={**_clean(attributes), "logfire_run.level": level, "logfire_run.msg": message},
    )
    span.end(end_time=span.start_time if hasattr(span, "start_time") else None)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    # OpenTelemetry drops attribute values of other types with a logged warning; keep their text.
    allowed = (str, bool, int, float)
    return {key: value if isinstance(value, allowed) else repr(value) for key, value in attributes.items()}
