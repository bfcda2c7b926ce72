"""The agent writes only files it created itself, 0600, never through a link someone planted.

The store and the instrumentor cache may live in a folder that someone else can write to (a store
under /tmp, `HOME=/tmp` in a container, a shared `XDG_CACHE_HOME`). What another user plants there
(a symbolic link to a file of the victim's, a file of their own) is refused with one line, and the
app runs on as it would without the agent. The other user is played by `nobody` (the tests run as
root in CI; as another user they are skipped where they need to give a file away).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LAUNCHER, agent_env, run_launcher

APP = """
import logfire_run
with logfire_run.span("work"):
    pass
print("app ran")
"""

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def _run(tmp_path: Path, store: Path, expect_stderr: object) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(APP)
    result = run_launcher(
        ["python", str(tmp_path / "app.py")],
        agent_env(None, LOGFIRE_STORE=str(store)),
        expect_stderr=expect_stderr,  # type: ignore[arg-type]
    )
    assert result.returncode == 0 and result.stdout == "app ran\n", result
    return result


def _one_refusal(*words: str) -> object:
    def check(stderr: str) -> bool:
        lines = stderr.splitlines()
        return (
            len(lines) == 1
            and lines[0].startswith("logfire-run: ")
            and "the app runs on" in lines[0]
            and all(word in lines[0] for word in words)
        )

    return check


def _shared_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)  # as /tmp is
    return folder


def test_a_store_path_that_is_a_symlink_to_a_planted_file_is_refused(tmp_path: Path) -> None:
    shared = _shared_folder(tmp_path)
    planted = shared / "attacker.db"
    planted.touch()
    planted.chmod(0o666)
    store = shared / "traces.db"
    store.symlink_to(planted)
    _run(tmp_path, store, _one_refusal(str(store), "symbolic link"))
    assert planted.stat().st_size == 0  # nothing written into the attacker's file
    assert sorted(path.name for path in shared.iterdir()) == ["attacker.db", "traces.db"]


def test_a_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    shared = _shared_folder(tmp_path)
    victim = tmp_path / "victim-folder" / "made-by-the-agent.db"
    victim.parent.mkdir()
    store = shared / "traces.db"
    store.symlink_to(victim)
    _run(tmp_path, store, _one_refusal(str(store), "symbolic link"))
    assert not victim.exists()


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_planted_wal_or_shm_link_is_refused_by_name(tmp_path: Path, suffix: str) -> None:
    shared = _shared_folder(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    store = shared / "traces.db"
    Path(f"{store}{suffix}").symlink_to(target)
    _run(tmp_path, store, _one_refusal(f"{store}{suffix}", "symbolic link"))
    assert target.read_text() == "keep"


@as_root
def test_a_store_owned_by_another_user_in_a_world_writable_folder_is_refused(tmp_path: Path) -> None:
    shared = _shared_folder(tmp_path)
    store = shared / "traces.db"
    store.touch()
    store.chmod(0o666)
    os.chown(store, NOBODY, NOBODY)
    _run(tmp_path, store, _one_refusal(str(store), "another user"))
    assert store.stat().st_size == 0


def test_a_store_of_ones_own_in_a_world_writable_folder_is_used(tmp_path: Path) -> None:
    shared = _shared_folder(tmp_path)
    store = shared / "traces.db"
    _run(tmp_path, store, "")
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    import sqlite3

    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT name FROM spans").fetchall() == [("work",)]


DELETING_APP = """
import os, sys
import logfire_run
store = os.environ["LOGFIRE_STORE"]
with logfire_run.span("before"):
    pass
logfire_run.force_flush()
for suffix in ("", "-wal", "-shm"):
    os.remove(store + suffix)
with logfire_run.span("after"):
    pass
logfire_run.force_flush()
print("app ran")
"""


def test_a_store_deleted_while_the_app_runs_is_noticed(tmp_path: Path) -> None:
    # SQLite would go on writing into the deleted file: every later span lost, silently.
    (tmp_path / "app.py").write_text(DELETING_APP)
    store = tmp_path / "traces.db"

    def said_once(stderr: str) -> bool:
        lines = stderr.splitlines()
        return len(lines) == 1 and "was deleted" in lines[0] and str(store) in lines[0]

    result = run_launcher(
        ["python", str(tmp_path / "app.py")],
        agent_env(None, LOGFIRE_STORE=str(store)),
        expect_stderr=said_once,
    )
    assert result.returncode == 0 and result.stdout == "app ran\n"


# The instrumentor cache


def _cache_file(cache_home: Path, tmp_path: Path) -> Path:
    """The instrumentor cache file that `python app.py` run from `tmp_path` writes (run once, cold)."""
    (tmp_path / "app.py").write_text(APP)
    env = agent_env(None, XDG_CACHE_HOME=str(cache_home), LOGFIRE_EXPORTER="none")
    run_launcher(["python", str(tmp_path / "app.py")], env)
    written = list((cache_home / "logfire-run").iterdir())
    assert len(written) == 1, written
    return written[0]


@pytest.mark.slow  # four starts with a cold cache
def test_predictable_temporary_names_in_the_cache_folder_are_never_followed(tmp_path: Path) -> None:
    # Another user who can write the cache folder plants a link for each of the next process ids.
    cache_home = tmp_path / "cache"
    cache = _cache_file(cache_home, tmp_path)
    cache.unlink()  # cold again: the next start writes the cache
    folder = cache.parent
    folder.chmod(0o777)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    first = os.getpid()
    for pid in range(first, first + 4000):
        Path(f"{cache}.{pid}.tmp").symlink_to(victim)
    env = agent_env(None, XDG_CACHE_HOME=str(cache_home), LOGFIRE_EXPORTER="none")
    for _ in range(3):
        result = run_launcher(["python", str(tmp_path / "app.py")], env)
        assert result.stdout == "app ran\n"
    assert victim.read_text() == "precious"


@as_root
def test_a_cache_folder_of_another_user_is_neither_read_nor_written(tmp_path: Path) -> None:
    cache_home = tmp_path / "cache"
    cache = _cache_file(cache_home, tmp_path)
    os.chown(cache.parent, NOBODY, NOBODY)
    os.chown(cache, NOBODY, NOBODY)
    before = cache.read_bytes()
    # Its content is another user's: a cache that names a module of theirs must not be loaded. The
    # run below proves it was not read by scanning (importlib.metadata is imported by a scan only).
    probe = "import sys; import logfire_run; print('importlib.metadata' in sys.modules)"
    env = agent_env(None, XDG_CACHE_HOME=str(cache_home), LOGFIRE_EXPORTER="none", LOGFIRE_RUN="1")
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stderr == "", result
    assert result.stdout == "True\n", "the other user's cache was read instead of a scan"
    assert cache.read_bytes() == before
    assert sorted(path.name for path in cache.parent.iterdir()) == [cache.name]


def test_the_launcher_itself_runs_when_the_cache_folder_is_unusable(tmp_path: Path) -> None:
    cache_home = tmp_path / "cache"
    cache_home.mkdir()
    (cache_home / "logfire-run").symlink_to(tmp_path)  # a planted link for the whole folder
    (tmp_path / "app.py").write_text(APP)
    env = agent_env(None, XDG_CACHE_HOME=str(cache_home), LOGFIRE_EXPORTER="none")
    result = subprocess.run(
        [LAUNCHER, "python", str(tmp_path / "app.py")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == "app ran\n" and result.stderr == ""
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("instrumentors-")]
