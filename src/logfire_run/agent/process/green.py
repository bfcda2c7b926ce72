"""gevent and eventlet: in a process that will monkey-patch, the SDK waits until the patching is done.

Monkey-patching replaces `socket`, `select`, `ssl`, `threading` and `time.sleep` with cooperative
versions, and must come before anything uses the originals: a thread, a lock or a socket made
before it stays blocking, and a worker that waits in an unpatched `select.poll` runs no task and
never sees SIGTERM. The agent's SDK makes threads (the batch processors, the log pipeline, the exit
flusher) and its instrumentors import the libraries they patch (Celery's imports kombu, `select`,
`socket`, `ssl`). So in such a process the SDK is held (`state.hold_sdk`) from the agent's start
until the patching is done; the instrumentors of libraries imported meanwhile wait with it
(`state.when_sdk_ready`). When `gevent.monkey.patch_all()` or `eventlet.monkey_patch()` returns,
the hold ends, and everything starts as it would with threads, on the patched modules.

A process that will patch is recognised, at the agent's start, by:
- `LOGFIRE_GREEN` (`--green`): `gevent` or `eventlet` says so; `off` turns all of this off;
- its command line: `celery ... worker -P gevent|eventlet` (`--pool`, or `CELERYD_POOL` in the
  environment), and `gunicorn -k gevent|eventlet` (`--worker-class`, the dotted class names, in
  `GUNICORN_CMD_ARGS` or as `worker_class` in the config file, `-c` or `./gunicorn.conf.py`);
- `gevent.monkey` or `eventlet` imported and not yet patched;
and later, while the SDK is still off, by the first import of `gevent.monkey` or `eventlet` (an app
whose first line patches). A Celery worker without a green pool on its command line is held too,
until its app is loaded and its pool chosen (`celery.apps.worker` imported): Celery's `worker_pool`
setting can only be read there, and an app that selects gevent so patches while it is loaded.

Where it stops: a process that patches after the SDK started (nothing above told) gets one
`--debug` line; its first threads stay real threads. A process held that never patches (a gunicorn
master: only its workers patch) never starts the SDK, and makes no spans. Greenlets carrying the
context of the span that spawned them is the `greenlets` instrumentor's work.
"""

from __future__ import annotations

import contextlib
import os
import sys

from logfire_run.agent import importhooks, report
from logfire_run.agent.patching import Patches
from logfire_run.agent.process import state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import ModuleType
    from typing import Any

_patches = Patches("green")
_GUNICORN_CONFIG = "gunicorn.conf.py"


def install(setting: str) -> None:
    """At the agent's start: hold the SDK if this process will patch, and watch for patching."""
    if setting == "off":
        return
    argv = _command_line()
    green, why = (setting, f"LOGFIRE_GREEN={setting}") if setting != "auto" else detect(argv, os.environ)
    if green is None and patched() is None:
        for module_name, name in (("gevent.monkey", "gevent"), ("eventlet", "eventlet")):
            if module_name in sys.modules:
                green, why = name, f"{module_name} was imported before the agent started"
    if green is not None and patched() is None:
        state.hold_sdk(f"{why}: until {green} has monkey-patched")
    elif _is_celery_worker(argv) and patched() is None:
        state.hold_sdk("a Celery worker: until its app is loaded and its pool chosen")
        importhooks.on_import("celery.apps.worker", _celery_worker_ready)
    importhooks.on_import("gevent.monkey", _watch_gevent)
    importhooks.on_import("eventlet.patcher", _watch_eventlet)


