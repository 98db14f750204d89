"""Fast detection without flapping, on the simulated network with seeded random loss.

A busy tunnel is watched through WireGuard's counters (rx not growing while tx grows):
a dead direct path moves to the relay within 2 s. Random loss of 5 % and 20 % each way
moves nothing; 50 % degrades, and moves to the relay only when the relay does better,
at most once a minute.
"""

from __future__ import annotations

import itertools
import re

import pytest

from actors import messages as m
from tests.actors.conftest import BOB, RELAY_A, Node, joined

BOB_IP = "10.66.0.2"
STEP_S = 0.25
PACKETS_PER_STEP = 5  # 20 packets a second, each answered: a game's chatter


def run(node: Node, seconds: float, busy: bool = True,
        packets: int = PACKETS_PER_STEP) -> list[tuple[float, str]]:
    """Advance with (or without) traffic; every event written, with the virtual time it appeared."""
    start, written = node.clock.now, []
    for _ in range(round(seconds / STEP_S)):
        if busy:
            node.net.carry("local", BOB_IP, packets)
        node.advance(STEP_S, step=STEP_S)
        written += [(node.clock.now - start, line) for line in node.new(node.peer("bob"))]
    return written


def kinds(written: list[tuple[float, str]], kind: str) -> list[tuple[float, str]]:
    return [(at, line) for at, line in written if line.startswith(kind)]


def test_a_dead_direct_path_under_traffic_moves_to_the_relay_within_2_s(make_node) -> None:
    node = joined(make_node)
    assert run(node, 10) == []  # a busy, healthy tunnel writes nothing
    node.net.block(BOB)
    written = run(node, 3)
    switched = kinds(written, "PathSwitched")
    assert len(switched) == 1 and switched[0][0] <= 2.0, written
    assert switched[0][1].startswith(
        "PathSwitched(from_path='direct', to_path='relay', reason='nothing received for ")
    # A round of 3, then the rest of 33 (as if 50 % each way: the window says nothing of now).
    assert " s while sending; 33 probes lost on the direct path'" in switched[0][1]
    assert node.connection("p1", "bob").path == "relay"
    # On the relay the counters grow again: nothing more happens.
    assert kinds(run(node, 20), "PathSwitched") == []


def test_an_idle_tunnel_is_not_watched_more_than_once_a_probe_interval(make_node) -> None:
    node = joined(make_node)
    probes = node.net.probe_count
    run(node, 60, busy=False)
    assert node.net.probe_count - probes == 12  # one probe each 5 s, nothing more


def hear_keepalives(node: Node, seconds: float, every_s: float = 25.0) -> int:
    """Advance idle while the peer's WireGuard keepalives arrive; the probes sent meanwhile."""
    peer = next(p for p in node.net.wireguard_peers["local"].values() if f"{BOB_IP}/32" in p.allowed_ips)
    probes, heard_at = node.net.probe_count, node.clock.now - every_s
    for _ in range(round(seconds / STEP_S)):
        if node.clock.now - heard_at >= every_s - 1e-9:
            peer.rx_bytes += 32
            heard_at = node.clock.now
        node.advance(STEP_S, step=STEP_S)
    return node.net.probe_count - probes


def test_an_idle_tunnel_whose_peer_is_heard_is_probed_every_idle_interval(make_node) -> None:
    node = joined(make_node, idle_probe_interval_s=30.0)
    assert hear_keepalives(node, 60) >= 10  # probed each 5 s until ten probes in a row were answered
    assert hear_keepalives(node, 120) == 4  # one probe each 30 s
    probes = node.net.probe_count
    run(node, 20)
    assert node.net.probe_count - probes == 3  # sending: from the first reading on, one probe each 5 s
    probes = node.net.probe_count
    run(node, 60, busy=False)  # the peer falls silent: within 30 s back to a probe each 5 s
    assert node.net.probe_count - probes >= 6
    assert node.connection("p1", "bob").state == "connected"  # silence of an idle tunnel is no outage


@pytest.mark.parametrize("loss", [0.05, 0.20])
def test_random_loss_of_5_and_20_percent_moves_nothing(make_node, loss: float) -> None:
    node = joined(make_node)
    node.net.loss = loss
    written = run(node, 600) + run(node, 600, busy=False)
    assert kinds(written, "PathSwitched") == [], written
    assert kinds(written, "ReconnectAttempted") == [], written
    assert kinds(written, "ConnectionStateChanged") == [], written  # not even degraded
    assert node.connection("p1", "bob").path == "direct"


def test_half_the_packets_lost_degrades_and_stays_when_the_relay_is_no_better(make_node) -> None:
    node = joined(make_node)
    node.net.loss = node.net.relay_loss = 0.5  # the uplink itself: every path loses
    written = run(node, 600)
    states = kinds(written, "ConnectionStateChanged")
    assert states and "to_state='degraded', reason='loss " in states[0][1], written
    assert kinds(written, "PathSwitched") == []


