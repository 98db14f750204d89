"""The API's read path: asyncio reads of the event store, and the status projection.

Everything ``GET`` shows comes from the log, never from an actor's memory: the
actors persist before they act, so the fold of the log is the truth. The projection
folds new events incrementally (``events.fold.apply_world``, the same folds the
actors and the replay tool use) on each request.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from events import types as ev
from events.fold import ConnectionState, World, apply_world
from events.streams import node_of, peer_stream
from store import diagnosis
from store.base import RecordedEvent
from store.engine import async_engine, parse_url
from store.errors import translated
from store.peers import DIRECTORY_TYPES, PeerRef, build_directory
from store.queries import EventFilter, RowReader, page_query

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

PAGE = 2000


def event_json(record: RecordedEvent) -> dict[str, Any]:
    return {"global_position": record.global_position, "stream_id": record.stream_id,
            "stream_position": record.stream_position, "event_type": record.event_type,
            "event_version": type(record.event).version, "recorded_at": record.recorded_at.isoformat(),
            "payload": record.event.to_payload(), "metadata": dict(record.metadata)}


_SQLITE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?$")


def _when(key: str, value: Any) -> Any:
    """Timestamps as ISO 8601 with an offset (SQLite's views give UTC text without one)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, str) and key.endswith("_at") and _SQLITE_TIME.match(value):
        return datetime.fromisoformat(value).replace(tzinfo=UTC).isoformat()
    return value


def _row(mapping: Any) -> dict[str, Any]:
    return {key: _when(key, value) for key, value in dict(mapping).items()}


class StoreReader:
    def __init__(self, url: str) -> None:
        self.target = parse_url(url)
        self.where = self.target.where
        self.dialect = self.target.dialect
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        """Made at the first read: a node whose history nobody asks for never loads the
        asyncio engine and its driver."""
        if self._engine is None:
            self._engine = async_engine(self.target, readonly=True)
        return self._engine

    async def events(self, after: int = 0, limit: int = 100, selection: EventFilter | None = None,
                     upto: int | None = None) -> list[RecordedEvent]:
        reader = RowReader("skip")
        with translated(self.where):
            async with self.engine.connect() as connection:
                query = page_query(after, upto, limit, selection or EventFilter())
                rows = (await connection.execute(query)).all()
        return [record for row in rows if (record := reader.record(row)) is not None]

    async def history(self, streams: list[str], limit: int = 1000) -> list[dict[str, Any]]:
        """The connection_history rows of these connection streams (one peer's)."""
        if not streams:
            return []
        marks = ", ".join(f":s{index}" for index in range(len(streams)))
        with translated(self.where):
            return await self._query(
                f"SELECT * FROM connection_history WHERE stream_id IN ({marks}) "
                "ORDER BY global_position LIMIT :limit", limit=limit,
                **{f"s{index}": stream for index, stream in enumerate(streams)})

    async def every(self, selection: EventFilter, upto: int | None = None) -> list[RecordedEvent]:
        """Every event that matches, page by page (for a bounded selection: a stream, a window)."""
        records: list[RecordedEvent] = []
        after = 0
        while True:
            page = await self.events(after, PAGE, selection, upto)
            records.extend(page)
            if len(page) < PAGE:
                return records
            after = page[-1].global_position

    async def world_at(self, position: int) -> World:
        """Replay: the fold of the log up to ``position``, as the replay tool computes it."""
        world = World()
        after = 0
        while True:
            page = await self.events(after, PAGE, None, position)
            for record in page:
                world = apply_world(world, record.stream_id, record.event, record.global_position)
            if len(page) < PAGE:
                return world
            after = page[-1].global_position

    async def diagnosis(self, entry: PeerRef, names: dict[tuple[str, str], str],
                        position: int | None = None, at: datetime | None = None) -> dict[str, Any] | None:
        """``lanrage diagnose`` of one connection's incident at ``at`` (as ``--at`` picks it), else
        its last one at or before ``position``."""
        if entry.stream_id is None:
            return None
        stream = await self.every(EventFilter(entry.stream_id))
        connection = [r for r in stream if r.stream_id == entry.stream_id]  # the filter is a prefix
        node_id = diagnosis.node_of(connection)
        node_events = [r for r in await self.every(EventFilter(None, diagnosis.NODE_TYPES))
                       if diagnosis.same_node(r, node_id)]
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)  # an ISO 8601 time without an offset is UTC here, as in the log
        found = diagnosis.incidents(connection, node_events)
        # ``at`` is a moment: the incident recorded then, else the nearest within a few minutes
        # either side, as ``diagnose --at`` picks it.
        chosen = (diagnosis.select_nearest(found, at, at, diagnosis.NEAREST_WITHIN)[0][:1] if at is not None
                  else diagnosis.select_incidents(found, position=position))
        if not chosen:
            return None
        incident = chosen[0]
        when = incident.record.recorded_at
        around = await self.every(EventFilter(None, (), when - diagnosis.LOOKBACK,
                                              when + diagnosis.LOOKAHEAD))
        window = diagnosis.window_for(incident, connection, around, entry.party_id, entry.peer_id,
                                      entry.name or entry.peer_id, names, node_events,
                                      await self.world_at(incident.record.global_position))
        return diagnosis.report_json(incident, diagnosis.diagnose(window))

    async def directory(self) -> list[PeerRef]:
        """Every peer the log knows, for resolving a name, an id prefix or PARTY:NAME."""
        records = await self.every(EventFilter(None, DIRECTORY_TYPES))
        with translated(self.where):
            rows = await self._query("SELECT DISTINCT stream_id FROM events WHERE stream_id LIKE 'peer:%'")
        return build_directory(records, [row["stream_id"] for row in rows])

    async def timeline(self, limit: int = 100, *, streams: list[str] | None = None,
                       since: datetime | None = None, until: datetime | None = None,
                       before: int | None = None) -> list[dict[str, Any]]:
        """Rows of ``peer_timeline``, newest first: every peer's (departed ones too) or only those of
        ``streams``, recorded within ``since``..``until``, before global position ``before`` (a
        page further back starts below the last one's oldest row)."""
        where, parameters = [], {"limit": limit}
        if streams is not None:
            if not streams:
                return []
            where.append(f"stream_id IN ({', '.join(f':s{index}' for index in range(len(streams)))})")
            parameters.update({f"s{index}": stream for index, stream in enumerate(streams)})
        for name, bound, operator in (("since", since, ">="), ("until", until, "<=")):
            if bound is not None:
                where.append(f"recorded_at {operator} :{name}")
                parameters[name] = self._time(bound)
        if before is not None:
            where.append("global_position < :before")
            parameters["before"] = before
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        with translated(self.where):
            return await self._query(
                f"SELECT * FROM peer_timeline{condition} ORDER BY global_position DESC LIMIT :limit",
                **parameters)

    def _time(self, moment: datetime) -> Any:
        """A bound for ``recorded_at``: UTC text as SQLite stores it, an aware datetime for PostgreSQL."""
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        if self.dialect == "sqlite":
            return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        return moment

    async def samples(self, peer_id: str, limit: int = 60,
                      node_id: str | None = None) -> list[dict[str, Any]]:
        with translated(self.where):
            rows = await self._query(
                "SELECT * FROM peer_metrics WHERE peer_id = :peer"
                + (" AND node_id = :node" if node_id is not None else "")
                + " ORDER BY global_position DESC LIMIT :limit", peer=peer_id, limit=limit, node=node_id)
        return rows[::-1]

    async def _query(self, sql: str, **parameters: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(text(sql), parameters)
            return [_row(row._mapping) for row in rows]

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()


class Projection:
    """The world as of the newest event, folded incrementally.

    With ``node_id`` only that node's streams are folded: in a database that several
    nodes share, a node's API shows its own parties and connections.
    """

    def __init__(self, reader: StoreReader, node_id: str | None = None) -> None:
        self.reader = reader
        self.node_id = node_id
        self.world = World()
        self._lock = asyncio.Lock()

    async def refresh(self) -> World:
        async with self._lock:
            while True:
                records = await self.reader.events(after=self.world.position, limit=PAGE)
                for record in records:
                    if self.node_id is not None and node_of(record.stream_id) != self.node_id:
                        self.world = replace(self.world, position=record.global_position)
                        continue
                    self.world = apply_world(self.world, record.stream_id, record.event,
                                             record.global_position)
                if len(records) < PAGE:
                    return self.world


def _peer(party_id: str, member: Any, connection: ConnectionState | None,
          local_nat_type: str | None = None) -> dict[str, Any]:
    state = connection or ConnectionState()
    # This node's own NAT type is detected after it joins: the node stream has it.
    nat_type = local_nat_type if member.is_local and local_nat_type else member.nat_type
    return {"peer_id": member.peer_id, "name": member.name, "public_key": member.public_key,
            "virtual_ip": member.virtual_ip, "nat_type": nat_type, "is_local": member.is_local,
            "state": None if member.is_local else state.state,
            "path": None if member.is_local else state.path,
            "endpoint": state.endpoint, "relay": state.relay, "latency_ms": state.latency_ms,
            "jitter_ms": state.jitter_ms, "loss": state.loss, "quality": state.quality,
            "rx_bytes": state.rx_bytes, "tx_bytes": state.tx_bytes, "reconnects": state.reconnects,
            "wireguard_error": None if member.is_local else state.wireguard_error}


def _device(party: Any, device: Any, members: dict[str, Any],
            connection: ConnectionState | None) -> dict[str, Any]:
    """A static device as ``status`` shows it: which member routes it, and its state here."""
    via = members.get(device.via_peer_id)
    state = connection or ConnectionState()
    return {"device_id": device.device_id, "name": device.name, "public_key": device.public_key,
            "virtual_ip": device.virtual_ip, "via_peer_id": device.via_peer_id,
            "via_name": via.name if via else "", "routed_here": device.via_peer_id == party.local_peer_id,
            "applied": device.applied, "error": device.error, "state": state.state,
            "endpoint": state.endpoint, "last_handshake": None}


def status(world: World, include_inactive: bool = False) -> dict[str, Any]:
    node = next(iter(world.nodes.values()), None)
    parties = []
    for party_stream_id, party in world.parties.items():
        if not party.active and not include_inactive:
            continue
        members = dict(party.members)
        local = members.get(party.local_peer_id)
        parties.append({
            "party_id": party.party_id, "name": party.name, "active": party.active,
            "local_peer_id": party.local_peer_id, "host_peer_id": party.host_peer_id,
            "subnet": party.subnet, "virtual_ip": local.virtual_ip if local else None,
            "interface_error": party.local_address_error,
            "peers": [_peer(party.party_id, member,
                            world.connections.get(peer_stream(node_of(party_stream_id) or "",
                                                              party.party_id, member.peer_id)),
                            node.nat_type if node else None)
                      for member in members.values()],
            "devices": [_device(party, device, members,
                                world.connections.get(peer_stream(node_of(party_stream_id) or "",
                                                                  party.party_id, device.device_id)))
                        for _, device in party.devices]})
    return {"node": None if node is None else {
                "node_id": node.node_id, "public_key": node.public_key, "running": node.running,
                "listen_port": node.listen_port, "nat_type": node.nat_type,
                "public_endpoint": node.public_endpoint, "relay": node.selected_relay,
                "relay_only": node.relay_only},
            "parties": parties, "position": world.position}


def remote_peers(world: World) -> list[dict[str, Any]]:
    """Every remote peer of every active party, with its party id."""
    return [{**peer, "party_id": party["party_id"]} for party in status(world)["parties"]
            for peer in party["peers"] if not peer["is_local"]]


def summary(world: World) -> dict[str, Any]:
    peers = remote_peers(world)
    latencies = [p["latency_ms"] for p in peers if p["latency_ms"] is not None]
    qualities = [p["quality"] for p in peers if p["quality"] is not None]
    by_state = {state: sum(p["state"] == state for p in peers) for state in ev.CONNECTION_STATES}
    return {"parties": len(status(world)["parties"]), "peers": len(peers), "states": by_state,
            "direct": sum(p["path"] == ev.DIRECT for p in peers),
            "relayed": sum(p["path"] == ev.RELAY for p in peers),
            "avg_latency_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
            "max_latency_ms": max(latencies) if latencies else None,
            "avg_quality": round(sum(qualities) / len(qualities), 3) if qualities else None,
            "rx_bytes": sum(p["rx_bytes"] for p in peers), "tx_bytes": sum(p["tx_bytes"] for p in peers),
            "events": world.position,
            "relays": {name: asdict(relay) for name, relay in world.relays.items()}}
