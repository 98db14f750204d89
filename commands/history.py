"""History commands: ``events``, ``replay``, ``history``, ``sql`` and ``db upgrade``.

They read the event store (read-only: a missing database is an error, never
created) and print tables with local times, or JSON records with ``--json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # rich and asyncio load only in the commands that print tables or follow
    from rich.console import Console
    from rich.table import Table

from commands.common import DEFAULT_STATE_DIR as _DEFAULT_STATE_DIR
from commands.common import DbOption, JsonOption, StateDirOption, UsageError, database_url
from commands.times import TIME_FORMS, UtcOption, iso, parse_time, shown, zone_name
from events.streams import METRICS, PEER, node_of

CONNECTION_TYPES = ("ConnectionAttemptStarted", "PathChosen", "HolePunchAttempted", "HolePunchSucceeded",
                    "HolePunchFailed", "WireGuardPeerConfigured", "WireGuardPeerRemoved",
                    "ConnectionStateChanged", "EndpointChanged", "ReconnectAttempted", "PathSwitched",
                    "DirectPathRetried", "DirectPathRetriesRepeated")

NodeOption = Annotated[str | None, typer.Option(
    "--node", help="Only this node's streams (its node id), in a database that several nodes share.")]

TABLE_ROWS = 1000
_SQLITE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?$")


# ---------------------------------------------------------------- helpers


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def record_json(record: Any) -> dict[str, Any]:
    return {
        "global_position": record.global_position,
        "stream_id": record.stream_id,
        "stream_position": record.stream_position,
        "event_type": record.event_type,
        "event_version": type(record.event).version,
        "recorded_at": iso(record.recorded_at),
        "payload": _jsonable(record.event.to_payload()),
        "metadata": _jsonable(dict(record.metadata)),
    }


def summary(event: Any, width: int = 90, skip: tuple[str, ...] = ()) -> str:
    parts = []
    for name, value in event.to_payload().items():
        if name in ("party_id", "peer_id", *skip) or value in (None, "", ()):
            continue
        if isinstance(value, float):
            value = f"{value:.2f}".rstrip("0").rstrip(".")
        elif isinstance(value, tuple):
            value = ",".join(map(str, value))
        parts.append(f"{name}={value}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _console() -> Console:
    from rich.console import Console

    # Piped output (less, grep, files) gets wide rows instead of 80 wrapped columns. No markup:
    # names and reasons come from other people's machines, and "[/]" in one must print as is.
    return Console(soft_wrap=False, highlight=False, markup=False,
                   width=None if sys.stdout.isatty() else 200)


def _table(**options: Any) -> Table:
    from rich.table import Table

    return Table(**options)


def _open_readonly(db: str | None, state: Any):  # type: ignore[no-untyped-def]
    from store import open_store

    return open_store(database_url(db, state, create=False), readonly=True)


def _warn(error: Exception) -> None:
    print(f"lanrage: warning: {error}", file=sys.stderr)


def _events_table(records: Iterable[Any], utc: bool, title: str | None = None) -> Table:
    table = _table(title=title, header_style="bold")
    table.add_column("pos", justify="right")
    table.add_column(f"time ({zone_name(utc)})")
    table.add_column("stream")
    table.add_column("#", justify="right")
    table.add_column("event")
    table.add_column("details", overflow="fold")
    for record in records:
        table.add_row(str(record.global_position), shown(record.recorded_at, utc), record.stream_id,
                      str(record.stream_position), record.event_type, summary(record.event))
    return table


def _sqlite_moment(value: Any, column: str) -> datetime | None:
    """SQLite keeps timestamps as UTC text without an offset: recognised by an ``_at`` column name."""
    if isinstance(value, str) and column.endswith("_at") and _SQLITE_TIME.match(value):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return None


def _json_cell(value: Any, column: str) -> Any:
    """ISO 8601 with an offset for every timestamp, as ``events --json`` prints them."""
    moment = _sqlite_moment(value, column)
    return iso(moment) if moment is not None else _jsonable(value)


def _cell(value: Any, column: str = "", utc: bool = False) -> str:
    if value is None:
        return "NULL"
    moment = _sqlite_moment(value, column)
    if moment is not None:
        return shown(moment, utc)
    if isinstance(value, datetime):
        return shown(value, utc) if value.tzinfo else value.isoformat(sep=" ")
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):  # JSONB columns on PostgreSQL
        return json.dumps(_jsonable(value))
    return str(value)


# ---------------------------------------------------------------- commands


def events_command(
    stream: Annotated[str | None,
                      typer.Option("--stream", help="Stream id or prefix (e.g. peer:NODE:PARTY).")] = None,
    node: NodeOption = None,
    event_type: Annotated[list[str] | None,
                          typer.Option("--type", help="Event type; repeat for several.")] = None,
    since: Annotated[str | None, typer.Option("--since", help=f"From this time: {TIME_FORMS}.")] = None,
    until: Annotated[str | None, typer.Option("--until", help=f"Up to this time: {TIME_FORMS}.")] = None,
    after: Annotated[int, typer.Option("--after", help="Only events after this global position.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many events.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    count: Annotated[int | None, typer.Option("--count", help="With --follow: exit after N events.")] = None,
    as_json: JsonOption = False,
    utc: UtcOption = False,
    state_dir: StateDirOption = _DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """List events, filtered by stream, type and time; --follow prints new ones as they arrive."""
    from events.base import registered_types

    types = tuple(event_type or ())
    unknown = [name for name in types if name not in registered_types()]
    if unknown:
        raise UsageError(f"--type: unknown event type {unknown[0]!r}")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be >= 0")
    start = parse_time(since, "--since") if since else None
    end = parse_time(until, "--until") if until else None
    if follow:
        if end is not None:
            raise UsageError("--until cannot be used with --follow")
        _follow(database_url(db, state_dir, create=False), after, stream, types, start, count, as_json, utc,
                node)
        return
    with _open_readonly(db, state_dir) as store:
        records = store.read_all(after, None if node else limit, stream=stream, types=types, since=start,
                                 until=end, on_error=_warn)
        if node is not None:
            records = _of_node(records, node, limit)
        if as_json:
            for record in records:
                print(json.dumps(record_json(record)))
            return
        # A table holds at most the latest TABLE_ROWS matches (unless --limit says otherwise);
        # --json streams everything.
        keep = limit if limit is not None else TABLE_ROWS
        rows: deque[Any] = deque(maxlen=keep or None)
        seen = 0
        for record in records:
            rows.append(record)
            seen += 1
        console = _console()
        if not rows:
            console.print("no events match")
            return
        console.print(_events_table(rows, utc))
        if seen > len(rows):
            console.print(f"showing the latest {len(rows)} of {seen} matching events; "
                          "narrow with --since/--stream/--type, or use --after/--limit or --json")


def _of_node(records: Iterable[Any], node: str, limit: int | None) -> Iterator[Any]:
    """The records of one node's streams, at most ``limit`` of them."""
    from events.streams import node_of

    if limit is not None and limit <= 0:
        return
    kept = 0
    for record in records:
        if node_of(record.stream_id) == node:
            yield record
            kept += 1
            if limit is not None and kept >= limit:
                return


