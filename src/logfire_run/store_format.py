"""The trace store's file format, shared by the exporter (writer) and the viewer (reader).

One SQLite file in WAL mode: the schema and its version, opening (and creating) it, the version check,
retention, the retry rules for a lock another process holds, and where the file is by default. The
exporter (`store.py`) turns OpenTelemetry spans into rows of this format; the viewer reads them. This
module is stdlib only so that `logfire-run-view` never loads OpenTelemetry.

Where it stops: it knows nothing of spans as OpenTelemetry objects, and nothing of processes (the
exporter owns connections across forks).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, TypeVar

from logfire_run.files import (
    check_own_file,
    create_private_file,
    default_store_path,
    make_private_dirs,
)
from logfire_run.store_index import (
    INDEX_SCHEMA,
    SPAN_COLUMNS,
    backfill,
    insert_log_ranges,
    insert_parts,
    prune_index,
    prune_log_ranges,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_LOGS",
    "DEFAULT_MAX_METRIC_POINTS",
    "DEFAULT_MAX_SPANS",
    "LOG_COLUMNS",
    "METRIC_COLUMNS",
    "SCHEMA_VERSION",
    "NotAStoreError",
    "default_path",
    "has_logs",
    "has_metrics",
    "insert_batch",
    "insert_logs",
    "insert_metrics",
    "lock_taken",
    "open_store",
    "prune",
    "prune_logs",
    "prune_metrics",
    "site_attributes",
    "trace_key",
    "with_retries",
]

#: Retention: at most this many spans are kept (60 MB with small HTTP spans, more with big attributes) ...
DEFAULT_MAX_SPANS = 200_000
#: ... at most this many log records ...
DEFAULT_MAX_LOGS = 200_000
#: ... at most this many metric points (one per instrument and attribute set, per process and collection) ...
DEFAULT_MAX_METRIC_POINTS = 200_000
#: ... and none older than this (7 days).
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600
#: Readers (the viewer) let SQLite wait this long for a lock before "database is locked".
BUSY_TIMEOUT_SECONDS = 10.0
#: Writers retry a transaction that finds the write lock taken for this long, then give up (reported).
WRITE_PATIENCE_SECONDS = 30.0
#: Writers' waits between attempts grow from the first to the last value (seconds, jittered).
_RETRY_DELAYS = (0.0005, 0.02)

#: 1: spans and batches. 2: the `logs` table. 3: the per-trace index and the running spans
#: (`store_index`). 4: the `metrics` table. An older store is read as it is (what it has no table for
#: is empty), and upgraded in place by the first writer that opens it (version 3 indexes the spans and
#: records already there, once).
SCHEMA_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, 4)
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes (extended codes keep them in the low byte)

#: The columns of a span row, in the order `insert_batch` takes them.
COLUMNS = SPAN_COLUMNS

#: The columns of a log row, in the order `insert_logs` takes them.
LOG_COLUMNS = (
    "trace_key",
    "trace_id",
    "span_id",
    "time_ns",
    "level_no",
    "level",
    "logger",
    "message",
    "exception",
    "attributes",
    "service",
    "pid",
)

# The app's `logging` records captured with their span; like spans, appended in id order and found by
# a scan on the integer trace key.
_LOGS_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS logs (
        id INTEGER PRIMARY KEY,
        trace_key INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        level_no INTEGER NOT NULL,
        level TEXT NOT NULL,
        logger TEXT NOT NULL,
        message TEXT NOT NULL,
        exception TEXT,
        attributes TEXT,
        service TEXT,
        pid INTEGER
    )
    """,
)

