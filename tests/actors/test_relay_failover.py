"""The relay monitor probes every second, records every 30 s, and fails over at once.

Exact stored sequences on the simulated network, with the production probe and record
intervals (the other scenarios probe and record every 30 s).
"""

from __future__ import annotations

import uuid

import pytest

import mesh.sim as sim
from actors import messages as m
from actors.config import ActorConfig, ConnectionConfig, RelayMonitorConfig
from events import types as ev
from events.base import Event
from events.streams import relay_stream
from tests.actors.conftest import RELAY_A, RELAY_B, Node, VirtualClock

MONITOR = RelayMonitorConfig(probe_interval_s=1.0, probes_per_round=3, record_interval_s=30.0,
                             dead_after_misses=2, death_confirm_probes=3)  # every round a burst


@pytest.fixture
def node(clock: VirtualClock) -> Node:
    name = f"t{uuid.uuid4().hex[:10]}"
    sim.reset(name)
    config = ActorConfig(connection=ConnectionConfig(metrics_interval_s=3600.0), relay_monitor=MONITOR,
                         restart_delay_s=0.0)
    started = Node(name, clock, config, (RELAY_A, RELAY_B)).start()
    started.net.set_relay(RELAY_A, 40.0)
    started.net.set_relay(RELAY_B, 45.0)
    started.ask(m.Ping())  # the first tick is due at once: both probed, A selected
    yield started
    started.stop()


def probed(relay: str, probes: int, answered: int, rtt: float | None) -> str:
    return (f"RelayProbed(relay='{relay}', probes={probes}, answered={answered}, rtt_ms={rtt}, "
            "windows=1, first_at='')")


def counted(event: Event) -> tuple[object, ...]:
    """A counted record (its ``first_at`` is the run's start, a wall-clock time)."""
    assert isinstance(event, ev.RelayProbed) and event.first_at, event
    return event.probes, event.answered, event.rtt_ms, event.windows


def relayed_carol(node: Node) -> None:
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "carol", "Carol", "key-carol"))  # no candidates: relay only
    node.advance(0.5, step=0.5)
    assert node.connection("p1", "carol").relay == RELAY_A
    node.new(node.peer("carol"))


def test_probes_every_second_are_recorded_once_per_interval_and_repeats_counted(node: Node) -> None:
    a, b = relay_stream("local", RELAY_A), relay_stream("local", RELAY_B)
    assert node.new(a) == [probed(RELAY_A, 3, 3, 40.0), f"RelaySelected(relay='{RELAY_A}', rtt_ms=40.0, "
                           "previous_relay=None, reason='lowest round trip (40.0 ms) of 2 relays', "
                           "selection=1)"]
    assert node.new(b) == [probed(RELAY_B, 3, 3, 45.0)]
    node.advance(29)
    assert node.new(a) == node.new(b) == []  # 29 ticks, 87 probes each, nothing stored yet
    assert sim.network(node.name).probe_count == 0  # no peer probes either
    node.advance(1)
    assert node.new(a) == node.new(b) == []  # an interval that changed nothing: counted
    node.net.set_relay(RELAY_B, 60.0)  # beyond 5 ms and 25 % of 45 ms: a change
    node.advance(30)
    assert node.new(a) == []
    assert node.new(b)[1:] == [probed(RELAY_B, 90, 90, 60.0)]
    assert counted(node.events(b)[-2]) == (90, 90, 45.0, 1)  # the run before the change
    node.advance(3600 - 60)
    # A run is written at least every record_max_s: A's first hour of same intervals.
    assert [counted(e) for e in node.events(a)[2:]] == [(10800, 10800, 40.0, 120)]


