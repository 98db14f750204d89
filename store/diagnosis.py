"""Why a peer dropped: small rules over the events around each drop, cause first.

An *incident* is a moment a connection stopped carrying traffic as it did: a change from
``connected``/``degraded`` to another state, a forced path switch (relay to relay, direct
to relay), a change of the peer's endpoint under it (NAT rebinding), or a restart of this
node or a loss of its control server while the connection was up. For each incident a
``Window`` holds the connection's own events up to it, every event of this node recorded
around it, and the state of every stream folded up to it (``StateAt``, with the replay's
``apply_world``): whether the other connections were up is read from that state, never
from how many rows happen to lie near the incident. Each rule is a pure function
``Window -> Finding | None``; ``RULES`` lists them in order of precedence, so adding a
cause (a new event, a new rule) is one function and one line there. The first finding is
the cause; the others are shown as further evidence. When no rule fires, the finding says
the cause cannot be told and lists the facts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from events import types as ev
from events.fold import World, apply_world
from events.health import silent_at
from events.streams import METRICS, PEER, peer_stream_ids, stream_kind
from events.streams import node_of as stream_owner
from store.base import RecordedEvent

# How far before an incident its causes are looked for: a lost peer is declared after
# three lost probes plus reconnect attempts (tens of seconds), and metric samples come
# every 30 s, so two minutes hold the probes, the attempts and a few samples.
LOOKBACK = timedelta(seconds=120)
# How far after it: the control server expires a silent member after its TTL and expiry
# (about a minute by default), and a clean leave is recorded within a second or two.
LOOKAHEAD = timedelta(seconds=120)
# Connections of one node that drop within this of each other dropped for one reason.
TOGETHER = timedelta(seconds=15)
# A sample with at least this loss before a drop, after samples below it, is "loss rose".
# The same share of lost probes before the drop's final run of lost ones (from the first
# loss on) says it too: a cut link loses every probe from one moment on, a failing one
# loses some first.
LOSS_ROSE = 0.2
# Two lost probes before that run say it whatever their share; one says it only at that share:
# a single probe lost long before a cut is bad luck, not a trend.
LOSS_MIN_LOST = 2
# WireGuard re-keys every 120 s while traffic flows and drops a session at 180 s: a last
# handshake older than that at a drop says the remote stopped answering handshakes.
HANDSHAKE_STALE_S = 180.0
# Without a moment, the latest few incidents: enough to see a pattern, short enough to read.
LATEST_INCIDENTS = 5
NODE_TYPES = ("NodeStarted", "NodeStopped", "NodeRunEndedAbruptly", "ControlServerUnreachable",
              "ControlServerReachable", "PeerAccountReceived")
UP = (ev.CONNECTED, ev.DEGRADED)
# A control plane back within this was one failed request retried, not an outage of the node.
CONTROL_BLIP_S = 1.0
# The connection's relay session reopened by a new run of this node: the path did not change.
RESTORED_SESSION = "restore the relay session after a restart"


@dataclass(frozen=True)
class Fact:
    """One event shown as evidence: when, where, what, and the values that matter."""

    at: datetime
    global_position: int
    stream_id: str
    event_type: str
    detail: str
    followed: bool = False  # recorded after the incident: what followed it, not what led to it

    @classmethod
    def of(cls, record: RecordedEvent, detail: str) -> Fact:
        return cls(record.recorded_at, record.global_position, record.stream_id, record.event_type, detail)


@dataclass(frozen=True)
class Finding:
    cause: str  # a stable code, e.g. "remote_left"
    summary: str  # plain words, the first thing a person reads
    evidence: tuple[Fact, ...]


@dataclass(frozen=True)
class Incident:
    record: RecordedEvent  # the drop, the switch, the endpoint change, NodeStarted or the control loss
    kind: str  # "drop", "path_switch", "endpoint_change", "restart", "control_outage"
    description: str


@dataclass(frozen=True)
class Window:
    """What a rule sees: the incident, the connection up to it, and this node's events around it."""

    incident: Incident
    party_id: str
    peer_id: str
    peer_name: str
    connection: tuple[RecordedEvent, ...]  # this connection's stream, up to and including the incident
    around: tuple[RecordedEvent, ...]  # every event of this node within LOOKBACK/LOOKAHEAD
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # (party, peer) -> name
    node: tuple[RecordedEvent, ...] = ()  # this node's whole lifecycle (NODE_TYPES), control plane included
    # Every stream folded up to and including the incident (``StateAt``), however long ago its
    # last row was written; None: judge from the rows around the incident only.
    world: World | None = None
    # Each other connection's last state change before the incident (evidence that it stayed up).
    last_changes: dict[str, RecordedEvent] = field(default_factory=dict)

    @property
    def at(self) -> datetime:
        return self.incident.record.recorded_at

    def before(self, span: timedelta = LOOKBACK) -> list[RecordedEvent]:
        return [r for r in self.around if self.at - span <= r.recorded_at
                and r.global_position <= self.incident.record.global_position]

    def after(self, span: timedelta = LOOKAHEAD) -> list[RecordedEvent]:
        return [r for r in self.around if r.global_position > self.incident.record.global_position
                and r.recorded_at <= self.at + span]

    def about_this_peer(self, record: RecordedEvent) -> bool:
        payload = record.event
        return (getattr(payload, "party_id", None) == self.party_id
                and getattr(payload, "peer_id", None) == self.peer_id)

    def who(self, party_id: str, peer_id: str) -> str:
        return self.names.get((party_id, peer_id)) or peer_id

    @property
    def connection_stream(self) -> str:
        return self.incident.record.stream_id if self.incident.kind not in NODE_INCIDENTS else (
            self.connection[-1].stream_id if self.connection else "")


Rule = Callable[[Window], Finding | None]


