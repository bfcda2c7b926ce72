"""Spools: where a process at exit puts the rows it cannot write into the store without waiting.

The store has one write lock for every process. At exit a process has its exit budget (2 s by default)
and no more: fifty processes ending at once (a pool, the workers of a server stopping) each waited
for the others' transactions, and the last ones spent their budget in that queue (33,096 of 50,000
spans kept, under load). At exit, the store exporter tries the lock once; when another process holds
it, the batch (spans, log records or metric points) goes into a spool of this process's own instead:
a file beside the store (`traces.db.spool-PID-RANDOM`) holding the rows as `marshal` data, which
takes no lock anyone else holds and costs a fraction of an INSERT (at exit, under load, every
millisecond of CPU counts).

A spool is written whole under a temporary name and renamed into place, so a spool is always
complete. Any process that writes to the store later moves the spools into it (`merge`): when it
opens the store, then at most once a second as it writes, and at its own exit when the lock was free.
Each spool is claimed first by renaming it (one process wins), its rows are written through the
store's own insert functions, then it is removed. A claimed spool whose merger died is taken again
after a minute; a temporary one whose writer died is removed after a minute.

Spools are created like the store (0600, `O_CREAT|O_EXCL|O_NOFOLLOW`), and only spools that are the
user's own regular files are merged: in a folder that others can write to, a planted spool is left
alone.

Where it stops: the viewer reads the store only; spooled rows show there once a process has written
to the store after them (the exiting parent of the processes that spooled, or the next run).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial

from logfire_run.agent import report
from logfire_run.files import UnsafeFileError, check_own_file, create_private_file, read_own_file
from logfire_run.store_format import (
    COLUMNS,
    LOG_COLUMNS,
    METRIC_COLUMNS,
    Row,
    has_logs,
    has_metrics,
    insert_batch,
    insert_logs,
    insert_metrics,
    lock_taken,
    with_retries,
)

__all__ = ["MERGE_EVERY_SECONDS", "due", "merge", "write"]

_MARK = ".spool-"
#: 2: spans, log records and metric points; 1 (read still): spans and log records.
_FORMAT = 2
_TEMPORARY, _CLAIMED = ".tmp", ".merging"
#: A claimed or temporary spool untouched for this long belongs to a process that died.
_ABANDONED_SECONDS = 60.0
#: A writing process looks for spools to merge at most this often.
MERGE_EVERY_SECONDS = 1.0


def write(
    store: str, spans: Sequence[Row] = (), logs: Sequence[Row] = (), metrics: Sequence[Row] = ()
) -> str:
    """Write rows of the store's `spans`, `logs` and `metrics` tables into a new spool beside `store`;
    its path."""
    final = f"{store}{_MARK}{os.getpid()}-{os.urandom(6).hex()}"
    temporary = final + _TEMPORARY
    # O_EXCL | O_NOFOLLOW, 0600: never through a link; complete once renamed.
    content = (_FORMAT, COLUMNS, LOG_COLUMNS, METRIC_COLUMNS, list(spans), list(logs), list(metrics))
    create_private_file(temporary, marshal.dumps(content))
    try:
        os.rename(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return final


def _spools(store: str) -> list[str]:
    folder, name = os.path.split(os.path.abspath(store))
    prefix = name + _MARK
    found = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        path = os.path.join(folder, entry.name)
        try:
            abandoned = now - entry.stat(follow_symlinks=False).st_mtime > _ABANDONED_SECONDS
        except OSError:
            continue
        if entry.name.endswith(_TEMPORARY):
            if abandoned:  # its writer died before it was complete
                with contextlib.suppress(OSError):
                    if check_own_file(path):
                        os.unlink(path)
            continue
        if entry.name.endswith(_CLAIMED) and not abandoned:
            continue  # another process is moving it now
        found.append(path)
    return sorted(found)


def due(store: str) -> bool:
    """Whether spools wait beside `store`."""
    return bool(_spools(store))


def merge(
    connection: sqlite3.Connection,
    store: str,
    *,
    deadline: float | None = None,
    call: Callable[..., object] = lambda function, *args: function(*args),
) -> int:
    """Move every spool beside `store` into it through `connection`; the number of spans moved.

    With a `deadline` (monotonic: at exit) the store's lock is tried once per spool, never waited for,
    and merging stops once the deadline has passed or the lock is taken; a spool not moved is put back
    for another process. Each spool goes in as one transaction (it holds one batch), so a spool is
    moved whole or not at all. One that cannot be read is left renamed `.merging`, to be taken again
    a minute later.
    """
    moved = 0
    for path in _spools(store):
        if deadline is not None and time.monotonic() > deadline:
            break
        try:
            check_own_file(path)
        except (UnsafeFileError, OSError):
            continue  # someone else's, or a link: not ours to read
        original = path.removesuffix(_CLAIMED)
        claimed = original + _CLAIMED
        try:
            os.rename(path, claimed)  # one process wins the spool
            os.utime(claimed)
        except OSError:
            continue
        try:
            moved += _move(connection, claimed, wait=deadline is None, call=call)
        except sqlite3.OperationalError as error:
            if deadline is not None and lock_taken(error):
                with contextlib.suppress(OSError):
                    os.rename(claimed, original)  # another process takes it
                break
            report.debug(f"spool {claimed} left as it is: {type(error).__name__}: {error}")
            continue
        except (OSError, ValueError, EOFError, TypeError) as error:
            report.debug(f"spool {claimed} left as it is: {type(error).__name__}: {error}")
            continue
        with contextlib.suppress(OSError):
            os.unlink(claimed)
    return moved


def _move(connection: sqlite3.Connection, spool: str, *, wait: bool, call: Callable[..., object]) -> int:
    content = marshal.loads(read_own_file(spool))
    if content[0] == 1 and len(content) == 5:  # written before spools held metric points
        form, columns, log_columns, spans, logs = content
        metric_columns, metrics = METRIC_COLUMNS, []
    else:
        form, columns, log_columns, metric_columns, spans, logs, metrics = content
    if (
        form not in (1, _FORMAT)
        or tuple(columns) != COLUMNS
        or tuple(log_columns) != LOG_COLUMNS
        or tuple(metric_columns) != METRIC_COLUMNS
    ):
        raise ValueError(f"{spool} was written by another version of logfire-run")
    run: Callable[[Callable[[], object]], object] = with_retries if wait else _once
    if spans:
        run(partial(call, insert_batch, connection, spans))
    if logs and has_logs(connection):
        run(partial(call, insert_logs, connection, logs))
    if metrics and has_metrics(connection):
        run(partial(call, insert_metrics, connection, metrics))
    return len(spans)


def _once(action: Callable[[], object]) -> None:
    action()