def test_slow_selected_relay_waits_for_the_record_interval(node: Node) -> None:
    """Latency decisions (and so the hysteresis) stay on the aggregated 30 s window."""
    a, b = relay_stream("local", RELAY_A), relay_stream("local", RELAY_B)
    node.new(a), node.new(b)
    node.net.set_relay(RELAY_A, 300.0)
    node.net.set_relay(RELAY_B, 100.0)
    node.advance(29)
    assert node.new(a) == node.new(b) == []
    assert node.status().relay == RELAY_A
    node.advance(1)
    assert node.new(a) == [probed(RELAY_A, 90, 90, 300.0), f"RelayDegraded(relay='{RELAY_A}', "
                           "rtt_ms=300.0, reason='round trip 300.0 ms above 150 ms')"]
    assert node.new(b) == [probed(RELAY_B, 90, 90, 100.0), f"RelaySelected(relay='{RELAY_B}', rtt_ms=100.0, "
                           f"previous_relay='{RELAY_A}', reason='{RELAY_A} degraded (300.0 ms); "
                           f"{RELAY_B} is 100.0 ms', selection=2)"]


def test_dead_selected_relay_fails_over_on_the_next_tick(node: Node) -> None:
    a, b = relay_stream("local", RELAY_A), relay_stream("local", RELAY_B)
    relayed_carol(node)
    node.advance(9.5, step=0.5)
    assert node.connection("p1", "carol").state == "connected"
    node.new(a), node.new(b), node.new(node.peer("carol"))
    node.net.set_relay(RELAY_A, None)  # killed
    node.advance(1)  # one tick: 2 lost probes in a row, the window is recorded early
    assert node.new(a) == [probed(RELAY_A, 33, 30, 40.0), f"RelayDegraded(relay='{RELAY_A}', rtt_ms=None, "
                           "reason='no answer to 2 probes in a row')"]
    # B's window changed nothing (counted), but its selection does: the count is written first.
    assert node.new(b)[1:] == [f"RelaySelected(relay='{RELAY_B}', rtt_ms=45.0, "
                               f"previous_relay='{RELAY_A}', reason='{RELAY_A} stopped answering; "
                               f"{RELAY_B} is 45.0 ms', selection=2)"]
    assert counted(node.events(b)[-2]) == (33, 33, 45.0, 1)
    assert node.status().relay == RELAY_B
    assert node.new(node.peer("carol")) == [
        f"RelayAllocationRequested(relay='{RELAY_B}', purpose='relay-move')",
        f"RelaySessionOpened(relay='{RELAY_B}', session_id='p1/carol/1', endpoint='{RELAY_B}')",
        f"PathSwitched(from_path='relay', to_path='relay', reason='relay monitor selected {RELAY_B}', "
        f"endpoint='{RELAY_B}', from_relay='{RELAY_A}', to_relay='{RELAY_B}', from_latency_ms=40.0, "
        "to_latency_ms=45.0)",
        f"WireGuardPeerConfigRequested(public_key='key-carol', endpoint='{RELAY_B}', "
        "allowed_ips=('10.66.0.2/32',), keepalive_s=25)",
        f"WireGuardPeerConfigured(public_key='key-carol', endpoint='{RELAY_B}', "
        "allowed_ips=('10.66.0.2/32',), keepalive_s=25, decided_here=False)",
        f"RelaySessionReleased(relay='{RELAY_A}', session_id='p1/carol', error='')"]
    # The new session was asked for as a replacement of the one on the dead relay.
    assert node.net.failed_sessions == ["p1/carol"]
    # The old relay comes back and is faster: B is healthy, so no flap back.
    node.net.set_relay(RELAY_A, 10.0)
    node.advance(60)
    assert node.status().relay == RELAY_B
    assert not any("RelaySelected" in e for e in node.new(a) + node.new(b))


