"""SQL under logfire-run: one span per statement, counted per driver, in real interpreters.

sqlite3 is the driver here (the `stdlib` extra's instrumentor); the same DB-API layer carries psycopg,
psycopg2, pymysql and mysqlclient, whose instrumentors all trace through `CursorTracer`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import OtlpReceiver, agent_env, render_tree, run_launcher

SQLITE_SHORTCUTS = """
import sqlite3, sys
from opentelemetry import trace

with trace.get_tracer("app").start_as_current_span("work"):
    connection = sqlite3.connect(sys.argv[1])
    connection.execute("CREATE TABLE item (name TEXT)")
    connection.executemany("INSERT INTO item VALUES (?)", [("a",), ("b",)])
    connection.executescript("INSERT INTO item VALUES ('c'); INSERT INTO item VALUES ('d');")
    cursor = connection.cursor()
    cursor.execute("SELECT count(*) FROM item")
    rows = connection.execute("SELECT name FROM item ORDER BY name").fetchall()
    connection.commit()
print(cursor.fetchone()[0], [name for (name,) in rows])
"""


def _statements(receiver: OtlpReceiver, count: int, root: str = "work") -> list[str]:
    """The statements of the CLIENT spans under the span named `root`, which must be `count`."""
    spans = receiver.wait_for(lambda spans: any(span.name == root for span in spans))
    (top,) = [span for span in spans if span.name == root]
    in_trace = [span for span in spans if span.trace_id == top.trace_id]
    # SQLAlchemy's first connection is a `connect` span, with the PRAGMA its dialect runs under it.
    statements = [span for span in in_trace if span.parent_id == top.span_id and span.name != "connect"]
    assert len(statements) == count and all(span.kind == "CLIENT" for span in statements), render_tree(
        in_trace
    )
    # No statement is recorded twice (a SQLAlchemy span and the driver's beside it).
    executed = Counter((span.parent_id, span.attributes.get("db.statement")) for span in in_trace)
    assert max(executed.values()) == 1, render_tree(in_trace)
    return [str(span.attributes.get("db.statement")) for span in statements]


def test_sqlite3_connection_shortcuts_are_traced(receiver: OtlpReceiver, tmp_path: Path) -> None:
    result = run_launcher(
        ["python", "-c", SQLITE_SHORTCUTS, str(tmp_path / "db.sqlite")], agent_env(receiver)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "4 ['a', 'b', 'c', 'd']\n"
    statements = _statements(receiver, 5)
    assert [statement.split()[0] for statement in statements] == [
        "CREATE",
        "INSERT",
        "INSERT",
        "SELECT",
        "SELECT",
    ]


SQLALCHEMY = """
import sys
from opentelemetry import trace
from sqlalchemy import create_engine, text

engine = create_engine("sqlite:///" + sys.argv[1])
with trace.get_tracer("app").start_as_current_span("work"):
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE item (name TEXT)"))
        connection.execute(text("INSERT INTO item VALUES ('a')"))
        connection.execute(text("INSERT INTO item VALUES (:name)"), [{"name": "b"}, {"name": "c"}])
        count = connection.execute(text("SELECT count(*) FROM item")).scalar()
        names = connection.execute(text("SELECT name FROM item ORDER BY name")).scalars().all()
print(count, names)
"""


@pytest.mark.slow
def test_one_span_per_statement_with_sqlalchemy_over_sqlite3(receiver: OtlpReceiver, tmp_path: Path) -> None:
    result = run_launcher(["python", "-c", SQLALCHEMY, str(tmp_path / "db.sqlite")], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 ['a', 'b', 'c']\n"
    # Five statements, five spans: SQLAlchemy's (the driver's sqlite3 span for each is not made).
    statements = _statements(receiver, 5)
    assert Counter(statement.split()[0] for statement in statements) == {
        "INSERT": 2,
        "SELECT": 2,
        "CREATE": 1,
    }


@pytest.mark.slow
def test_sqlite3_next_to_sqlalchemy_keeps_its_spans(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """The driver's spans are left out inside a SQLAlchemy statement only, not once SQLAlchemy ran."""
    orm = SQLALCHEMY.replace('"work"', '"orm"').replace("print(count, names)", "")
    script = orm + SQLITE_SHORTCUTS.replace("sys.argv[1]", "sys.argv[2]")
    paths = [str(tmp_path / "orm.sqlite"), str(tmp_path / "raw.sqlite")]
    result = run_launcher(["python", "-c", script, *paths], agent_env(receiver))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "4 ['a', 'b', 'c', 'd']\n"
    assert len(_statements(receiver, 5)) == 5
    assert len(_statements(receiver, 5, root="orm")) == 5
