"""Where the agent's files are (the sitecustomize folder, the cache folder and the data folder), and
how the agent creates folders and files: readable by their owner only, whatever the umask.

The bottom of the import graph, with `settings` and the store format: stdlib only, no state. The XDG
variables are read at each call, so a test (or a process) that changes them sees the change.
"""

from __future__ import annotations

import os

#: The folder the launcher puts first on PYTHONPATH; child interpreters find `sitecustomize` there.
SITECUSTOMIZE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sitecustomize")
#: Set by the launcher for the process it becomes (its PID), so that process alone reports an
#: interpreter that cannot import logfire_run; the agent takes it out of the app's environment.
LAUNCHED_PID = "LOGFIRE_RUN_LAUNCHED_PID"


def cache_dir() -> str:
    """`$XDG_CACHE_HOME/logfire-run` (`~/.cache/logfire-run`): the instrumentor cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "logfire-run")


def data_dir() -> str:
    """`$XDG_DATA_HOME/logfire-run` (`~/.local/share/logfire-run`): the default trace store."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "logfire-run")


def make_private_dirs(directory: str) -> None:
    """Create `directory` and any missing parent, each 0700 whatever the umask; existing ones are left.

    `os.makedirs(mode=0o700)` applies the mode to the last folder only, after the umask, so under
    umask 000 the parents it creates are 0777.
    """
    directory = os.path.abspath(directory)
    missing: list[str] = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue  # another process made it first: its mode is its creator's
        os.chmod(folder, 0o700)


def create_private_file(path: str) -> bool:
    """Create `path` empty and 0600 whatever the umask, unless it exists; True when this call made it."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)
    return True
