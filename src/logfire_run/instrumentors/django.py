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
    `django.setup()` having run is not traced.
"""

from __future__ import annotations

from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.instrumentors._base import (
    Instrumentor,
    run_opentelemetry_instrumentor,
    stop_opentelemetry_instrumentor,
)
from logfire_run.instrumentors._patch import Patches

__all__ = ["DjangoInstrumentor"]

_OTEL_INSTRUMENTOR = "opentelemetry.instrumentation.django:DjangoInstrumentor"


class DjangoInstrumentor(Instrumentor):
    """Runs OpenTelemetry's Django instrumentor when `django.setup()` returns, not at import."""

    targets = ("django",)
    supported = ("django >= 2.0",)
    options: ClassVar[dict[str, Any]] = {}
    supersedes = (_OTEL_INSTRUMENTOR,)

    def __init__(self) -> None:
        super().__init__()
        # BaseInstrumentor makes every instance the same object: keep the state of the first one.
        if hasattr(self, "_patches"):
            return
        self._patches = Patches("django")
        self._otel: Any = None
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
        except Exception as error:  # inside the app's own django.setup(): never raise into it
            report.problem("django", f"Django could not be instrumented ({error}); the app runs on")

    def _uninstrument(self, **kwargs: Any) -> None:
        self._patches.restore()
        stop_opentelemetry_instrumentor(self._otel)
        self._otel = None
