"""The agent's entry into a process: resolve the config, register import hooks, set the SDK up lazily.

`start()` is what `sitecustomize` (launcher) and `logfire_run.pth` (env-only) call at interpreter start.
It is stdlib-only and cheap: a few dictionary lookups, the instrumentor cache and one finder on
`sys.meta_path`. The OpenTelemetry SDK is imported by `ensure_sdk()`, the first time something needs
it: an instrumented library is imported, the app imports `opentelemetry.trace` or
`opentelemetry.propagate` itself, or the app calls the public API.

Nothing here raises into the app: every failure is reported once on stderr and the app runs on.
"""

from __future__ import annotations

import _thread
import os
import sys

from logfire_run.agent import config as config_module
from logfire_run.agent import importhooks, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any, NoReturn

    from logfire_run.agent.config import Config
    from logfire_run.agent.policy import DistributedTracingPolicy
    from logfire_run.agent.sdk import Agent

#: The folder the launcher puts first on PYTHONPATH; child interpreters find `sitecustomize` there.
SITECUSTOMIZE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sitecustomize")

_lock = _thread.RLock()
_started_via: str | None = None
_config: Config | None = None
_agent: Agent | None = None
_policy: DistributedTracingPolicy | None = None
_sdk_state = "off"  # off -> starting -> on | failed | disabled
_deferred: list[Callable[[], object]] = []


def start(via: str) -> None:
    """Start the agent in this process, once; `via` says who asked (for `--debug`)."""
    global _started_via
    with _lock:
        if _started_via is not None:
            return
        _started_via = via
    try:
        _start()
    except Exception as error:
        report.problem(
            "bootstrap",
            f"the agent could not start ({type(error).__name__}: {error}); the app runs without it",
        )


def _start() -> None:
    config = get_config()
    report.debug(f"agent started via {_started_via} in {sys.executable}")
    if not config.inherit:
        _stop_inheritance()
    if _sdk_disabled():
        report.debug("OTEL_SDK_DISABLED is true: no tracing in this process")
        return
    from logfire_run.instrumentors import loader

    for instrumentor in loader.register_hooks(config):
        for module_name in instrumentor.modules:
            if importhooks.already_imported(module_name):
                # Imported before the agent started: instrumented when the SDK comes up, not now.
                defer(_run_hooks_later(module_name, sys.modules[module_name]))
    # The app's own use of OpenTelemetry: the policy goes in as soon as `opentelemetry.propagate`
    # exists; the SDK comes up when the app first asks for a tracer (not when it imports the API, so
    # an app that installs its own TracerProvider first keeps it).
    importhooks.register("opentelemetry.trace", _on_trace_import)
    importhooks.register("opentelemetry.propagate", _on_propagate_import)


def _run_hooks_later(module_name: str, module: ModuleType) -> Callable[[], None]:
    def run() -> None:
        importhooks.run_hooks(module_name, module)

    return run


def _on_propagate_import(module: ModuleType) -> None:
    from logfire_run.agent.policy import install_as_global

    install_as_global(policy())


def _on_trace_import(module: ModuleType) -> None:
    """Wrap the API's provider functions so the SDK starts on first use, unless the app set its own."""
    api: Any = module
    get_tracer_provider = api.get_tracer_provider
    get_tracer = api.get_tracer
    set_tracer_provider = api.set_tracer_provider

    def restore() -> None:
        api.get_tracer_provider = get_tracer_provider
        api.get_tracer = get_tracer
        api.set_tracer_provider = set_tracer_provider

    def get_tracer_provider_first(*args: Any, **kwargs: Any) -> Any:
        restore()
        ensure_sdk()
        return get_tracer_provider(*args, **kwargs)

    def get_tracer_first(*args: Any, **kwargs: Any) -> Any:
        restore()
        ensure_sdk()
        return get_tracer(*args, **kwargs)

    def set_tracer_provider_first(*args: Any, **kwargs: Any) -> Any:
        restore()
        result = set_tracer_provider(*args, **kwargs)
        ensure_sdk()  # adopts the app's provider: policy, link processor, flush at exit
        return result

    for wrapper, original in (
        (get_tracer_provider_first, get_tracer_provider),
        (get_tracer_first, get_tracer),
        (set_tracer_provider_first, set_tracer_provider),
    ):
        wrapper.__name__ = original.__name__
        wrapper.__doc__ = original.__doc__
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    api.get_tracer_provider = get_tracer_provider_first
    api.get_tracer = get_tracer_first
    api.set_tracer_provider = set_tracer_provider_first


def policy() -> DistributedTracingPolicy:
    """The process's one `DistributedTracingPolicy` (needs only the OpenTelemetry API)."""
    global _policy
    with _lock:
        if _policy is None:
            from logfire_run.agent.policy import new_policy

            _policy = new_policy(get_config().distributed_tracing)
        return _policy


