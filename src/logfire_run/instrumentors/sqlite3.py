"""sqlite3: OpenTelemetry's instrumentor, with the connection's `execute` shortcuts traced too.

OpenTelemetry's sqlite3 instrumentor (opentelemetry-instrumentation-sqlite3, in the `stdlib` extra)
wraps `sqlite3.connect` so that the connection it returns is a proxy whose cursors trace `execute`,
`executemany` and `callproc`. `Connection.execute()`, `executemany()` and `executescript()`, the
shortcuts most sqlite3 code uses, make their cursor inside the C connection object, so they reached
the real connection through the proxy and made no span at all.

What it patches:
    `get_traced_connection_proxy` of opentelemetry-instrumentation-dbapi, which makes the proxy for
    every connection a DB-API instrumentor returns (`connect()` and `instrument_connection()`): for
    a sqlite connection, the proxy is one whose `execute`, `executemany` and `executescript` do what
    sqlite3's do (a new cursor, the call on it, that cursor returned) through a traced cursor, so each
    makes one span like `cursor.execute()`. Other databases' proxies are made as before.

When it is enabled:
    When the app first imports `sqlite3`. It supersedes OpenTelemetry's instrumentor under the same
    entry-point name and runs it, so `--disable sqlite3` turns both off.

How it refuses:
    Without opentelemetry-instrumentation-sqlite3 it does nothing (one `--debug` line); a dbapi
    release without `get_traced_connection_proxy` or `TracedConnectionProxy` leaves the shortcuts
    untraced (one `--debug` line).

Where it stops:
    Span names and attributes are OpenTelemetry's. A statement SQLAlchemy runs is SQLAlchemy's span
    only, when its instrumentor is active (see `sqlalchemy.py`).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import (
    PatchingInstrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)

__all__ = ["SQLite3Instrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.sqlite3:SQLite3Instrumentor"
_DBAPI = "opentelemetry.instrumentation.dbapi"


class SQLite3Instrumentor(PatchingInstrumentor):
    """Runs OpenTelemetry's sqlite3 instrumentor; `Connection.execute*` traced too."""

    targets = ("sqlite3",)
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "sqlite3"

    def _instrument(self, **kwargs: Any) -> None:
        try:
            dbapi = importlib.import_module(_DBAPI)
        except ImportError as error:
            report.debug(f"sqlite3: {_DBAPI} is not installed ({error}); nothing to run")
            return
        base = getattr(dbapi, "TracedConnectionProxy", None)
        make = getattr(dbapi, "get_traced_connection_proxy", None)
        if isinstance(base, type) and callable(make):
            self._patches.replace(dbapi, "get_traced_connection_proxy", _with_shortcuts(make, base))
        else:
            report.debug(f"sqlite3: {_DBAPI} has no TracedConnectionProxy; Connection.execute is untraced")
        self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None
        self._patches.restore()


def _with_shortcuts(make: Any, base: type) -> Any:
    """`get_traced_connection_proxy` that gives sqlite connections a proxy with traced shortcuts."""

    class TracedSQLiteConnectionProxy(base):  # type: ignore[misc]
        """A sqlite3 connection whose `execute*` shortcuts go through a traced cursor."""

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            cursor = self.cursor()
            cursor.execute(*args, **kwargs)
            return cursor

        def executemany(self, *args: Any, **kwargs: Any) -> Any:
            cursor = self.cursor()
            cursor.executemany(*args, **kwargs)
            return cursor

        def executescript(self, *args: Any, **kwargs: Any) -> Any:
            cursor = self.cursor()
            raw = cursor.__wrapped__
            cursor._self_cursor_tracer.traced_execution(raw, raw.executescript, *args, **kwargs)
            return cursor

    def get_traced_connection_proxy(connection: Any, integration: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(integration, "database_system", None) == "sqlite":
            return TracedSQLiteConnectionProxy(connection, integration)
        return make(connection, integration, *args, **kwargs)

    return get_traced_connection_proxy
