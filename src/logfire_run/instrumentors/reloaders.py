"""Re-exec reloaders: the serving child a reloader kills when it is stopped flushes its spans first.

What it patches:
    The `subprocess` that the reloaders of Werkzeug (`flask run --reload`, `run_simple(...,
    use_reloader=True)`) and Django (`runserver`) see, in `werkzeug._reloader` and
    `django.utils.autoreload`. Each runs the app in a child, a re-exec of the same command, and waits
    for it with `subprocess.call()` / `subprocess.run()`; stopped itself (SIGTERM, which both turn into
    `sys.exit(0)`, or SIGINT), it leaves that wait by an exception, and `subprocess` then SIGKILLs the
    child: the spans of the last requests it served were lost. Here `call` and `run` are the real
    ones, except that on the way out by an exception the child is first asked to stop with SIGTERM
    and waited for, within the watcher's exit budget (`exits.exit_flush`), so it ends the way it
    does on a SIGTERM of its own: through its exit flush. Everything else in the module's
    `subprocess` is the real module.

When it is enabled:
    When the app first imports `werkzeug._reloader` or `django.utils.autoreload` (the watcher and the
    serving child both import it; only the watcher calls what is patched). `--disable reloaders`
    turns it off.

How it refuses:
    It needs only the standard library. A reloader module without a `subprocess` attribute (a
    release that no longer starts its child that way) is left as it is (one `--debug` line).

Where it stops:
    A reload itself needs nothing: the serving child leaves by `sys.exit(3)`, through its exit flush.
    uvicorn's reloader stops its server process with SIGTERM, and gunicorn's reloads inside each
    worker; neither kills, so neither is patched. A child killed with SIGKILL by anything else is lost
    with its unsent spans, as any process is.
"""

from __future__ import annotations

import subprocess
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.agent.patching import applied
from logfire_run.agent.process import exits
from logfire_run.instrumentors._base import PatchingInstrumentor

__all__ = ["ReloaderInstrumentor"]

_RELOADER_MODULES = ("werkzeug._reloader", "django.utils.autoreload")


class ReloaderInstrumentor(PatchingInstrumentor):
    """Lets the serving child of Werkzeug's and Django's reloaders flush before it is killed."""

    targets = ("werkzeug._reloader", "django.utils.autoreload")
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ()

    patches_name = "reloaders"

    def _instrument(self, **kwargs: Any) -> None:
        self.active = True
        for name in _RELOADER_MODULES:
            self.patch_on_import(name, self._patch)

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        self._patches.restore()

    def _patch(self, module: Any) -> None:
        if applied(module, "subprocess", self._patches.instrumentor):
            return
        if getattr(module, "subprocess", None) is not subprocess:
            report.debug(f"reloaders: {module.__name__} has no subprocess module of its own; left as it is")
            return
        self._patches.replace(module, "subprocess", _StopChildFirst(), copy_metadata=False)


class _StopChildFirst:
    """`subprocess` as a reloader sees it: `call` and `run` SIGTERM their child before killing it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def call(self, *popenargs: Any, timeout: float | None = None, **kwargs: Any) -> int:
        with subprocess.Popen(*popenargs, **kwargs) as process:
            try:
                return process.wait(timeout=timeout)
            except BaseException:
                _stop_first(process)
                process.kill()
                raise

    def run(self, *popenargs: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        if set(kwargs) - {"env", "close_fds", "cwd"}:
            # Input, capture or a timeout: not the reloader's own call; the real one does it all.
            return subprocess.run(*popenargs, **kwargs)
        with subprocess.Popen(*popenargs, **kwargs) as process:
            try:
                process.wait()
            except BaseException:
                _stop_first(process)
                process.kill()
                raise
        return subprocess.CompletedProcess(process.args, process.returncode)


def _stop_first(process: subprocess.Popen[Any]) -> None:
    try:
        exits.exit_flush("reloader stop", children=(process.pid,))
    except Exception as error:
        report.debug(f"reloaders: the serving child was not stopped first ({error})")
