"""This node's own side of a drop, told to the peer when their connection comes back.

When a connection of this node returns to ``connected``/``degraded`` after a drop, the
agent reads its own log around the outage and tells that peer, through the control server,
what happened on this side: its uplink down from-to, its public endpoint moving, its relay
failing. When the node starts again, it tells every member how its last run ended: a crash
(with its last sign of life) or a clean stop. Nothing is said when this side saw nothing.
The peer records it as this node's word (``PeerAccountReceived``) and ``diagnose`` shows
it first.

``own_side`` and ``restart_account`` are pure functions over records, so what a node says can be tested on a
hand-written log; ``read_own_side`` reads the records it needs from the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from events import types as ev
from events.health import silent_at
from events.streams import node_stream, relay_stream
from store.base import RecordedEvent

UP = (ev.CONNECTED, ev.DEGRADED)
# Signs of one outage lie this close to the drop: a dead relay is seen within a second or
# two, a lost control server within its heartbeat silence (~30 s), the drop itself after
# a few lost probes.
TOGETHER = timedelta(seconds=45)
# What the agent reads back before a drop for the node's lifecycle.
NODE_TAIL = 64
MAX_ITEMS = 8


def is_recovery(record: RecordedEvent) -> bool:
    event = record.event
    return (isinstance(event, ev.ConnectionStateChanged) and event.to_state in UP
            and event.from_state not in UP)


def _drop_before(connection: Sequence[RecordedEvent], recovery: RecordedEvent) -> RecordedEvent | None:
    """The drop this recovery ends: the last transition out of an up state before it."""
    for record in reversed([r for r in connection if r.global_position < recovery.global_position]):
        event = record.event
        if isinstance(event, ev.ConnectionStateChanged):
            if event.from_state in UP and event.to_state not in UP:
                return record
            if event.to_state in UP:
                return None
    return None


def _ts(moment: datetime) -> float:
    return round(moment.timestamp(), 3)


def _iso_ts(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return _ts(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def own_side(recovery: RecordedEvent, connection: Sequence[RecordedEvent], around: Sequence[RecordedEvent],
             relays: Sequence[str]) -> list[dict[str, Any]]:
    """What this node saw on its side of the outage that ``recovery`` ends (protocol items).

    ``connection``: the connection's stream up to the recovery; ``around``: this node's
    relay and node records from ``TOGETHER`` before the drop to the recovery; ``relays``:
    the relays it probes.
    """
    drop = _drop_before(connection, recovery)
    if drop is None:
        return []
    return _outage(drop, recovery, connection, around, relays)[:MAX_ITEMS]


def restart_account(node: Sequence[RecordedEvent]) -> list[dict[str, Any]]:
    """How the run before this node's last start ended, from its own stream (its newest rows)."""
    starts = [r for r in node if isinstance(r.event, ev.NodeStarted)]
    if not starts:
        return []
    start = starts[-1]
    before = [r for r in node if r.global_position < start.global_position
              and isinstance(r.event, ev.NodeRunEndedAbruptly | ev.NodeStopped | ev.NodeStarted)]
    if not before:
        return []
    last = before[-1]
    if isinstance(last.event, ev.NodeRunEndedAbruptly):
        alive = _iso_ts(last.event.last_recorded_at)
        if alive is None:
            return []
        return [{"kind": ev.ACCOUNT_CRASHED, "started_at": alive, "ended_at": _ts(start.recorded_at),
                 "detail": "its node stopped without a clean stop (crashed or killed) and started again"}]
    if isinstance(last.event, ev.NodeStopped):
        return [{"kind": ev.ACCOUNT_RESTARTED, "started_at": _ts(last.recorded_at),
                 "ended_at": _ts(start.recorded_at), "detail": f"stopped: {last.event.reason}"[:200]}]
    return []