@pytest.mark.parametrize("packets", [PACKETS_PER_STEP, 1])  # a game's chatter; four pings a second
def test_the_onset_of_half_the_packets_lost_after_a_clean_spell_moves_nothing(make_node,
                                                                              packets: int) -> None:
    """The loss window is full of answered probes when 50 % loss each way begins on the
    uplink: a check sized by that window (3 probes, all lost 42 % of the time at 75 %
    round-trip loss) moved the pair to the relay at once, and back at the next direct
    retry. A check assumes 50 % each way at least, whatever the window says."""
    node = joined(make_node)
    assert run(node, 120) == []  # 24 probes answered: the window knows a clean path
    node.net.loss = node.net.relay_loss = 0.5
    written = run(node, 600, packets=packets) + run(node, 300, busy=False)
    assert kinds(written, "PathSwitched") == [], written
    assert kinds(written, "ReconnectAttempted") == [], written
    assert node.connection("p1", "bob").path == "direct"


def test_a_dead_relay_s_last_figures_move_no_lossy_direct_path_onto_it(make_node) -> None:
    """The relay monitor's last window of the selected relay was clean, then the relay died:
    the connection is told it loses everything, and a lossy direct path stays where it is."""
    node = joined(make_node)
    run(node, 60)  # the monitor's first windows: the relay answers every probe
    node.net.set_relay(RELAY_A, None)
    node.net.loss = 0.5  # the direct path only
    written = run(node, 300)
    assert kinds(written, "PathSwitched") == [], written
    assert node.connection("p1", "bob").path == "direct"


def test_half_the_packets_lost_on_the_direct_path_moves_to_the_relay_at_most_once_a_minute(
        make_node) -> None:
    node = joined(make_node)
    node.net.loss = 0.5  # the direct path only: the relay is clean
    written = run(node, 900)
    switched = kinds(written, "PathSwitched")
    assert switched, written
    assert "to_path='relay', reason='loss " in switched[0][1]
    assert "on the direct path; relay 198.51.100.1:3478 lost 0% of its probes" in switched[0][1]
    times = [at for at, _ in switched]
    assert all(b - a >= 60 for a, b in itertools.pairwise(times)), switched
    assert len(times) <= 900 / 60


def test_half_the_packets_lost_on_the_peer_s_uplink_moves_the_pair_at_most_once_each_way(
        make_node) -> None:
    """The peer's uplink loses half the packets: this side's relay probes are clean, so the
    lossy direct path moves to the relay once; the relay path loses as much, the way back
    to direct comes a minute later, and then the pair stays (the relay did no better)."""
    node = joined(make_node)
    run(node, 60)
    node.net.loss = node.net.relay_path_loss = 0.5
    written = run(node, 900)
    switched = kinds(written, "PathSwitched")
    assert [line.split(", reason=")[0] for _, line in switched] == [
        "PathSwitched(from_path='direct', to_path='relay'",
        "PathSwitched(from_path='relay', to_path='direct'"], switched
    assert switched[1][0] - switched[0][0] >= 60, switched
    assert node.connection("p1", "bob").path == "direct"


@pytest.mark.parametrize(("loss", "follows"), [(0.5, True), (0.3, True), (0.1, False)])
def test_the_peer_leaving_a_lossy_direct_path_for_the_relay_is_followed(make_node, loss: float,
                                                                      follows: bool) -> None:
    """The peer's relay monitor found its relay clean and moved the pair off the lossy direct
    path; when this side's own window shows more loss than a degraded path recovers at
    (40 % of round trips), it follows at once (its check would be answered and leave the two
    ends on two paths); with less, it checks the path as after any relay offer."""
    node = joined(make_node)
    node.net.loss = node.net.relay_loss = loss  # from here the relay is no better: this side stays
    written = run(node, 300)
    assert kinds(written, "PathSwitched") == []
    node.tell(m.PeerAskedForRelay("p1", "bob", None, RELAY_A))
    node.ask(m.Ping())
    switched = [line for line in node.new(node.peer("bob")) if line.startswith("PathSwitched")]
    if not follows:
        assert switched == [] and node.connection("p1", "bob").path == "direct"
        return
    assert len(switched) == 1 and "to_path='relay', reason='the peer moved the pair to the relay; loss " \
        in switched[0], switched
    assert node.connection("p1", "bob").path == "relay"


def test_a_relay_that_cannot_be_had_leaves_a_lossy_direct_path_where_it_is(make_node) -> None:
    """A move to the relay for quality whose allocation fails (under loss a session hello or
    the ticket request can time out): the direct path still works, so no reconnect."""
    node = joined(make_node)
    node.net.loss = node.net.relay_loss = 0.5
    run(node, 300)
    node.net.set_relay(RELAY_A, None)  # allocations fail; the monitor has not seen it yet
    node.tell(m.PeerAskedForRelay("p1", "bob", None, RELAY_A))
    node.ask(m.Ping())
    written = node.new(node.peer("bob"))
    assert any(line.startswith("RelayAllocationFailed(") for line in written), written
    assert not [line for line in written if line.startswith(("ReconnectAttempted", "PathSwitched"))], written
    assert node.connection("p1", "bob").path == "direct"