def test_dead_relays_are_recorded_once_then_counted(node: Node) -> None:
    a, b = relay_stream("local", RELAY_A), relay_stream("local", RELAY_B)
    node.advance(10)
    node.new(a), node.new(b)
    node.net.set_relay(RELAY_A, None)
    node.net.set_relay(RELAY_B, None)
    node.advance(1)
    assert node.new(a) == node.new(b) == []  # both silent: it may be this node's uplink, lossy
    node.advance(1)  # the rest of the 33 misses 50 % loss each way makes a 1e-4 chance, at once
    assert node.new(a) == [probed(RELAY_A, 63, 30, 40.0), f"RelayDegraded(relay='{RELAY_A}', rtt_ms=None, "
                           "reason='no answer to 33 probes in a row')"]
    assert node.new(b) == [probed(RELAY_B, 63, 30, 45.0), f"RelayDegraded(relay='{RELAY_B}', rtt_ms=None, "
                           "reason='no answer to 33 probes in a row')"]  # not selected, but dead: a fact
    node.advance(29)
    assert node.new(a) == node.new(b) == []  # no row per tick while nothing changes
    node.advance(1)
    # The first silent interval is a change (the last record had answers); its death is known.
    assert node.new(a) == [probed(RELAY_A, 90, 0, None)]
    assert node.new(b) == [probed(RELAY_B, 90, 0, None)]
    node.advance(60)
    assert node.new(a) == node.new(b) == []  # still dead: counted, not written again
    # A dead relay is still probed every tick: its answer is what brings it back.
    # B comes back: selected on its first answered tick, not at the next record.
    node.net.set_relay(RELAY_B, 50.0)
    node.advance(1)
    assert node.new(a) == []  # A is still dead: its run goes on
    assert counted(node.events(b)[-3]) == (180, 0, None, 2)  # B's silent intervals, then its answer
    assert node.new(b)[-2:] == [probed(RELAY_B, 3, 3, 50.0), f"RelaySelected(relay='{RELAY_B}', rtt_ms=50.0, "
                                f"previous_relay='{RELAY_A}', reason='{RELAY_A} stopped answering; "
                                f"{RELAY_B} is 50.0 ms', selection=2)"]
    assert node.status().relay == RELAY_B


def test_a_connection_on_a_relay_this_node_did_not_select_moves_when_that_relay_dies(node: Node) -> None:
    """The pair's session can sit on the relay the peer chose: its death must move it too."""
    a, b = relay_stream("local", RELAY_A), relay_stream("local", RELAY_B)
    relayed_carol(node)
    node.advance(5)
    # As the agent's tickets can do: the pair put on B while this node's monitor keeps A.
    node.tell(m.RelayChanged(RELAY_B, 45.0, RELAY_A))
    node.advance(0.5, step=0.5)
    assert node.connection("p1", "carol").relay == RELAY_B
    # A notice about a relay carol is not on moves nothing (no pair split across relays).
    node.tell(m.RelayChanged(RELAY_A, 40.0, "198.51.100.9:3478"))
    node.advance(0.5, step=0.5)
    assert node.connection("p1", "carol").relay == RELAY_B
    node.new(a), node.new(b), node.new(node.peer("carol"))
    node.net.set_relay(RELAY_B, None)
    node.advance(1)
    assert node.status().relay == RELAY_A  # (the ask also lets the monitor's notice through)
    # B was not selected: its death is recorded once, its probes only with the window.
    assert node.new(a) == []
    assert node.new(b) == [f"RelayDegraded(relay='{RELAY_B}', rtt_ms=None, "
                           "reason='no answer to 2 probes in a row')"]
    assert node.new(node.peer("carol")) == [
        f"RelayAllocationRequested(relay='{RELAY_A}', purpose='relay-move')",
        f"RelaySessionOpened(relay='{RELAY_A}', session_id='p1/carol/2', endpoint='{RELAY_A}')",
        f"PathSwitched(from_path='relay', to_path='relay', reason='relay monitor selected {RELAY_A}', "
        f"endpoint='{RELAY_A}', from_relay='{RELAY_B}', to_relay='{RELAY_A}', from_latency_ms=40.0, "
        "to_latency_ms=40.0)",
        f"WireGuardPeerConfigRequested(public_key='key-carol', endpoint='{RELAY_A}', "
        "allowed_ips=('10.66.0.2/32',), keepalive_s=25)",
        f"WireGuardPeerConfigured(public_key='key-carol', endpoint='{RELAY_A}', "
        "allowed_ips=('10.66.0.2/32',), keepalive_s=25, decided_here=False)",
        f"RelaySessionReleased(relay='{RELAY_B}', session_id='p1/carol/1', error='')"]
    assert node.net.failed_sessions == ["p1/carol", "p1/carol/1"]


