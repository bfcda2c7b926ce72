"""The agent's entry into a process: register the import hooks that start everything else lazily.

`start()` is what `sitecustomize` (launcher), `logfire_run.pth` (env-only) and the public API call.
It is stdlib-only and cheap: the config (a few dictionary lookups), the instrumentor cache and one
finder on `sys.meta_path`. What it registers:

- one post-import hook per target module of each enabled instrumentor (`instrumentors.loader`);
- on `opentelemetry.propagate`: the policy becomes the global propagator, SDK or not;
- on `logging`: the record factory that puts trace ids on every record (`log_capture`);
- on `opentelemetry.trace`: the SDK starts when the app first asks for a tracer or the provider
  (not when it imports the API, so an app that installs its own TracerProvider first keeps it);
  on `opentelemetry.metrics`, the same for a meter or the meter provider.

It also notes the `TRACEPARENT`, `TRACESTATE` and `BAGGAGE` this process was started with
(`env_carrier`): the SDK's start makes them the parent of the process's root spans.

With `LOGFIRE_RUN_INHERIT=0` it also takes the agent out of the environment children inherit. The
state it starts (config, policy, SDK, flushes) belongs to `state`; nothing here keeps any.
"""

from __future__ import annotations

import os
import sys

from logfire_run.agent import importhooks, paths, report
from logfire_run.agent.patching import Patches
from logfire_run.agent.process import exits, fork, green, state
from logfire_run.agent.propagation import env_carrier

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any


def start(via: str) -> None:
    """Start the agent in this process, once; `via` says who asked (for `--debug`). Never raises."""
    if not state.mark_started():
        return
    try:
        _start(via)
    except Exception as error:
        report.problem(
            "bootstrap",
            f"the agent could not start ({type(error).__name__}: {error}); the app runs without it",
        )


def _start(via: str) -> None:
    config = state.config()
    report.debug(f"agent started via {via} in {sys.executable}")
    # Read now, before the app can change them: the parent's word about its span (see state).
    env_carrier.remember_inherited(os.environ)
    # The launcher's note to the process it became has done its work once the agent runs: taken out,
    # the app and its children see the environment they were given (and code that walks the whole
    # environment on every call, as requests does for proxies, pays nothing for it).
    if os.environ.get(paths.LAUNCHED_PID) == str(os.getpid()):
        del os.environ[paths.LAUNCHED_PID]
    if not config.inherit:
        _stop_inheritance()
    if not config.instrumentation_disabled("logging"):
        # Before the SDK check: a format naming the trace ids works with the SDK off too.
        importhooks.on_import("logging", _on_logging_import)
    if state.sdk_disabled():
        report.debug("OTEL_SDK_DISABLED is true: no tracing in this process")
        return
    # Before any hook can start the SDK: a process that gevent or eventlet will patch holds it.
    green.install(config.green)
    exits.install_exit_hooks()
    fork.install()
    # Before the app runs: an app that binds `from os import fork` early gets the quiet one.
    fork.install_quiet_fork()
    from logfire_run.instrumentors import loader

    for record in loader.register_hooks(config):
        for module_name in record.modules:
            if importhooks.already_imported(module_name):
                # Imported before the agent started: instrumented when the SDK comes up, not now.
                state.when_sdk_ready(_run_hooks_later(module_name, sys.modules[module_name]), start=False)
    importhooks.on_import("opentelemetry.propagate", _on_propagate_import)
    importhooks.on_import("opentelemetry.trace", _on_trace_import)
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if config.service_name is None and program.startswith(("manage", "django")):
        from logfire_run.agent.service_names import pending_django_settings

        if pending_django_settings():
            # manage.py names its settings module itself, after the agent started (service_names).
            importhooks.on_import("django.conf", _on_django_settings)
    importhooks.on_import("opentelemetry.metrics", _on_metrics_import)