def test_the_peer_asking_for_a_relay_makes_this_side_check_its_path_at_once(make_node) -> None:
    """The peer's side broke first (it sends, this side may be idle): its relay offer makes
    this side check the direct path now, and move only if the check is lost too."""
    node = joined(make_node)
    node.tell(m.PeerAskedForRelay("p1", "bob"))
    node.ask(m.Ping())
    assert node.new(node.peer("bob")) == []  # the direct path answers: stay
    node.net.block(BOB)
    node.tell(m.PeerAskedForRelay("p1", "bob"))
    node.ask(m.Ping())
    written = node.new(node.peer("bob"))
    assert written[2].startswith("PathSwitched(from_path='direct', to_path='relay', "
                                 "reason='the peer asked for a relay session; 33 probes lost on the direct "
                                 "path'"), written
    assert node.connection("p1", "bob").path == "relay"


def test_a_peer_announcing_a_new_address_is_found_again_at_once(make_node) -> None:
    """Its router rebooted and gave it a new public port: the control plane's re-announce
    makes this side punch the new candidate at once, and WireGuard follows."""
    moved = "203.0.113.2:40001"
    node = joined(make_node)
    node.net.block(BOB)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(moved,)))
    node.ask(m.Ping())
    assert node.new(node.peer("bob")) == [
        f"RemotePeerUpdated(candidates=('{moved}',), nat_type='unknown')",
        f"EndpointChanged(old_endpoint='{BOB}', new_endpoint='{moved}', "
        "reason='the peer announced candidates without the endpoint in use', seen_by='announce')",
        f"HolePunchAttempted(local_candidates=('203.0.113.1:51820',), remote_candidates=('{moved}',))",
        f"HolePunchSucceeded(endpoint='{moved}', rtt_ms=20.0, elapsed_ms=40.0)",
        f"WireGuardPeerConfigRequested(public_key='key-bob', endpoint='{moved}', "
        "allowed_ips=('10.66.0.2/32',), keepalive_s=25)",
        f"WireGuardPeerConfigured(public_key='key-bob', endpoint='{moved}', "
        "allowed_ips=('10.66.0.2/32',), keepalive_s=25, decided_here=False)"]
    assert kinds(run(node, 30), "PathSwitched") == []  # the new endpoint carries the traffic
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.endpoint) == ("connected", "direct", moved)


def test_relays_answering_again_make_a_failed_connection_retry_at_once(make_node) -> None:
    """This node's uplink was cut for five minutes: everything failed, the retries backed off
    to 30 s. The relays answering again is the sign it is back: the retry comes at once."""
    node = joined(make_node)
    node.net.block(BOB)
    node.net.set_relay(RELAY_A, None)
    run(node, 300, busy=False)
    assert node.connection("p1", "bob").state == "failed"
    node.net.unblock(BOB)
    node.net.set_relay(RELAY_A, 40.0)
    written = run(node, 2, busy=False)
    assert node.connection("p1", "bob").state == "connected", written
    # Retry 1 again (the network changed): written; a probe, the relay, the punch behind it.
    names = [line.split("(")[0] for _, line in written]
    assert names[:2] == ["ReconnectAttempted", "RelayAllocationRequested"] and "RelaySessionOpened" in names
    assert written[0][1].startswith(
        "ReconnectAttempted(attempt=4, max_attempts=3, reason='unreachable: retry 1 ")


@pytest.mark.parametrize("loss", [0.20, 0.50])
def test_a_dead_path_after_a_lossy_spell_is_still_found_within_2_s(make_node, loss: float) -> None:
    """A check sends as many probes as 50 % loss each way needs (a lossy path loses three of
    them by chance: 33 in all, whatever the window measured), and they go out in one second
    round, all at once: the first suspicion decides, one probe timeout after the first
    round went unanswered (the lab measures the time; here probes take none)."""
    node = joined(make_node)
    node.net.loss = node.net.relay_loss = loss
    run(node, 120)  # the window learns the loss (at 50 %: degraded, and the relay no better)
    node.net.loss = node.net.relay_loss = 0.0
    node.net.block(BOB)
    written = run(node, 3)
    moved = [(at, line) for at, line in written if line.startswith(("PathSwitched", "ReconnectAttempted"))]
    assert moved and moved[0][0] <= 2.0, written
    lost = re.search(r"; (\d+) probes lost", moved[0][1])
    assert lost is not None and int(lost.group(1)) == 33, moved
