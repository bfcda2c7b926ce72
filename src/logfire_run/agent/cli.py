"""The `logfire-run` launcher: flags become environment variables, then the command replaces this process.

    logfire-run [FLAGS] [--] COMMAND [ARGS...]     any program on PATH (python, gunicorn, celery, ...)
    logfire-run [FLAGS] script.py [ARGS...]        this interpreter runs the script
    logfire-run [FLAGS] -m MODULE [ARGS...]        this interpreter runs the module

The command is started with `exec`: same PID, its own exit status and signals. Before that the
launcher validates every setting (exit 2 on a bad one, nothing is run) and puts the folder holding the
agent's `sitecustomize.py` first on PYTHONPATH. This module imports no OpenTelemetry and no argparse:
its start-up time is paid on every launch.
"""

from __future__ import annotations

import errno
import os
import sys

from logfire_run.agent.config import Config, resolve
from logfire_run.agent.errors import ConfigError
from logfire_run.agent.paths import LAUNCHED_PID, SITECUSTOMIZE_DIR
from logfire_run.agent.settings import SETTINGS, SETTINGS_BY_FLAG, SETTINGS_BY_NAME

EXIT_USAGE = 2
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
#: Set to the launcher's PID, which the command keeps: the process that may say "no agent here".

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class UsageError(Exception):
    pass


def _usage() -> str:
    lines = [
        "usage: logfire-run [FLAGS] [--] COMMAND [ARGS...]",
        "       logfire-run [FLAGS] script.py [ARGS...]",
        "       logfire-run [FLAGS] -m MODULE [ARGS...]",
        "       logfire-run --info | --version | --help",
        "",
        "Runs COMMAND with OpenTelemetry tracing set up in every Python process it starts: HTTP clients",
        "and servers, Celery, thread and process pools. The command replaces logfire-run (same PID, same",
        "exit status). Every flag is also an environment variable, for images run without the launcher.",
        "",
        "flags:",
    ]
    for setting in SETTINGS:
        flag = setting.flag if setting.switch else f"{setting.flag} VALUE"
        lines.append(f"  {flag:<28} {setting.help}")
        lines.append(f"  {'':<28} env {setting.env}; default: {setting.default}; accepts: {setting.accepted}")
    lines += [
        f"  {'--info':<28} print the resolved configuration, where each value came from, and the",
        f"  {'':<28} instrumentors that would load; run nothing",
        f"  {'--info --check':<28} send one test span to each destination and say whether it was accepted",
        f"  {'--version':<28} print the version",
        f"  {'-h, --help':<28} print this help",
        "",
        "env-only activation (no launcher): LOGFIRE_RUN=1 in the environment of any process of the",
        "virtualenv where logfire-run is installed. Viewer of the local store: logfire-run-view.",
        "Docs: README.md and docs/ in the project.",
    ]
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> tuple[dict[str, str], list[str], str | None]:
    """Split argv into env settings, the command, and an action (info/version/help) if one was asked."""
    env: dict[str, str] = {}
    index = 0
    literal = False
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            index += 1
            literal = True
            break
        if arg in ("-h", "--help"):
            return env, [], "help"
        if arg == "--version":
            return env, [], "version"
        if arg == "--info":
            return env, list(argv[index + 1 :]), "info"
        if arg == "-m":
            if index + 1 >= len(argv):
                raise UsageError("-m needs a module name")
            return env, [sys.executable, *argv[index:]], None
        if not arg.startswith("-") or arg == "-":
            break
        flag, has_value, value = arg.partition("=")
        setting = SETTINGS_BY_FLAG.get(flag)
        if setting is None:
            raise UsageError(f"unknown flag {flag}")
        if setting.switch:
            if has_value:
                raise UsageError(f"{flag} takes no value")
            env[setting.env] = setting.switch_value
        else:
            if not has_value:
                index += 1
                if index >= len(argv):
                    raise UsageError(f"{flag} needs a value ({setting.accepted})")
                value = argv[index]
            env[setting.env] = value
        index += 1
    command = list(argv[index:])
    # `logfire-run app.py`: a script that is not executable runs with this interpreter. After `--` the
    # command is taken literally, as a program.
    if command and not literal and command[0].endswith(".py") and not os.access(command[0], os.X_OK):
        command = [sys.executable, *command]
    if command and _is_this_python(command[0]):
        command[0] = sys.executable
    return env, command, None


def _is_this_python(name: str) -> bool:
    """`python`, `python3` or `python3.N` naming this interpreter's version, given without a path.

    The agent can only start in an interpreter that can import it, so a bare `python` means the one
    logfire-run is installed in, whatever comes first on PATH. A path picks another interpreter.
    """
    if os.sep in name or not name.startswith("python"):
        return False
    version = name[len("python") :]
    major, minor = sys.version_info[:2]
    return version in ("", str(major), f"{major}.{minor}")


