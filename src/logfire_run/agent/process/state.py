"""The process state: the one owner of this process's config, policy, SDK lifecycle and deferred work.

Everything that exists once per process and lives as long as it does is here, and only here: other
modules ask through these functions and never keep a copy.

- The config: resolved from the environment on first use; `configure()` is its one writer after that.
- The policy: one `DistributedTracingPolicy`, built from the config; its mode is written here only.
- The SDK lifecycle: off -> starting -> on | failed | disabled. `start_sdk()` moves it;
  `when_sdk_ready(action)` is the one way to run something that needs the SDK: now if it is up,
  else as soon as it comes up (never, if it cannot). `hold_sdk(why)` keeps it off until
  `release_sdk()` (a process that gevent or eventlet will monkey-patch: see `green`); a start asked
  for meanwhile happens at the release.
- Flushing and shutting down on request (`flush`, `shutdown`: the public API's).

First-party extraction (`extract(carrier, third_party=False)`) needs only OpenTelemetry's API: it
works the same whether the SDK started, failed or is still off.

Stdlib only at import time, like the bootstrap that imports it in every process. Nothing here raises
into the app: failures are reported once on stderr (`report`) and the app runs on.

Where it stops: the flushes at exit are `exits`'s and what a forked child resets is `fork`'s; both
read the state from here. The context inherited through the environment is `propagation.inherited`'s.
"""

from __future__ import annotations

import _thread
import os

from logfire_run.agent import config as config_module
from logfire_run.agent import importhooks, report
from logfire_run.agent.process import signals

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from opentelemetry.context import Context

    from logfire_run.agent.config import Config
    from logfire_run.agent.errors import ConfigError
    from logfire_run.agent.process.sdk import TracingSdk
    from logfire_run.agent.propagation.policy import DistributedTracingPolicy

#: What the SDK's set-up imports besides OpenTelemetry (the OTLP exporters' HTTP and gRPC stacks).
_SETUP_IMPORTS = ("requests", "urllib3", "grpc", "google.protobuf")

_lock = _thread.RLock()
_started = False
_config: Config | None = None
_policy: DistributedTracingPolicy | None = None
_sdk: TracingSdk | None = None
_sdk_state = "off"  # off -> starting -> on | failed | disabled
_deferred: list[Callable[[], object]] = []
#: Why the SDK must not start yet ("" while nothing holds it), and whether a start was asked for since.
_held = ""
_start_at_release = False
#: While held, instrumentors run without the SDK (their spans wait for it: `when_instrumentable`).
_instrument_while_held = False


# The agent in this process


def mark_started() -> bool:
    """Record that the agent starts in this process; False if it already had."""
    global _started
    with _lock:
        if _started:
            return False
        _started = True
        return True


def started() -> bool:
    """Whether the agent was started in this process (or inherited running through fork)."""
    return _started


# Config and policy


def config() -> Config:
    """The process's one config object, resolved from the environment on first use."""
    global _config
    with _lock:
        if _config is None:
            resolved, errors = config_module.resolve(os.environ)
            report.debug_enabled = resolved.debug
            for error in errors:
                _set_aside(error)
            _config = resolved
        return _config


def _set_aside(error: ConfigError) -> None:
    """Report a value that is not accepted, and keep OpenTelemetry from reading it.

    OpenTelemetry reads its own variables itself (and raises on some bad ones, deep in set-up), so the
    variable is rewritten with what is usable or removed: its readers, here and in the children
    started afterwards, see the value the agent uses. The agent's own variables are left as they are.
    """
    variable = error.variable
    if error.usable_raw:
        report.problem(f"config:{error}", f"{error}; using {variable}={error.usable_raw}")
    else:
        report.problem(f"config:{error}", f"{error}; using the default")
    if variable and variable.startswith("OTEL_"):
        if error.usable_raw:
            os.environ[variable] = error.usable_raw
        else:
            os.environ.pop(variable, None)


def policy() -> DistributedTracingPolicy:
    """The process's one `DistributedTracingPolicy` (needs only the OpenTelemetry API)."""
    global _policy
    with _lock:
        if _policy is None:
            from logfire_run.agent.propagation.policy import new_policy

            _policy = new_policy(config().distributed_tracing)
        return _policy


