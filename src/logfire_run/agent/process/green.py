"""gevent and eventlet: in a process that will monkey-patch, the SDK waits until the patching is done.

Monkey-patching replaces `socket`, `select`, `ssl`, `threading` and `time.sleep` with cooperative
versions, and must come before anything uses the originals: a thread, a lock or a socket made
before it stays blocking, and a worker that waits in an unpatched `select.poll` runs no task and
never sees SIGTERM. The agent's SDK makes threads (the batch processors, the log pipeline, the exit
flusher) and its instrumentors import the libraries they patch (Celery's imports kombu, `select`,
`socket`, `ssl`). So in such a process the SDK is held (`state.hold_sdk`) from the agent's start
until the patching is done; the instrumentors of libraries imported meanwhile wait with it
(`state.when_sdk_ready`). When gevent says `patch_all()` is done (its `GeventDidPatchAllEvent`) or
`eventlet.monkey_patch()` returns, the hold ends, and everything starts as it would with threads,
on the patched modules.

A process that will patch is recognised, at the agent's start, by:
- `LOGFIRE_GREEN` (`--green`): `gevent` or `eventlet` says so; `off` turns all of this off;
- its command line: `celery ... worker -P gevent|eventlet` (`--pool`, or `CELERYD_POOL` in the
  environment), and `gunicorn -k gevent|eventlet` (`--worker-class`, the dotted class names, in
  `GUNICORN_CMD_ARGS` or as `worker_class` in the config file, `-c` or `./gunicorn.conf.py`);
- `gevent.monkey` or `eventlet` imported and not yet patched;
and later, while the SDK is still off, by the first import of `gevent.monkey` or `eventlet` (an app
whose first line patches). A Celery worker without a green pool on its command line is held too,
until its app is loaded and its pool chosen (`celery.apps.worker` imported), or until it patches:
Celery's `worker_pool` setting (and `CELERYD_POOL`, which Celery itself does not patch for) can only
be read there, and an app that selects gevent so patches while it is loaded.

A gunicorn master that preloads the app never patches (its workers do, after the fork): it is held
with its instrumentors allowed to run (`state.when_instrumentable`), so that the app is built from
the Flask or Django they patched, and each worker starts the SDK once it has patched.

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
#: Celery's options that take a value, before the subcommand (`celery -A proj worker`).
_CELERY_VALUE_OPTIONS = (
    "-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir",
)  # fmt: skip


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
    if patched() is not None:
        pass
    elif setting == "auto" and _is_celery_worker(argv):
        # Celery patches for `-P` before it loads the app; nothing patches for CELERYD_POOL or the
        # `worker_pool` setting unless the app does, while it is loaded: the worker starts after.
        state.hold_sdk(
            f"a Celery worker ({why or 'no green pool given'}): until it has patched or its app is loaded"
        )
        importhooks.on_import("celery.apps.worker", _celery_worker_ready)
    elif green is not None:
        # A preloading gunicorn master loads the app and never patches (its workers do, after the
        # fork): its instrumentors run at once, so that the app's Flask or Django is built from
        # what they patched, and the SDK starts in each worker once it has patched.
        preloads = _gunicorn_preloads(argv, os.environ)
        state.hold_sdk(f"{why}: until {green} has monkey-patched", instrumentors=preloads)
    importhooks.on_import("gevent.monkey", _watch_gevent)
    importhooks.on_import("eventlet.patcher", _watch_eventlet)


def patched() -> str | None:
    """The library that monkey-patched this process ("gevent", "eventlet"), or None."""
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
    if program.startswith(("python", "pypy")):
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
            return green, f"{source} {pool}" if green else ""
    elif _is_gunicorn(argv):
        args = _gunicorn_args(argv, environ)
        worker_class = _option(args, ("-k",), ("--worker-class",), last=True)
        source = "gunicorn -k"
        if worker_class is None:
            worker_class, source = _gunicorn_config_worker_class(args), "worker_class in gunicorn's config"
        green = _green_name(worker_class or "")
        return green, f"{source} {worker_class}" if green else ""
    return None, ""


def _is_celery_worker(argv: Sequence[str]) -> bool:
    """`celery [options] worker ...`: the subcommand is the first word that is no option's value."""
    program = os.path.basename(argv[0]) if argv else ""
    if not (program in ("celery", "celery.exe") or program.startswith("celery.")):
        return False
    args = list(argv[1:])
    while args:
        arg = args.pop(0)
        if arg in _CELERY_VALUE_OPTIONS:
            args = args[1:]
        elif not arg.startswith("-"):
            return arg == "worker"
    return False


