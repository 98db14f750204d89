"""Read-only SQL over the store, for ``lanrage sql``.

Two locks on the door: the statement must start with SELECT, WITH, VALUES or
EXPLAIN, and the connection itself cannot write (SQLite opened ``mode=ro`` with
``query_only``; PostgreSQL in a READ ONLY transaction). So a write hidden in a
CTE is refused by the database even though it passed the keyword check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from store.engine import check_sqlite_file, parse_url, sync_engine
from store.errors import ReadOnlyStatement, UnknownRelation, translated

ALLOWED = ("SELECT", "WITH", "VALUES", "EXPLAIN")
_COMMENTS = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)+", re.DOTALL)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def first_keyword(statement: str) -> str:
    body = _COMMENTS.sub("", statement, count=1)
    match = re.match(r"[A-Za-z]+", body)
    return match.group(0).upper() if match else ""


def check_statement(statement: str) -> None:
    keyword = first_keyword(statement)
    if not keyword:
        raise ReadOnlyStatement("empty SQL statement")
    if keyword not in ALLOWED:
        raise ReadOnlyStatement(f"refusing {keyword} statement: `sql` is read-only, only "
                                f"{', '.join(ALLOWED)} are allowed")


def run_query(url: str, statement: str, *, max_rows: int | None = 10_000,
              busy_timeout: float = 5.0) -> QueryResult:
    """Run one read-only statement and return its columns and (up to ``max_rows``) rows."""
    check_statement(statement)
    target = parse_url(url)
    if target.dialect == "sqlite":
        check_sqlite_file(target, must_exist=True)
    engine = sync_engine(target, role="reader", readonly=True, busy_timeout=busy_timeout, pool_size=1)
    try:
        return _run(engine, target.dialect, target.where, statement, max_rows)
    except UnknownRelation as error:
        views = ", ".join(list_views(engine, target.dialect, target.where))
        views = views or "none (run `lanrage db upgrade`)"
        raise UnknownRelation(f"{error}; its views are: {views}", error.name) from None
    finally:
        engine.dispose()


def list_views(engine: Any, dialect: str, where: str) -> list[str]:
    """The documented views a user can query (and any they made themselves)."""
    query = ("SELECT table_name FROM information_schema.views WHERE table_schema = current_schema()"
             if dialect == "postgresql" else "SELECT name FROM sqlite_master WHERE type = 'view'")
    with translated(where), engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(query)
            return sorted(str(row[0]) for row in cursor.fetchall())
        finally:
            cursor.close()


def _run(engine: Any, dialect: str, where: str, statement: str, max_rows: int | None) -> QueryResult:
    with translated(where), engine.connect() as connection, connection.begin():
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if dialect == "postgresql":
                cursor.execute("SET TRANSACTION READ ONLY")
            cursor.execute(statement.strip().rstrip(";"))
            if cursor.description is None:
                return QueryResult([], [], False)
            columns = [str(column[0]) for column in cursor.description]
            if max_rows is None:
                rows = [tuple(row) for row in cursor.fetchall()]
                return QueryResult(columns, rows, False)
            rows = [tuple(row) for row in cursor.fetchmany(max_rows + 1)]
            return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)
        finally:
            cursor.close()