#: The columns of a metric point, in the order `insert_metrics` takes them: one aggregated point of one
#: instrument and attribute set, collected by one process over [start_ns, time_ns]. `kind` is `sum`,
#: `gauge` or `histogram`; `temporality` is `delta` (what happened in the interval: counters and
#: histograms) or `cumulative` (the current value: up-down counters); `value` is a sum's or a
#: gauge's; a histogram has `count`, `sum`, `min`, `max`, and `bounds` and `counts` (JSON lists: the
#: explicit bucket boundaries, and one count more than boundaries).
METRIC_COLUMNS = (
    "time_ns",
    "start_ns",
    "name",
    "kind",
    "temporality",
    "unit",
    "scope",
    "service",
    "pid",
    "attributes",
    "value",
    "count",
    "sum",
    "min",
    "max",
    "bounds",
    "counts",
)

_METRICS_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS metrics (
        id INTEGER PRIMARY KEY,
        time_ns INTEGER NOT NULL,
        start_ns INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        temporality TEXT NOT NULL,
        unit TEXT,
        scope TEXT,
        service TEXT,
        pid INTEGER,
        attributes TEXT,
        value REAL,
        count INTEGER,
        sum REAL,
        min REAL,
        max REAL,
        bounds TEXT,
        counts TEXT
    )
    """,
)

# No secondary index on spans: trace ids are random, so an index on them puts every span of a
# batch on a different B-tree page, and in WAL mode each touched page is written out again at each
# commit (measured at 200,000 stored spans: about 30 us per span with such an index, 10 without).
# Rows are appended in id order instead; the viewer finds a trace with one scan (about 0.1 s at the
# retention cap), and age pruning uses the small `batches` table: each batch's last row id and time.
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS spans (
        id INTEGER PRIMARY KEY,
        trace_key INTEGER NOT NULL,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_id TEXT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        service TEXT,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        status TEXT NOT NULL,
        status_message TEXT,
        attributes TEXT,
        events TEXT,
        links TEXT,
        scope TEXT,
        pid INTEGER
    )
    """,
    "CREATE TABLE IF NOT EXISTS batches"
    " (id INTEGER PRIMARY KEY, last_span INTEGER NOT NULL, written_ns INTEGER NOT NULL)",
    # Short-lived processes write small batches, so this table can grow large: age pruning, run
    # by every process that opens the store, must not scan it.
    "CREATE INDEX IF NOT EXISTS batches_written ON batches (written_ns)",
    *_LOGS_SCHEMA,
    *INDEX_SCHEMA,
    *_METRICS_SCHEMA,
)
_INSERT_HEAD = f"INSERT INTO spans ({', '.join(COLUMNS)}) VALUES "
_ROW_PLACEHOLDERS = f"({', '.join('?' * len(COLUMNS))})"
_RECORD_BATCH = "INSERT INTO batches (last_span, written_ns) SELECT max(id), ? FROM spans"

Row = tuple[Any, ...]
_T = TypeVar("_T")


def default_path(environ: Mapping[str, str] | None = None) -> str:
    """The store the agent writes to: `LOGFIRE_STORE`, else `$XDG_DATA_HOME/logfire-run/traces.db`."""
    return default_store_path(environ)


def trace_key(trace_id: int) -> int:
    """A trace's integer key, its top 63 bits (a signed 64-bit integer): scans compare it, not text."""
    return trace_id >> 65


class NotAStoreError(Exception):
    """The file is an SQLite database, but not a trace store of this version of logfire-run."""