def built_policy() -> DistributedTracingPolicy | None:
    """The policy if it was built (a fork hook must not build one)."""
    return _policy


def install_policy() -> None:
    """Make the policy the global propagator (once; later propagators are wrapped, never nested)."""
    from logfire_run.agent.propagation.policy import install_as_global

    install_as_global(policy())


def configure(settings: Mapping[str, object]) -> None:
    """Apply `configure()` keywords: the config, then whatever each changed setting applies to."""
    current = config()
    changed, errors = config_module.update(current, settings, "configure()")
    for error in errors:
        report.problem(f"configure:{error}", f"{error}; the setting is left as it was")
    report.debug_enabled = current.debug
    applies = {setting.applies for setting in changed if setting.applies}
    if "policy" in applies and _policy is not None:
        _policy.mode = current.distributed_tracing  # the policy's one writer
    if "logs" in applies:
        from logfire_run.agent.export import log_capture

        log_capture.set_level(current.log_level)
    if _sdk is not None:
        _sdk.apply(applies)


def refresh_resource() -> None:
    """Derive the resource's attributes again (a service name derived from what the app has set since)."""
    if _sdk is not None:
        _sdk.apply(("resource",))


def extract(carrier: Mapping[str, str], *, third_party: bool) -> Context:
    """The context in `carrier`: first-party (always extracted) or third-party (the policy decides).

    Through OpenTelemetry's global propagator, which is the policy once the agent runs here; the
    SDK's state does not matter.
    """
    from opentelemetry import propagate
    from opentelemetry.context import Context

    from logfire_run.agent.propagation.policy import first_party

    if started() and not sdk_disabled():
        install_policy()
    if third_party:
        return propagate.extract(carrier, Context())
    with first_party():
        return propagate.extract(carrier, Context())


# The SDK lifecycle and deferred work


def sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def sdk() -> TracingSdk | None:
    """The SDK objects of this process once they are set up, else None."""
    return _sdk


def sdk_running() -> bool:
    return _sdk_state == "on"


def sdk_state() -> str:
    """off, starting, on, failed or disabled."""
    return _sdk_state


def hold_sdk(why: str, *, instrumentors: bool = False) -> bool:
    """Keep the SDK off until `release_sdk()`; False (and nothing held) when it has started already.

    With `instrumentors`, the instrumentors of libraries imported meanwhile run at once, without the
    SDK (see `when_instrumentable`); a hold that is already on keeps its own choice.
    """
    global _held, _instrument_while_held
    with _lock:
        if _sdk_state != "off":
            return False
        if not _held:
            report.debug(f"the SDK waits: {why}")
            _instrument_while_held = instrumentors
        _held = why
        return True


def sdk_held() -> str:
    """Why the SDK waits for `release_sdk()`, or "" when it does not."""
    return _held


def release_sdk(why: str) -> None:
    """End `hold_sdk()`; the SDK starts now if something asked for it meanwhile."""
    global _held, _start_at_release
    with _lock:
        if not _held:
            return
        _held = ""
        start, _start_at_release = _start_at_release, False
    report.debug(f"the SDK may start: {why}" + ("" if start else " (nothing has asked for it yet)"))
    if start:
        start_sdk()