def _is_gunicorn(argv: Sequence[str]) -> bool:
    program = os.path.basename(argv[0]) if argv else ""
    return program in ("gunicorn", "gunicorn.exe") or program.startswith("gunicorn.")


def _gunicorn_args(argv: Sequence[str], environ: Any) -> list[str]:
    """gunicorn's arguments: `GUNICORN_CMD_ARGS`, then the command line's (which win, as in gunicorn)."""
    args = list(argv[1:])
    extra = environ.get("GUNICORN_CMD_ARGS", "")
    if extra:
        import shlex

        with contextlib.suppress(ValueError):  # unbalanced quotes: gunicorn refuses them itself
            args = shlex.split(extra) + args
    return args


def _gunicorn_preloads(argv: Sequence[str], environ: Any) -> bool:
    """A gunicorn master that loads the app itself (`--preload`, `preload_app = True`)."""
    if not _is_gunicorn(argv):
        return False
    args = _gunicorn_args(argv, environ)
    return "--preload" in args or _gunicorn_config_value(args, "preload_app") == "True"


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
    value = _gunicorn_config_value(args, "worker_class")
    if value is not None and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return None


def _gunicorn_config_value(args: Sequence[str], setting: str) -> str | None:
    """The text assigned to `setting` at the top level of gunicorn's config file (the last one)."""
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
        if equals and name.strip() == setting and not line[:1].isspace():
            found = value.split("#")[0].strip()
    return found


# The patching, seen as it happens


def _watch_gevent(module: ModuleType) -> None:
    """`gevent.monkey` imported: hold the SDK until `patch_all()` has run, if it is still off.

    gevent says when: it notifies `GeventDidPatchAllEvent` to the `zope.event` subscribers once every
    module is patched. A subscriber rather than a wrapper around `patch_all`, whose frame would be
    the one gevent's own warnings name (they point at the caller of `patch_all`).
    """
    if not _watch(module, "gevent"):
        return
    try:
        import importlib

        events: Any = importlib.import_module("zope.event")  # gevent's dependency: a list, a function
    except ImportError as error:
        report.debug(f"gevent without zope.event ({error}): the SDK starts as if gevent were not there")
        state.release_sdk("gevent's patching cannot be seen")
        return
    if _on_gevent_event not in events.subscribers:
        events.subscribers.append(_on_gevent_event)


def _on_gevent_event(event: object) -> None:
    # Raised here, an exception would stop gevent's patching: never.
    try:
        if type(event).__name__ == "GeventDidPatchAllEvent":
            _patching_done("gevent")
    except Exception as error:
        report.debug(f"gevent's patch event: {type(error).__name__}: {error}")


def _watch_eventlet(module: ModuleType) -> None:
    """`eventlet.patcher` imported (every `import eventlet` does): the same for `monkey_patch()`,
    which reports its problems with `print`, not warnings: a wrapper is named nowhere."""
    if not _watch(module, "eventlet"):
        return
    original = getattr(module, "monkey_patch", None)
    if callable(original):
        _patches.replace(module, "monkey_patch", _releasing(original, "eventlet"))
    # Imported in full already, the package's own `monkey_patch` is the original (half-way through
    # its import, it binds ours next).
    package = sys.modules.get("eventlet")
    current = getattr(package, "monkey_patch", None)
    if callable(current) and current is not getattr(module, "monkey_patch", None):
        _patches.replace(package, "monkey_patch", _releasing(current, "eventlet"))


def _watch(module: ModuleType, green: str) -> bool:
    """Hold the SDK if it is off; False when the process is patched already (nothing to watch)."""
    if patched() is not None:
        state.release_sdk(f"{green} has monkey-patched")
        return False
    if state.sdk_state() == "off" and not state.sdk_held():
        state.hold_sdk(f"{module.__name__} was imported: until {green} has monkey-patched")
    return True


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
