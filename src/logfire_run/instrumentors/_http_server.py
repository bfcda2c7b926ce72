"""OpenTelemetry's WSGI and ASGI request attribute collection, made unable to change a response.

Not an instrumentor: the Django, Flask, FastAPI and Starlette instrumentors apply these with their
own `Patches` when they run OpenTelemetry's.

Every server instrumentation of OpenTelemetry collects the request's attributes
(`collect_request_attributes` of opentelemetry-instrumentation-wsgi and -asgi) before it starts the
server span and before the app runs. When that raises, the instrumentation's exception replaced the
app's response (a 500). Here a failure of collection raises `UntracedRequest` instead, with one
`--debug` line, and the middlewares that call it (`OpenTelemetryMiddleware.__call__` of both) run the
app untraced: nothing has started yet, so the app answers as without the agent.

Non-ASCII paths: a WSGI environ holds the path as its bytes read as latin-1 (PEP 3333), so under
the new semantic conventions (`OTEL_SEMCONV_STABILITY_OPT_IN=http`) `url.path` read `/â\x99¥/` for
`/%E2%99%A5/`. It holds the decoded path (`/♥/`), as an ASGI server gives it and as the frameworks'
own telemetry records it; `http.target` and `http.url` keep the request line's percent-encoded form.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from logfire_run.agent import report
from logfire_run.agent.patching import Patches

__all__ = ["UntracedRequest", "decoded_wsgi_path", "guard_asgi", "guard_wsgi", "guarded_collect"]

_URL_PATH = "url.path"
#: Marks a collector made here, so that two instrumentors applying it (FastAPI and Starlette) wrap once.
_GUARD_MARK = "_logfire_run_guarded"


class UntracedRequest(Exception):
    """Collecting a request's attributes failed before any span started: the request runs untraced."""


def guarded_collect(collect: Callable[..., Any], what: str) -> Callable[..., Any]:
    """`collect` that raises `UntracedRequest` (one `--debug` line) where it raised anything else."""
    if getattr(collect, _GUARD_MARK, False):
        return collect

    def collect_request_attributes(carrier: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            attributes = collect(carrier, *args, **kwargs)
        except Exception as error:
            report.debug(f"{what}: request attributes failed ({type(error).__name__}: {error}); untraced")
            raise UntracedRequest(str(error)) from error
        if what == "WSGI" and _URL_PATH in attributes:
            attributes[_URL_PATH] = decoded_wsgi_path(attributes[_URL_PATH])
        return attributes

    setattr(collect_request_attributes, _GUARD_MARK, True)
    return collect_request_attributes


def decoded_wsgi_path(path: Any) -> Any:
    """A WSGI path (its bytes as latin-1) as text: UTF-8 decoded, else percent-encoded; ASCII as it is."""
    if not isinstance(path, str) or path.isascii():
        return path
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        return path  # already text (a framework put the decoded path back in the environ)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return quote(raw, safe="/:@!$&'()*+,;=~%")


def guard_wsgi(patches: Patches) -> None:
    """Guard `opentelemetry.instrumentation.wsgi`'s collection and its middleware (Flask uses both)."""
    _guard(patches, "opentelemetry.instrumentation.wsgi", "WSGI", _wsgi_untraced)


def guard_asgi(patches: Patches) -> None:
    """Guard `opentelemetry.instrumentation.asgi`'s collection and its middleware."""
    _guard(patches, "opentelemetry.instrumentation.asgi", "ASGI", _asgi_untraced)


def _guard(patches: Patches, module_name: str, what: str, untraced: Callable[..., Any]) -> None:
    module = _module(module_name)
    if module is None or not callable(getattr(module, "collect_request_attributes", None)):
        return
    patches.replace(
        module, "collect_request_attributes", guarded_collect(module.collect_request_attributes, what)
    )
    middleware = getattr(module, "OpenTelemetryMiddleware", None)
    if middleware is not None and not _guarded_call(middleware):
        patches.wrap(middleware, "__call__", untraced)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        report.debug(f"{name} is not installed ({error}); its collection is left as it is")
        return None


def _guarded_call(middleware: type) -> bool:
    wrapper = getattr(middleware.__dict__.get("__call__"), "_self_wrapper", None)
    return wrapper in (_wsgi_untraced, _asgi_untraced)


def _wsgi_untraced(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    except UntracedRequest:
        return instance.wsgi(*args, **kwargs)


async def _asgi_untraced(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    except UntracedRequest:
        return await instance.app(*args, **kwargs)


def mark_untraced(environ: MutableMapping[str, Any]) -> None:
    """Note on a WSGI environ that its request runs untraced (Flask's hooks then skip it)."""
    environ[UNTRACED_KEY] = True


#: The environ key `mark_untraced` sets.
UNTRACED_KEY = "logfire_run.untraced"