def _find_executable(name: str) -> tuple[str | None, int, str]:
    """(path, exit code, message): the program to exec, or why it cannot be run."""
    if os.sep in name:
        candidates = [name]
    else:
        candidates = [os.path.join(directory or ".", name) for directory in os.get_exec_path()]
    found_not_executable = None
    for candidate in candidates:
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate, 0, ""
            found_not_executable = found_not_executable or candidate
    if found_not_executable is not None:
        hint = ""
        if name.endswith(".py"):
            hint = f" (to run a Python script: logfire-run python {name}, or logfire-run {name})"
        return None, EXIT_NOT_EXECUTABLE, f"{found_not_executable}: permission denied{hint}"
    if os.path.isdir(name):
        return None, EXIT_NOT_EXECUTABLE, f"{name}: is a directory"
    return None, EXIT_NOT_FOUND, f"{name}: command not found"


def child_environment(settings: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(settings)
    # Every entry as given, empty ones included (an empty entry is the current directory: that is
    # what `export PYTHONPATH=$PYTHONPATH:/x` gives when it was unset); only ours moves to the front.
    given = env.get("PYTHONPATH", "")
    entries = [entry for entry in given.split(os.pathsep) if entry != SITECUSTOMIZE_DIR] if given else []
    env["PYTHONPATH"] = os.pathsep.join([SITECUSTOMIZE_DIR, *entries])
    # Resolved once, here: a child that changes directory (gunicorn --chdir) writes the same file.
    store = env.get("LOGFIRE_STORE", "").strip()
    if store:
        env["LOGFIRE_STORE"] = os.path.abspath(os.path.expanduser(store))
    # The process that replaces the launcher is the one to say that it cannot start the agent.
    env[LAUNCHED_PID] = str(os.getpid())
    return env


def _python_flags(args: Sequence[str]) -> set[str]:
    """The one-letter options of a Python command line, up to the script, `-c` or `-m`."""
    flags: set[str] = set()
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("-") or arg in ("-", "--") or arg.startswith("--"):
            break
        for position, letter in enumerate(arg[1:], 1):
            if letter in "cm":
                return flags
            if letter in "XW":
                if position == len(arg) - 1:
                    index += 1  # the value is the next argument
                break
            flags.add(letter)
        index += 1
    return flags


def _adapt_to_python_flags(command: list[str], env: dict[str, str], debug: bool) -> None:
    """`python -I` and `-E` ignore PYTHONPATH, `-S` runs no `site`: start the agent another way, or say so."""
    if not os.path.basename(command[0]).startswith("python"):
        return
    flags = _python_flags(command[1:])
    if "S" in flags:
        if debug:
            _error(
                "python -S runs no site module, so neither the agent's sitecustomize nor logfire_run.pth "
                "can start it: this process runs without the agent"
            )
    elif flags & {"I", "E"}:
        # The interpreter ignores PYTHONPATH, but still runs the .pth files of its site-packages.
        env["LOGFIRE_RUN"] = "1"
        if debug:
            flag = "-I" if "I" in flags else "-E"
            _error(
                f"python {flag} ignores PYTHONPATH: the agent starts through logfire_run.pth "
                "(LOGFIRE_RUN=1) instead, where logfire-run is installed for that interpreter"
            )


def _exec(path: str, command: list[str], env: dict[str, str]) -> int:
    try:
        os.execve(path, command, env)
    except OSError as error:
        if error.errno == errno.ENOEXEC:
            # An executable without a "#!" line: a shell, `env` and execvp run it with /bin/sh.
            try:
                os.execve("/bin/sh", ["/bin/sh", path, *command[1:]], env)
            except OSError as sh_error:
                error = sh_error
        _error(f"{command[0]}: {error.strerror}")
        return EXIT_NOT_EXECUTABLE
    return 0  # not reached: execve replaced this process


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings, command, action = parse(args)
    except UsageError as error:
        _error(f"{error}\nrun 'logfire-run --help' for the flags")
        return EXIT_USAGE
    if action == "help":
        sys.stdout.write(_usage() + "\n")
        return 0
    if action == "version":
        from logfire_run._version import __version__

        sys.stdout.write(f"logfire-run {__version__}\n")
        return 0
    env = child_environment(settings, dict(os.environ))
    config, errors = resolve(env)
    errors.extend(_exporter_errors(config, env))
    if errors:
        for config_error in errors:
            _error(str(config_error))
        return EXIT_USAGE
    if action == "info":
        from logfire_run.agent.info import check_destinations, print_info

        if command[:1] == ["--check"]:
            return check_destinations(config, env)
        return print_info(config, settings, env, command)
    if not command:
        _error("no command to run\n" + _usage().split("\n\n")[0])
        return EXIT_USAGE
    path, code, message = _find_executable(command[0])
    if path is None:
        _error(message)
        return code
    _adapt_to_python_flags(command, env, config.debug)
    return _exec(path, command, env)


def _exporter_errors(config: Config, env: dict[str, str]) -> list[ConfigError]:
    """The otlp exporter chosen with a protocol whose OpenTelemetry exporter is not installed."""
    if "otlp" not in config.effective("exporters", env):  # type: ignore[operator]
        return []
    from logfire_run.agent.destination import exporter_missing

    protocol = config.resolved_otlp_protocol()
    missing = exporter_missing(protocol)
    if missing is None:
        return []
    setting = SETTINGS_BY_NAME["otlp_protocol"]
    source = config.sources.get("otlp_protocol", "")
    variable = source.removeprefix("env ") if source.startswith("env ") else setting.env
    return [ConfigError(f"{variable}={protocol}: {missing}")]


def _error(message: str) -> None:
    sys.stderr.write(f"logfire-run: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
