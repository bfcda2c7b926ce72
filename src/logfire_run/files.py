"""Where logfire-run keeps its files, and how it makes them: readable by their owner only.

The instrumentor cache and the trace store: their folders (XDG's cache and data folders), the store's
path, and the one way folders and files are created (0700 and 0600 whatever the umask). Shared by the
agent and the viewer, which must not import the agent: stdlib only (`os`), no state, cheap to import
in every process. The XDG variables are read at each call, so a test (or a process) that changes them
sees the change.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


#: The variable naming the store: the `store_path` row of the agent's settings table (a test holds the
#: two to the same name).
STORE_VARIABLE = "LOGFIRE_STORE"


def cache_dir() -> str:
    """`$XDG_CACHE_HOME/logfire-run` (`~/.cache/logfire-run`): the instrumentor cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "logfire-run")


def data_dir() -> str:
    """`$XDG_DATA_HOME/logfire-run` (`~/.local/share/logfire-run`): the default trace store."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "logfire-run")


def store_path(value: str | None) -> str:
    """The absolute path of a store named `value` (`~` expanded), or of the default store when None."""
    if value:
        return os.path.abspath(os.path.expanduser(value))
    return os.path.join(data_dir(), "traces.db")


def default_store_path(environ: Mapping[str, str] | None = None) -> str:
    """The store the agent writes to: `LOGFIRE_STORE`, else `$XDG_DATA_HOME/logfire-run/traces.db`."""
    raw = (os.environ if environ is None else environ).get(STORE_VARIABLE, "").strip()
    return store_path(raw or None)


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
