"""Everything the agent says goes through here: to stderr, never stdout, each problem once per process.

Debug lines are written only when LOGFIRE_DEBUG is on. A failure to write (a closed stderr) is
swallowed: reporting must never be what breaks the app.
"""

from __future__ import annotations

import os
import sys

_reported: set[str] = set()
debug_enabled = False


def _write(line: str) -> None:
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
    except Exception:  # a closed or broken stderr is the app's business, not ours
        pass


def problem(key: str, message: str) -> None:
    """Report a problem on stderr the first time `key` is seen in this process."""
    if key in _reported:
        return
    _reported.add(key)
    _write(f"logfire-run: {message}")


def said(prefix: str) -> bool:
    """Whether a problem whose key starts with `prefix` was reported in this process."""
    return any(key.startswith(prefix) for key in _reported)


def debug(message: str) -> None:
    if debug_enabled:
        _write(f"logfire-run[{os.getpid()}]: {message}")


def fallback(key: str, message: str) -> None:
    """Say once, under `--debug`, that the agent took its slower way because its own failed: the app
    sees no difference, a developer of the agent needs to know (it is a bug of ours, or a change of
    OpenTelemetry's that the fast way must follow)."""
    if debug_enabled and ("fallback:" + key) not in _reported:
        _reported.add("fallback:" + key)
        debug(f"{message}; falling back to the slower way")


def forget_after_fork() -> None:
    """A forked child is a process of its own: it reports its own problems once (`process.fork`)."""
    _reported.clear()
