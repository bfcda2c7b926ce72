"""SQLAlchemy: OpenTelemetry's instrumentor, and one span per statement when a DB-API one is active too.

OpenTelemetry's SQLAlchemy instrumentor (opentelemetry-instrumentation-sqlalchemy) starts a CLIENT
span in SQLAlchemy's `before_cursor_execute` event and ends it in `after_cursor_execute`; between
the two, SQLAlchemy calls the driver's `cursor.execute()`. With the driver's own instrumentor
installed as well (sqlite3 from the `stdlib` extra, psycopg, psycopg2, pymysql, mysqlclient: all
built on opentelemetry-instrumentation-dbapi), that call made a second span for the same statement,
a sibling of the first: two spans per query.

What it patches:
    `EngineTracer._before_cur_exec` of OpenTelemetry's SQLAlchemy instrumentor: once it has started
    the statement's span, that span is noted as the statement in flight (a context variable).
    `CursorTracer.traced_execution` (and `traced_execution_async`) of opentelemetry-instrumentation-
    dbapi, which every DB-API instrumentor's cursor goes through: while a SQLAlchemy statement is in
    flight (its span still recording), the driver's call runs without a span of its own; what the
    driver's span would have said and SQLAlchemy's does not (`db.user`, the connection's attributes,
    the parameters when the driver captures them) is added to SQLAlchemy's span, and the driver's
    duration metric is still recorded.

When it is enabled:
    When the app first imports `sqlalchemy`, for the versions OpenTelemetry's instrumentor supports
    (below 2.1 for 0.66b1). It supersedes that instrumentor under the same entry-point name, so
    `--disable sqlalchemy` turns both off; the DB-API instrumentors are then left as they are.

How it refuses:
    Without opentelemetry-instrumentation-sqlalchemy, or with a SQLAlchemy it does not support, it does
    nothing (one `--debug` line). A release of either OpenTelemetry package without the method it
    patches keeps its two spans per statement (one `--debug` line).

Where it stops:
    A driver call SQLAlchemy makes outside a statement (`connection.exec_driver_sql` goes through the
    events too; a raw `engine.raw_connection().cursor().execute()` does not) keeps its driver span.
    Under an async engine, SQLAlchemy calls the driver in another greenlet, where the statement in
    flight may not be seen: such a driver keeps its own span.
"""

from __future__ import annotations

import contextvars
import importlib
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import (
    PatchingInstrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)

__all__ = ["SQLAlchemyInstrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.sqlalchemy:SQLAlchemyInstrumentor"
_OTEL_ENGINE = "opentelemetry.instrumentation.sqlalchemy.engine"
_DBAPI = "opentelemetry.instrumentation.dbapi"

#: The span of the SQLAlchemy statement being executed in this context, once started.
_statement: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "logfire_run_sqlalchemy_statement", default=None
)


class SQLAlchemyInstrumentor(PatchingInstrumentor):
    """Runs OpenTelemetry's SQLAlchemy instrumentor; a statement is one span; see the module docstring."""

    targets = ("sqlalchemy",)
    supported = ("sqlalchemy >= 1.4, < 2.1",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "sqlalchemy"

    def _instrument(self, **kwargs: Any) -> None:
        self.active = True
        try:
            engine = importlib.import_module(_OTEL_ENGINE)
        except ImportError as error:
            report.debug(f"sqlalchemy: {_OTEL_ENGINE} cannot be imported ({error}); nothing to run")
            return
        tracer = getattr(engine, "EngineTracer", None)
        if callable(getattr(tracer, "_before_cur_exec", None)):
            self._patches.wrap(tracer, "_before_cur_exec", _note_statement)
            self.patch_on_import(_DBAPI, self._patch_dbapi)
        else:
            report.debug(
                f"sqlalchemy: {_OTEL_ENGINE} has no EngineTracer._before_cur_exec; two spans per query"
            )
        self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None
        self._patches.restore()

    def _patch_dbapi(self, module: Any) -> None:
        tracer = getattr(module, "CursorTracer", None)
        if not callable(getattr(tracer, "traced_execution", None)):
            report.debug(f"sqlalchemy: {_DBAPI} has no CursorTracer.traced_execution; two spans per query")
            return
        self._patches.wrap(tracer, "traced_execution", _inside_statement)
        if callable(getattr(tracer, "traced_execution_async", None)):
            self._patches.wrap(tracer, "traced_execution_async", _inside_statement_async)


def _note_statement(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    # (conn, cursor, statement, params, context, executemany): the span is kept on the context.
    context = args[4] if len(args) > 4 else kwargs.get("context")
    _statement.set(getattr(context, "_otel_span", None))
    return result


def _statement_in_flight() -> Any:
    span = _statement.get()
    return span if span is not None and span.is_recording() else None


def _inside_statement(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    span = _statement_in_flight()
    if span is None:
        return wrapped(*args, **kwargs)
    cursor, query_method, *query = args
    _fold_into(span, instance, cursor, query)
    return _measured(instance, cursor, query, lambda: query_method(*query, **kwargs))


async def _inside_statement_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    span = _statement_in_flight()
    if span is None:
        return await wrapped(*args, **kwargs)
    cursor, query_method, *query = args
    _fold_into(span, instance, cursor, query)
    import time

    started, error = time.perf_counter(), None
    try:
        return await query_method(*query, **kwargs)
    except Exception as raised:
        error = raised
        raise
    finally:
        _record(instance, cursor, query, started, error)


def _measured(cursor_tracer: Any, cursor: Any, query: list[Any], call: Any) -> Any:
    import time

    started, error = time.perf_counter(), None
    try:
        return call()
    except Exception as raised:
        error = raised
        raise
    finally:
        _record(cursor_tracer, cursor, query, started, error)


def _record(tracer: Any, cursor: Any, query: list[Any], started: float, error: Exception | None) -> None:
    """The driver's duration metric, which its span's call would have recorded."""
    try:
        tracer._record_metrics(cursor, tracer.get_operation_name(cursor, query), started, error)
    except Exception as failed:
        report.debug(f"sqlalchemy: the DB-API duration metric was not recorded ({failed})")


def _fold_into(span: Any, cursor_tracer: Any, cursor: Any, query: list[Any]) -> None:
    """What the driver's span would carry that SQLAlchemy's does not, added to SQLAlchemy's."""
    try:
        cursor_tracer._populate_span(_MissingOnly(span), cursor, *query)
    except Exception as error:
        report.debug(f"sqlalchemy: the driver's attributes were not added ({error})")


class _MissingOnly:
    """A span that passes on only the attributes the real span does not have yet."""

    def __init__(self, span: Any) -> None:
        self._span = span
        self._has = set(getattr(span, "attributes", None) or ())

    def is_recording(self) -> bool:
        return True

    def set_attribute(self, key: str, value: Any) -> None:
        if key not in self._has:
            self._span.set_attribute(key, value)

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)
