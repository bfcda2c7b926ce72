"""The service name of a process nothing names: what it runs, as the person who started it would say it.

`derive(argv, environ)` reads the command line and returns the name with where it came from:

==========================================  ==========================  ===========================
command                                     name                        from
==========================================  ==========================  ===========================
gunicorn, uvicorn, hypercorn, waitress-     the app's module:           the server's app argument
serve, uwsgi with `shopapp:app`             `shopapp`                   (uwsgi: --module, -w,
                                            (`mysite.wsgi` -> `mysite`)  --wsgi-file)
celery -A proj worker                       `proj`                      Celery's -A/--app
rq worker high default                      `rq:high,default`           the queues the worker serves
manage.py, django-admin                     `mysite`                    --settings, else
                                                                        DJANGO_SETTINGS_MODULE
python app.py, python -m pkg, a program     `app`, `pkg`, the program   the script, module or program
==========================================  ==========================  ===========================

A trailing `wsgi`, `asgi`, `app`, `main`, `application`, `server`, `celery` or `tasks` is dropped
from a dotted module (`mysite.wsgi` -> `mysite`): the project names the service, not its entry file.

`manage.py` sets DJANGO_SETTINGS_MODULE itself (`startproject` writes `os.environ.setdefault(...)` in
its `main()`), after the agent started: the name is derived when the SDK builds its resource, and
again when the app imports `django.conf` (`pending_django_settings` tells the bootstrap to watch for
it). Explicit settings (`LOGFIRE_SERVICE_NAME`, `OTEL_SERVICE_NAME`, `service.name` in
OTEL_RESOURCE_ATTRIBUTES) win over all of this: `settings.resolve_service_name` asks here last.

Stdlib only, and nothing at import time: it runs in every process the agent starts in, on the
command line it already has (`/proc/self/cmdline` for uwsgi, whose embedded interpreter has none).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["derive", "pending_django_settings", "program_name"]

#: A module's last part that names an entry file rather than the project: dropped.
_GENERIC_PARTS = ("wsgi", "asgi", "app", "main", "application", "server", "celery", "tasks")
_SERVERS = ("gunicorn", "uvicorn", "hypercorn", "waitress-serve", "waitress")
_DJANGO_PROGRAMS = ("manage", "django-admin", "django_admin")
#: Options of `rq worker` that take a value (the rest of its options are switches; operands are queues).
_RQ_VALUE_OPTIONS = frozenset(
    (  # noqa: SIM905 (a list of words reads better as words)
        "-u --url -c --config -w --worker-class -j --job-class --queue-class --connection-class -P --path "
        "-n --name --results-ttl --worker-ttl --job-monitoring-interval --maintenance-interval "
        "--logging_level --log-format --date-format --exception-handler --pid --max-jobs --max-idle-time "
        "-S --serializer -ds --dequeue-strategy --num-workers"
    ).split()
)
#: uwsgi options that name the app's module (`--module mysite.wsgi:application`) or file.
_UWSGI_MODULE_OPTIONS = ("--module", "-w", "--wsgi", "--asgi")
_UWSGI_FILE_OPTIONS = ("--wsgi-file", "--file")


def derive(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(service name, where it came from) for the process running `argv` (this one's by default)."""
    environ = os.environ if environ is None else environ
    args = _command_line() if argv is None else list(argv)
    program, rest = program_name(args)
    found: tuple[str, str] | None = None
    if program in _SERVERS:
        found = _server_app(rest, program)
    elif program == "uwsgi":
        found = _uwsgi_app(rest)
    elif program == "celery":
        found = _celery_app(rest)
    elif program == "rq":
        found = _rq_worker(rest)
    elif program in _DJANGO_PROGRAMS:
        found = _django_project(rest, environ)
    return found or (program or "python", f"the program ({program or 'python'})")


def pending_django_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """True for a Django command whose settings module is not known yet (manage.py sets it later)."""
    environ = os.environ if environ is None else environ
    program, rest = program_name(_command_line() if argv is None else list(argv))
    return program in _DJANGO_PROGRAMS and _django_project(rest, environ) is None


