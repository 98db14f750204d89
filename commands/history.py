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
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # rich and asyncio load only in the commands that print tables or follow
    from rich.console import Console
    from rich.table import Table

from commands.common import DEFAULT_STATE_DIR as _DEFAULT_STATE_DIR
from commands.common import DbOption, JsonOption, StateDirOption, UsageError, database_url
from commands.times import (
    NEAR,
    TIME_FORMS,
    TimeWindow,
    UtcOption,
    clock,
    display_zone,
    iso,
    parse_time,
    parse_window,
    relative_words,
    shown,
    zone_name,
)
from events.streams import METRICS, PEER, node_of, node_stream, stream_kind

CONNECTION_TYPES = ("ConnectionAttemptStarted", "PathChosen", "HolePunchAttempted", "HolePunchSucceeded",
                    "HolePunchFailed", "WireGuardPeerConfigured", "WireGuardPeerRemoved",
                    "ConnectionStateChanged", "EndpointChanged", "ReconnectAttempted", "PathSwitched",
                    "DirectPathRetried", "DirectPathRetriesRepeated")

NodeOption = Annotated[str | None, typer.Option(
    "--node", help="Only this node's streams (its node id), in a database that several nodes share.")]

TABLE_ROWS = 1000
# A timestamp as SQLite returns it: UTC text without an offset (``recorded_at``), or ISO 8601
# with one (``first_at``, ``last_recorded_at`` in payloads).
_SQLITE_TIME = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?$")
# A time column: ``until_at``, or an aggregate or expression of one (``MAX(recorded_at)``).
_TIME_COLUMN = re.compile(r"_at\b")
# A moment written into a text (a reason, an evidence line, a payload's ``first_at``): ISO 8601,
# UTC when it has no offset, as the log writes them.
_MOMENT_IN_TEXT = re.compile(r"\b(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d(?:\.\d{1,6})?)(Z|[+-]\d\d:\d\d)?")
# This node's own runs, shown in a peer's timeline: a stop or a crash ends its connections.
NODE_RUN_TYPES = ("NodeStarted", "NodeStopped", "NodeRunEndedAbruptly")


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


def with_zone(moment: datetime, utc: bool = False) -> str:
    """A moment with the name of its own zone: "CEST" in July, "CET" in December."""
    local = moment.astimezone(display_zone(utc))
    return f"{shown(local, utc)} {local.strftime('%Z') or zone_name(utc)}"


def local_times(text: str, utc: bool = False) -> str:
    """``text`` with every ISO 8601 moment in it written in local time with its zone (UTC with ``utc``)."""

    def local(match: re.Match[str]) -> str:
        day, clock, offset = match.groups()
        try:
            moment = datetime.fromisoformat(f"{day}T{clock}{'+00:00' if offset in (None, 'Z') else offset}")
        except ValueError:
            return match.group(0)
        return with_zone(moment, utc)

    return _MOMENT_IN_TEXT.sub(local, text)


def zone_of(moments: Iterable[datetime], utc: bool = False) -> str | None:
    """The one zone name these moments show in, or None when they lie on both sides of a
    daylight saving change (then each time needs its own)."""
    zones = {moment.astimezone(display_zone(utc)).strftime("%Z") for moment in moments}
    if len(zones) > 1:
        return None
    return next(iter(zones), "") or zone_name(utc)


def _time_column(moments: Iterable[datetime], utc: bool) -> tuple[str, Callable[[datetime], str]]:
    """The header and the cells of a time column: the zone in the header when every row has the
    same one, else in each cell."""
    zone = zone_of(moments, utc)
    if zone is not None:
        return f"time ({zone})", lambda moment: shown(moment, utc)
    return "time", lambda moment: with_zone(moment, utc)