def get_config() -> Config:
    """The process's one config object, resolved from the environment on first use."""
    global _config
    with _lock:
        if _config is None:
            config, errors = config_module.resolve(os.environ)
            report.debug_enabled = config.debug
            for error in errors:
                report.problem(f"config:{error}", f"{error}; using the default")
            _config = config
        return _config


def started() -> bool:
    return _started_via is not None


def sdk_ready() -> bool:
    return _sdk_state == "on"


def sdk_starting() -> bool:
    return _sdk_state == "starting"


def defer(action: Callable[[], object]) -> None:
    """Run `action` once the SDK is up (now, if it is)."""
    if _sdk_state == "on":
        action()
    else:
        _deferred.append(action)


def ensure_sdk() -> bool:
    """Set the OpenTelemetry SDK up if it is not yet; False when tracing is off or setup failed.

    Also False, with nothing changed, while an OpenTelemetry module is half-imported (the app imported
    `opentelemetry.sdk.trace`, which imported `opentelemetry.trace`, whose hook called us): setting up
    then would read half-initialized modules. The next trigger tries again.
    """
    global _sdk_state, _agent
    if _sdk_state == "on":
        return True
    with _lock:
        if _sdk_state != "off":
            # "starting" means our own imports during setup fired a hook: the SDK is not ready yet.
            return _sdk_state == "on"
        if _sdk_disabled():
            _sdk_state = "disabled"
            return False
        if importhooks.initializing("opentelemetry", but="opentelemetry.propagate"):
            return False
        _sdk_state = "starting"
        try:
            from logfire_run.agent.sdk import Agent

            agent = Agent(get_config(), policy())
            agent.install()
            _agent = agent
            _sdk_state = "on"
        except Exception as error:
            _sdk_state = "failed"
            report.problem(
                "sdk", f"OpenTelemetry could not be set up ({type(error).__name__}: {error}); no spans"
            )
            return False
    _install_sigterm_flush()
    install_exit_flush()
    _run_deferred()
    return True


def sdk_may_start() -> bool:
    """True while a later `ensure_sdk()` may still succeed."""
    return _sdk_state in ("off", "starting")


def _run_deferred() -> None:
    while _deferred:
        action = _deferred.pop(0)
        try:
            action()
        except Exception as error:
            report.problem(
                f"deferred:{action}", f"deferred instrumentation failed ({error}); the app runs on"
            )


def agent() -> Agent | None:
    return _agent


def configure(**settings: Any) -> None:
    """Update the config (and the running SDK); start the agent in this process if it is not running."""
    config = get_config()
    changed, errors = config_module.update(config, settings, "configure()")
    for error in errors:
        report.problem(f"configure:{error}", f"{error}; the setting is left as it was")
    report.debug_enabled = config.debug
    start("configure()")
    if _policy is not None and "distributed_tracing" in changed:
        _policy.mode = config.distributed_tracing
    if _agent is not None:
        _agent.reconfigure(changed)
    else:
        ensure_sdk()


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _stop_inheritance() -> None:
    """LOGFIRE_RUN_INHERIT=0: this process is traced, the processes it starts are not."""
    os.environ.pop("LOGFIRE_RUN", None)
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    kept = [entry for entry in entries if entry and os.path.abspath(entry) != SITECUSTOMIZE_DIR]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)


# Flushing at exit. The provider flushes at interpreter exit through atexit; SIGTERM's default action
# skips atexit, so when the app leaves SIGTERM at its default the agent flushes first, then dies by
# the same signal, so the exit status the parent sees is unchanged.


def _install_sigterm_flush() -> None:
    try:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal() works only there; atexit still covers normal exits
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _flush_on_sigterm)
    except Exception as error:
        report.debug(f"no SIGTERM flush: {error}")


# os._exit() skips atexit. Forked children leave that way (multiprocessing fork and forkserver
# workers, Celery's prefork children, gunicorn workers), so once the SDK is up os._exit flushes first,
# for a bounded time, in whichever process calls it: the child may have set the SDK up after the fork.

EXIT_FLUSH_MILLIS = 5000
_real_exit = os._exit


def install_exit_flush() -> None:
    os._exit = _flushing_exit


def _flushing_exit(status: int) -> NoReturn:
    try:
        if _agent is not None:
            _agent.force_flush(EXIT_FLUSH_MILLIS)
    except BaseException:
        pass
    _real_exit(status)


_sigterm_flushing = False


def _flush_on_sigterm(signum: int, frame: object) -> None:
    global _sigterm_flushing
    import signal

    if _sigterm_flushing:
        # A second SIGTERM during the flush (a broken ProcessPoolExecutor terminates its workers twice
        # on Python 3.12+) would cut it short: the first one finishes and ends the process.
        return
    _sigterm_flushing = True
    try:
        if _agent is not None:
            _agent.shutdown()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
