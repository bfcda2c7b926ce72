"""Celery's broker housekeeping: the Redis commands kombu and Celery send on their own are not traces.

With OpenTelemetry's redis instrumentor installed, every command a Celery worker sends to its broker
while it waits for work (the heartbeat `PUBLISH` every two seconds, `LLEN`, `EVALSHA` of the
visibility sweep, `PING`, the `SADD`/`SREM`/`DEL` of fanout bindings at start and stop) and every
result the result backend stores after a task's span has ended became a new root trace: a store
flooded with one-span traces that say nothing about the app. This instrumentor keeps the redis
instrumentation off for those clients while no span is current. Inside a span (an `apply_async`
within a request, a task that publishes a child task) their commands are recorded as children, as
before.

What it patches:
    `kombu.transport.redis.Channel._create_client` and `celery.backends.redis.RedisBackend.
    _create_client`: each client they return (and each pipeline it makes) is given a subclass of its
    own class whose `execute_command` (`execute`, `immediate_execute_command` for pipelines) runs
    under OpenTelemetry's `suppress_instrumentation` when no span is current. The app's own Redis
    clients are not touched.

When it is enabled:
    When the app first imports kombu's redis transport or Celery's redis result backend, unless
    `broker_spans` is on (`--broker-spans`, `LOGFIRE_BROKER_SPANS=1`,
    `configure(broker_spans=True)`), which is read at each command.

How it refuses:
    A kombu or Celery without those methods is left as it is (one `--debug` line).

Where it stops:
    Redis only: other transports (AMQP has no OpenTelemetry instrumentor; SQS goes through botocore's)
    are not covered. Commands kombu sends on a raw connection (`BRPOP`) are never instrumented anyway.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from logfire_run.agent import importhooks, report
from logfire_run.agent.process import state
from logfire_run.instrumentors._base import PatchingInstrumentor

__all__ = ["BrokerHousekeepingInstrumentor"]

#: module -> the class whose `_create_client` makes the broker's (or result backend's) clients.
_CLIENT_FACTORIES = {
    "kombu.transport.redis": "Channel",
    "celery.backends.redis": "RedisBackend",
}
#: The methods of a client (or pipeline) class through which OpenTelemetry's redis instrumentor traces.
_TRACED_METHODS = ("execute_command", "execute", "immediate_execute_command")


class BrokerHousekeepingInstrumentor(PatchingInstrumentor):
    """Keeps Celery's own broker and result-backend Redis commands out of traces while no span is current."""

    targets = ("kombu.transport.redis", "celery.backends.redis")
    supported = ("kombu >= 5.0",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ()

    patches_name = "celery_broker"

    def _instrument(self, **kwargs: Any) -> None:
        for module_name in _CLIENT_FACTORIES:
            importhooks.on_import(module_name, self._patch)

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.restore()

    def _patch(self, module: Any) -> None:
        owner = getattr(module, _CLIENT_FACTORIES[module.__name__], None)
        if not callable(getattr(owner, "_create_client", None)):
            report.debug(f"celery_broker: {module.__name__} has no _create_client; left as it is")
            return
        self._patches.wrap(owner, "_create_client", _quiet_client)


def _quiet_client(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    client = wrapped(*args, **kwargs)
    _make_quiet(client)
    return client


def _make_quiet(client: Any) -> None:
    try:
        client.__class__ = _quiet_class(type(client))
    except TypeError:  # a class whose instances cannot change class (slots, C types): leave it
        report.debug(f"celery_broker: cannot adjust {type(client).__qualname__}; its commands are traced")


_quiet_classes: dict[type, type] = {}
_quiet_classes_lock = threading.Lock()


def _quiet_class(base: type) -> type:
    """A subclass of `base` whose traced methods run without instrumentation while no span is current."""
    if getattr(base, "_logfire_run_quiet", False):
        return base
    with _quiet_classes_lock:
        made = _quiet_classes.get(base)
        if made is None:
            namespace: dict[str, Any] = {
                name: _quiet_method(base, name) for name in _TRACED_METHODS if hasattr(base, name)
            }
            if hasattr(base, "pipeline"):
                namespace["pipeline"] = _quiet_pipeline(base)
            namespace.update(
                _logfire_run_quiet=True, __module__=base.__module__, __qualname__=base.__qualname__
            )
            made = _quiet_classes[base] = type(base.__name__, (base,), namespace)
        return made


def _quiet_method(base: type, name: str) -> Any:
    # Looked up at each call: OpenTelemetry's redis instrumentor may wrap the method after this class
    # was made, and inside a span the call must go through its wrapper.
    def quiet(self: Any, *args: Any, **kwargs: Any) -> Any:
        method = getattr(base, name)
        if _housekeeping():
            from opentelemetry.instrumentation.utils import suppress_instrumentation

            with suppress_instrumentation():
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    quiet.__name__ = name
    return quiet


def _quiet_pipeline(base: type) -> Any:
    def pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = getattr(base, "pipeline")(self, *args, **kwargs)  # noqa: B009 (base is any class)
        _make_quiet(made)
        return made

    return pipeline


def _housekeeping() -> bool:
    """True when a command now is the broker's own business: no span is current and broker_spans is off."""
    from opentelemetry import trace

    if trace.get_current_span().get_span_context().is_valid:
        return False
    return not state.config().broker_spans
