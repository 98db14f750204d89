"""After a long outage, a connection that still tries to reach its peer tries again as soon
as something says the way is open: this node's relays or control server answer again, the
peer announces itself again, or the peer offers a relay session. It does not wait for
its current attempt's lost probes (up to 15 s while connecting) or its backoff (up to 30 s
while failed), and both ends meet on whatever path works first.
"""

from __future__ import annotations

from actors import messages as m
from tests.actors.conftest import BOB, RELAY_A, RELAY_B, Node, joined

BOB_IP = "10.66.0.2"
CONTROL = "ws://198.51.100.9:8667"


def cut_for(node: Node, seconds: float) -> None:
    """This node's uplink is cut: the peer's direct path and the relay are gone, and so is the
    control server (no relay ticket: the allocation fails)."""
    node.net.block(BOB)
    node.net.set_relay(RELAY_A, None)
    node.advance(seconds, step=0.25)


def still_trying(node: Node) -> None:
    """Connecting, its last attempt over (no path), waiting for its probes to be lost."""
    state = node.connection("p1", "bob")
    assert state.state == "connecting", state
    assert node.new(node.peer("bob"))[-1].startswith("NoPathAvailable("), node.described(node.peer("bob"))


def test_the_relays_answering_again_make_a_connecting_connection_try_at_once(make_node) -> None:
    node = joined(make_node)
    cut_for(node, 20)  # one reconnect attempt failed for want of a relay; the next after 15 s
    still_trying(node)
    node.net.set_relay(RELAY_A, 40.0)  # the uplink is back; the peer is reachable through the relay only
    node.advance(2, step=0.25)
    written = node.new(node.peer("bob"))
    assert written[0].startswith("ReconnectAttempted(attempt=1, max_attempts=3, reason='the relays answer "
                                 "again')"), written
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay"), written


def test_the_control_server_answering_again_makes_a_connecting_connection_try_at_once(make_node) -> None:
    node = joined(make_node)
    node.net.set_relay(RELAY_A, 40.0)  # the relays never stopped answering this node
    node.net.block(BOB)
    node.tell(m.ControlReachability(CONTROL, False, error="the control server answered nothing for 8 s"))
    node.net.set_relay(RELAY_A, None)  # ... but no ticket could be had meanwhile
    node.advance(20, step=0.25)
    still_trying(node)
    node.net.set_relay(RELAY_A, 40.0)
    node.tell(m.ControlReachability(CONTROL, True, outage_s=20.0))
    node.ask(m.Ping())
    written = node.new(node.peer("bob"))
    assert any(line.startswith("ReconnectAttempted(attempt=1, max_attempts=3, reason='the control server "
                               "answers again')") for line in written), written
    node.advance(1, step=0.25)
    assert node.connection("p1", "bob").state == "connected"


def test_the_peer_announcing_itself_again_makes_a_connecting_connection_try_at_once(make_node) -> None:
    node = joined(make_node)
    cut_for(node, 20)
    still_trying(node)
    node.net.set_relay(RELAY_A, 40.0)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.ask(m.Ping())
    written = node.new(node.peer("bob"))
    assert written[0].startswith("ReconnectAttempted(attempt=1, max_attempts=3, reason='peer announced "
                                 "again')"), written
    node.advance(1, step=0.25)
    assert node.connection("p1", "bob").state == "connected"