def test_the_monitor_restarts_from_its_snapshots(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = relay_stream("local", RELAY_A), relay_stream("local", RELAY_B)
    for round_ in range(24):  # B's round trip jumps every interval: a record each, no switch
        node.net.set_relay(RELAY_B, 45.0 if round_ % 2 else 90.0)
        node.advance(30)
    assert len(node.events(b)) > 20
    node.stop()
    node.start()  # folds every event, and leaves a snapshot of each long stream
    node.ask(m.Ping())
    node.stop()
    reads: list[tuple[str, int]] = []
    recorder = type(node.recorder)
    read_stream = recorder.read_stream

    def spy(self: object, stream_id: str, from_position: int = 1) -> list[object]:
        reads.append((stream_id, from_position))
        return read_stream(self, stream_id, from_position)  # type: ignore[arg-type]

    monkeypatch.setattr(recorder, "read_stream", spy)
    node.start()
    node.ask(m.Ping())
    assert node.status().relay == RELAY_A  # its selection is read back from its stream's end
    # B's stream from its snapshot on, never from its start.
    assert min(position for stream, position in reads if stream == b) > 20
    assert any(stream == a for stream, _ in reads)


def test_loss_on_the_relays_kills_none_yet_a_killed_relay_dies_at_once(clock: VirtualClock) -> None:
    """20 % loss each way (about 36 % of round trips lost) for half an hour: two misses in a
    row happen every few seconds, yet no relay is taken for dead and nothing moves; the
    misses needed grew with the loss. Then the loss ends and a killed relay dies in two."""
    name = f"t{uuid.uuid4().hex[:10]}"
    sim.reset(name)
    production = RelayMonitorConfig()
    node = Node(name, clock, ActorConfig(connection=ConnectionConfig(metrics_interval_s=3600.0),
                                         relay_monitor=production, restart_delay_s=0.0),
                (RELAY_A, RELAY_B)).start()
    try:
        node.net.set_relay(RELAY_A, 40.0)
        node.net.set_relay(RELAY_B, 45.0)
        node.ask(m.Ping())
        relayed_carol(node)
        node.advance(30, step=production.probe_interval_s)  # a clean history first
        node.new(node.peer("carol"))
        node.net.relay_loss = 0.2
        node.advance(1800, step=production.probe_interval_s)
        assert node.status().relay == RELAY_A
        written = node.new(node.peer("carol"))
        assert not [line for line in written if line.startswith(("PathSwitched", "RelayAllocationRequested"))]
        assert not [e for e in node.events(relay_stream("local", RELAY_A)) if isinstance(e, ev.RelayDegraded)]
        node.net.relay_loss = 0.0
        node.advance(30, step=production.probe_interval_s)  # the history turns clean again
        node.net.set_relay(RELAY_A, None)  # killed
        node.advance(4 * production.probe_interval_s, step=production.probe_interval_s)
        assert node.status().relay == RELAY_B
    finally:
        node.stop()


def test_a_pair_session_handed_back_on_a_relay_out_of_reach_is_reported_and_left(node: Node) -> None:
    """This node's monitor left relay A (dead from here); the control server still hands back
    the pair's session on A (the peer asked for it there, within the pair's affinity). The
    connection cannot open it: it asks once more at once, naming that session failed, and
    gets a new session on B (before, it named the session it held, and was handed A's again
    until the affinity ran out: 30 s and more apart)."""
    relayed_carol(node)
    node.advance(9.5, step=0.5)
    assert node.connection("p1", "carol").state == "connected"
    node.net.handed_sessions[("carol", RELAY_B)] = (RELAY_A, "p1/carol/on-a")
    node.net.set_relay(RELAY_A, None)  # dead from this node only, as far as the pair knows
    node.advance(1)
    assert node.status().relay == RELAY_B
    assert node.new(node.peer("carol"))[:4] == [
        f"RelayAllocationRequested(relay='{RELAY_B}', purpose='relay-move')",
        f"RelayAllocationFailed(relay='{RELAY_B}', error='relay {RELAY_A} did not answer')",
        f"RelayAllocationRequested(relay='{RELAY_B}', purpose='relay-move')",
        f"RelaySessionOpened(relay='{RELAY_B}', session_id='p1/carol/2', endpoint='{RELAY_B}')"]
    assert node.net.failed_sessions == ["p1/carol", "p1/carol/on-a"]
    connection = node.connection("p1", "carol")
    assert (connection.state, connection.path, connection.relay) == ("connected", "relay", RELAY_B)
