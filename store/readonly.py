"""Read-only SQL over the store, for ``lanrage sql``.

Two locks on the door: the statement must start with SELECT, WITH, VALUES or
EXPLAIN, and the connection itself cannot write (SQLite opened ``mode=ro`` with
``query_only``; PostgreSQL in a READ ONLY transaction). So a write hidden in a
CTE is refused by the database even though it passed the keyword check.

And two bounds: a statement runs at most ``TIME_LIMIT_S`` (a recursive CTE that never
ends is interrupted: SQLite's progress handler, PostgreSQL's ``statement_timeout``), and it
may call only the functions of an allow-list: on SQLite ``FUNCTIONS``, checked by SQLite's
authorizer as it compiles the statement (``fts3_tokenizer`` returned a memory address;
``load_extension`` and friends are no one's business here); on PostgreSQL
``PG_FUNCTIONS``, checked on the statement as PostgreSQL's own parser reads it (pglast,
libpg_query) before it is sent: a read-only transaction still lets any role call
``pg_sleep``, ``set_config`` (even on ``statement_timeout``), ``pg_terminate_backend`` on
its own role's sessions (the agent's), ``pg_advisory_lock``, ``dblink`` where installed,
or ``query_to_xml`` with any SQL in a string.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.engine import check_sqlite_file, parse_url, sync_engine
from store.errors import ReadOnlyStatement, StoreError, UnknownRelation, translated

ALLOWED = ("SELECT", "WITH", "VALUES", "EXPLAIN")
_ZONE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")
TIME_LIMIT_S = 10.0  # a query of the documented views over a year of events takes well under a second
# SQLite's core, date, aggregate, window, math and JSON functions: what a question about the log needs.
FUNCTIONS = frozenset((
    "abs", "changes", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif",
    "instr", "last_insert_rowid", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min",
    "nullif", "octet_length", "printf", "quote", "random", "replace", "round", "rtrim", "sign", "soundex",
    "substr", "substring", "trim", "typeof", "unhex", "unicode", "unlikely", "upper", "zeroblob", "date",
    "time", "datetime", "julianday", "unixepoch", "strftime", "timediff", "avg", "count", "group_concat",
    "string_agg", "sum", "total", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile",
    "lag", "lead", "first_value", "last_value", "nth_value", "acos", "acosh", "asin", "asinh", "atan",
    "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees", "exp", "floor", "ln", "log", "log10",
    "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc", "json",
    "json_array", "json_array_length", "json_extract", "json_insert", "json_object", "json_patch",
    "json_remove", "json_replace", "json_set", "json_type", "json_valid", "json_quote", "json_group_array",
    "json_group_object", "json_each", "json_tree", "jsonb", "json_error_position",
))
_SQLITE_FUNCTION = 31  # the authorizer's action code for a function call
# PostgreSQL's own string, date and time, aggregate, window, math, JSON and array functions (and
# the names its parser gives SQL syntax: EXTRACT, AT TIME ZONE, SUBSTRING ... FROM, TRIM, ...):
# what a question about the log needs. Nothing that sleeps, locks, reads files or settings,
# changes settings, signals sessions, runs SQL from a string or reaches another server.
PG_FUNCTIONS = frozenset((
    # strings
    "ascii", "bit_length", "btrim", "char_length", "character_length", "chr", "concat", "concat_ws",
    "format", "initcap", "left", "length", "lower", "lpad", "ltrim", "md5", "normalize", "octet_length",
    "overlay", "position", "quote_ident", "quote_literal", "quote_nullable", "regexp_count", "regexp_instr",
    "regexp_like", "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array",
    "regexp_split_to_table", "regexp_substr", "replace", "reverse", "right", "rpad", "rtrim", "split_part",
    "starts_with", "string_to_array", "string_to_table", "strpos", "substr", "substring", "to_hex",
    "translate", "trim", "upper", "encode", "decode", "like_escape", "similar_to_escape", "similar_escape",
    "to_char", "to_number",
    # date and time
    "age", "clock_timestamp", "date_bin", "date_part", "date_trunc", "extract", "isfinite",
    "justify_days", "justify_hours", "justify_interval", "make_date", "make_interval", "make_time",
    "make_timestamp", "make_timestamptz", "now", "statement_timestamp", "timezone", "to_date",
    "to_timestamp", "transaction_timestamp", "overlaps",
    # aggregates
    "any_value", "array_agg", "avg", "bit_and", "bit_or", "bool_and", "bool_or", "count", "every", "max",
    "min", "string_agg", "sum", "corr", "covar_pop", "covar_samp", "stddev", "stddev_pop", "stddev_samp",
    "variance", "var_pop", "var_samp", "mode", "percentile_cont", "percentile_disc", "regr_avgx",
    "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope",
    # window
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # math
    "abs", "cbrt", "ceil", "ceiling", "degrees", "div", "exp", "floor", "ln", "log", "log10", "mod", "pi",
    "power", "radians", "random", "round", "sign", "sqrt", "trunc", "width_bucket", "acos", "asin", "atan",
    "atan2", "cos", "cot", "sin", "tan", "num_nonnulls", "num_nulls",
    # JSON
    "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "json_array_elements",
    "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text", "json_array_length",
    "jsonb_array_length", "json_build_array", "jsonb_build_array", "json_build_object",
    "jsonb_build_object", "json_each", "jsonb_each", "json_each_text", "jsonb_each_text",
    "json_extract_path", "jsonb_extract_path", "json_extract_path_text", "jsonb_extract_path_text",
    "json_object_keys", "jsonb_object_keys", "json_strip_nulls", "jsonb_strip_nulls", "json_typeof",
    "jsonb_typeof", "jsonb_pretty", "jsonb_path_exists", "jsonb_path_match", "jsonb_path_query",
    "jsonb_path_query_array", "jsonb_path_query_first", "row_to_json", "to_json", "to_jsonb",
    "array_to_json",
    # arrays and rows
    "array_append", "array_cat", "array_length", "array_lower", "array_position", "array_positions",
    "array_prepend", "array_remove", "array_replace", "array_to_string", "array_upper", "cardinality",
    "generate_series", "generate_subscripts", "unnest",
))
# What a statement may be, and what may not be inside it, as PostgreSQL's parser names them.
_PG_TOP = ("SelectStmt", "ExplainStmt")
_PG_REFUSED = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE",
               "MergeStmt": "MERGE", "IntoClause": "SELECT INTO", "LockingClause": "FOR UPDATE/SHARE"}


class QueryTooSlow(StoreError):
    """A ``sql`` statement ran longer than its time limit and was stopped."""
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


def check_postgres_statement(statement: str) -> None:
    """Refuse anything but one read-only query that calls only ``PG_FUNCTIONS``.

    Read by PostgreSQL's own parser (pglast), so what is checked is what the server will run:
    a function named in a FROM list, an aggregate, a window, SQL syntax that is a function call
    underneath (``AT TIME ZONE``), each is a ``FuncCall``. A name may be qualified with
    ``pg_catalog`` only; an operator too.
    """
    from pglast import parse_sql
    from pglast.parser import ParseError
    from pglast.visitors import Visitor

    try:
        statements = parse_sql(statement)
    except ParseError as error:
        raise ReadOnlyStatement(f"PostgreSQL cannot parse this statement: {error}") from None
    if len(statements) != 1:
        raise ReadOnlyStatement(f"`sql` runs one statement at a time, not {len(statements)}")
    top = statements[0].stmt
    kind = type(top).__name__
    if kind not in _PG_TOP or (kind == "ExplainStmt" and type(top.query).__name__ != "SelectStmt"):
        raise ReadOnlyStatement(f"refusing {kind.removesuffix('Stmt').upper()} statement: `sql` is "
                                f"read-only, only {', '.join(ALLOWED)} are allowed")
    refusals: list[str] = []

    class Check(Visitor):  # type: ignore[misc]
        def visit(self, ancestors: Any, node: Any) -> None:
            name = type(node).__name__
            if name in _PG_REFUSED:
                refusals.append(f"`sql` is read-only: refusing {_PG_REFUSED[name]} inside the query")
            elif name == "FuncCall":
                parts = [str(part.sval) for part in node.funcname]
                if parts[-1] not in PG_FUNCTIONS or parts[:-1] not in ([], ["pg_catalog"]):
                    refusals.append(f"the query calls {'.'.join(parts)}(), a function `sql` does not allow")
            elif name == "A_Expr" and node.name is not None:
                parts = [str(getattr(part, "sval", "")) for part in node.name]
                if parts[:-1] not in ([], ["pg_catalog"]):
                    refusals.append(f"the query uses the operator {'.'.join(parts)}, which `sql` does "
                                    "not allow")

    Check()(top)
    if refusals and "function" in refusals[0]:
        raise ReadOnlyStatement(f"{refusals[0]}; allowed: PostgreSQL's string, date and time, "
                                "aggregate, window, math, JSON and array functions")
    if refusals:
        raise ReadOnlyStatement(refusals[0])


def local_zone_key() -> str | None:
    """The IANA name of this process's local zone (``Europe/Berlin``), if it can be told.

    From ``TZ``, else /etc/localtime's link or /etc/timezone. PostgreSQL takes it as a
    session's ``TimeZone``, so that its local-time columns mean what SQLite's 'localtime' does.
    """
    from zoneinfo import ZoneInfo

    candidates = []
    configured = os.environ.get("TZ", "").lstrip(":")
    if configured:
        candidates.append(configured.split("zoneinfo/", 1)[-1])
    else:
        link = Path("/etc/localtime")
        if link.is_symlink():
            candidates.append(os.readlink(link).split("zoneinfo/", 1)[-1])
        with contextlib.suppress(OSError):
            candidates.append(Path("/etc/timezone").read_text().strip())
    for name in candidates:
        # A POSIX rule ("CET-1CEST,M3.5.0,M10.5.0/3") or a stray path is not a key PostgreSQL knows.
        if not _ZONE_KEY.match(name):
            continue
        try:
            ZoneInfo(name)
        except (KeyError, ValueError, OSError):  # not in the zone database
            continue
        return name
    return None


def run_query(url: str, statement: str, *, max_rows: int | None = 10_000,
              busy_timeout: float = 5.0, time_zone: str | None = None,
              time_limit_s: float = TIME_LIMIT_S) -> QueryResult:
    """Run one read-only statement and return its columns and (up to ``max_rows``) rows.

    ``time_zone`` (an IANA key) is PostgreSQL's session zone for the statement; SQLite's
    'localtime' follows the process's zone by itself. A statement running longer than
    ``time_limit_s`` is stopped.
    """
    check_statement(statement)
    target = parse_url(url)
    if target.dialect == "postgresql":
        check_postgres_statement(statement)
    if target.dialect == "sqlite":
        check_sqlite_file(target, must_exist=True)
    engine = sync_engine(target, role="reader", readonly=True, busy_timeout=busy_timeout, pool_size=1)
    try:
        return _run(engine, target.dialect, target.where, statement, max_rows, time_zone, time_limit_s)
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


def _authorize(action: int, _table: str | None, name: str | None, *_: Any) -> int:
    if action == _SQLITE_FUNCTION and (name or "").lower() not in FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _run(engine: Any, dialect: str, where: str, statement: str, max_rows: int | None,
         time_zone: str | None = None, time_limit_s: float = TIME_LIMIT_S) -> QueryResult:
    deadline = time.monotonic() + time_limit_s
    with translated(where), engine.connect() as connection, connection.begin():
        driver = connection.connection.driver_connection  # type: ignore[union-attr]
        cursor = driver.cursor()
        try:
            if dialect == "postgresql":
                cursor.execute("SET TRANSACTION READ ONLY")
                cursor.execute(f"SET LOCAL statement_timeout = {int(time_limit_s * 1000)}")
                if time_zone:
                    cursor.execute("SELECT set_config('TimeZone', %s, true)", (time_zone,))
            else:
                driver.set_authorizer(_authorize)
                driver.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            try:
                cursor.execute(statement.strip().rstrip(";"))
                if cursor.description is None:
                    return QueryResult([], [], False)
                fetched = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows + 1)
            except Exception as error:
                if time.monotonic() > deadline and ("interrupt" in str(error).lower()
                                                     or "statement timeout" in str(error).lower()):
                    raise QueryTooSlow(f"the query ran longer than {time_limit_s:g} s and was stopped "
                                       f"(database {where})") from None
                if "not authorized" in str(error).lower():
                    raise ReadOnlyStatement("the query calls a function `sql` does not allow; allowed: "
                                            "SQLite's core, date, aggregate, window, math and JSON "
                                            "functions") from None
                raise
            columns = [str(column[0]) for column in cursor.description]
            rows = [tuple(row) for row in fetched]
            if max_rows is None:
                return QueryResult(columns, rows, False)
            return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)
        finally:
            cursor.close()