def connection_of(stream_id: str) -> str:
    """The connection stream a record speaks of: a sample's stream (``metrics:...``) names its
    connection's (``peer:...``); older logs hold samples in the connection's stream itself."""
    return PEER + stream_id[len(METRICS):] if stream_kind(stream_id) == METRICS else stream_id


# Incidents recorded in the node's stream rather than the connection's.
NODE_INCIDENTS = ("restart", "control_outage")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


# ---------------------------------------------------------------- the rules


# A peer's account covers a drop recorded from this long before what it says began (its own
# first sign may come after this side's probes were lost) to this long after it ended (this
# side sees a return a few probes late).
ACCOUNT_BEFORE = timedelta(seconds=45)
ACCOUNT_AFTER = timedelta(seconds=60)
# A moment the peer names (its endpoint moved, it left) explains a drop that follows it within
# this long: a broken path is noticed within a few probe intervals (5 s each), and a drop half a
# minute after a move the connection lived through has another cause.
ACCOUNT_POINT_AFTER = timedelta(seconds=20)
ACCOUNT_POINTS = (ev.ACCOUNT_ENDPOINT, ev.ACCOUNT_LEFT)
ACCOUNT_WORDS = {
    ev.ACCOUNT_UPLINK: "its uplink was down {span}",
    ev.ACCOUNT_CRASHED: "it crashed or was killed: last alive {start}, started again {end}",
    ev.ACCOUNT_RESTARTED: "it was stopped at {start} and started again {end}",
    ev.ACCOUNT_ENDPOINT: "its public endpoint changed at {start}",
    ev.ACCOUNT_LEFT: "it left the party at {start}",
    ev.ACCOUNT_RELAY: "its relay stopped answering {span}",
    ev.ACCOUNT_OFFLINE: "was silent {span} (no heartbeat, no message)",
}
# The cause a peer's word names, where this node's own rules have a name for it already.
ACCOUNT_CAUSES = {ev.ACCOUNT_ENDPOINT: "endpoint_changed", ev.ACCOUNT_LEFT: "remote_left"}


def peer_account(window: Window) -> Finding | None:
    """The peer's own word about its side of the drop (``PeerAccountReceived``), received later,
    with the control server's word on when it stopped hearing from the peer.

    Shown first and marked as who said it: it is never checked, only reported. The server's
    word alone (the peer said nothing) does not lead here: this node's own rules say more (a
    silence of the control connection is also what a lossy or rebinding uplink looks like), so
    it is ``server_account``, the last rule.
    """
    said = _accounts(window)
    if all(record.event.said_by == ev.SAID_BY_SERVER for record, _, _ in said):
        return None
    first = next(r.event.kind for r, _, _ in said if r.event.said_by != ev.SAID_BY_SERVER)
    if first == ev.ACCOUNT_RELAY and relay_died(window) is not None:
        return None  # the peer's word only repeats what this node saw of the relay both used
    return _account_finding(window, said, ACCOUNT_CAUSES.get(first, f"remote_{first}"))


def server_account(window: Window) -> Finding | None:
    """Only the control server spoke: when it stopped hearing from the peer, and since when. Last in
    precedence, so it leads only where this node's own log tells nothing; "cannot be told" then
    remains only when neither side nor the server knows."""
    said = _accounts(window)
    if not said or any(record.event.said_by != ev.SAID_BY_SERVER for record, _, _ in said):
        return None
    return _account_finding(window, said, "remote_silent_to_server")


def _accounts(window: Window) -> list[tuple[RecordedEvent, datetime, datetime | None]]:
    """Who said what about the peer's side around the incident: the latest of each thing said
    again (the server's "silent since", then "back at"), the peer's own word first."""
    if window.incident.kind in NODE_INCIDENTS:
        return []
    said: dict[tuple[str, str, str], tuple[RecordedEvent, datetime, datetime | None]] = {}
    for record in window.node:
        event = record.event
        if not isinstance(event, ev.PeerAccountReceived) or not window.about_this_peer(record):
            continue
        start, end = _account_time(event.started_at), _account_time(event.ended_at)
        after = ACCOUNT_POINT_AFTER if event.kind in ACCOUNT_POINTS and end is None else ACCOUNT_AFTER
        if start is None or not start - ACCOUNT_BEFORE <= window.at <= (end or start) + after:
            continue
        said[(event.said_by, event.kind, event.started_at)] = (record, start, end)
    return sorted(said.values(), key=lambda entry: entry[0].event.said_by == ev.SAID_BY_SERVER)


def _account_finding(window: Window, said: list[tuple[RecordedEvent, datetime, datetime | None]],
                     cause: str) -> Finding:
    zone = window.at.astimezone().strftime("%Z")
    peer_words: list[str] = []
    server_words: list[str] = []
    for record, start, end in said:
        begun, ended = _clock(start), _clock(end) if end else "-"
        text = ACCOUNT_WORDS.get(record.event.kind, record.event.kind).format(
            span=f"{begun}-{ended}" if end else f"from {begun}", start=begun, end=ended)
        words = server_words if record.event.said_by == ev.SAID_BY_SERVER else peer_words
        if text not in words:
            words.append(text)
    parts = [f"{window.peer_name}'s node says {'; '.join(peer_words)}"] if peer_words else []
    parts += [f"the control server says {window.peer_name}'s node {'; '.join(server_words)}"] \
        if server_words else []
    evidence = tuple(Fact.of(record, f"{_whose(window, record.event)} (received {_clock(record.recorded_at)} "
                                     f"{zone}): {record.event.kind} {_clock(start)}-"
                                     f"{_clock(end) if end else ''}; {record.event.detail}")
                     for record, start, end in said)
    return Finding(cause, f"{'; '.join(parts)} ({zone})", evidence)


def _whose(window: Window, event: ev.PeerAccountReceived) -> str:
    if event.said_by == ev.SAID_BY_SERVER:
        return "the control server's word"
    return f"{window.peer_name}'s own word"


