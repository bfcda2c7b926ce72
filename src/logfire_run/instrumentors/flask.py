"""Flask: OpenTelemetry's instrumentor, never reading a URL that Flask refuses to build.

What it patches:
    `_InstrumentedFlask._excluded_urls`, the class OpenTelemetry's instrumentor (opentelemetry-
    instrumentation-flask) puts in place of `flask.Flask`. Its start_response and teardown hooks read
    `flask.request.url` to match it against the excluded URLs, and with `TRUSTED_HOSTS` set a request
    for another host makes that read raise `SecurityError`, which then replaced the app's own 400
    response. With no excluded URLs configured there is nothing to match, so the list is set to None,
    which the instrumentation's hooks check before reading the URL: the app answers as it would
    without the agent.
    `_InstrumentedFlask.__init__`, which keeps the app's own bound `wsgi_app` twice (as
    `_original_wsgi_app` and inside the WSGI wrapper it sets on the app): a reference cycle, so an
    app was freed only by the cycle collector, never when its last reference went. After it runs,
    both places hold a callable that reaches the app through a weak reference instead. The WSGI
    wrapper and `before_request` hook that `__init__` adds then leave a request untraced when its
    attributes cannot be collected, and `opentelemetry.instrumentation.wsgi`'s collection raises
    `UntracedRequest` then, with the decoded `url.path` for a non-ASCII path (`_http_server`).

    `get_default_span_name` of OpenTelemetry's instrumentor: a request no rule matched (a 404, or a
    405 for a method the rule does not allow: Flask matches neither) was named after its URL path
    (`GET /wp-login.php`), one span name per path probed. It is named `{method}` as OpenTelemetry's
    HTTP conventions say when there is no route (`HTTP` for a method outside the known ones), like
    Django's and FastAPI's 404s.

When it is enabled:
    When the app first imports `flask`, for the versions OpenTelemetry's instrumentor supports. It
    supersedes that instrumentor under the same entry-point name, so `--disable flask` turns both off.

How it refuses:
    Without opentelemetry-instrumentation-flask, or with a Flask it does not support, it does nothing
    (one `--debug` line). A release of OpenTelemetry's instrumentor without `_InstrumentedFlask` is
    run as it is (one `--debug` line).

Where it stops:
    With excluded URLs configured (`OTEL_PYTHON_FLASK_EXCLUDED_URLS`) and `TRUSTED_HOSTS` both set, a
    request for an untrusted host still raises from OpenTelemetry's hooks. A release whose WSGI
    wrapper keeps the bound method somewhere other than its closure is left as it is (one `--debug`
    line): such an app is again freed by the cycle collector only.
"""

from __future__ import annotations

import importlib
import types
import weakref
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import (
    PatchingInstrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)
from logfire_run.instrumentors._http_server import UNTRACED_KEY, UntracedRequest, guard_wsgi, mark_untraced

__all__ = ["FlaskInstrumentor"]

_OTEL_MODULE = "opentelemetry.instrumentation.flask"
_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.flask:FlaskInstrumentor"


class FlaskInstrumentor(PatchingInstrumentor):
    """Runs OpenTelemetry's Flask instrumentor; an untrusted host gets the app's own 400."""

    targets = ("flask",)
    supported = ("flask >= 1.0",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "flask"

    def _instrument(self, **kwargs: Any) -> None:
        self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **kwargs)
        if self._otel is None:
            return
        instrumented = getattr(importlib.import_module(_OTEL_MODULE), "_InstrumentedFlask", None)
        if instrumented is None or not hasattr(instrumented, "_excluded_urls"):
            report.debug(f"Flask: {_OTEL_MODULE} has no _InstrumentedFlask._excluded_urls; run as it is")
            return
        # ExcludeList keeps its patterns in `_excluded_urls`; an empty one matches nothing.
        if not getattr(instrumented._excluded_urls, "_excluded_urls", None):
            self._patches.replace(instrumented, "_excluded_urls", None, copy_metadata=False)
        self._patches.wrap(instrumented, "__init__", _init_without_self_reference)
        self._name_unmatched_by_method(importlib.import_module(_OTEL_MODULE))
        guard_wsgi(self._patches)

    def _name_unmatched_by_method(self, otel_flask: Any) -> None:
        named = getattr(otel_flask, "get_default_span_name", None)
        if callable(named):
            self._patches.replace(otel_flask, "get_default_span_name", _span_name(named))
        else:
            report.debug(f"Flask: {_OTEL_MODULE} has no get_default_span_name; 404s named after their path")

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.restore()
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None