def program_name(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(the program as a person would name it, its arguments): the script's stem, the `-m` module, or
    the executable, with the interpreter's own options skipped.

    `argv[0]` first: runpy sets it to the module's path for `-m`, and multiprocessing's spawn and
    forkserver children take their parent's argv, so pool workers share their parent's name.
    """
    argv = list(argv)
    if not argv:
        return "python", []
    head = argv[0]
    if head and head not in ("-c", "-m") and not _is_python(head):
        return _stem(head), argv[1:]
    args = argv[1:]
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-m" and index + 1 < len(args):
            return args[index + 1], args[index + 2 :]
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:], args[index + 1 :]
        if arg == "-c":
            break
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            index += 2
            continue
        if arg.startswith("-"):
            index += 1
            continue
        return _stem(arg), args[index + 1 :]
    return (_stem(head) if head not in ("-c", "-m", "") else "python"), []


def _command_line() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0] and argv[0] not in ("-c", "-m"):
        if _stem(argv[0]) == "uwsgi" or not argv[0]:
            return _proc_cmdline() or argv
        return argv
    return list(getattr(sys, "orig_argv", None) or argv)


def _proc_cmdline() -> list[str]:
    """This process's command line as the kernel has it (uwsgi's embedded Python has no argv of its own)."""
    try:
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as file:
            raw = file.read(65536)
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_python(path: str) -> bool:
    return _stem(path).startswith("python")


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip(os.sep))
    if name in ("__main__.py", "__init__.py"):
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return name[:-3] if name.endswith(".py") else name


def _project(module: str) -> str:
    """`mysite.wsgi:application` -> `mysite`; `shopapp:app` -> `shopapp`; `app:app` -> `app`."""
    module = module.split(":", 1)[0].strip()
    parts = [part for part in module.split(".") if part]
    while len(parts) > 1 and parts[-1] in _GENERIC_PARTS:
        parts.pop()
    return ".".join(parts)


def _is_module(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _app_reference(arg: str) -> str | None:
    """The module of `module:attribute` (or `module:factory(...)`), else None (`127.0.0.1:8000`)."""
    module, sep, attribute = arg.partition(":")
    if not sep or not _is_module(module):
        return None
    name = attribute.split("(", 1)[0].split(".", 1)[0]
    return module if name.isidentifier() else None


def _server_app(args: Sequence[str], program: str) -> tuple[str, str] | None:
    """The app of gunicorn, uvicorn, hypercorn, waitress-serve: the `module:app` operand (gunicorn
    also takes a bare module, last on its line)."""
    previous = ""
    bare = None
    for arg in args:
        if arg.startswith("-"):
            flag, sep, value = arg.partition("=")
            if sep and flag == "--call":  # waitress-serve --call=module:factory
                arg = value
            else:
                previous = arg
                continue
        module = _app_reference(arg)
        if module is not None and previous not in ("-b", "--bind", "--host", "--listen"):
            return _project(module), f"the app of {program} ({arg})"
        if module is None and _is_module(arg) and not previous.startswith("-"):
            bare = arg
        previous = arg
    if bare is not None and program == "gunicorn":
        return _project(bare), f"the app of {program} ({bare})"
    return None


def _uwsgi_app(args: Sequence[str]) -> tuple[str, str] | None:
    for index, arg in enumerate(args):
        flag, sep, value = arg.partition("=")
        if not sep:
            value = args[index + 1] if index + 1 < len(args) else ""
        if flag in _UWSGI_MODULE_OPTIONS and value:
            module = value.split(":", 1)[0]
            if _is_module(module):
                return _project(module), f"the app of uwsgi ({flag} {value})"
        if flag in _UWSGI_FILE_OPTIONS and value:
            return _project(_stem(value)), f"the app of uwsgi ({flag} {value})"
    return None


def _celery_app(args: Sequence[str]) -> tuple[str, str] | None:
    for index, arg in enumerate(args):
        value = None
        if arg in ("-A", "--app") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--app="):
            value = arg[len("--app=") :]
        elif arg.startswith("-A") and len(arg) > 2:
            value = arg[2:].lstrip("=")
        if value:
            return _project(value) or value, f"Celery's app (-A {value})"
    return None


def _rq_worker(args: Sequence[str]) -> tuple[str, str] | None:
    if not args or args[0] not in ("worker", "worker-pool"):
        return None
    queues: list[str] = []
    index = 1
    while index < len(args):
        arg = args[index]
        if arg.startswith("-"):
            index += 2 if "=" not in arg and arg in _RQ_VALUE_OPTIONS else 1
            continue
        queues.append(arg)
        index += 1
    names = ",".join(queues) or "default"
    return f"rq:{names}", f"the queues of rq {args[0]}"


def _django_project(args: Sequence[str], environ: Mapping[str, str]) -> tuple[str, str] | None:
    settings = None
    for index, arg in enumerate(args):
        if arg == "--settings" and index + 1 < len(args):
            settings, how = args[index + 1], "--settings"
        elif arg.startswith("--settings="):
            settings, how = arg[len("--settings=") :], "--settings"
    if not settings:
        settings, how = environ.get("DJANGO_SETTINGS_MODULE", "").strip(), "DJANGO_SETTINGS_MODULE"
    if not settings or not _is_module(settings):
        return None
    return settings.split(".", 1)[0], f"the Django project ({how}={settings})"