def _account_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def _clock(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M:%S")


def local_restart(window: Window) -> Finding | None:
    """This node crashed, was killed, or was stopped, and started again while the connection existed.

    The start is the last ``NodeStarted`` in the window (or the incident itself); how the run
    before it ended comes from the node's whole lifecycle, since a node can be down for hours.
    """
    opened = window.connection[0].global_position if window.connection else 0
    if window.incident.kind == "restart":
        start: RecordedEvent | None = window.incident.record
    else:
        starts = [r for r in window.before() if isinstance(r.event, ev.NodeStarted)
                  and stream_kind(r.stream_id) == "node" and r.global_position > opened]
        start = starts[-1] if starts else None
    if start is None:
        return None
    lifecycle = sorted({r.global_position: r for r in (*window.node, start)}.values(),
                       key=lambda r: r.global_position)
    earlier_starts = [r for r in lifecycle if isinstance(r.event, ev.NodeStarted)
                      and r.global_position < start.global_position]
    run_began = earlier_starts[-1].global_position if earlier_starts else 0
    stopped = [r for r in lifecycle if isinstance(r.event, ev.NodeStopped)
               and run_began < r.global_position < start.global_position]
    # The next run records the abrupt end just before its own NodeStarted, in one append.
    abrupt = [r for r in lifecycle if isinstance(r.event, ev.NodeRunEndedAbruptly)
              and run_began < r.global_position < start.global_position]
    evidence = [Fact.of(r, f"stopped: {r.event.reason}") for r in stopped[-1:]]
    evidence += [Fact.of(r, f"the previous run's last event was {_before_start(r)}"
                            f"(position {r.event.last_global_position})") for r in abrupt[:1]]
    if stopped and not abrupt:
        evidence.append(Fact.of(start, "this node started again"))
        return Finding("local_stopped", f"this node was stopped ({stopped[-1].event.reason}) and started "
                       "again", tuple(evidence))
    if not abrupt:
        previous = _last_before(window, start)
        if previous is not None:
            evidence.append(Fact.of(previous, "the last event written before the start (no clean stop)"))
    evidence.append(Fact.of(start, "this node started again"))
    return Finding("local_crashed", "this node crashed or was killed (its previous run ended without "
                   "a clean stop) and restarted", tuple(evidence))


def _before_start(abrupt: RecordedEvent) -> str:
    """When the last run's last event was (ISO 8601 in UTC: the printing side shows it in its own
    zone) and how long before the start."""
    try:
        last = datetime.fromisoformat(abrupt.event.last_recorded_at)
    except ValueError:
        return ""  # a broken time cannot be placed; the position still is
    if last.tzinfo is None:
        last = last.replace(tzinfo=abrupt.recorded_at.tzinfo)
    seconds = (abrupt.recorded_at - last).total_seconds()
    if seconds < 0:
        return ""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    span = (f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s" if rest >= 60
            else f"{seconds:.1f} s")
    return f"at {last.astimezone(UTC).isoformat()}, {span} before this start "


def _last_before(window: Window, record: RecordedEvent) -> RecordedEvent | None:
    earlier = [r for r in window.around if r.global_position < record.global_position]
    return earlier[-1] if earlier else None


def left_party(window: Window) -> Finding | None:
    """The peer left the party cleanly, or this node did.

    A leave recorded after the incident explains it only while the connection had not come
    back in between (a leave after a recovery is a later story), and is shown as what followed.
    """
    back = next((r for r in window.after() if r.stream_id == window.connection_stream
                 and isinstance(r.event, ev.ConnectionStateChanged) and r.event.to_state in UP), None)
    span = [*window.before(), *(r for r in window.after()
                                if back is None or r.global_position < back.global_position)]
    left = [r for r in span if isinstance(r.event, ev.PeerLeft) and window.about_this_peer(r)]
    local = [r for r in span if isinstance(r.event, ev.PartyLeft) and r.event.party_id == window.party_id]
    if local:
        record = local[0]
        return Finding("local_left", f"this node left the party ({record.event.reason})",
                       (Fact.of(record, f"reason: {record.event.reason}"),))
    clean = [r for r in left if r.event.reason == "left"]
    if clean:
        record = clean[0]
        return Finding("remote_left", f"{window.peer_name} left the party",
                       (Fact.of(record, "reason: left"),))
    return None


def relay_died(window: Window) -> Finding | None:
    """The relay carrying this connection stopped answering, and the connection moved."""
    relay = _relay_in_use(window)
    if relay is None:
        return None
    span = [*window.before(), *window.after(timedelta(seconds=30))]
    degraded = [r for r in span if isinstance(r.event, ev.RelayDegraded) and r.event.relay == relay]
    if not degraded:
        return None
    evidence = [Fact.of(degraded[0], f"relay {relay} degraded: {degraded[0].event.reason}")]
    moved = [r for r in span if isinstance(r.event, ev.PathSwitched) and window.about_this_peer(r)
             and r.event.from_relay == relay]
    selected = [r for r in span if isinstance(r.event, ev.RelaySelected) and r.event.previous_relay == relay]
    evidence += [Fact.of(r, f"selected {r.event.relay} ({r.event.reason})") for r in selected[:1]]
    evidence += [Fact.of(r, f"{r.event.from_path} {r.event.from_relay} → {r.event.to_path} "
                            f"{r.event.to_relay or r.event.endpoint or ''}".rstrip()) for r in moved[:1]]
    target = moved[0].event.to_relay or moved[0].event.to_path if moved else ""
    where = f" and the connection moved to {target}" if moved else ""
    return Finding("relay_died", f"the relay in use ({relay}) stopped answering{where}", tuple(evidence))


def _relay_in_use(window: Window) -> str | None:
    incident = window.incident.record.event
    if isinstance(incident, ev.PathSwitched) and incident.from_path == ev.RELAY:
        return incident.from_relay
    relay: str | None = None
    for record in window.connection:
        event = record.event
        if isinstance(event, ev.PathChosen):
            relay = event.relay if event.path == ev.RELAY else None
        elif isinstance(event, ev.PathSwitched):
            relay = event.to_relay if event.to_path == ev.RELAY else None
        elif isinstance(event, ev.ConnectionStateChanged) and event.path is not None and \
                record.global_position != window.incident.record.global_position:
            relay = event.relay if event.path == ev.RELAY else None
    return relay


def local_uplink(window: Window) -> Finding | None:
    """Every connection of this node dropped at once: this node lost its uplink."""
    if window.incident.kind in NODE_INCIDENTS:
        return None
    others = _other_connections(window)
    if not others:
        return _every_relay_silent(window)
    dropped = {stream: r for stream, r in others.items() if r is not None}
    if len(dropped) < len(others):
        return None
    evidence = [Fact.of(window.incident.record, _describe(window.incident.record))]
    evidence += [Fact.of(r, f"{_stream_name(window, s)}: {_describe(r)}") for s, r in sorted(dropped.items())]
    names = ", ".join(_stream_name(window, s) for s in sorted(dropped))
    return Finding("local_uplink", f"this node's uplink went down: every connection dropped within "
                   f"{TOGETHER.total_seconds():.0f} s ({window.peer_name}, {names})", tuple(evidence))


def _every_relay_silent(window: Window) -> Finding | None:
    """The only connection dropped, and every relay this node knows (two or more) stopped answering
    around it: no path at all was left, so the cause is on this side, not in one relay."""
    if window.world is None:
        return None
    drop = window.incident.record if window.incident.kind == "drop" else _drop_after_switch(window)
    if drop is None:
        return None
    owner = stream_owner(window.connection_stream)
    relays = {state.relay for stream, state in window.world.relays.items()
              if state.relay and (owner is None or stream_owner(stream) == owner)}
    degraded = {relay: record for relay in relays
                if (record := silent_at(window.around, relay, drop.recorded_at, LOOKBACK)) is not None}
    if len(relays) < 2 or not relays <= degraded.keys():
        return None
    evidence = [Fact.of(drop, _describe(drop))]
    evidence += [Fact.of(degraded[relay], f"relay {relay} degraded: {degraded[relay].event.reason}")
                 for relay in sorted(relays)]
    return Finding("local_uplink", f"this node's uplink went down: the connection to {window.peer_name} "
                   f"dropped and every relay stopped answering ({', '.join(sorted(relays))})",
                   tuple(sorted(evidence, key=lambda fact: fact.global_position)))


def mapping_taken_back(window: Window) -> Finding | None:
    """This node's port mapping at its router went away shortly before the drop: a peer that
    reached this node through the mapped port (a symmetric NAT's side) had no way in left."""
    lost = [r for r in window.before() if isinstance(r.event, ev.PortMappingLost)]
    if not lost or window.incident.kind not in ("drop", "path_switch"):
        return None
    record = lost[-1]
    event = record.event
    mapped = f"{event.external_ip}:{event.external_port}"
    again = [r for r in window.before() + window.after() if r.global_position > record.global_position
             and isinstance(r.event, ev.PortMappingObtained)][:1]
    evidence = [Fact.of(record, f"{event.protocol} mapping {mapped}: {event.reason}")]
    evidence += [Fact.of(r, f"{r.event.protocol} mapping {r.event.external_ip}:{r.event.external_port} "
                            "obtained again") for r in again]
    evidence.append(Fact.of(window.incident.record, _describe(window.incident.record)))
    who = ("the router took back the mapping" if event.by_router
           else "the mapping was lost (the router stopped answering)")
    return Finding("mapping_taken_back" if event.by_router else "mapping_lost",
                   f"{who} at {_clock(record.recorded_at)} ({mapped} by {event.protocol}): "
                   f"{window.peer_name} may have reached this node only through it",
                   tuple(sorted(evidence, key=lambda fact: fact.global_position)))


def endpoint_changed(window: Window) -> Finding | None:
    """The peer's address changed (NAT rebinding, a new network) just before the drop."""
    changed = [r for r in window.before()
               if isinstance(r.event, ev.EndpointChanged) and window.about_this_peer(r)]
    if not changed:
        return None
    record = changed[-1]
    event = record.event
    if event.seen_by == ev.SEEN_BY_WIREGUARD and not _broke_after_move(window):
        return None
    how = ("WireGuard now hears it from the new address" if event.seen_by == ev.SEEN_BY_WIREGUARD
           else "it announced the new address through the control server")
    evidence = [Fact.of(record, f"{event.old_endpoint} → {event.new_endpoint}: {event.reason}")]
    evidence += [Fact.of(r, _describe(r)) for r in window.before()
                 if r.stream_id == window.connection_stream and r.global_position > record.global_position
                 and isinstance(r.event, ev.ConnectionStateChanged | ev.PathSwitched)][:3]
    return Finding("endpoint_changed", f"{window.peer_name}'s endpoint changed from "
                   f"{event.old_endpoint or '-'} to {event.new_endpoint or '-'} (NAT rebinding or a new "
                   f"network): {how}", tuple(evidence))


def _broke_after_move(window: Window) -> bool:
    """No probe was answered between WireGuard's move to the new endpoint and the setback.

    The setback's probe record marks the move with ``~``; a move it does not hold (older than
    the record) had answered probes after it. A change itself, or a record without probes
    (an older log), is taken as it stands.
    """
    if window.incident.kind == "endpoint_change":
        return True
    record = _setback(window)
    if record is None:
        return True
    probes = record.event.recent_probes
    return "~" in probes and "+" not in probes.rpartition("~")[2]


def direct_path_failed(window: Window) -> Finding | None:
    """The direct path stopped carrying traffic, and the relay still reaches the peer."""
    event = window.incident.record.event
    if not isinstance(event, ev.PathSwitched) or (event.from_path, event.to_path) != (ev.DIRECT, ev.RELAY):
        return None
    mine = window.connection_stream
    later = [r for r in window.after() if r.stream_id == mine]
    if any(_is_drop(r) for r in later):
        return None  # the relay did not reach the peer either: that drop is its own incident
    evidence = [Fact.of(window.incident.record, f"{_describe(window.incident.record)}; now via "
                                                f"{event.to_relay or event.endpoint or 'a relay'}")]
    answered = [r for r in window.after() if connection_of(r.stream_id) == mine
                and isinstance(r.event, ev.MetricsSampled) and r.event.loss < 1.0]
    evidence += [Fact.of(r, f"on the relay: loss {_pct(r.event.loss)}, latency {_ms(r.event.latency_ms)}")
                 for r in answered[:2]]
    return Finding("direct_path_failed", f"the direct path to {window.peer_name} stopped carrying traffic "
                   "(a NAT or firewall between the two), and the connection moved to the relay "
                   f"{event.to_relay or ''}".rstrip(), tuple(evidence))


# How the connection words a peer gone silent: lost probes, or WireGuard's counters and
# handshake age (actors/connection/, fast detection).
SILENCE_SIGNS = ("probes lost", "nothing received", "last handshake")


def remote_unreachable(window: Window) -> Finding | None:
    """Only this peer stopped answering while this node's other connections stayed up.

    A forced switch to the relay that the drop follows at once is the same outage: the relay
    did not reach the peer either.
    """
    drop = window.incident.record if window.incident.kind == "drop" else _drop_after_switch(window)
    if drop is None or not any(sign in _reason(drop) for sign in SILENCE_SIGNS):
        return None
    expired = [r for r in window.after() if isinstance(r.event, ev.PeerLeft) and window.about_this_peer(r)
               and r.event.reason != "left"]
    others = _other_connections(window)
    stayed = sorted(stream for stream, dropped in others.items() if dropped is None)
    age = _handshake_age(drop)
    stale = age is not None and age > HANDSHAKE_STALE_S
    if not expired and not stayed and not stale:
        return None
    evidence = [Fact.of(window.incident.record, _describe(window.incident.record))]
    if drop is not window.incident.record:
        evidence.append(Fact.of(drop, f"on the relay too: {_describe(drop)}"))
    if age is not None:
        evidence.append(Fact.of(drop, _handshake_words(age)))
    evidence += [Fact.of(r, f"the control server removed {window.peer_name}: {r.event.reason}")
                 for r in expired]
    words = []
    if stayed:
        names = ", ".join(_stream_name(window, s) for s in stayed)
        words.append(f"this node's other connections stayed up ({names})")
        for stream in stayed:
            sign = _last_sign_of_life(window, stream)
            change = window.last_changes.get(stream)
            if sign is not None:
                evidence.append(Fact.of(sign, f"{_stream_name(window, stream)} still answered"))
            elif change is not None:
                evidence.append(Fact.of(change, f"{_stream_name(window, stream)} {change.event.to_state} "
                                                "from here on, up to the drop"))
    if expired:
        words.append(f"the control server stopped hearing from it too ({expired[0].event.reason})")
    if stale:
        words.append(f"WireGuard's last handshake with it was {age:.0f} s before the drop")
    return Finding("remote_unreachable", f"{window.peer_name}'s node became unreachable (its uplink or its "
                   f"machine): it stopped answering probes, and {' and '.join(words)}", tuple(evidence))


# A drop this soon after a forced switch to the relay ends the same outage: three probes lost
# on the new path plus the switch itself.
SWITCH_THEN_DROP = timedelta(seconds=45)


def _drop_after_switch(window: Window) -> RecordedEvent | None:
    if window.incident.kind != "path_switch":
        return None
    mine = window.connection_stream
    return next((r for r in window.after(SWITCH_THEN_DROP) if r.stream_id == mine and _is_drop(r)), None)


def loss_rose(window: Window) -> Finding | None:
    """Probes were lost here and there before the drop's final run of lost ones: the path got worse.

    From the probe outcomes the setback recorded (``recent_probes``); a clean cut loses none
    before the run that triggered the drop.
    """
    if window.incident.kind not in ("drop", "path_switch"):
        return None
    record = _setback(window)
    if record is None:
        return None
    probes = record.event.recent_probes
    rise = loss_before_drop(probes)
    if rise is None:
        return None
    healthy, lost, trend, final = rise
    after = f"after {healthy} probes answered in a row, " if healthy else ""
    end = f"then the last {final} in a row" if final else "then nothing came back at all"
    summary = f"loss rose before the drop: {after}{lost} of the next {trend} were lost, {end}"
    evidence = [Fact.of(record, f"recent probes, oldest first: {probes} (+ answered, - lost)")]
    evidence += [Fact.of(r, f"loss {_pct(r.event.loss)}, latency {_ms(r.event.latency_ms)}")
                 for r in _samples_before(window)][-2:]
    return Finding("loss_rose", summary, tuple(evidence))


def loss_before_drop(probes: str) -> tuple[int, int, int, int] | None:
    """Probe outcomes (oldest first, ``+``/``-``; ``~`` ignored) showing loss before the final run of
    lost ones: (answered in a row first, lost after that, probes after that, the final run), or None."""
    probes = probes.replace("~", "")
    before = probes.rstrip("-")
    healthy = len(before) - len(before.lstrip("+"))
    trend = before[healthy:]
    lost = trend.count("-")
    if lost == 0 or (lost < LOSS_MIN_LOST and lost / len(trend) < LOSS_ROSE):
        return None
    return healthy, lost, len(trend), len(probes) - len(before)


def _setback(window: Window) -> RecordedEvent | None:
    """The transition that carries the probe outcomes: the drop itself, or the one right after a switch."""
    incident = window.incident.record
    if isinstance(incident.event, ev.ConnectionStateChanged):
        return incident if incident.event.recent_probes else None
    later = [r for r in window.after(timedelta(seconds=30)) if r.stream_id == incident.stream_id
             and isinstance(r.event, ev.ConnectionStateChanged) and r.event.recent_probes]
    return later[0] if later else None


def _samples_before(window: Window) -> list[RecordedEvent]:
    return [r for r in window.before() if isinstance(r.event, ev.MetricsSampled)
            and connection_of(r.stream_id) == window.connection_stream]


def loss_in_samples(window: Window) -> Finding | None:
    """The samples before the drop show loss rising (for drops recorded without probe outcomes)."""
    if window.incident.kind in NODE_INCIDENTS:
        return None
    samples = _samples_before(window)
    if not samples:
        return None
    lossy = [r for r in samples if r.event.loss >= LOSS_ROSE]
    if not lossy:
        return None
    worst = _pct(max(r.event.loss for r in lossy))
    rose = samples[0].event.loss < LOSS_ROSE
    evidence = tuple(Fact.of(r, f"loss {_pct(r.event.loss)}, latency {_ms(r.event.latency_ms)}")
                     for r in samples)
    summary = f"loss rose before the drop, to {worst}" if rose else f"loss was {worst} before the drop"
    return Finding("loss_rose", summary, evidence)


def control_unreachable(window: Window) -> Finding | None:
    """This node could not reach its control server: tunnels stayed up, or the drop came during it."""
    outage = _outage(window)
    if outage is None:
        return None
    lost, back = outage
    if _blip(back):
        return None
    url, error = lost.event.control_url, lost.event.error
    how_long = (f"for {_seconds(back.event.outage_s)}" if back is not None and back.event.outage_s is not None
                else "with no return recorded" if back is None else "for a while")
    evidence = [Fact.of(lost, f"{url}: {error}")]
    if back is not None:
        evidence.append(Fact.of(back, f"{url} answered again" + (
            f" after {back.event.outage_s:.1f} s" if back.event.outage_s is not None else "")))
    if window.incident.kind != "control_outage":
        evidence.insert(0, Fact.of(window.incident.record, _describe(window.incident.record)))
        return Finding("control_unreachable", f"the control server ({url}) was unreachable when the "
                       f"connection to {window.peer_name} dropped ({error}; unreachable {how_long})",
                       tuple(evidence))
    mine = window.connection_stream
    end = back.global_position if back is not None else None
    during = [r for r in window.around if r.stream_id == mine and r.global_position > lost.global_position
              and (end is None or r.global_position < end)]
    drops = [r for r in during if _is_drop(r)]
    if drops:
        evidence.append(Fact.of(drops[0], f"meanwhile the connection dropped: {_describe(drops[0])}"))
        return Finding("control_unreachable", f"this node could not reach its control server ({url}, "
                       f"{error}) {how_long}, and the connection to {window.peer_name} dropped meanwhile",
                       tuple(sorted(evidence, key=lambda fact: fact.global_position)))
    since = [r for r in window.connection if isinstance(r.event, ev.ConnectionStateChanged)]
    if since:
        evidence.append(Fact.of(since[-1], f"{window.peer_name} {since[-1].event.to_state} from here on, "
                                           "no drop during the outage"))
    evidence += [Fact.of(r, f"still answering: loss {_pct(r.event.loss)}, latency {_ms(r.event.latency_ms)}")
                 for r in during if isinstance(r.event, ev.MetricsSampled) and r.event.loss < 1.0][:2]
    return Finding("control_unreachable", f"this node could not reach its control server ({url}, {error}) "
                   f"{how_long}, while the tunnel to {window.peer_name} stayed up (joins, leaves and relay "
                   "tickets wait for it; traffic does not)",
                   tuple(sorted(evidence, key=lambda fact: fact.global_position)))


def _outage(window: Window) -> tuple[RecordedEvent, RecordedEvent | None] | None:
    """The control plane outage the incident falls in (its loss, and its end if recorded)."""
    position = window.incident.record.global_position
    lost: dict[str, RecordedEvent] = {}
    for record in window.node:
        if record.global_position > position:
            break
        event = record.event
        if isinstance(event, ev.ControlServerUnreachable):
            lost.setdefault(event.control_url, record)
        elif isinstance(event, ev.ControlServerReachable):
            lost.pop(event.control_url, None)
        elif isinstance(event, ev.NodeStarted):
            lost.clear()  # a new run finds out again
    if not lost:
        return None
    first = min(lost.values(), key=lambda r: r.global_position)
    back = next((r for r in window.node if r.global_position > position
                 and isinstance(r.event, ev.ControlServerReachable)
                 and r.event.control_url == first.event.control_url), None)
    return first, back


def _blip(back: RecordedEvent | None) -> bool:
    outage_s = getattr(back.event, "outage_s", None) if back is not None else None
    return outage_s is not None and outage_s < CONTROL_BLIP_S


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _handshake_age(record: RecordedEvent) -> float | None:
    return getattr(record.event, "last_handshake_age_s", None)


def _handshake_words(age: float) -> str:
    if age > HANDSHAKE_STALE_S:
        return f"last WireGuard handshake {age:.0f} s before the drop: the remote stopped answering"
    return f"last WireGuard handshake {age:.0f} s before the drop"


# The peer's own account of a drop (what its node says it saw on its side, recorded from the
# party channel) goes first: the peer's word about itself outranks what this side infers. This
# node's uplink comes before the relay in use: when every path went silent together, the relay
# stopped answering because this node could reach nothing at all.
RULES: tuple[Rule, ...] = (peer_account, local_restart, left_party, local_uplink, relay_died,
                           control_unreachable, mapping_taken_back, endpoint_changed, loss_rose,
                           direct_path_failed, remote_unreachable, loss_in_samples, server_account)


# ---------------------------------------------------------------- windows and incidents


def _reason(record: RecordedEvent) -> str:
    return str(getattr(record.event, "reason", ""))


def _describe(record: RecordedEvent) -> str:
    event = record.event
    if isinstance(event, ev.ConnectionStateChanged):
        return f"{event.from_state or '∅'} → {event.to_state}: {event.reason}"
    if isinstance(event, ev.PathSwitched):
        return f"{event.from_path} → {event.to_path}: {event.reason}"
    return _reason(record) or event.__class__.__name__


def _is_drop(record: RecordedEvent) -> bool:
    event = record.event
    return (isinstance(event, ev.ConnectionStateChanged) and event.from_state in UP
            and event.to_state not in UP)


def _stream_name(window: Window, stream_id: str) -> str:
    ids = peer_stream_ids(stream_id)
    return window.who(*ids) if ids else stream_id


def _other_connections(window: Window) -> dict[str, RecordedEvent | None]:
    """Other connections of this node that were up: stream -> their drop near the incident, or None.

    Which ones were up comes from the folded state (``Window.world``) when the window has it: a
    steady connection writes a sample every quarter of an hour, so the rows around an incident
    hours into a quiet party say nothing of it.
    """
    mine = window.connection_stream
    if window.world is not None:
        return _other_connections_folded(window, window.world, mine)
    near: dict[str, RecordedEvent | None] = {}
    up: dict[str, bool] = {}
    for record in window.around:
        stream = connection_of(record.stream_id)
        if stream_kind(stream) != PEER or stream == mine:
            continue
        event = record.event
        if record.recorded_at <= window.at and isinstance(event, ev.ConnectionStateChanged):
            up[stream] = event.to_state in UP
        if _is_drop(record) and abs(record.recorded_at - window.at) <= TOGETHER:
            near.setdefault(stream, record)
        elif isinstance(event, ev.MetricsSampled) and event.loss < 1.0:
            up.setdefault(stream, True)
    return {stream: near.get(stream) for stream, is_up in up.items() if is_up or stream in near}


def _other_connections_folded(window: Window, world: World, mine: str) -> dict[str, RecordedEvent | None]:
    owner = stream_owner(mine)
    near: dict[str, RecordedEvent] = {}
    for record in window.around:
        stream = connection_of(record.stream_id)
        if stream != mine and _is_drop(record) and abs(record.recorded_at - window.at) <= TOGETHER:
            near.setdefault(stream, record)
    up = {stream for stream, connection in world.connections.items()
          if stream != mine and stream_owner(stream) == owner and connection.state in UP}
    return {stream: near.get(stream) for stream in sorted(up | {s for s in near if stream_owner(s) == owner})}


def _last_sign_of_life(window: Window, stream_id: str) -> RecordedEvent | None:
    alive = [r for r in window.around if connection_of(r.stream_id) == stream_id and (
        (isinstance(r.event, ev.MetricsSampled) and r.event.loss < 1.0)
        or (isinstance(r.event, ev.ConnectionStateChanged) and r.event.to_state in UP))]
    return alive[-1] if alive else None


def incidents(connection: Sequence[RecordedEvent], node_events: Iterable[RecordedEvent]) -> list[Incident]:
    """Drops, forced path switches and restarts of this node while the connection was up."""
    found = []
    for record in connection:
        event = record.event
        if _is_drop(record):
            found.append(Incident(record, "drop", _describe(record)))
        elif isinstance(event, ev.PathSwitched) and event.to_path == ev.RELAY and not _restored(event):
            # relay to relay, or direct to relay: the path in use failed and the connection moved
            found.append(Incident(record, "path_switch", _describe(record)))
        elif isinstance(event, ev.EndpointChanged) and _state_at(connection, record.global_position) in UP:
            found.append(Incident(record, "endpoint_change", f"endpoint {event.old_endpoint} → "
                                                             f"{event.new_endpoint}"))
    node_events = list(node_events)
    for record in node_events:
        if _state_at(connection, record.global_position) not in UP:
            continue
        if isinstance(record.event, ev.NodeStarted):
            found.append(Incident(record, "restart", "this node started while the connection was up"))
        elif isinstance(record.event, ev.ControlServerUnreachable) \
                and not _blip(_control_back(record, node_events)):
            found.append(Incident(record, "control_outage", "the control server became unreachable while "
                                                            "the connection was up"))
    return sorted(found, key=lambda incident: incident.record.global_position)


def _restored(event: ev.PathSwitched) -> bool:
    """A new run reopening its relay session on the same relay: no path failed, nothing moved."""
    return (event.from_path == event.to_path == ev.RELAY and event.reason.startswith(RESTORED_SESSION)
            and event.from_relay in (None, event.to_relay))


def _control_back(lost: RecordedEvent, node_events: Sequence[RecordedEvent]) -> RecordedEvent | None:
    url = lost.event.control_url
    for record in node_events:
        if record.global_position <= lost.global_position:
            continue
        if isinstance(record.event, ev.NodeStarted):
            return None
        if isinstance(record.event, ev.ControlServerReachable) and record.event.control_url == url:
            return record
    return None


def _state_at(connection: Sequence[RecordedEvent], position: int) -> str | None:
    state = None
    for record in connection:
        if record.global_position > position:
            break
        if isinstance(record.event, ev.ConnectionStateChanged):
            state = record.event.to_state
    return state


# How far from the moment asked about an incident may lie and still be the one meant (the
# CLI's `--at` uses the same span).
NEAREST_WITHIN = timedelta(minutes=5)


def select_incidents(found: Sequence[Incident], at: datetime | None = None, position: int | None = None,
                     latest: int = LATEST_INCIDENTS) -> list[Incident]:
    """The last incident at or before ``at`` / ``position``, or else the latest few."""
    if at is not None:
        return [i for i in found if i.record.recorded_at <= at][-1:]
    if position is not None:
        return [i for i in found if i.record.global_position <= position][-1:]
    return list(found[-latest:])


def select_nearest(found: Sequence[Incident], start: datetime, end: datetime,
                   near: timedelta) -> tuple[list[Incident], bool]:
    """The incidents recorded in ``[start, end)`` (a point when ``end == start``), else the one
    nearest to that span within ``near`` either side (the earlier on a tie); and whether they lie
    inside it. A person asking about 21:03 means the minute, give or take a few minutes."""
    def distance(incident: Incident) -> timedelta:
        moment = incident.record.recorded_at
        if start <= moment < end or moment == start:
            return timedelta(0)
        return start - moment if moment < start else moment - max(start, end - timedelta(microseconds=1))

    inside = [i for i in found if distance(i) == timedelta(0)]
    if inside:
        return inside, True
    close = [i for i in found if distance(i) <= near]
    if not close:
        return [], False
    return [min(close, key=lambda i: (distance(i), i.record.global_position))], False


class StateAt:
    """Every stream folded with the replay's ``apply_world``, moved forward incident by incident.

    ``records`` is the log in global order, as records or as ``store.replay.iter_events``'
    ``(global_position, stream_id, event)`` (any iterable: it is read only as far as asked).
    ``changes`` holds each connection's last state change so far (its global position).
    """

    def __init__(self, records: Iterable[RecordedEvent | tuple[int, str, Any]]) -> None:
        self._records = iter(records)
        self._pending: tuple[int, str, Any] | None = None
        self.world = World()
        self.changes: dict[str, int] = {}

    def _next(self) -> tuple[int, str, Any] | None:
        item = next(self._records, None)
        if isinstance(item, RecordedEvent):
            return item.global_position, item.stream_id, item.event
        return item

    def at(self, position: int) -> World:
        """The world after every event up to and including ``position`` (positions only grow)."""
        while True:
            item = self._pending or self._next()
            self._pending = None
            if item is None:
                break
            if item[0] > position:
                self._pending = item
                break
            global_position, stream_id, event = item
            apply_world(self.world, stream_id, event)
            if isinstance(event, ev.ConnectionStateChanged):
                self.changes[stream_id] = global_position
        return World(parties=dict(self.world.parties), connections=dict(self.world.connections),
                     relays=dict(self.world.relays), nodes=dict(self.world.nodes), position=position)


def window_for(incident: Incident, connection: Sequence[RecordedEvent], around: Iterable[RecordedEvent],
               party_id: str, peer_id: str, peer_name: str, names: dict[tuple[str, str], str],
               node_events: Sequence[RecordedEvent] = (), world: World | None = None,
               last_changes: dict[str, RecordedEvent] | None = None) -> Window:
    node_id = node_of(connection)
    upto = tuple(r for r in connection if r.global_position <= incident.record.global_position)
    return Window(incident, party_id, peer_id, peer_name, upto or tuple(connection),
                  tuple(r for r in around if same_node(r, node_id)), names,
                  tuple(r for r in node_events if same_node(r, node_id)), world, last_changes or {})


def node_of(connection: Sequence[RecordedEvent]) -> str | None:
    """The node that wrote a connection's stream (its events' metadata), if recorded."""
    for record in connection:
        node_id = record.metadata.get("node_id") if record.metadata else None
        if node_id:
            return str(node_id)
    return None


def same_node(record: RecordedEvent, node_id: str | None) -> bool:
    """In a PostgreSQL shared by many nodes, only this node's events explain its connection."""
    if node_id is None:
        return True
    other = record.metadata.get("node_id") if record.metadata else None
    return other is None or str(other) == node_id


def diagnose(window: Window, rules: Sequence[Rule] = RULES) -> list[Finding]:
    """Every finding of every rule, in precedence order; an "unknown" finding if none fires."""
    if window.incident.kind == "control_outage":  # the incident is the outage: its own rule leads
        rules = sorted(rules, key=lambda rule: rule is not control_unreachable)
    findings = [finding for rule in rules if (finding := rule(window)) is not None]
    if findings:
        return [_marked(finding, window.incident) for finding in findings]
    facts = [Fact.of(window.incident.record, window.incident.description)]
    age = _handshake_age(window.incident.record)
    if age is not None:
        facts.append(Fact.of(window.incident.record, _handshake_words(age)))
    facts += [Fact.of(r, _describe(r)) for r in window.before() if r.stream_id == window.connection_stream
              and r.global_position != window.incident.record.global_position
              and not isinstance(r.event, ev.MetricsSampled)][-6:]
    facts += [Fact.of(r, f"loss {_pct(r.event.loss)}, latency {_ms(r.event.latency_ms)}")
              for r in window.before() if connection_of(r.stream_id) == window.connection_stream
              and isinstance(r.event, ev.MetricsSampled)][-3:]
    return [Finding("unknown", "the cause cannot be told from this node's log; the facts around the drop "
                    "follow", tuple(sorted(facts, key=lambda fact: fact.global_position)))]


def _marked(finding: Finding, incident: Incident) -> Finding:
    """Evidence recorded after the incident is marked as what followed it, never passed for a cause."""
    # By time, not position: connections that dropped in the same instant are one moment.
    moment = incident.record.recorded_at
    return Finding(finding.cause, finding.summary, tuple(
        fact if fact.at <= moment or fact.followed else
        Fact(fact.at, fact.global_position, fact.stream_id, fact.event_type, fact.detail, True)
        for fact in finding.evidence))


def report_json(incident: Incident, findings: Sequence[Finding]) -> dict[str, Any]:
    return {"at": incident.record.recorded_at.isoformat(), "global_position": incident.record.global_position,
            "stream_id": incident.record.stream_id, "kind": incident.kind,
            "description": incident.description, "cause": findings[0].cause,
            "findings": [finding_json(finding) for finding in findings]}


def finding_json(finding: Finding) -> dict[str, Any]:
    return {"cause": finding.cause, "summary": finding.summary,
            "evidence": [{"at": fact.at.isoformat(), "global_position": fact.global_position,
                          "stream_id": fact.stream_id, "event_type": fact.event_type, "detail": fact.detail,
                          "followed": fact.followed}
                         for fact in finding.evidence]}