def summary(event: Any, width: int = 90, skip: tuple[str, ...] = (), utc: bool = False) -> str:
    parts = []
    for name, value in event.to_payload().items():
        if name in ("party_id", "peer_id", *skip) or value in (None, "", ()):
            continue
        if isinstance(value, float):
            value = f"{value:.2f}".rstrip("0").rstrip(".")
        elif isinstance(value, tuple):
            value = ",".join(map(str, value))
        elif isinstance(value, str):
            value = local_times(value, utc)
        parts.append(f"{name}={value}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _console() -> Console:
    from commands.safe import console

    # Piped output (less, grep, files) gets wide rows instead of 80 wrapped columns. No markup:
    # names and reasons come from other people's machines, and "[/]" in one must print as is.
    return console(soft_wrap=False, highlight=False, markup=False,
                   width=None if sys.stdout.isatty() else 200)


def _table(**options: Any) -> Table:
    from rich.table import Table

    return Table(**options)


def _open_readonly(db: str | None, state: Any):  # type: ignore[no-untyped-def]
    from store import open_store

    return open_store(database_url(db, state, create=False), readonly=True)


def _warn(error: Exception) -> None:
    print(f"lanrage: warning: {error}", file=sys.stderr)


def _quiet(_error: Exception) -> None:
    """For a second read of rows that the command's own read already warned about."""


def _events_table(records: list[Any], utc: bool, names: PeerNames, title: str | None = None) -> Table:
    table = _table(title=title, header_style="bold")
    header, when = _time_column((record.recorded_at for record in records), utc)
    table.add_column("pos", justify="right")
    table.add_column(header)
    table.add_column("stream")
    table.add_column("peer")
    table.add_column("#", justify="right")
    table.add_column("event")
    table.add_column("details", overflow="fold")
    for record in records:
        table.add_row(str(record.global_position), when(record.recorded_at), record.stream_id,
                      names.of(record) or "", str(record.stream_position), record.event_type,
                      summary(record.event, utc=utc))
    return table


class PeerNames:
    """The name of the peer (or static device) an event is about, from the log's directory."""

    def __init__(self, load: Callable[[], dict[tuple[str, str], str]], refresh: bool = False) -> None:
        self._load = load
        self._names = load()
        self._refresh = refresh
        self._asked: set[tuple[str, str]] = set()

    @classmethod
    def of_store(cls, store: Any, refresh: bool = False) -> PeerNames:
        """``refresh``: read the names again for a peer not known yet (``--follow``: it joined since)."""
        from store.peers import load_directory

        return cls(lambda: {(entry.party_id, entry.peer_id): entry.name
                            for entry in load_directory(store, on_error=_quiet) if entry.name}, refresh)

    def of(self, record: Any) -> str | None:
        key = self.key(record)
        if key is None:
            return None
        if self._refresh and key not in self._names and key not in self._asked:
            self._asked.add(key)  # once a peer: one without a name stays without one
            self._names = self._load()
        return self._names.get(key)

    @staticmethod
    def key(record: Any) -> tuple[str, str] | None:
        """(party id, peer id) of the connection stream, or of the peer a party event names."""
        if stream_kind(record.stream_id) in (PEER, METRICS):
            parts = record.stream_id.split(":")
            return (parts[-2], parts[-1]) if len(parts) >= 3 and parts[-2] and parts[-1] else None
        event = record.event
        party_id = getattr(event, "party_id", None)
        peer_id = getattr(event, "peer_id", None) or getattr(event, "device_id", None)
        if isinstance(party_id, str) and isinstance(peer_id, str) and party_id and peer_id:
            return party_id, peer_id
        return None


def _sqlite_moment(value: Any, column: str) -> datetime | None:
    """SQLite gives timestamps as text (UTC unless it says otherwise): recognised by an ``_at`` column."""
    if isinstance(value, str) and _TIME_COLUMN.search(column) and _SQLITE_TIME.match(value):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _shown_zoned(moment: datetime, utc: bool) -> str:
    """A time with its own zone's name: a log that spans a change to summer time has both."""
    zone = moment.astimezone(display_zone(utc)).strftime("%Z") or zone_name(utc)
    return f"{shown(moment, utc)} {zone}"


def _json_cell(value: Any, column: str) -> Any:
    """ISO 8601 with an offset for every timestamp, as ``events --json`` prints them."""
    moment = _sqlite_moment(value, column)
    return iso(moment) if moment is not None else _jsonable(value)


def _cell(value: Any, column: str = "", utc: bool = False) -> str:
    if value is None:
        return "NULL"
    moment = _sqlite_moment(value, column)
    if moment is not None:
        return _shown_zoned(moment, utc)
    if isinstance(value, datetime):
        return _shown_zoned(value, utc) if value.tzinfo else value.isoformat(sep=" ")
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
        console.print(_events_table(list(rows), utc, PeerNames.of_store(store)))
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

    from store import open_store
    from store.aio import AsyncEventReader

    console = _console()
    waiting = False

    def caught_up() -> None:
        nonlocal waiting
        if not waiting:
            waiting = True
            print("waiting for new events (Ctrl-C to stop)", file=sys.stderr, flush=True)

    async def run(names: PeerNames | None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        seen = 0
        async with AsyncEventReader(url) as reader:
            async for record in reader.follow(after, stream=stream, types=types, stop=stop,
                                              on_error=_warn, idle=caught_up):
                if since is not None and record.recorded_at < since:
                    continue
                if node is not None and node_of(record.stream_id) != node:
                    continue
                if names is None:
                    print(json.dumps(record_json(record)), flush=True)
                else:
                    name = names.of(record)
                    console.print(f"{record.global_position:>7}  {with_zone(record.recorded_at, utc)}  "
                                  f"{record.stream_id}{f' ({name})' if name else ''}  {record.event_type}  "
                                  f"{summary(record.event, utc=utc)}", markup=False)
                    sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    break

    if as_json:
        asyncio.run(run(None))
        return
    with open_store(url, readonly=True) as store:  # the names of the peers, read again when one joins
        asyncio.run(run(PeerNames.of_store(store, refresh=True)))


def replay_command(
    at: Annotated[str | None, typer.Option(
        "--at", help=f"The moment: {TIME_FORMS}; a minute (21:03) means its end, 21:03:59.999.")] = None,
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

    # "The state at 21:03" is the state once that minute is over: a drop at 21:03:04 shows.
    window = parse_window(at, "--at") if at else None
    moment = window.last if window else None
    if position is not None and position < 0:
        raise UsageError("--position must be >= 0")
    with _open_readonly(db, state_dir) as store:
        world = replay(store, at=moment, position=position, node=node,
                       on_error=_warn if skip_bad else "raise")
        directory = [] if as_json else _directory(store)
    if as_json:
        print(json.dumps(_jsonable({
            "position": world.position,
            "at": iso(moment) if moment else None,
            "window": window.json() if window else None,
            "parties": {key: dataclasses.asdict(value) for key, value in world.parties.items()},
            "connections": {key: dataclasses.asdict(value) for key, value in world.connections.items()},
            "relays": {key: dataclasses.asdict(value) for key, value in world.relays.items()},
            "nodes": {key: dataclasses.asdict(value) for key, value in world.nodes.items()},
        }), indent=2))
        return
    _print_world(world, moment, utc, directory, window)


def _print_world(world: Any, moment: datetime | None, utc: bool, directory: list[Any],
                 window: TimeWindow | None = None) -> None:
    """What each node knew at that moment, peers and parties by name (``--json`` keeps the ids)."""
    from events.types import NAT_UNKNOWN, RELAY

    console = _console()
    when = f" at {with_zone(moment, utc)}" if moment else ""
    if window is not None and window.end > window.start:
        when += f" (the end of {window.label(utc)})"
    console.print(f"State after global position {world.position}{when}", style="bold")
    if not (world.parties or world.connections or world.relays or world.nodes):
        console.print("nothing recorded yet")
        return
    # Names as the parties knew them then, else as the log tells them later (a peer that left).
    peer_names = {(entry.party_id, entry.peer_id): entry.name for entry in directory if entry.name}
    party_names = {entry.party_id: entry.party_name for entry in directory if entry.party_name}
    for party in world.parties.values():
        if party.name:
            party_names[party.party_id] = party.name
        peer_names.update(((party.party_id, peer_id), member.name) for peer_id, member in party.members
                          if member.name)
    # The node's own NAT: what it detected, else what it announced when it joined.
    own_nat: dict[str | None, str] = {}
    own_names: dict[str | None, list[str]] = {}
    for stream_id, party in world.parties.items():
        local = party.members_by_id.get(party.local_peer_id)
        if local is not None and local.nat_type != NAT_UNKNOWN:
            own_nat.setdefault(node_of(stream_id), local.nat_type)
        if local is not None and local.name and local.name not in own_names.get(node_of(stream_id), []):
            own_names.setdefault(node_of(stream_id), []).append(local.name)
    for stream_id, node in world.nodes.items():
        if node.nat_type != NAT_UNKNOWN:
            own_nat[node_of(stream_id)] = node.nat_type
    # One node's log needs no node column; a database that several nodes share does.
    owners = {node_of(stream_id) for streams in (world.parties, world.connections, world.relays, world.nodes)
              for stream_id in streams}
    several = len(owners) > 1

    def table(title: str, *columns: str) -> Table:
        made = _table(title=title, header_style="bold")
        for column in (("node",) if several else ()) + columns:
            made.add_column(column)
        return made

    def row(made: Table, stream_id: str | None, *cells: str) -> None:
        made.add_row(*(((node_of(stream_id) or "-") if stream_id else "",) if several else ()), *cells)

    if world.nodes:
        nodes = _table(title="nodes", header_style="bold")
        for column in ("node", "name", "running", "NAT", "public endpoint", "relay"):
            nodes.add_column(column)
        for stream_id, node in world.nodes.items():
            owner = node_of(stream_id)
            nodes.add_row(node.node_id or owner or "-", ", ".join(own_names.get(owner, [])) or "-",
                          "yes" if node.running else "no", own_nat.get(owner, NAT_UNKNOWN),
                          node.public_endpoint or "-", node.selected_relay or "-")
        console.print(nodes)
    if world.parties:
        parties = table("parties", "party", "active", "member", "virtual IP", "NAT")
        for stream_id, party in world.parties.items():
            members = party.members or (("", None),)
            for index, (peer_id, member) in enumerate(members):
                first = index == 0
                if member is None:
                    who, nat = "-", "-"
                elif peer_id == party.local_peer_id or member.is_local:
                    who = f"{member.name or peer_id} (this node)"
                    nat = own_nat.get(node_of(stream_id), member.nat_type)
                else:
                    who, nat = member.name or peer_id, member.nat_type
                row(parties, stream_id if first else None,
                    (party.name or party.party_id) if first else "",
                    ("yes" if party.active else f"no ({local_times(party.left_reason or '', utc)})")
                    if first else "",
                    who, (member.virtual_ip or "-") if member else "-", nat)
        console.print(parties)
    if world.connections:
        connections = table("connections", "party", "peer", "state", "path", "endpoint / relay", "latency ms",
                            "loss", "reconnects", "reason")
        for stream_id, connection in world.connections.items():
            # A relayed peer is reached through the relay; WireGuard's own endpoint then is only
            # this node's local relay proxy (127.0.0.1:PORT), which says nothing about the peer.
            if connection.path == RELAY:
                where = connection.relay or connection.session_relay or "relay"
            else:
                where = connection.endpoint or "-"
            row(connections, stream_id, party_names.get(connection.party_id, connection.party_id),
                peer_names.get((connection.party_id, connection.peer_id), connection.peer_id),
                connection.state or "-", connection.path or "-", where,
                f"{connection.latency_ms:.1f}" if connection.latency_ms is not None else "-",
                f"{connection.loss:.1%}" if connection.loss is not None else "-",
                str(connection.reconnects), local_times(connection.reason, utc) or "-")
        console.print(connections)
    if world.relays:
        # What this node's relay monitor learned; a relay server's own sessions are not in its log.
        relays = table("relays", "relay", "selected", "rtt ms", "answered/probes", "degraded")
        for stream_id, relay in world.relays.items():
            row(relays, stream_id, relay.relay, "yes" if relay.selected else "no",
                f"{relay.rtt_ms:.1f}" if relay.rtt_ms is not None else "-",
                f"{relay.answered}/{relay.probes}", "yes" if relay.degraded else "no")
        console.print(relays)


def _directory(store: Any) -> list[Any]:
    from store.peers import load_directory

    return load_directory(store, on_error=_quiet)


def history_command(
    peer: Annotated[str, typer.Argument(help="Peer name, id prefix, or PARTY:NAME.")],
    metrics: Annotated[bool, typer.Option("--metrics", help="Include the metric samples.")] = False,
    node: NodeOption = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the last N entries.")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", help=f"Only the entries of this minute (or second), else the nearest within "
                     f"{NEAR.seconds // 60} min: {TIME_FORMS}.")] = None,
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
        records = _with_node_runs(store, records, owners)
    window = parse_window(at, "--at") if at else None
    lasted = _lasted(records)  # over the whole timeline: the last row of a minute lasted beyond it
    inside = True
    if window is not None:
        records, inside = in_window(records, window)
    if limit is not None:
        records = records[-limit:] if limit > 0 else []
    if as_json:
        for record in records:
            print(json.dumps(record_json(record)))
        return
    console = _console()
    if window is not None:
        if not records:
            console.print(f"no entry for {chosen[0].label()} in {window.label(utc)} or within "
                          f"{NEAR.seconds // 60} min of it")
            return
        first = records[0].recorded_at
        console.print(f"entries in {window.label(utc)}" if inside else
                      f"no entry in {window.label(utc)}; the nearest, {clock(first, utc)}, "
                      f"{relative_words(window, first, utc)}")
    table = _table(title=f"connection history of {'; '.join(sorted({entry.label() for entry in chosen}))}",
                  header_style="bold")
    header, when = _time_column((record.recorded_at for record in records), utc)
    for column in ("pos", header, "event", "state", "path", "endpoint / relay", "lasted", "details"):
        table.add_column(column)
    for record in records:
        event = record.event
        state, path, where = "", "", ""
        details = summary(event, 60, skip=_SHOWN, utc=utc)
        if record.event_type in NODE_RUN_TYPES:
            state, details = _node_run(record, utc)
        elif record.event_type == "ConnectionStateChanged":
            state = f"{event.from_state or '∅'} → {event.to_state}"
            path = event.path or ""
            where = event.relay if event.path == "relay" and event.relay else (event.endpoint or "")
        elif record.event_type == "PathSwitched":
            path = f"{event.from_path} → {event.to_path}"
            where = event.to_relay if event.to_path == "relay" and event.to_relay else (event.endpoint or "")
        elif record.event_type == "PathChosen":
            path = event.path
            where = event.relay or event.endpoint or ""
        table.add_row(str(record.global_position), when(record.recorded_at), record.event_type, state,
                      path, where, lasted.get(record.global_position, ""), details)
    console.print(table if records else f"no connection events recorded for {chosen[0].label()}")


def _with_node_runs(store: Any, records: list[Any], owners: list[str]) -> list[Any]:
    """The timeline with the starts, stops and crashes of the node that holds the connection.

    From the connection's first event on, up to the end of the run its last event belongs to:
    a stop or a crash after it is why the connection went quiet.
    """
    if not records or len(owners) != 1 or not owners[0]:
        return records
    stream = node_stream(owners[0])
    first, last = records[0].global_position, records[-1].global_position
    runs = []
    for record in store.read_all(first, stream=stream, types=NODE_RUN_TYPES, on_error=_warn):
        if record.stream_id != stream:
            continue
        if record.global_position > last:
            if record.event_type != "NodeStarted":
                runs.append(record)
                break
            continue
        runs.append(record)
    return sorted([*records, *runs], key=lambda record: record.global_position)


def _run_ended(record: Any) -> datetime | None:
    """When a stop or a crash ended this node's run (a crash: its last event before it)."""
    if record.event_type == "NodeStopped":
        return record.recorded_at
    try:
        ended = datetime.fromisoformat(record.event.last_recorded_at)
    except ValueError:
        return None
    return ended if ended.tzinfo else ended.replace(tzinfo=UTC)


def _node_run(record: Any, utc: bool) -> tuple[str, str]:
    """The state and details cells of this node's start, stop or crash."""
    event = record.event
    if record.event_type == "NodeStarted":
        return "this node started", ""
    if record.event_type == "NodeStopped":
        return "this node stopped", event.reason
    ended = _run_ended(record)
    last = f"; its last event was at {with_zone(ended, utc)}" if ended is not None else ""
    return "this node went down", f"no clean stop{last}"


def in_window(records: list[Any], window: TimeWindow) -> tuple[list[Any], bool]:
    """The records of ``window``, else those at the moment nearest to it within ``NEAR``; and whether
    they lie inside it (the same rule as ``diagnose --at``)."""
    inside = [record for record in records if window.holds(record.recorded_at)]
    if inside:
        return inside, True
    close = [record for record in records if window.distance(record.recorded_at) <= NEAR]
    if not close:
        return [], False
    nearest = min(window.distance(record.recorded_at) for record in close)
    moment = next(record.recorded_at for record in close if window.distance(record.recorded_at) == nearest)
    return [record for record in close if record.recorded_at == moment], False


def _lasted(records: list[Any]) -> dict[int, str]:
    """How long each state change or path switch held: until the next one of its stream, or until
    this node's run ended (a connection's state does not last through the node's downtime)."""
    durations: dict[int, str] = {}
    previous: dict[str, Any] = {}

    def held(before: Any, until: datetime, at_least: bool = False) -> None:
        seconds = max(0.0, (until - before.recorded_at).total_seconds())
        durations[before.global_position] = ("≥ " if at_least else "") + (
            f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else
            f"{seconds / 3600:.1f} h")

    for record in records:
        if record.event_type in ("NodeStopped", "NodeRunEndedAbruptly"):
            # A crash is known only by the last event before it: the state held at least that long.
            ended = _run_ended(record)
            for before in previous.values():
                if ended is not None and ended >= before.recorded_at:
                    held(before, ended, at_least=record.event_type == "NodeRunEndedAbruptly")
            previous.clear()
            continue
        if record.event_type not in ("ConnectionStateChanged", "PathSwitched"):
            continue
        before = previous.get(record.stream_id)
        if before is not None:
            held(before, record.recorded_at)
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
    """Read-only SQL over the store; writes are refused, a statement runs at most 10 s and may call
    only an allow-list of functions (dates, strings, aggregates, windows, math, JSON).

    Views: peer_timeline (state changes and path switches, how long each held), connection_history
    (the same rows), path_events (path choices, punches, retries), peer_metrics (samples, with
    window_s and latency_window_s to weight averages by time), endpoint_changes, node_stops and
    peer_names; docs/store.md lists their columns. Times print in local time with the zone's name
    (--utc for UTC); hour_local and PostgreSQL's timestamps follow the local zone.
    """
    from store.readonly import local_zone_key, run_query

    result = run_query(database_url(db, state_dir, create=False), statement, max_rows=max_rows,
                       time_zone=local_zone_key())
    if as_json:
        for row in result.rows:
            print(json.dumps({column: _json_cell(value, column)
                              for column, value in zip(result.columns, row, strict=True)}))
    else:
        table = _table(header_style="bold")
        for column in result.columns:
            table.add_column(column, overflow="fold")
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


def register(app: typer.Typer) -> None:
    app.command("events")(_guard(events_command))
    app.command("replay")(_guard(replay_command))
    app.command("history")(_guard(history_command))
    app.command("sql")(_guard(sql_command))
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
