"""Child processes: the current trace context goes into their environment (TRACEPARENT, TRACESTATE,
BAGGAGE), as OpenTelemetry's specification for environment variables as carriers describes.

What it patches:
    - subprocess (so `Popen`, `run`, `call`, `check_call`, `check_output`, and asyncio's
      subprocesses): on Python 3.11+ its `_fork_exec` name for `_posixsubprocess.fork_exec`, whose
      env list is changed in its carrier entries only; on 3.10, `Popen.__init__`'s `env` argument.
    - `os.execv` and `os.execve`, which every other `os.exec*` calls (they look them up in `os` at
      call time), and so `os.spawn*` on POSIX, whose forked child calls them.
    - `os.posix_spawn` and `os.posix_spawnp`: their `env` argument (None too from Python 3.13, where
      it means "inherit" and where subprocess starts most children with posix_spawn).
    Inside a span, the child's environment is a copy of the one it would get (the caller's `env=`, or
    `os.environ`) with the current context injected by the global propagator (never gated by the
    policy), each field under its upper-case name. Outside any span, the copy lacks the carrier
    variables this process was started with: they describe someone else's span. A carrier variable
    the app set itself, in `os.environ` or in its `env=`, is the app's and is kept (see
    `agent/propagation/env_carrier.py`). The caller's mapping and `os.environ` are never changed.

When it is enabled:
    Once the SDK is up (its targets, `os` and `subprocess`, are standard-library modules that a
    program imports without making a span: they never start the SDK). `--disable subprocess` turns
    it off. Only logfire-run loads it (`logfire_run_instrumentor` group).

How it refuses:
    It needs the standard library and wrapt only. If the environment cannot be read or copied (an
    `env=` that is not a mapping, bytes keys), the call goes on with the caller's arguments as they
    are, so the error or the behaviour is the one the app gets without the agent.

Where it stops:
    `multiprocessing`'s own spawn and forkserver starts go through `_posixsubprocess` directly, not
    through anything patched here (see docs/multiprocessing.md). `os.fork()` alone needs nothing: a
    forked child has the parent's context in memory. Before `os.exec*` replaces the process, its
    ended spans are sent (within the exit budget); a span still open then never ends, and the new
    program's spans name it as parent all the same. Windows' C `os.spawn*` is not patched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from logfire_run.agent import report
from logfire_run.agent.patching import Patches
from logfire_run.agent.process import exits, state
from logfire_run.agent.propagation import env_carrier
from logfire_run.instrumentors._base import PatchingInstrumentor

__all__ = ["SubprocessInstrumentor"]

#: os.environ keeps bytes on POSIX (`_data`); a copy of those is what a child is given there.
_POSIX = os.name == "posix"


class SubprocessInstrumentor(PatchingInstrumentor):
    """The current context into the environment of every child process; see the module docstring."""

    targets = ("os", "subprocess")
    supported = ()
    options: ClassVar[dict[str, Any]] = {}
    supersedes = ()

    patches_name = "subprocess"

    def _instrument(self, **kwargs: Any) -> None:
        self.active = True
        _patch_os(self._patches, os)
        self.patch_on_import("subprocess", lambda module: _patch_subprocess(self._patches, module))

    def _uninstrument(self, **kwargs: Any) -> None:
        self.active = False
        self._patches.restore()


# The current context as variables


_last_carrier: tuple[object, dict[str, str]] = (None, {})


def _carrier() -> dict[str, str]:
    """The current context as the propagator writes it; empty outside any span of this process."""
    global _last_carrier
    context_api = sys.modules.get("opentelemetry.context")
    if context_api is None:
        return {}  # OpenTelemetry was never loaded here: no span can be current
    current = context_api.get_current()
    if not current or current is state.inherited_context():
        return {}
    last = _last_carrier
    if last[0] is current:
        return last[1]
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier, current)
    _last_carrier = (current, carrier)
    return carrier


def _environment_for_child(env: Mapping[Any, Any] | None) -> dict[Any, Any] | None:
    """What to pass instead of `env` (None: the child's environment, `os.environ`), or None to leave it."""
    try:
        carrier = _carrier()
        if not carrier and not env_carrier.inherited:
            return None  # the cheap case: no span, nothing inherited to take out
        if env is None:
            data = getattr(os.environ, "_data", None)
            if _POSIX and isinstance(data, dict):
                return env_carrier.child_environ_bytes(data, carrier)
            env = os.environ
        return env_carrier.child_environment(env, carrier)
    except Exception as error:
        report.debug(f"no trace context for a child process ({type(error).__name__}: {error})")
        return None


def _env_list_for_child(entries: Any) -> list[bytes] | None:
    """What `_fork_exec` should get instead of `entries` (subprocess's env list, None: inherit)."""
    try:
        carrier = _carrier()
        if not carrier and not env_carrier.inherited:
            return None
        data = getattr(os.environ, "_data", None)
        if not isinstance(data, dict) or not (entries is None or isinstance(entries, list)):
            return None
        return env_carrier.child_env_list(entries, data, carrier)
    except Exception as error:
        report.debug(f"no trace context for a child process ({type(error).__name__}: {error})")
        return None


# subprocess


def _patch_subprocess(patches: Patches, module: Any) -> None:
    global _POPEN_ENV_INDEX
    real_fork_exec = getattr(module, "_fork_exec", None)
    if _POSIX and callable(real_fork_exec):
        # Python 3.11+: subprocess's own name for _posixsubprocess.fork_exec (multiprocessing calls that
        # one directly, and is not affected). Its env list is bytes already: only the carrier entries
        # change, where a new `env=` mapping would cost a copy and subprocess's re-encoding of it.
        def _fork_exec(*args: Any) -> Any:
            if len(args) > _FORK_EXEC_ENV_INDEX:
                entries = _env_list_for_child(args[_FORK_EXEC_ENV_INDEX])
                if entries is not None:
                    args = (*args[:_FORK_EXEC_ENV_INDEX], entries, *args[_FORK_EXEC_ENV_INDEX + 1 :])
            return real_fork_exec(*args)

        patches.replace(module, "_fork_exec", _fork_exec)
        return
    code = getattr(module.Popen.__init__, "__code__", None)
    names = code.co_varnames[1 : code.co_argcount] if code is not None else ()
    _POPEN_ENV_INDEX = names.index("env") if "env" in names else -1
    patches.wrap(module.Popen, "__init__", _popen_init)


#: Where the env list is among fork_exec's arguments (args, executable_list, close_fds, pass_fds,
#: cwd, env_list, ...), the same from Python 3.10 to 3.14.
_FORK_EXEC_ENV_INDEX = 5


#: Where `env` is among Popen's positional parameters (after self), -1 if it is not one.
_POPEN_ENV_INDEX = -1


def _popen_init(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    index = _POPEN_ENV_INDEX
    if "env" in kwargs:
        environment = _environment_for_child(kwargs["env"])
        if environment is not None:
            kwargs = {**kwargs, "env": environment}
    elif 0 <= index < len(args):
        environment = _environment_for_child(args[index])
        if environment is not None:
            args = (*args[:index], environment, *args[index + 1 :])
    else:
        environment = _environment_for_child(None)
        if environment is not None:
            kwargs = {**kwargs, "env": environment}
    return wrapped(*args, **kwargs)


# os


def _patch_os(patches: Patches, module: Any) -> None:
    real_execve = module.execve

    def execv(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        _flush_before_exec()
        if len(args) == 2 and not kwargs:
            environment = _environment_for_child(None)
            if environment is not None:
                # On failure, execv's own error (its message differs from execve's), from execv itself.
                with contextlib.suppress(OSError):
                    real_execve(args[0], args[1], environment)
        return wrapped(*args, **kwargs)

    def execve(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        _flush_before_exec()
        return with_env(wrapped, instance, args, kwargs)

    with_env = _with_env_argument(2, none_inherits=False)
    patches.wrap(module, "execv", execv)
    patches.wrap(module, "execve", execve)
    for name in ("posix_spawn", "posix_spawnp"):
        if hasattr(module, name):
            # From Python 3.13 its env may be None, "inherit": subprocess passes that, and uses
            # posix_spawn for most children there (close_fds no longer prevents it).
            patches.wrap(module, name, _with_env_argument(2, none_inherits=sys.version_info >= (3, 13)))


def _flush_before_exec() -> None:
    """Send the ended spans still queued: the program that replaces this one cannot.

    Within the exit budget, as at any exit; nothing to do (one call) when nothing is queued, as in
    the forked child of `os.spawn*`, whose queues start empty.
    """
    try:
        tracing = state.sdk()
        if tracing is not None and tracing.unsent():
            exits.exit_flush("os.exec")
    except Exception as error:
        report.debug(f"no flush before exec ({type(error).__name__}: {error})")


def _with_env_argument(index: int, *, none_inherits: bool) -> Callable[..., Any]:
    """A wrapper for a function whose positional argument `index` is the child's environment.

    None there is "inherit os.environ" when `none_inherits`, else an error the function raises itself.
    """

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        if len(args) > index and (none_inherits or args[index] is not None):
            environment = _environment_for_child(args[index])
            if environment is not None:
                args = (*args[:index], environment, *args[index + 1 :])
        return wrapped(*args, **kwargs)

    return wrapper