def start_sdk() -> bool:
    """Set the OpenTelemetry SDK up if it is not yet; False when tracing is off, failed or must wait.

    It waits (False) while the SDK is held (`hold_sdk`): it starts at the release. It must wait
    (False, nothing changed) while an OpenTelemetry module is half-imported (the app
    imported `opentelemetry.sdk.trace`, which imported `opentelemetry.trace`, whose hook called us):
    setting up then would read half-initialized modules. The next trigger tries again. So it must
    while a library that the set-up imports is half-imported (requests imports urllib.request, whose
    instrumentor starts the SDK, whose OTLP exporter imports requests): that library's own hook, at
    the end of its import, is the next trigger.
    """
    global _sdk_state, _sdk, _start_at_release
    if _sdk_state == "on":
        return True
    with _lock:
        if _sdk_state != "off":
            # "starting": our own imports during setup fired a hook; the SDK is not ready yet.
            return _sdk_state == "on"
        if _held:
            _start_at_release = True
            return False
        if sdk_disabled():
            _sdk_state = "disabled"
            _deferred.clear()
            return False
        if importhooks.initializing("opentelemetry", but="opentelemetry.propagate") or any(
            importhooks.initializing(name) for name in _SETUP_IMPORTS
        ):
            return False
        _sdk_state = "starting"
        try:
            from logfire_run.agent.process.sdk import TracingSdk

            tracing = TracingSdk(config(), policy())
            # The batch processors' threads start here: they must not be where SIGTERM lands.
            with signals.SigtermBlocked():
                tracing.install()
            _join_inherited_context()
            _sdk = tracing
            _sdk_state = "on"
        except Exception as error:
            _sdk_state = "failed"
            _deferred.clear()
            report.problem(
                "sdk", f"OpenTelemetry could not be set up ({type(error).__name__}: {error}); no spans"
            )
            return False
    _run_deferred()
    return True


def _join_inherited_context() -> None:
    """The context this process was started with becomes the default of every thread (`inherited`)."""
    from logfire_run.agent.propagation import env_carrier, inherited

    carrier = env_carrier.inherited_carrier()
    if not carrier:
        return
    if not config().env_context:
        report.debug("TRACEPARENT in the environment is ignored (env_context is off)")
        return
    try:
        inherited.join(extract(carrier, third_party=False))
    except Exception as error:
        report.debug(f"the context in the environment is ignored ({type(error).__name__}: {error})")


def inherited_context() -> Context | None:
    """The context joined from this process's environment, or None (none there, ignored, malformed)."""
    from logfire_run.agent.propagation import inherited

    return inherited.inherited_context()


def when_sdk_ready(action: Callable[[], object], *, start: bool = True) -> None:
    """Run `action` now if the SDK is up, else as soon as it comes up (never, if it cannot).

    With `start`, an SDK that is off is set up now (a library the app imported needs it); without,
    the action waits for whatever starts it (a standard-library module imported half-way through
    another import, which the SDK's own set-up may need).
    """
    with _lock:
        state = _sdk_state
        if state in ("off", "starting"):
            # Queued under the lock that start_sdk() sets "on" under: no action can fall between.
            _deferred.append(action)
    if state == "on":
        _run(action)
    elif state == "off" and start:
        start_sdk()


def when_instrumentable(action: Callable[[], object], *, start: bool = True) -> None:
    """Run an instrumentor's activation: as `when_sdk_ready`, except while the SDK is held with
    instrumentors allowed, when one whose library starts the SDK (`start`) runs now, and the SDK
    starts at the release.

    For a process that loads the app and forks the processes that patch (a preloading gunicorn
    master): its instrumentors must patch Flask or Django before the app is built from them, and
    their tracers are OpenTelemetry's proxies, which reach the SDK once it is set up in the workers.
    The others (standard-library targets, imported anywhere, our own imports included) wait.
    """
    if start and _held and _instrument_while_held:
        start_sdk()  # held: only remembers that it must start at the release
        _run(action)
    else:
        when_sdk_ready(action, start=start)


def _run_deferred() -> None:
    while True:
        with _lock:
            if not _deferred:
                return
            action = _deferred.pop(0)
        # Run without the lock: an action imports modules, and another thread importing one of them
        # may be waiting in when_sdk_ready() for this lock.
        _run(action)


def _run(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception as error:
        report.problem(f"deferred:{action}", f"deferred instrumentation failed ({error}); the app runs on")


def flush(timeout_millis: int) -> bool:
    """Export every ended span of this process's tracer provider (the agent's or the app's) now."""
    from opentelemetry import trace

    # The API has no public "is one set?"; get_tracer_provider() would hand back a proxy instead.
    force_flush = getattr(getattr(trace, "_TRACER_PROVIDER", None), "force_flush", None)
    return bool(force_flush(timeout_millis)) if callable(force_flush) else True


def shutdown() -> None:
    """Flush and stop the SDK of this process; spans ended afterwards are dropped."""
    if _sdk is not None:
        _sdk.shutdown()