def test_a_relay_offer_makes_a_connection_that_is_not_up_join_the_relay_at_once(make_node) -> None:
    """The peer is back and waits on a relay session for this pair: this side joins it now,
    connecting or failed, whatever path its own attempts were on."""
    node = joined(make_node)
    cut_for(node, 20)
    still_trying(node)
    node.net.relay_latency[RELAY_A] = 40.0  # quietly: no monitor round has seen it yet
    node.tell(m.PeerAskedForRelay("p1", "bob"))
    node.ask(m.Ping())
    written = node.new(node.peer("bob"))
    assert written[0] == f"RelayAllocationRequested(relay='{RELAY_A}', purpose='fallback')", written
    assert written[2].startswith("PathChosen(path='relay', reason='the peer offered a relay session'"), \
        written
    node.advance(1, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay")


def test_a_relay_offer_is_joined_on_the_peers_relay(make_node) -> None:
    """The two ends' monitors may prefer different relays: the offered session is on the
    peer's, and that is where this side joins it (the ticket the peer's request pushed)."""
    node = joined(make_node)
    cut_for(node, 20)
    still_trying(node)
    node.net.relay_latency[RELAY_A] = 40.0
    node.tell(m.PeerAskedForRelay("p1", "bob", relay=RELAY_B))
    node.ask(m.Ping())
    written = node.new(node.peer("bob"))
    assert written[0] == f"RelayAllocationRequested(relay='{RELAY_B}', purpose='fallback')", written
    node.advance(1, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.relay) == ("connected", "relay", RELAY_B)


def test_a_relay_offer_to_a_failed_connection_does_not_wait_for_its_backoff(make_node) -> None:
    node = joined(make_node)
    cut_for(node, 120)
    assert node.connection("p1", "bob").state == "failed"
    node.new(node.peer("bob"))
    node.net.relay_latency[RELAY_A] = 40.0
    node.tell(m.PeerAskedForRelay("p1", "bob"))
    node.advance(1, step=0.25)
    written = node.new(node.peer("bob"))
    assert written[0] == f"RelayAllocationRequested(relay='{RELAY_A}', purpose='fallback')", written
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay"), written


def test_a_relay_offer_to_a_connection_that_is_up_on_the_relay_changes_nothing(make_node) -> None:
    node = joined(make_node)
    node.net.block(BOB)
    for _ in range(12):  # a game's traffic: the dead direct path moves to the relay
        node.net.carry("local", BOB_IP, 5)
        node.advance(0.25, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay")
    node.new(node.peer("bob"))
    node.tell(m.PeerAskedForRelay("p1", "bob"))
    node.advance(1, step=0.25)
    assert node.new(node.peer("bob")) == []


def on_the_relay(node: Node) -> None:
    """The direct path died under a game's traffic: the connection failed over to the relay."""
    node.net.block(BOB)
    for _ in range(12):
        node.net.carry("local", BOB_IP, 5)
        node.advance(0.25, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay")
    node.new(node.peer("bob"))


def test_a_connection_on_the_relay_that_hears_the_peer_directly_moves_to_direct(make_node) -> None:
    """After an outage the peer's end chose the direct path and this one the relay: WireGuard,
    hearing the peer directly, roamed there. The decision follows: no two ends on two paths."""
    node = joined(make_node)
    on_the_relay(node)
    node.net.unblock(BOB)
    node.net.wireguard_peers["local"]["key-bob"].endpoint = BOB  # roamed: the peer sent directly
    for _ in range(8):
        node.net.carry("local", BOB_IP, 5)
        node.advance(0.25, step=0.25)
    written = node.new(node.peer("bob"))
    assert written[0] == (
        "PathSwitched(from_path='relay', to_path='direct', reason='WireGuard hears the peer "
        f"directly from {BOB}: its end is on the direct path', endpoint='{BOB}', "
        f"from_relay='{RELAY_A}', to_relay=None, from_latency_ms=20.0, to_latency_ms=None)"), written
    assert any(line.startswith("RelaySessionReleased(") for line in written), written
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.endpoint) == ("connected", "direct", BOB)
    node.net.wireguard_peers["local"]["key-bob"].endpoint = RELAY_A  # and back: not within a minute
    for _ in range(8):
        node.net.carry("local", BOB_IP, 5)
        node.advance(0.25, step=0.25)
    assert not [line for line in node.new(node.peer("bob")) if line.startswith("PathSwitched")]


def test_an_attempt_answered_through_the_relay_session_is_on_the_relay(make_node) -> None:
    """A reconnect attempt starts on the direct path (a punch) while WireGuard still uses the
    relay session; the peer answers through that session first: the path is the relay's."""
    node = make_node(relays=(RELAY_A,), first_probe_s=0.5)
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(1)
    on_the_relay(node)
    node.net.relay_latency[RELAY_A] = None  # the relay goes quiet: the relayed path is dead
    for _ in range(12):
        node.net.carry("local", BOB_IP, 5)
        node.advance(0.25, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.endpoint) == ("connecting", "direct", RELAY_A), \
        node.new(node.peer("bob"))
    node.net.relay_latency[RELAY_A] = 40.0  # back before this node's monitor noticed anything
    node.advance(1, step=0.25)
    written = node.new(node.peer("bob"))
    up = next(i for i, line in enumerate(written) if "to_state='connected'" in line)
    assert written[up + 1] == (
        "PathChosen(path='relay', reason='answered through the relay session WireGuard "
        f"still uses', endpoint='{RELAY_A}', relay='{RELAY_A}')"), written
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "relay")


def test_a_relay_offer_on_another_relay_moves_a_relayed_connection_there_at_once(make_node) -> None:
    """The peer's monitor left this pair's relay and moved the pair: this side follows onto
    the offered session without waiting to find its own session silent."""
    node = make_node(relays=(RELAY_A, RELAY_B), first_probe_s=0.5)
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(1)
    on_the_relay(node)
    relay = node.connection("p1", "bob").relay
    other = RELAY_B if relay == RELAY_A else RELAY_A
    node.tell(m.PeerAskedForRelay("p1", "bob", relay=other))
    node.ask(m.Ping())
    written = node.new(node.peer("bob"))
    assert written[0] == f"RelayAllocationRequested(relay='{other}', purpose='relay-move')", written
    assert f"reason='the peer moved the pair to relay {other}'" in written[2], written
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.relay) == ("connected", "relay", other)


