"""Where logfire-run keeps its files, and how it makes them: readable by their owner only.

The instrumentor cache and the trace store: their folders (XDG's cache and data folders), the store's
path, and the one way folders and files are created (0700 and 0600 whatever the umask). Shared by the
agent and the viewer, which must not import the agent: stdlib only (`os`), no state, cheap to import
in every process. The XDG variables are read at each call, so a test (or a process) that changes them
sees the change.

The agent writes only files it created itself, never through a link. Either folder may be one that
another user can write to (a store under /tmp, `HOME=/tmp` in a container, a shared cache home), where
they can plant a symbolic link or a file of their own under a name the agent is about to use:

- files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so a name that exists already, link or
  not, is never opened for writing by creation;
- an existing file is used only if it is a regular file (not a link), and, in a folder anyone can
  write to, only if it is the user's own (`check_own_file`, which raises `UnsafeFileError`);
- a file written whole (the instrumentor cache) goes to a fresh, unpredictable name in a folder the
  user owns and no one else can write to (`private_folder`), then is renamed into place
  (`write_private_file`); a folder that is not such is neither read nor written.
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


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class UnsafeFileError(PermissionError):
    """A file the agent would write through is a link, not a regular file, or someone else's."""


def create_private_file(path: str, content: bytes = b"") -> bool:
    """Create `path` 0600 whatever the umask, holding `content`, unless it exists; True when this call
    made it. A name that exists already is checked by `check_own_file` (which raises for a link
    planted there), and left as it is."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    except FileExistsError:
        check_own_file(path)
        return False
    try:
        os.fchmod(descriptor, 0o600)
        view = memoryview(content)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)
    return True


def read_own_file(path: str) -> bytes:
    """The content of `path`, a regular file of this user's, opened without following a link."""
    descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with open(descriptor, "rb") as file:
        if os.fstat(file.fileno()).st_uid != os.geteuid():
            raise UnsafeFileError(f"{path} belongs to another user")
        return file.read()


def check_own_file(path: str) -> bool:
    """Whether `path` exists; raises `UnsafeFileError` when it must not be written through (a symbolic
    link, a file of another user in a folder anyone can write to), OSError when it is not a file."""
    import stat

    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(found.st_mode):
        raise UnsafeFileError(f"{path} is a symbolic link")
    if not stat.S_ISREG(found.st_mode):
        raise OSError(f"{path} is not a regular file")
    if found.st_uid != os.geteuid():
        folder = os.stat(os.path.dirname(os.path.abspath(path)))
        if folder.st_mode & stat.S_IWOTH:
            raise UnsafeFileError(
                f"{path} belongs to another user (uid {found.st_uid}) in a folder anyone can write to"
            )
    return True


def private_folder(directory: str) -> bool:
    """Create `directory` (0700, `make_private_dirs`) and say whether it is private: a folder (not a
    link to one) of this user's that no one else can write to. Nothing is read from or written to a
    folder that is not (another user could have put there what this process reads, or links)."""
    import stat

    try:
        make_private_dirs(directory)
        found = os.lstat(directory)
    except OSError:
        return False
    return (
        stat.S_ISDIR(found.st_mode)
        and found.st_uid == os.geteuid()
        and not found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def read_private_file(path: str) -> bytes:
    """The content of `path` in a private folder (`private_folder`), not through a link; raises OSError."""
    if not private_folder(os.path.dirname(os.path.abspath(path))):
        raise UnsafeFileError(f"{os.path.dirname(path)} is not a private folder of this user's")
    descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with open(descriptor, "rb") as file:
        return file.read()


def write_private_file(path: str, data: bytes) -> None:
    """Replace `path` with `data`, 0600: written to a fresh unpredictable name beside it, then renamed
    into place. Only in a private folder (`private_folder`); raises OSError otherwise or on failure."""
    import contextlib

    folder = os.path.dirname(os.path.abspath(path))
    if not private_folder(folder):
        raise UnsafeFileError(f"{folder} is not a private folder of this user's")
    for _ in range(10):
        temporary = f"{path}.{os.urandom(8).hex()}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with open(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
