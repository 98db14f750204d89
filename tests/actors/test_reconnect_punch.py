"""A reconnect attempt's punch runs for up to its timeout, and the tunnel may answer meanwhile:
after an uplink came back, WireGuard found the peer on the path it had before (the peer's end
never lost it, or came back on it by itself) and the peer, not reconnecting, never punches.
The punch then fails, and that failure must not move a working pair onto a relay session the
peer does not hold (in the lab that cut the pair for seconds after a 60 s uplink cut).

The edge's executor here holds each punch's answer until the test gives it, as a real punch
does until its ACK or its timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from thespian.actors import ActorAddress

from actors import effects as fx
from actors import messages as m
from actors.config import RelayMonitorConfig
from actors.edge import register_workers, unregister_workers
from events import types as ev
from mesh.interfaces import PunchResult
from tests.actors.conftest import BOB, RELAY_A, Node

NO_ACK = PunchResult(False, None, None, 1500.0, "no punch ACK from 1 candidate(s) in 1.5 s")


class HeldPunches:
    """Runs every effect at once and answers it, as the inline edge does; while ``hold`` is
    set, a punch's answer waits in ``punches`` until the test gives it."""

    def __init__(self) -> None:
        self.hold = False
        self.node: Node | None = None
        self.punches: list[tuple[ActorAddress, fx.Punch]] = []

    def submit(self, adapters: Any, effect: fx.Effect, reply_to: ActorAddress) -> None:
        if self.hold and isinstance(effect, fx.Punch):
            self.punches.append((reply_to, effect))
            return
        self._send(reply_to, fx.perform(adapters, effect))

    def _send(self, reply_to: ActorAddress, done: fx.EffectDone) -> None:
        # Called inside the edge's receiveMessage: queued as an actor's send is (a tell from
        # here would run the system re-entrantly).
        assert self.node is not None
        self.node.system._systemBase.actor_send(reply_to, reply_to, done)

    def answer_punch(self, result: PunchResult) -> None:
        reply_to, punch = self.punches.pop(0)
        assert self.node is not None
        self.node.system.tell(reply_to, fx.EffectDone(punch, value=result))

    def close(self) -> None:
        self.punches.clear()


@pytest.fixture
def held() -> Iterator[tuple[str, HeldPunches]]:
    name, executor = f"held-{uuid.uuid4().hex[:8]}", HeldPunches()
    register_workers(name, executor)  # type: ignore[arg-type]
    try:
        yield name, executor
    finally:
        unregister_workers(name)


def held_node(make_node: Any, name: str, executor: HeldPunches) -> Node:
    """alice's node on ``executor``, with the production relay monitor."""
    node = make_node(relays=(RELAY_A,), first_probe_s=0.5)
    node.stop()
    node.config = replace(node.config, relay_monitor=RelayMonitorConfig())
    node.executor, executor.node = name, node
    return node.start()


def joined_through(make_node: Any, name: str, executor: HeldPunches) -> Node:
    """alice connected directly to bob (port-forwarded: a reconnect punches, no relay first)."""
    node = held_node(make_node, name, executor)
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", nat_type=ev.NAT_FULL_CONE, candidates=(BOB,)))
    node.advance(1)
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "direct"), node.described(node.peer("bob"))
    return node


def test_a_failed_punch_leaves_a_reconnect_the_tunnel_answered_on_its_path(make_node, held) -> None:
    name, executor = held
    node = joined_through(make_node, name, executor)
    node.net.block(BOB)  # the uplink is cut: the peer and the relays are gone
    node.net.set_relay(RELAY_A, None)
    node.advance(20, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.endpoint) == ("connecting", "direct", BOB)
    node.new(node.peer("bob"))
    executor.hold = True
    node.net.set_relay(RELAY_A, 40.0)  # back: the relays answer again; the attempt punches
    node.advance(1, step=0.25)
    written = node.new(node.peer("bob"))
    assert written[0].startswith("ReconnectAttempted(attempt=1, max_attempts=3, reason='the relays answer "
                                 "again')"), written
    assert len(executor.punches) == 1, written  # the attempt's punch is still out
    node.net.unblock(BOB)  # ... and the tunnel answers on the direct path it had
    node.advance(1, step=0.25)
    assert node.connection("p1", "bob").state == "connected", node.new(node.peer("bob"))
    node.new(node.peer("bob"))
    executor.answer_punch(NO_ACK)  # the peer was not punching: no ACK
    node.advance(3, step=0.25)
    written = node.new(node.peer("bob"))
    assert written[0] == f"HolePunchFailed(reason='{NO_ACK.reason}', elapsed_ms=1500.0)", written
    moves = ("RelayAllocationRequested", "PathSwitched", "PathChosen", "ConnectionStateChanged")
    assert not [line for line in written if line.startswith(moves)], written
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.endpoint) == ("connected", "direct", BOB)
    assert node.net.wireguard_peers["local"]["key-bob"].endpoint == BOB


def test_a_failed_punch_of_a_reconnect_nobody_answered_falls_back_to_the_relay(make_node, held) -> None:
    """The same failure while the tunnel is still silent: the relay, as before."""
    name, executor = held
    node = joined_through(make_node, name, executor)
    node.net.block(BOB)
    node.net.set_relay(RELAY_A, None)
    node.advance(20, step=0.25)
    node.new(node.peer("bob"))
    executor.hold = True
    node.net.set_relay(RELAY_A, 40.0)  # the relays answer again; the direct path stays dead
    node.advance(1.5, step=0.25)
    assert node.connection("p1", "bob").state == "connecting"
    executor.answer_punch(NO_ACK)
    node.advance(2, step=0.25)
    written = node.new(node.peer("bob"))
    assert f"RelayAllocationRequested(relay='{RELAY_A}', purpose='fallback')" in written, written
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay"), written


def test_a_reconnect_answered_through_the_old_relay_session_is_logged_on_the_relay(make_node, held) -> None:
    """A relayed pair's reconnect starts on the direct path (its relay-first allocation got no
    ticket, so it punches); the tunnel answers through the relay session WireGuard still uses
    while the punch runs. Once the punch has failed, the log says what carries the pair: the
    relay, not the direct path the attempt started on."""
    name, executor = held
    node = held_node(make_node, name, executor)
    node.net.block(BOB)  # the direct path never works: relayed
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(2, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay"), node.described(node.peer("bob"))
    node.net.probe_error = "the tunnel is silent"  # the pair's path goes quiet for a while
    node.net.allocation_error = "no relay ticket: the control server is unreachable"
    executor.hold = True
    for _ in range(60):
        node.advance(0.25, step=0.25)
        if executor.punches:
            break
    written = node.new(node.peer("bob"))
    assert executor.punches, written  # the reconnect punches, its relay-first allocation refused
    assert node.connection("p1", "bob").path == "direct", written
    node.net.probe_error = None  # the old session carries the pair again
    node.advance(1, step=0.25)
    state = node.connection("p1", "bob")
    assert state.state == "connected", node.new(node.peer("bob"))
    executor.answer_punch(NO_ACK)
    node.advance(1, step=0.25)
    written = node.new(node.peer("bob"))
    assert f"PathChosen(path='relay', reason='answered through the relay session WireGuard still uses', " \
           f"endpoint='{RELAY_A}', relay='{RELAY_A}')" in written, written
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.relay) == ("connected", "relay", RELAY_A)