def _run_hooks_later(module_name: str, module: ModuleType) -> Callable[[], None]:
    def run() -> None:
        importhooks.run_hooks(module_name, module)

    return run


def _on_logging_import(module: ModuleType) -> None:
    """Trace ids on every log record from the first import of `logging` on, SDK or not (see
    `instrumentors.log_capture`); capture starts with the `logging` instrumentor."""
    from logfire_run.agent.export import log_capture

    log_capture.set_level(state.config().log_level)
    log_capture.install(module)


def _on_django_settings(module: ModuleType) -> None:
    state.refresh_resource()


def _on_propagate_import(module: ModuleType) -> None:
    state.install_policy()


def _on_trace_import(module: ModuleType) -> None:
    """Wrap the API's provider functions so the SDK starts on first use, unless the app set its own.

    The first call of any of the three takes all three wrappers off, then starts the SDK (after
    the app's own provider is set, for `set_tracer_provider`: the SDK adopts it).
    """
    _start_on_first_use(module, "tracer", _first_use, by_opentelemetry=True)


def _on_metrics_import(module: ModuleType) -> None:
    """The same for `opentelemetry.metrics`: an app that only records metrics starts the SDK too."""
    _start_on_first_use(module, "meter", _first_metrics_use, by_opentelemetry=False)


def _start_on_first_use(module: ModuleType, what: str, patches: Patches, *, by_opentelemetry: bool) -> None:
    """`by_opentelemetry`: a call from OpenTelemetry's own code counts as a first use too."""
    api: Any = module
    get_provider = getattr(api, f"get_{what}_provider")
    get_one = getattr(api, f"get_{what}")
    set_provider = getattr(api, f"set_{what}_provider")

    def get_provider_first(*args: Any, **kwargs: Any) -> Any:
        if not by_opentelemetry and _from_opentelemetry():
            return get_provider(*args, **kwargs)
        patches.restore()
        _say_what_starts(f"the app asked for the {what} provider")
        state.start_sdk()
        return get_provider(*args, **kwargs)

    def get_one_first(*args: Any, **kwargs: Any) -> Any:
        if not by_opentelemetry and _from_opentelemetry():
            return get_one(*args, **kwargs)
        patches.restore()
        _say_what_starts(f"the app asked for a {what}")
        state.start_sdk()
        return get_one(*args, **kwargs)

    def set_provider_first(*args: Any, **kwargs: Any) -> Any:
        patches.restore()
        result = set_provider(*args, **kwargs)
        state.start_sdk()  # adopts the app's provider
        return result

    patches.replace(api, f"get_{what}_provider", get_provider_first)
    patches.replace(api, f"get_{what}", get_one_first)
    patches.replace(api, f"set_{what}_provider", set_provider_first)


def _from_opentelemetry() -> bool:
    """Whether the caller of the wrapper is OpenTelemetry's own code: its exporters ask for the meter
    provider as they are built (their own metrics), when an app builds its own tracer provider; that
    is not the app's first use, and must not start the agent's SDK before the app's provider is set."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    return isinstance(caller, str) and caller.startswith("opentelemetry.")


#: The three functions of `opentelemetry.trace` that start the SDK on first use, until one is called.
_first_use = Patches("start on first use")
#: And of `opentelemetry.metrics`.
_first_metrics_use = Patches("start on first metrics use")


def _say_what_starts(cause: str) -> None:
    if not state.sdk_running():
        report.debug(f"{cause}: the SDK starts")


def configure(**settings: Any) -> None:
    """`logfire_run.configure()`: update the settings, start the agent here if it is not, then the SDK."""
    state.configure(settings)
    start("configure()")
    state.start_sdk()


def _stop_inheritance() -> None:
    """LOGFIRE_RUN_INHERIT=0: this process is traced, the processes it starts are not."""
    os.environ.pop("LOGFIRE_RUN", None)
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    kept = [entry for entry in entries if entry and os.path.abspath(entry) != paths.SITECUSTOMIZE_DIR]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)