def test_a_failed_connection_holding_a_session_asks_for_the_pairs_session_when_the_relays_return(
        make_node) -> None:
    """Five minutes unreachable on the relay: the session it holds may be one the peer left
    long ago. When this node's relays answer again it asks for the pair's current session
    (which offers it to the peer), instead of only punching beside a stale one."""
    node = joined(make_node)
    on_the_relay(node)
    node.net.set_relay(RELAY_A, None)
    node.advance(300, step=0.5)
    assert node.connection("p1", "bob").state == "failed"
    assert node.connection("p1", "bob").session_id is not None
    node.new(node.peer("bob"))
    node.net.set_relay(RELAY_A, 40.0)
    node.advance(2, step=0.25)
    written = node.new(node.peer("bob"))
    names = [line.split("(")[0] for line in written]
    assert names[:2] == ["ReconnectAttempted", "RelayAllocationRequested"], written
    assert node.connection("p1", "bob").state == "connected"


def test_one_late_answer_after_an_outage_does_not_degrade_the_path(make_node) -> None:
    """The first probe answered after a long cut waits for WireGuard's new handshake (494 ms
    once, in the lab, on a 20 ms path): the path that is back is connected, and only a run of
    late answers degrades it."""
    node = joined(make_node)
    cut_for(node, 60)
    assert node.connection("p1", "bob").state in ("connecting", "failed")
    node.new(node.peer("bob"))
    node.net.set_latency(BOB_IP, 494.0)
    node.net.unblock(BOB)
    node.advance(1.5, step=0.25)
    back = [line for line in node.new(node.peer("bob")) if line.startswith("ConnectionStateChanged(")]
    assert len(back) == 1, back
    assert "to_state='connected'" in back[0] and "in 494.0 ms (above 200 ms)" in back[0], back
    node.net.set_latency(BOB_IP, 20.0)
    node.advance(30, step=0.25)
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "direct")
    assert not [line for line in node.new(node.peer("bob")) if "degraded" in line]


def test_a_run_of_late_answers_degrades_the_path(make_node) -> None:
    node = joined(make_node)
    node.net.set_latency(BOB_IP, 494.0)
    node.advance(10, step=0.25)
    assert node.connection("p1", "bob").state == "connected"  # two late answers
    node.advance(5, step=0.25)
    changed = [line for line in node.new(node.peer("bob")) if line.startswith("ConnectionStateChanged(")]
    assert len(changed) == 1 and "reason='latency 494.0 ms above 200 ms (3 probes in a row)'" in changed[0], \
        changed
    assert node.connection("p1", "bob").state == "degraded"


def test_a_relay_session_that_comes_after_the_direct_path_answered_does_not_move_the_pair(make_node) -> None:
    """After a long cut, a failed connection's retry probes the tunnel and asks for a relay
    session at once. When the direct path answers first (the control server that hands out
    relay tickets is reached seconds after the uplink returns), the pair stays direct: moving
    it to a session only this end holds made the two ends take opposite ways (15 s apart, lab)."""
    node = joined(make_node)
    cut_for(node, 60)
    assert node.connection("p1", "bob").state == "failed"
    node.new(node.peer("bob"))
    node.net.unblock(BOB)
    node.net.set_relay(RELAY_A, 40.0)
    node.advance(10, step=0.25)
    written = node.new(node.peer("bob"))
    state = node.connection("p1", "bob")
    assert (state.state, state.path) == ("connected", "direct"), written
    moves = [line for line in written if line.startswith(("PathChosen(path='relay'", "PathSwitched("))]
    assert moves == [], written
    opened = [line for line in written if line.startswith("RelaySessionOpened(")]
    released = [line for line in written if line.startswith("RelaySessionReleased(")]
    assert len(opened) == len(released), written  # a session that came too late is given back