def _outage(drop: RecordedEvent, recovery: RecordedEvent, connection: Sequence[RecordedEvent],
            around: Sequence[RecordedEvent], relays: Sequence[str]) -> list[dict[str, Any]]:
    near = [r for r in around if abs(r.recorded_at - drop.recorded_at) <= TOGETHER]
    span = [r for r in around if drop.recorded_at - TOGETHER <= r.recorded_at <= recovery.recorded_at]
    degraded = {r.event.relay for r in near if isinstance(r.event, ev.RelayDegraded)}
    dead = {relay: record for relay in sorted(degraded)
            if (record := silent_at(around, relay, drop.recorded_at, TOGETHER)) is not None}
    control = [r for r in near if isinstance(r.event, ev.ControlServerUnreachable)]
    every_relay = bool(relays) and all(relay in dead for relay in relays)
    moved = [r for r in span if isinstance(r.event, ev.PublicEndpointChanged)]
    items: list[dict[str, Any]] = []
    if (every_relay or control) and not moved:  # a moved mapping breaks every path too, and says why
        # Every path of this node went silent at once: its own uplink, not the peer.
        signs = [drop, *dead.values(), *control]
        began = min(r.recorded_at for r in signs)
        back = [r for r in span if r.recorded_at > began and (
            (isinstance(r.event, ev.RelayProbed) and r.event.answered > 0 and r.event.relay in dead)
            or isinstance(r.event, ev.ControlServerReachable))]
        ended = min([recovery.recorded_at, *(r.recorded_at for r in back)])
        lost = [f"every relay ({len(dead)})"] if every_relay else []
        lost += ["its control server"] if control else []
        items.append({"kind": ev.ACCOUNT_UPLINK, "started_at": _ts(began), "ended_at": _ts(ended),
                      "detail": f"this connection and {' and '.join(lost)} went silent together"[:200]})
    else:
        relay = _relay_at(connection, drop)
        failed = dead.get(relay) if relay else None
        if failed is not None:
            items.append({"kind": ev.ACCOUNT_RELAY, "started_at": _ts(failed.recorded_at),
                          "ended_at": _ts(recovery.recorded_at),
                          "detail": f"its relay {relay} stopped answering: {failed.event.reason}"[:200]})
    for record in moved:
        items.append({"kind": ev.ACCOUNT_ENDPOINT, "started_at": _ts(record.recorded_at), "ended_at": None,
                      "detail": f"its public endpoint moved from {record.event.old_endpoint or '-'} to "
                                f"{record.event.new_endpoint}"[:200]})
    return items


def _relay_at(connection: Sequence[RecordedEvent], drop: RecordedEvent) -> str | None:
    relay: str | None = None
    for record in connection:
        if record.global_position > drop.global_position:
            break
        event = record.event
        if isinstance(event, ev.PathChosen):
            relay = event.relay if event.path == ev.RELAY else None
        elif isinstance(event, ev.PathSwitched):
            relay = event.to_relay if event.to_path == ev.RELAY else None
    return relay


AROUND_TYPES = ("RelayDegraded", "RelayProbed", "ControlServerUnreachable", "ControlServerReachable",
                "PublicEndpointChanged")


def read_own_side(store: Any, node_id: str, recovery: RecordedEvent,
                  relays: Sequence[str]) -> list[dict[str, Any]]:
    """``own_side`` for ``recovery``, reading what it needs from this node's log."""
    connection = store.read_stream(recovery.stream_id)
    drop = _drop_before(connection, recovery)
    if drop is None:
        return []
    mine = (node_stream(node_id), *(relay_stream(node_id, relay) for relay in relays))
    around = [r for r in store.read_all(types=AROUND_TYPES, since=drop.recorded_at - TOGETHER,
                                        until=recovery.recorded_at, on_error="skip") if r.stream_id in mine]
    return own_side(recovery, connection, around, relays)


def read_restart_account(store: Any, node_id: str) -> list[dict[str, Any]]:
    """``restart_account`` of this node's newest rows."""
    stream = node_stream(node_id)
    head = store.stream_position(stream)
    return restart_account(store.read_stream(stream, max(1, head - NODE_TAIL + 1)))
