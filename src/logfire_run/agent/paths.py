"""Where the agent's files are: the sitecustomize folder, the cache folder and the data folder.

The bottom of the import graph, with `settings` and the store format: stdlib only, no state. The XDG
variables are read at each call, so a test (or a process) that changes them sees the change.
"""

from __future__ import annotations

import os

#: The folder the launcher puts first on PYTHONPATH; child interpreters find `sitecustomize` there.
SITECUSTOMIZE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sitecustomize")


def cache_dir() -> str:
    """`$XDG_CACHE_HOME/logfire-run` (`~/.cache/logfire-run`): the instrumentor cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "logfire-run")


def data_dir() -> str:
    """`$XDG_DATA_HOME/logfire-run` (`~/.local/share/logfire-run`): the default trace store."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "logfire-run")