def open_store(
    path: str, *, create: bool = True, busy_timeout: float = BUSY_TIMEOUT_SECONDS
) -> sqlite3.Connection:
    """A connection to the store at `path` (autocommit; transactions are explicit), schema in place.

    With `create=False` a missing file raises FileNotFoundError instead of creating an empty store.
    With `create=True` (a writer) the store and its -wal and -shm files must be regular files, and the
    user's own in a folder anyone can write to: else `files.UnsafeFileError` (SQLite would follow a
    link to the database, and create the file it points to). Writers pass `busy_timeout=0` and retry
    themselves (`with_retries`): SQLite's own busy handler sleeps in steps growing to 100 ms, long
    enough to leave the lock idle while writers queue up.
    """
    if create:
        make_private_dirs(os.path.dirname(os.path.abspath(path)))
        # SQLite creates a database 0644 (less the umask), and its -wal and -shm files with the mode
        # of the database: made here 0600 first, all three are private. Spans hold URLs and user data.
        # Made with O_EXCL | O_NOFOLLOW, or checked when it exists: SQLite follows a link to the
        # database (and opens -wal and -shm without following, failing on a planted link).
        create_private_file(path)
        check_own_file(f"{path}-wal")
        check_own_file(f"{path}-shm")
    elif not os.path.exists(path):
        raise FileNotFoundError(path)
    # The class, not sqlite3.connect: an instrumentor of sqlite3 (OpenTelemetry's wraps connect) would
    # trace the store's own queries, and the spans of each export would be exported in the next.
    connection = sqlite3.Connection(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        with_retries(lambda: _prepare(connection, path, create))
    except BaseException:
        connection.close()
        raise
    return connection


def _check_version(connection: sqlite3.Connection, path: str) -> bool:
    """True when the store's schema is in place; False for an empty database; raises otherwise."""
    # One statement, so one snapshot: read apart, the version and the tables could straddle another
    # process's commit of the schema, and a store being created would look like a foreign database.
    version, tables = connection.execute(
        "SELECT user_version, (SELECT count(*) FROM sqlite_master) FROM pragma_user_version"
    ).fetchone()
    if version in _READABLE_VERSIONS:
        return True
    if version == 0:
        if tables == 0:
            return False
        raise NotAStoreError(f"{path} is an SQLite database but not a logfire-run trace store")
    raise NotAStoreError(
        f"{path} is a trace store of another logfire-run version (schema {version}, this one reads "
        f"{SCHEMA_VERSION}); give another --store path"
    )


def _prepare(connection: sqlite3.Connection, path: str, create: bool) -> None:
    # Checked before anything is written: the viewer never changes a file that is not a store.
    if _check_version(connection, path):
        ready = True
    elif not create:
        raise NotAStoreError(f"{path} holds no traces yet")
    else:
        ready = False
    # WAL lets the viewer read while services write, and writers never block readers. Switching
    # an existing WAL store is a no-op; a filesystem without shared memory keeps its journal mode.
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode never corrupts the file; a power cut may lose the last batches only.
    connection.execute("PRAGMA synchronous=NORMAL")
    if ready:
        if create and _version(connection) < SCHEMA_VERSION:
            _upgrade(connection)
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created the schema while this one waited for the lock.
        if not _check_version(connection, path):
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def _version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def _upgrade(connection: sqlite3.Connection) -> None:
    """Bring an older store to this schema in place (a writer does; readers read it as it is)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        if _version(connection) < 2:
            for statement in _LOGS_SCHEMA:
                connection.execute(statement)
        if _version(connection) < 3:
            for statement in INDEX_SCHEMA:
                connection.execute(statement)
            backfill(connection)
        if _version(connection) < 4:
            for statement in _METRICS_SCHEMA:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def site_attributes(site: tuple[Any, ...]) -> dict[str, Any]:
    """A log record's (path, line, function, thread name) as OpenTelemetry's attribute names; a record
    emitted through OpenTelemetry's logs API has its own attributes, as ((key, value), ...)."""
    if site and isinstance(site[0], tuple):
        return {key: list(value) if isinstance(value, tuple) else value for key, value in site}
    if not site:
        return {}
    path, line, function, thread = site
    return {
        "code.file.path": path,
        "code.line.number": line,
        "code.function.name": function,
        "thread.name": thread,
    }


def has_logs(connection: sqlite3.Connection) -> bool:
    """Whether the store has a `logs` table (a version-1 store read by the viewer has none)."""
    return _has_table(connection, "logs")


def has_metrics(connection: sqlite3.Connection) -> bool:
    """Whether the store has a `metrics` table (a store of version 1 or 2 read by the viewer has none)."""
    return _has_table(connection, "metrics")


def _has_table(connection: sqlite3.Connection, name: str) -> bool:
    row = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def _rollback(connection: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if connection.in_transaction:
            connection.execute("ROLLBACK")


def lock_taken(error: sqlite3.OperationalError) -> bool:
    """Whether `error` says another connection holds the lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    return _is_busy(error)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(error)
    return "locked" in text or "busy" in text


def with_retries(action: Callable[[], _T], *, give_up: Callable[[], bool] | None = None) -> _T:
    """Run `action` (a whole transaction), again while another process holds the lock (until
    `give_up()` says to stop waiting: the lock error is raised then)."""
    deadline = time.monotonic() + WRITE_PATIENCE_SECONDS
    delay, longest = _RETRY_DELAYS
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() > deadline or (give_up is not None and give_up()):
                raise
        # Short, jittered waits: a batch holds the lock for milliseconds, and jitter keeps the
        # waiting writers from retrying in lockstep.
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 1.5, longest)


#: SQLITE_MAX_VARIABLE_NUMBER's default: 999 before SQLite 3.32.0, 32766 since.
_DEFAULT_VARIABLE_LIMIT = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
_LIMIT_VARIABLE_NUMBER: int | None = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", None)


def _rows_per_statement(connection: sqlite3.Connection) -> int:
    """How many rows one INSERT may carry: the connection's bound-parameter limit over the columns."""
    getlimit = getattr(connection, "getlimit", None)  # Python 3.11+
    if getlimit is not None and _LIMIT_VARIABLE_NUMBER is not None:
        limit = int(getlimit(_LIMIT_VARIABLE_NUMBER))
    else:
        limit = _DEFAULT_VARIABLE_LIMIT
    return max(limit // len(COLUMNS), 1)


def _insert_statement(count: int) -> str:
    return _INSERT_HEAD + ",".join([_ROW_PLACEHOLDERS] * count)


def statement_sizes(count: int, step: int) -> list[int]:
    """How many rows each INSERT of a `count`-row batch carries: full statements of `step` rows, then
    the rest as powers of two, largest first (300 rows: 256, 32, 8, 4).

    Python's sqlite3 keeps every statement it prepared (128 per connection), and an INSERT of N rows
    is a statement of its own, a large one (a 512-row span INSERT binds 8,192 values): one statement
    per batch size grew a writing process by about 100 MB. Powers of two bound the statements of
    each table to about a dozen, whatever the batch sizes, for a few more statements per batch.
    """
    sizes = [step] * (count // step)
    rest = count % step
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


def insert_batch(connection: sqlite3.Connection, rows: list[Row]) -> None:
    """Write `rows` (in `COLUMNS` order) and their batch record, in one transaction.

    The rows go in as a few multi-row INSERTs (`statement_sizes`), not one statement per row: Python's
    sqlite3 releases and retakes the GIL around every statement step, and behind a busy application
    thread each retake waits, so `executemany` of a 512-span batch took hundreds of milliseconds of
    wall time while the bounded span queue overflowed.
    """
    step = _rows_per_statement(connection)
    connection.execute("BEGIN IMMEDIATE")
    try:
        offset = 0
        while offset < len(rows):
            size = statement_sizes(len(rows) - offset, step)[0]
            chunk = rows[offset : offset + size]
            try:
                connection.execute(_insert_statement(size), list(chain.from_iterable(chunk)))
            except sqlite3.OperationalError as error:
                # Python 3.10 cannot ask for the limit: a build compiled with a lower one than its
                # version's default says so here, and the batch goes on in statements of 999 values.
                floor = 999 // len(COLUMNS)
                if "too many SQL variables" not in str(error) or step <= floor:
                    raise
                step = floor
                continue
            offset += size
        insert_parts(connection, rows)
        connection.execute(_RECORD_BATCH, (time.time_ns(),))
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def _insert_rows(
    connection: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    rows: list[Row],
    also: Callable[[sqlite3.Connection, list[Row]], None] | None = None,
) -> None:
    """Write `rows` (in `columns` order) into `table` in one transaction, a few multi-row INSERTs
    (`statement_sizes`), and `also(connection, rows)` in the same transaction."""
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    placeholders = f"({', '.join('?' * len(columns))})"
    step = max(999 // len(columns), 1)
    connection.execute("BEGIN IMMEDIATE")
    try:
        offset = 0
        for size in statement_sizes(len(rows), step):
            chunk = rows[offset : offset + size]
            connection.execute(head + ",".join([placeholders] * size), list(chain.from_iterable(chunk)))
            offset += size
        if also is not None:
            also(connection, rows)
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def insert_logs(connection: sqlite3.Connection, rows: list[Row]) -> None:
    """Write log `rows` (in `LOG_COLUMNS` order) in one transaction."""
    _insert_rows(connection, "logs", LOG_COLUMNS, rows, also=insert_log_ranges)


def insert_metrics(connection: sqlite3.Connection, rows: list[Row]) -> None:
    """Write metric points (in `METRIC_COLUMNS` order) in one transaction."""
    _insert_rows(connection, "metrics", METRIC_COLUMNS, rows)


def prune_logs(connection: sqlite3.Connection, max_logs: int, max_age_seconds: float) -> None:
    """The retention caps for log records: the newest `max_logs`, none older than the age cap."""
    _prune_table(connection, "logs", max_logs, max_age_seconds)


def prune_metrics(connection: sqlite3.Connection, max_points: int, max_age_seconds: float) -> None:
    """The retention caps for metric points: the newest `max_points`, none older than the age cap."""
    _prune_table(connection, "metrics", max_points, max_age_seconds)


def _prune_table(connection: sqlite3.Connection, table: str, max_rows: int, max_age_seconds: float) -> None:
    # Rows are appended in id order with their time: the oldest row says whether anything is due.
    oldest_kept_ns = time.time_ns() - int(max_age_seconds * 1e9)

    def due() -> bool:
        newest = connection.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
        if newest is None:
            return False
        oldest = connection.execute(f"SELECT id, time_ns FROM {table} ORDER BY id LIMIT 1").fetchone()
        return bool(newest - oldest[0] >= max_rows or oldest[1] < oldest_kept_ns)

    def run() -> None:
        if not _has_table(connection, table) or not due():
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(
                f"DELETE FROM {table} WHERE id <= (SELECT max(id) FROM {table}) - ? OR time_ns < ?",
                (max_rows, oldest_kept_ns),
            )
            prune_log_ranges(connection)
            connection.execute("COMMIT")
        except BaseException:
            _rollback(connection)
            raise

    with_retries(run)


def prune(connection: sqlite3.Connection, max_spans: int, max_age_seconds: float) -> None:
    """Apply the retention caps: range deletes on row ids, cheap when little is due."""
    oldest_kept_ns = time.time_ns() - int(max_age_seconds * 1e9)

    # A batch's last_span bounds the ids of the spans written up to that batch. Should age
    # pruning empty the table, SQLite starts ids again at 1; the batches pointing at the deleted
    # ids go in the same transaction, so no stale bound is left behind.
    def due() -> int:
        """The highest row id to delete (0: nothing is due)."""
        newest = connection.execute("SELECT max(id) FROM spans").fetchone()[0]
        cut = newest - max_spans if newest is not None else 0
        aged = connection.execute(
            "SELECT max(last_span) FROM batches WHERE written_ns < ?", (oldest_kept_ns,)
        ).fetchone()[0]
        return max(cut, aged or 0)

    def run() -> None:
        # Read first, without the write lock: most calls find nothing to do.
        if due() <= 0:
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            cut = due()
            if cut > 0:
                connection.execute("DELETE FROM spans WHERE id <= ?", (cut,))
                connection.execute("DELETE FROM batches WHERE last_span <= ?", (cut,))
                prune_index(connection, cut, time.time_ns())
            connection.execute("COMMIT")
        except BaseException:
            _rollback(connection)
            raise

    with_retries(run)