def patched() -> str | None:
    """ "gevent" or "eventlet" when this process is monkey-patched (its threads are greenlets)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            if monkey.is_module_patched("threading") or monkey.is_module_patched("socket"):
                return "gevent"
        except Exception:  # a gevent without these (older than 1.1): taken as not patched
            pass
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None:
        try:
            if patcher.is_monkey_patched("thread") or patcher.is_monkey_patched("socket"):
                return "eventlet"
        except Exception:
            pass
    return None


# Detection from the command line and the environment


def _command_line() -> list[str]:
    """The command as given (`sys.orig_argv` keeps `-m celery`, which `sys.argv` turns into a path)."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv or [])
    program = os.path.basename(argv[0]) if argv else ""
    if program.startswith("python"):
        # `python -m celery ...` or `python /venv/bin/gunicorn ...`: the program is what python runs.
        rest = argv[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest = rest[2:] if rest[0] in ("-W", "-X") else rest[1:]
        if rest[:1] == ["-m"]:
            return rest[1:]
        return rest
    return argv


def detect(argv: Sequence[str], environ: Any) -> tuple[str | None, str]:
    """("gevent" | "eventlet" | None, what told): a Celery worker's pool, a gunicorn worker class."""
    program = os.path.basename(argv[0]) if argv else ""
    if program in ("celery", "celery.exe") or program.startswith("celery."):
        pool = _option(argv, ("-P",), ("--pool",))
        source = "celery -P"
        if pool is None and environ.get("CELERYD_POOL"):
            pool, source = environ["CELERYD_POOL"], "CELERYD_POOL"
        if _is_celery_worker(argv):
            green = _green_name(pool or "")
            return green, f"{source} {pool}"
    elif program in ("gunicorn", "gunicorn.exe") or program.startswith("gunicorn."):
        args = list(argv[1:])
        extra = environ.get("GUNICORN_CMD_ARGS", "")
        if extra:
            import shlex

            with contextlib.suppress(ValueError):  # unbalanced quotes: gunicorn refuses them itself
                args = shlex.split(extra) + args  # the command line wins, as gunicorn reads them
        worker_class = _option(args, ("-k",), ("--worker-class",), last=True)
        source = "gunicorn -k"
        if worker_class is None:
            worker_class, source = _gunicorn_config_worker_class(args), "worker_class in gunicorn's config"
        green = _green_name(worker_class or "")
        return green, f"{source} {worker_class}"
    return None, ""


def _is_celery_worker(argv: Sequence[str]) -> bool:
    program = os.path.basename(argv[0]) if argv else ""
    if not (program in ("celery", "celery.exe") or program.startswith("celery.")):
        return False
    return "worker" in argv[1:]


def _green_name(text: str) -> str | None:
    """The library a pool or worker class name means: `eventlet` first (`geventlet` is eventlet's)."""
    lowered = text.lower()
    if "eventlet" in lowered:
        return "eventlet"
    if "gevent" in lowered:
        return "gevent"
    return None


def _option(
    args: Sequence[str], short: tuple[str, ...], long: tuple[str, ...], *, last: bool = False
) -> str | None:
    """The value of an option written `-P x`, `-Px`, `--pool x` or `--pool=x` (the first, or the last)."""
    found = None
    for index, arg in enumerate(args):
        value = None
        if arg in short or arg in long:
            value = args[index + 1] if index + 1 < len(args) else None
        elif arg.startswith("--") and arg.partition("=")[0] in long:
            value = arg.partition("=")[2]
        elif not arg.startswith("--") and any(arg.startswith(option) and arg != option for option in short):
            value = arg[2:]
        if value is not None:
            if not last:
                return value
            found = value
    return found


def _gunicorn_config_worker_class(args: Sequence[str]) -> str | None:
    """`worker_class = "..."` in the config file gunicorn reads (a plain assignment only)."""
    path = _option(args, ("-c",), ("--config",), last=True)
    if path is None:
        path = _GUNICORN_CONFIG
    if path.startswith("python:"):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read(65536)
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.strip() == "worker_class" and not line[:1].isspace():
            value = value.split("#")[0].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                found = value[1:-1]
    return found


# The patching, seen as it happens


def _watch_gevent(module: ModuleType) -> None:
    """`gevent.monkey` imported: hold the SDK until `patch_all()` has run, if it is still off."""
    _watch(module, "gevent", "patch_all")


def _watch_eventlet(module: ModuleType) -> None:
    """`eventlet.patcher` imported (every `import eventlet` does): the same for `monkey_patch()`."""
    _watch(module, "eventlet", "monkey_patch")
    # Imported in full already, the package's own `monkey_patch` is the original (half-way through
    # its import, it binds ours next).
    package = sys.modules.get("eventlet")
    current = getattr(package, "monkey_patch", None)
    if callable(current) and current is not getattr(module, "monkey_patch", None):
        _patches.replace(package, "monkey_patch", _releasing(current, "eventlet"))


def _watch(module: ModuleType, green: str, function: str) -> None:
    if patched() is not None:
        state.release_sdk(f"{green} has monkey-patched")
        return
    if state.sdk_state() == "off":
        state.hold_sdk(f"{module.__name__} was imported: until {green} has monkey-patched")
    original = getattr(module, function, None)
    if callable(original):
        _patches.replace(module, function, _releasing(original, green))


def _releasing(original: Callable[..., Any], green: str) -> Callable[..., Any]:
    def monkey_patch(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            _patching_done(green)

    return monkey_patch


def _patching_done(green: str) -> None:
    if state.sdk_held():
        state.release_sdk(f"{green} has monkey-patched")
    elif state.sdk_state() != "off":
        report.debug(
            f"{green} monkey-patched after the SDK started: the agent's first threads stay real threads "
            "(LOGFIRE_GREEN tells the agent to wait; see docs/configuration.md)"
        )


def _celery_worker_ready(module: ModuleType) -> None:
    if state.sdk_held() and patched() is None:
        state.release_sdk("the Celery worker's app is loaded")
