"""Django: OpenTelemetry's instrumentor, run once the app has configured Django, never before.

What it patches:
    `django.setup`, the call every way of running Django makes once its settings are configured
    (`manage.py` and `django-admin` commands, `get_wsgi_application()`, `get_asgi_application()`, a
    single-file app's own call). OpenTelemetry's instrumentor (opentelemetry-instrumentation-django)
    adds its middleware to `settings.MIDDLEWARE`, and run as soon as `django` is imported it read the
    settings first: with `DJANGO_SETTINGS_MODULE` unset it called `settings.configure()` itself, so an
    app that configures its own settings afterwards crashed with `RuntimeError: Settings already
    configured`; with it set, the settings module was imported before the app asked for it. Here it
    runs right after `django.setup()` returns: the settings are the app's, read when the app reads
    them, and the middleware is in place before the first request handler is built.

    The hooks of OpenTelemetry's middleware (`_DjangoMiddleware.process_request`, `process_view`,
    `process_exception`, `process_response`): one that raises leaves the request untraced (one
    `--debug` line) and Django's handler goes on as if the middleware were not there, so the
    instrumentation's own failure never changes a response. Each hook builds the request's absolute
    URL, which makes Django validate the host: a request for a host outside `ALLOWED_HOSTS` got a 400
    from the instrumentation in an app that checks no host.

    The attribute collection that middleware calls (`wsgi_collect_request_attributes`,
    `asgi_collect_request_attributes` in its module), guarded as `_http_server` says. Django puts the
    decoded path back in `request.META` where WSGI has its bytes as latin-1, and OpenTelemetry's WSGI
    collection re-encoded it as latin-1: `/%E2%99%A5/` answered 500 (`UnicodeEncodeError`), and
    `/%C3%A9/` was recorded as `/%E9/`. It gets the WSGI form of the path, so `http.url` holds the
    request's percent-encoded path and `url.path` the decoded one.

When it is enabled:
    When the app first imports `django`, for the versions OpenTelemetry's instrumentor supports; it
    runs when `django.setup()` returns (at once, if Django was set up before the agent started). It
    supersedes that instrumentor under the same entry-point name, so `--disable django` turns both
    off; OpenTelemetry's `OTEL_PYTHON_DJANGO_INSTRUMENT=False` is honoured as it is.

How it refuses:
    Without opentelemetry-instrumentation-django, or with a Django it does not support, it does
    nothing (one `--debug` line). A `django.setup()` that raises is left to raise; nothing is
    instrumented then.

Where it stops:
    Everything else is OpenTelemetry's: span names, attributes, where its middleware goes in the
    list, excluded URLs (`OTEL_PYTHON_DJANGO_EXCLUDED_URLS`). A request handler built without
    `django.setup()` having run is not traced, and neither is a request for a host outside
    `ALLOWED_HOSTS` nor one whose attributes cannot be collected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import (
    PatchingInstrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)
from logfire_run.instrumentors._http_server import guarded_collect

__all__ = ["DjangoInstrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.django:DjangoInstrumentor"
_OTEL_MIDDLEWARE = "opentelemetry.instrumentation.django.middleware.otel_middleware"


class DjangoInstrumentor(PatchingInstrumentor):
    """Runs OpenTelemetry's Django instrumentor when `django.setup()` returns, not at import."""

    targets = ("django",)
    supported = ("django >= 2.0",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    patches_name = "django"

    def _first_instance(self) -> None:
        self._options: dict[str, Any] = {}

    def _instrument(self, **kwargs: Any) -> None:
        import django
        from django.apps import apps

        self._options = kwargs
        if apps.ready:  # set up before the agent started: the settings are read already
            self._run_opentelemetry()
            return

        def setup_then_instrument(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            result = wrapped(*args, **kwargs)
            self._run_opentelemetry()
            return result

        self._patches.wrap(django, "setup", setup_then_instrument)

    def _run_opentelemetry(self) -> None:
        if self._otel is not None:
            return
        try:
            self._otel = run_opentelemetry_instrumentor(_OTEL_INSTRUMENTOR, **self._options)
            if self._otel is not None:
                self._never_change_a_response()
        except Exception as error:  # inside the app's own django.setup(): never raise into it
            report.problem("django", f"Django could not be instrumented ({error}); the app runs on")

    def _never_change_a_response(self) -> None:
        """OpenTelemetry's middleware must not be what answers: a hook of it that raises (its
        `DisallowedHost` from building the URL, attribute collection of a non-ASCII path) leaves the
        request untraced, and Django's handler goes on as if the middleware were not there."""
        import importlib

        module = importlib.import_module(_OTEL_MIDDLEWARE)
        middleware = getattr(module, "_DjangoMiddleware", None)
        if middleware is None:
            report.debug(f"Django: {_OTEL_MIDDLEWARE} has no _DjangoMiddleware; run as it is")
            return
        for name, what in (
            ("wsgi_collect_request_attributes", "WSGI"),
            ("asgi_collect_request_attributes", "ASGI"),
        ):
            collect = getattr(module, name, None)
            if callable(collect):
                guarded = guarded_collect(collect, f"Django {what}")
                self._patches.replace(module, name, _with_wsgi_path(guarded) if what == "WSGI" else guarded)

        def untraced_when_it_raises(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            try:
                return wrapped(*args, **kwargs)
            except Exception as error:
                report.debug(f"Django: {wrapped.__name__} raised {type(error).__name__}: {error}; untraced")
                # As if the middleware were not there: process_response hands the response on.
                return args[1] if wrapped.__name__ == "process_response" else None

        for hook in ("process_request", "process_view", "process_exception", "process_response"):
            if callable(getattr(middleware, hook, None)):
                self._patches.wrap(middleware, hook, untraced_when_it_raises)

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.restore()
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None


def _with_wsgi_path(collect: Callable[..., Any]) -> Callable[..., Any]:
    """Django's `request.META` holds the decoded path (`/♥/`) where WSGI has its bytes as latin-1;
    OpenTelemetry's WSGI collection, reading it as WSGI, raised `UnicodeEncodeError` (a 500 for any
    path outside latin-1) or recorded the wrong bytes. It gets the WSGI form."""

    def collect_request_attributes(environ: Any, *args: Any, **kwargs: Any) -> Any:
        path = environ.get("PATH_INFO")
        if isinstance(path, str) and not path.isascii():
            wsgi_path = path.encode("utf-8", "surrogateescape").decode("latin-1")
            environ = {**environ, "PATH_INFO": wsgi_path}
        return collect(environ, *args, **kwargs)

    return collect_request_attributes