def _span_name(named: Any) -> Any:
    """OpenTelemetry's span name for a request a rule matched; `{method}` for one none did."""

    def get_default_span_name() -> str:
        import flask
        from opentelemetry.util.http import sanitize_method

        if flask.request.url_rule is not None:
            return str(named())
        method = sanitize_method(str(flask.request.method))  # `_OTHER` outside the known methods
        return "HTTP" if method == "_OTHER" else method

    return get_default_span_name


class _WeakWsgiApp:
    """The app's own `wsgi_app`, called through a weak reference to the app."""

    __slots__ = ("_app", "_function")

    def __init__(self, app: Any, function: Any) -> None:
        self._app = weakref.ref(app)
        self._function = function

    def __call__(self, environ: Any, start_response: Any) -> Any:
        app = self._app()
        if app is None:
            raise ReferenceError("the Flask app behind this wsgi_app has been freed")
        return self._function(app, environ, start_response)


def _init_without_self_reference(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> None:
    wrapped(*args, **kwargs)
    _without_self_reference(instance)
    _untraced_when_collection_fails(instance)


def _without_self_reference(instance: Any) -> None:
    own = instance.__dict__
    original, wrapper = own.get("_original_wsgi_app"), own.get("wsgi_app")
    if not isinstance(original, types.MethodType) or original.__self__ is not instance:
        return  # not the shape this fix knows: leave the app as OpenTelemetry made it
    weak = _WeakWsgiApp(instance, original.__func__)
    cells = [
        cell
        for cell in getattr(wrapper, "__closure__", None) or ()
        if isinstance(cell.cell_contents, types.MethodType) and cell.cell_contents.__self__ is instance
    ]
    if len(cells) != 1:
        report.debug("Flask: OpenTelemetry's WSGI wrapper has an unknown shape; the app refers to itself")
        return
    cells[0].cell_contents = weak
    own["_original_wsgi_app"] = weak


class _UntracedOnFailure:
    """OpenTelemetry's `wsgi_app` wrapper; the app's own `wsgi_app` when it cannot collect the request's
    attributes (nothing has started then: the request runs untraced)."""

    __slots__ = ("_plain", "_traced")

    def __init__(self, traced: Any, plain: Any) -> None:
        self._traced = traced
        self._plain = plain

    def __call__(self, environ: Any, start_response: Any) -> Any:
        try:
            return self._traced(environ, start_response)
        except UntracedRequest:
            mark_untraced(environ)
            return self._plain(environ, start_response)


def _untraced_when_collection_fails(instance: Any) -> None:
    own = instance.__dict__
    traced, plain, before = own.get("wsgi_app"), own.get("_original_wsgi_app"), own.get("_before_request")
    functions = getattr(instance, "before_request_funcs", {}).get(None)
    if not (callable(traced) and callable(plain) and isinstance(functions, list) and before in functions):
        report.debug("Flask: OpenTelemetry's app has an unknown shape; a collection failure is a 500")
        return
    own["wsgi_app"] = _UntracedOnFailure(traced, plain)

    def before_request() -> Any:
        import flask

        if flask.request.environ.get(UNTRACED_KEY):
            return None  # its attributes could not be collected: no span for it
        return before()

    functions[functions.index(before)] = before_request