def _follow(url: str, after: int, stream: str | None, types: tuple[str, ...], since: datetime | None,
            count: int | None, as_json: bool, utc: bool, node: str | None = None) -> None:
    import asyncio

    from store.aio import AsyncEventReader

    console = _console()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        seen = 0
        async with AsyncEventReader(url) as reader:
            async for record in reader.follow(after, stream=stream, types=types, stop=stop,
                                              on_error=_warn):
                if since is not None and record.recorded_at < since:
                    continue
                if node is not None and node_of(record.stream_id) != node:
                    continue
                if as_json:
                    print(json.dumps(record_json(record)), flush=True)
                else:
                    console.print(f"{record.global_position:>7}  {shown(record.recorded_at, utc)} "
                                  f"{zone_name(utc)}  "
                                  f"{record.stream_id}  {record.event_type}  {summary(record.event)}",
                                  markup=False)
                    sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    break

    asyncio.run(run())


def replay_command(
    at: Annotated[str | None,
                  typer.Option("--at", help=f"The moment: {TIME_FORMS}.")] = None,
    position: Annotated[int | None, typer.Option("--position", help="Global position to stop at.")] = None,
    node: NodeOption = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Warn about rows that cannot be decoded and fold the rest.")] = False,
    as_json: JsonOption = False,
    utc: UtcOption = False,
    state_dir: StateDirOption = _DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """The state of every party, connection, relay and node at a moment (or position).

    In a database that several nodes share, every node's streams are shown unless --node
    names one.
    """
    from store.replay import replay

    moment = parse_time(at, "--at") if at else None
    if position is not None and position < 0:
        raise UsageError("--position must be >= 0")
    with _open_readonly(db, state_dir) as store:
        world = replay(store, at=moment, position=position, node=node,
                       on_error=_warn if skip_bad else "raise")
    if as_json:
        print(json.dumps(_jsonable({
            "position": world.position,
            "at": iso(moment) if moment else None,
            "parties": {key: dataclasses.asdict(value) for key, value in world.parties.items()},
            "connections": {key: dataclasses.asdict(value) for key, value in world.connections.items()},
            "relays": {key: dataclasses.asdict(value) for key, value in world.relays.items()},
            "nodes": {key: dataclasses.asdict(value) for key, value in world.nodes.items()},
        }), indent=2))
        return
    _print_world(world, moment, utc)


def _print_world(world: Any, moment: datetime | None, utc: bool) -> None:
    console = _console()
    when = f" at {shown(moment, utc)} {zone_name(utc)}" if moment else ""
    console.print(f"State after global position {world.position}{when}", style="bold")
    if not (world.parties or world.connections or world.relays or world.nodes):
        console.print("nothing recorded yet")
        return
    if world.nodes:
        table = _table(title="nodes", header_style="bold")
        for column in ("node", "running", "NAT", "public endpoint", "relay"):
            table.add_column(column)
        for node in world.nodes.values():
            table.add_row(node.node_id, "yes" if node.running else "no", node.nat_type,
                          node.public_endpoint or "-", node.selected_relay or "-")
        console.print(table)
    if world.parties:
        table = _table(title="parties", header_style="bold")
        for column in ("node", "party", "name", "active", "member", "peer name", "virtual IP", "NAT"):
            table.add_column(column)
        for stream_id, party in world.parties.items():
            members = party.members or (("", None),)
            for index, (peer_id, member) in enumerate(members):
                table.add_row(_node_cell(stream_id) if index == 0 else "",
                              party.party_id if index == 0 else "", party.name if index == 0 else "",
                              ("yes" if party.active else f"no ({party.left_reason})") if index == 0 else "",
                              peer_id or "-", member.name if member else "-",
                              (member.virtual_ip or "-") if member else "-",
                              member.nat_type if member else "-")
        console.print(table)
    if world.connections:
        table = _table(title="connections", header_style="bold")
        for column in ("node", "party", "peer", "state", "path", "endpoint", "relay", "latency ms", "loss",
                       "reconnects", "reason"):
            table.add_column(column)
        for stream_id, connection in world.connections.items():
            table.add_row(_node_cell(stream_id), connection.party_id, connection.peer_id,
                          connection.state or "-", connection.path or "-", connection.endpoint or "-",
                          connection.relay or "-",
                          f"{connection.latency_ms:.1f}" if connection.latency_ms is not None else "-",
                          f"{connection.loss:.1%}" if connection.loss is not None else "-",
                          str(connection.reconnects), connection.reason or "-")
        console.print(table)
    if world.relays:
        table = _table(title="relays", header_style="bold")
        for column in ("node", "relay", "rtt ms", "answered/probes", "degraded", "sessions", "running"):
            table.add_column(column)
        for stream_id, relay in world.relays.items():
            table.add_row(_node_cell(stream_id), relay.relay,
                          f"{relay.rtt_ms:.1f}" if relay.rtt_ms is not None else "-",
                          f"{relay.answered}/{relay.probes}", "yes" if relay.degraded else "no",
                          str(len(relay.sessions)), "yes" if relay.running else "no")
        console.print(table)


def _node_cell(stream_id: str) -> str:
    from events.streams import node_of

    return node_of(stream_id) or "-"


def history_command(
    peer: Annotated[str, typer.Argument(help="Peer name, id prefix, or PARTY:NAME.")],
    metrics: Annotated[bool, typer.Option("--metrics", help="Include the metric samples.")] = False,
    node: NodeOption = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the last N entries.")] = None,
    as_json: JsonOption = False,
    utc: UtcOption = False,
    state_dir: StateDirOption = _DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """One peer's connection timeline: attempts, punches, state changes, path switches.

    In a database that several nodes share, a peer that more than one node connects to
    needs --node (whose view of the peer).
    """
    with _open_readonly(db, state_dir) as store:
        chosen = find_peer(store, peer)
        streams = sorted({entry.stream_id for entry in chosen if entry.stream_id
                          and (node is None or node_of(entry.stream_id) == node)})
        owners = sorted({node_of(stream) or "" for stream in streams})
        if len(owners) > 1:
            raise UsageError(f"peer {peer!r} is known to several nodes ({', '.join(owners[:5])}); "
                             "choose one with --node")
        types = CONNECTION_TYPES + (("MetricsSampled",) if metrics else ())
        records = []
        for stream in streams:
            # The type filter runs in SQL (metric samples can be most of a stream); the stream
            # filter is a prefix there, so keep only this exact stream. Samples have their own
            # stream (metrics:...) since metrics left the connection's stream.
            sources = [(stream, CONNECTION_TYPES + (("MetricsSampled",) if metrics else ()))]
            if metrics:
                sources.append((METRICS + stream[len(PEER):], ("MetricsSampled",)))
            for source, types in sources:
                records.extend(record for record in store.read_all(stream=source, types=types, on_error=_warn)
                               if record.stream_id == source)
    records.sort(key=lambda record: record.global_position)
    if limit is not None:
        records = records[-limit:] if limit > 0 else []
    if as_json:
        for record in records:
            print(json.dumps(record_json(record)))
        return
    console = _console()
    table = _table(title=f"connection history of {'; '.join(sorted({entry.label() for entry in chosen}))}",
                  header_style="bold")
    for column in ("pos", f"time ({zone_name(utc)})", "event", "state", "path", "endpoint / relay",
                   "lasted", "details"):
        table.add_column(column)
    lasted = _lasted(records)
    for record in records:
        event = record.event
        state, path, where = "", "", ""
        if record.event_type == "ConnectionStateChanged":
            state = f"{event.from_state or '∅'} → {event.to_state}"
            path = event.path or ""
            where = event.relay if event.path == "relay" and event.relay else (event.endpoint or "")
        elif record.event_type == "PathSwitched":
            path = f"{event.from_path} → {event.to_path}"
            where = event.to_relay if event.to_path == "relay" and event.to_relay else (event.endpoint or "")
        elif record.event_type == "PathChosen":
            path = event.path
            where = event.relay or event.endpoint or ""
        table.add_row(str(record.global_position), shown(record.recorded_at, utc), record.event_type, state,
                      path, where, lasted.get(record.global_position, ""), summary(event, 60, skip=_SHOWN))
    console.print(table if records else f"no connection events recorded for {chosen[0].label()}")


def _lasted(records: list[Any]) -> dict[int, str]:
    """How long each state change or path switch held, until the next one of its stream."""
    durations: dict[int, str] = {}
    previous: dict[str, Any] = {}
    for record in records:
        if record.event_type not in ("ConnectionStateChanged", "PathSwitched"):
            continue
        before = previous.get(record.stream_id)
        if before is not None:
            seconds = (record.recorded_at - before.recorded_at).total_seconds()
            durations[before.global_position] = (f"{seconds:.1f} s" if seconds < 90 else
                                                 f"{seconds / 60:.1f} min" if seconds < 5400 else
                                                 f"{seconds / 3600:.1f} h")
        previous[record.stream_id] = record
    return durations


_SHOWN = ("from_state", "to_state", "path", "endpoint", "relay", "from_path", "to_path", "to_relay")


def find_peer(store: Any, query: str) -> list[Any]:
    """The directory entries of the one peer ``query`` names (see ``store.peers``); UsageError if none."""
    from store.peers import AmbiguousPeer, PeerNotFound, load_directory, resolve_peer

    try:
        return resolve_peer(load_directory(store, on_error=_warn), query)
    except (PeerNotFound, AmbiguousPeer) as error:
        raise UsageError(str(error)) from None


def sql_command(
    statement: Annotated[str, typer.Argument(help="One SELECT (or WITH/VALUES/EXPLAIN) statement.")],
    max_rows: Annotated[int, typer.Option("--max-rows", help="Print at most this many rows.")] = 10_000,
    as_json: JsonOption = False,
    utc: UtcOption = False,
    state_dir: StateDirOption = _DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """Read-only SQL over the store; writes are refused."""
    from store.readonly import run_query

    result = run_query(database_url(db, state_dir, create=False), statement, max_rows=max_rows)
    if as_json:
        for row in result.rows:
            print(json.dumps({column: _json_cell(value, column)
                              for column, value in zip(result.columns, row, strict=True)}))
    else:
        table = _table(header_style="bold")
        for column in result.columns:
            table.add_column(column + (f" ({zone_name(utc)})" if column.endswith("_at") else ""),
                             overflow="fold")
        for row in result.rows:
            table.add_row(*(_cell(value, column, utc)
                            for value, column in zip(row, result.columns, strict=True)))
        console = _console()
        console.print(table)
        console.print(f"{len(result.rows)} row{'s' if len(result.rows) != 1 else ''}"
                      + (f" (stopped at --max-rows {max_rows})" if result.truncated else ""))
    if result.truncated and as_json:
        print(f"lanrage: output stopped at --max-rows {max_rows}", file=sys.stderr)


def upgrade_command(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    state_dir: StateDirOption = _DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """Create or upgrade the event store schema (alembic)."""
    from store import migrate

    url = database_url(db, state_dir)
    reached = migrate(url, revision)
    print(f"database {_where(url)} is at revision {reached}")


def current_command(state_dir: StateDirOption = _DEFAULT_STATE_DIR, db: DbOption = None) -> None:
    """Print the schema revision of the database."""
    from store.migrate import current, head_revisions

    url = database_url(db, state_dir, create=False)
    from store.engine import check_sqlite_file, parse_url

    target = parse_url(url)
    if target.dialect == "sqlite":
        check_sqlite_file(target, must_exist=True)
    revision = current(url)
    heads = head_revisions()
    print(f"database {_where(url)} is at revision {revision or 'none (empty)'}"
          f"{'' if revision in heads else f'; head is {heads[0]}'}")


def _where(url: str) -> str:
    from store.engine import parse_url

    return parse_url(url).where


def view_names() -> list[str]:
    """Every view the migrations create, read from their text (help needs no database)."""
    from pathlib import Path

    created = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)
    versions = Path(__file__).resolve().parent.parent / "migrations" / "versions"
    names = {name for path in versions.glob("*.py") for name in created.findall(path.read_text())}
    return sorted(names)


def register(app: typer.Typer) -> None:
    app.command("events")(_guard(events_command))
    app.command("replay")(_guard(replay_command))
    app.command("history")(_guard(history_command))
    views = ", ".join(view_names())
    app.command("sql", help=f"Read-only SQL over the store; writes are refused. Views: {views} "
                            "(docs/store.md).")(_guard(sql_command))
    from commands import db as upkeep

    db_app = typer.Typer(help="The event store's schema (alembic), snapshots, retention and size.",
                         no_args_is_help=True)
    db_app.command("upgrade")(_guard(upgrade_command))
    db_app.command("current")(_guard(current_command))
    db_app.command("snapshots")(_guard(upkeep.snapshots_command))
    db_app.command("prune")(_guard(upkeep.prune_command))
    db_app.command("stats")(_guard(upkeep.stats_command))
    app.add_typer(db_app, name="db")


def _guard(function):  # type: ignore[no-untyped-def]
    """`lanrage events | head` closes the pipe early: that is not an error."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BrokenPipeError:
            sys.stderr.close()
            return None

    return wrapper
