"""The seed's connection scenarios on the simulated network, asserting the exact stored events.

The edge runs effects inline here, so every intent is followed by its outcome at once.
"""

from __future__ import annotations

from actors import messages as m
from events import types as ev
from events.streams import metrics_stream, relay_stream
from tests.actors.conftest import BOB, RELAY_A, RELAY_B, Node


def configured(endpoint: str, requested: bool = True) -> list[str]:
    """A WireGuard change as the log holds it: the decision, then the outcome."""
    fields = f"public_key='key-bob', endpoint='{endpoint}', allowed_ips=('10.66.0.2/32',), keepalive_s=25"
    return [*([f"WireGuardPeerConfigRequested({fields})"] if requested else []),
            f"WireGuardPeerConfigured({fields}, decided_here=False)"]


def removed(reason: str) -> list[str]:
    return [f"WireGuardPeerRemovalRequested(public_key='key-bob', reason='{reason}')",
            "WireGuardPeerRemoved(public_key='key-bob', reason='as decided', decided_here=False)"]


REMOTE = "RemotePeerUpdated(candidates=('203.0.113.2:51820',), nat_type='unknown')"
JOINED = [
    REMOTE,
    "ConnectionStateChanged(from_state=None, to_state='connecting', reason='peer joined the party', "
    "path=None, endpoint=None, relay=None, latency_ms=None)",
    "ConnectionAttemptStarted(attempt=1, path='direct')",
    "HolePunchAttempted(local_candidates=('203.0.113.1:51820',), remote_candidates=('203.0.113.2:51820',))",
    "HolePunchSucceeded(endpoint='203.0.113.2:51820', rtt_ms=20.0, elapsed_ms=40.0)",
    "PathChosen(path='direct', reason='hole punch succeeded', endpoint='203.0.113.2:51820', relay=None)",
    *configured("203.0.113.2:51820"),
]
CONNECTED = [
    "ConnectionStateChanged(from_state='connecting', to_state='connected', "
    "reason='first probe answered in 20.0 ms', path='direct', endpoint='203.0.113.2:51820', relay=None, "
    "latency_ms=20.0)",
]
PUNCH = ("HolePunchAttempted(local_candidates=('203.0.113.1:51820',), "
         "remote_candidates=('203.0.113.2:51820',))")


def join_bob(node: Node) -> None:
    opened = node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    assert opened == m.PartyOpened("p1", "alice", "10.66.0.1")
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    assert node.new(node.peer("bob")) == JOINED
    node.advance(5)
    assert node.new(node.peer("bob")) == CONNECTED


def test_join_connect_degrade_and_recover(make_node) -> None:
    node = make_node()
    join_bob(node)
    assert node.described(node.party()) == [
        "PartyCreated(name='LAN', host_peer_id='alice', subnet='10.66.0.0/16', control_url='')",
        "PeerJoined(peer_id='alice', name='Alice', public_key='sim-key-local', nat_type='unknown', "
        "is_local=True, candidates=())",
        "VirtualIpAllocated(peer_id='alice', virtual_ip='10.66.0.1')",
        "LocalAddressAssigned(virtual_ip='10.66.0.1', interface='sim-local')",
        "PeerJoined(peer_id='bob', name='Bob', public_key='key-bob', nat_type='unknown', is_local=False, "
        "candidates=('203.0.113.2:51820',))",
        "VirtualIpAllocated(peer_id='bob', virtual_ip='10.66.0.2')",
    ]
    node.net.set_latency("10.66.0.2", 250.0)
    node.advance(10)
    assert node.new(node.peer("bob")) == []  # two late answers are no verdict yet
    node.advance(5)
    assert node.new(node.peer("bob")) == [
        "ConnectionStateChanged(from_state='connected', to_state='degraded', "
        "reason='latency 250.0 ms above 200 ms (3 probes in a row)', path='direct', "
        "endpoint='203.0.113.2:51820', relay=None, "
        "latency_ms=250.0, recent_probes='++++')"]  # a setback shows the probes before it
    node.advance(10)  # still slow: no new transition
    assert node.new(node.peer("bob")) == []
    node.net.set_latency("10.66.0.2", 40.0)
    node.advance(5)
    assert node.new(node.peer("bob")) == [
        "ConnectionStateChanged(from_state='degraded', to_state='connected', "
        "reason='latency improved to 40.0 ms', path='direct', endpoint='203.0.113.2:51820', relay=None, "
        "latency_ms=40.0)"]
    assert node.connection("p1", "bob").state == "connected"
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB)]


def reconnect(attempt: int, from_state: str, probes: str = "") -> list[str]:
    shown = f", recent_probes='{probes}'" if probes else ""
    return [
        f"ReconnectAttempted(attempt={attempt}, max_attempts=3, reason='3 probes lost')",
        f"ConnectionStateChanged(from_state='{from_state}', to_state='connecting', "
        f"reason='reconnect attempt {attempt}/3: 3 probes lost', path='direct', "
        f"endpoint='203.0.113.2:51820', relay=None, latency_ms=None{shown})",
        f"ConnectionAttemptStarted(attempt={attempt + 1}, path='direct')",
        PUNCH,
        "HolePunchFailed(reason='no candidate answered', elapsed_ms=5000.0)",
        "NoPathAvailable(reason='hole punch failed: no candidate answered; no relay is known')",
    ]


def test_lost_probes_reconnect_then_failed_and_it_never_gives_up(make_node) -> None:
    node = make_node()  # no relay: nothing to fail over to
    join_bob(node)
    node.net.block(BOB)
    node.advance(10)
    assert node.new(node.peer("bob")) == []  # two lost probes are not enough
    node.advance(5)
    assert node.new(node.peer("bob")) == reconnect(1, "connected", "+---")
    node.advance(30)
    assert node.new(node.peer("bob")) == reconnect(2, "connecting") + reconnect(3, "connecting")
    node.advance(15)
    assert node.new(node.peer("bob")) == [
        "ConnectionStateChanged(from_state='connecting', to_state='failed', "
        "reason='3 probes lost after 3 reconnect attempts; retrying every path', path='direct', "
        "endpoint='203.0.113.2:51820', relay=None, latency_ms=None, recent_probes='+------------')"]
    # Failed is "unreachable now": an hour of retries with capped, jittered backoff, every
    # gap at most 30 s, and the WireGuard peer stays.
    punches, gaps, last = len(node.net.punch_log), [], node.clock.now
    for _ in range(3600):
        node.advance(1)
        if len(node.net.punch_log) > punches:
            punches, gaps, last = len(node.net.punch_log), [*gaps, node.clock.now - last], node.clock.now
    assert node.connection("p1", "bob").state == "failed"
    assert len(gaps) >= 120 and max(gaps) <= 30 and len(set(gaps[-20:])) > 1, gaps  # jittered
    assert gaps[:4] == sorted(gaps[:4]) and gaps[0] <= 2  # quick first, then doubling
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB)]
    # Repeats are not written again: the retries 1, 2, 4 ... 128 are, the others are not.
    written = [line for line in node.new(node.peer("bob")) if not line.startswith("MetricsSampled")]
    retries = [line for line in written if line.startswith("ReconnectAttempted")]
    assert [line.split(",")[0] for line in retries] == [
        f"ReconnectAttempted(attempt={3 + n}" for n in (1, 2, 4, 8, 16, 32, 64, 128)]
    assert len(written) == 3 * len(retries)  # each: intent, punch, punch failed
    assert written[:3] == [
        "ReconnectAttempted(attempt=4, max_attempts=3, reason='unreachable: retry 1 of every path "
        "(repeats in between are not written)')", PUNCH,
        "HolePunchFailed(reason='no candidate answered', elapsed_ms=5000.0)"]
    # Back after an hour: up at the next probe (one a second while failed).
    node.net.unblock(BOB)
    node.advance(1)
    recovered = node.new(node.peer("bob"))
    assert recovered[-1].startswith(
        "ConnectionStateChanged(from_state='failed', to_state='connected', reason='peer answered again "
        "(retry "), recovered
    assert node.connection("p1", "bob").state == "connected"
    assert node.net.wireguard_changes("local") == [("configure", "key-bob", BOB)]


def test_an_old_logs_cleanup_is_undone_while_the_member_is_in_the_party(make_node) -> None:
    """Old versions removed a failed peer after 300 s (``cleanup``); the member is still in the
    party, so at start its WireGuard peer is added again and it connects."""
    node = make_node()
    join_bob(node)
    stream = node.peer("bob")
    node.stop()
    position = node.recorder.stream_position(stream)
    node.recorder.append(stream, [
        ev.WireGuardPeerRemovalRequested(party_id="p1", peer_id="bob", public_key="key-bob",
                                         reason="cleanup of a failed connection"),
        ev.ConnectionStateChanged(party_id="p1", peer_id="bob", from_state="failed", to_state="cleanup",
                                  reason="no recovery within 300 s", path="direct", endpoint=BOB),
        ev.WireGuardPeerRemoved(party_id="p1", peer_id="bob", public_key="key-bob", reason="as decided")],
        position)
    node.new(stream)
    node.start()
    node.advance(10)
    assert node.new(stream)[:2] == [
        "ConnectionStateChanged(from_state='cleanup', to_state='connecting', reason='the member is still "
        "in the party: its WireGuard peer is added again', path='direct', endpoint='203.0.113.2:51820', "
        "relay=None, latency_ms=None)", "ConnectionAttemptStarted(attempt=1, path='direct')"]
    assert node.connection("p1", "bob").state == "connected"


def test_an_expired_member_is_removed_and_added_again_when_it_returns(make_node) -> None:
    node = make_node()
    join_bob(node)
    node.net.block(BOB)
    node.advance(60)
    assert node.connection("p1", "bob").state == "failed"
    node.tell(m.PeerDeparted("p1", "bob", "expired"))  # the control server's member expiry
    gone = removed("expired")
    assert node.new(node.peer("bob"))[-3:] == [
        gone[0],
        "ConnectionStateChanged(from_state='failed', to_state='closed', reason='expired', path='direct', "
        "endpoint='203.0.113.2:51820', relay=None, latency_ms=None)", gone[1]]
    node.advance(600)
    assert node.new(node.peer("bob")) == []  # closed: no more retries
    node.net.unblock(BOB)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    assert node.connection("p1", "bob").state == "connected"
    assert node.net.wireguard_changes("local") == [
        ("configure", "key-bob", BOB), ("remove", "key-bob", None), ("configure", "key-bob", BOB)]


def test_direct_path_fails_over_to_relay_and_upgrades_back(make_node) -> None:
    node = make_node(relays=(RELAY_A,))
    join_bob(node)
    node.net.block(BOB)
    node.advance(15)
    assert node.new(node.peer("bob")) == [
        f"RelayAllocationRequested(relay='{RELAY_A}', purpose='failover')",
        f"RelaySessionOpened(relay='{RELAY_A}', session_id='p1/bob', endpoint='{RELAY_A}')",
        "PathSwitched(from_path='direct', to_path='relay', reason='3 probes lost on the direct path', "
        "endpoint='198.51.100.1:3478', from_relay=None, to_relay='198.51.100.1:3478', from_latency_ms=20.0, "
        "to_latency_ms=None)",
        *configured(RELAY_A)]
    node.advance(30)  # the periodic direct retry, still blocked
    assert node.new(node.peer("bob")) == [
        PUNCH, "DirectPathRetried(succeeded=False, reason='no candidate answered')"]
    assert node.connection("p1", "bob").path == "relay"
    node.advance(60)  # two more retries fail the same way: counted, not written
    assert node.new(node.peer("bob")) == []
    node.net.unblock(BOB)
    node.advance(30)
    new = node.new(node.peer("bob"))
    assert new[0].startswith("DirectPathRetriesRepeated(reason='no candidate answered', count=2, first_at='")
    assert node.connection("p1", "bob").direct_retries == 4
    assert new[1:] == [
        "DirectPathRetried(succeeded=True, reason='hole punch succeeded')",
        "PathSwitched(from_path='relay', to_path='direct', reason='direct path works again', "
        "endpoint='203.0.113.2:51820', from_relay='198.51.100.1:3478', to_relay=None, from_latency_ms=20.0, "
        "to_latency_ms=20.0)",
        *configured(BOB),
        f"RelaySessionReleased(relay='{RELAY_A}', session_id='p1/bob', error='')"]
    node.advance(60)
    assert node.new(node.peer("bob")) == []  # on the direct path: no more retries
    state = node.connection("p1", "bob")
    assert (state.state, state.path, state.endpoint, state.relay) == ("connected", "direct", BOB, None)
    assert node.net.wireguard_changes("local") == [
        ("configure", "key-bob", BOB), ("configure", "key-bob", RELAY_A), ("configure", "key-bob", BOB)]
    assert node.net.relay_log == [("allocate", RELAY_A, "p1/bob"), ("release", RELAY_A, "p1/bob")]


def probed(relay: str, rtt: float) -> str:
    return f"RelayProbed(relay='{relay}', probes=3, answered=3, rtt_ms={rtt}, windows=1, first_at='')"


def changes(lines: list[str]) -> list[str]:
    """All but the probe records (an interval within tolerance of the last one is only counted)."""
    return [line for line in lines if not line.startswith("RelayProbed(")]


def test_relay_degrades_and_monitor_switches_with_hysteresis(make_node) -> None:
    node = make_node(relays=(RELAY_A, RELAY_B))
    node.net.set_relay(RELAY_A, 40.0)
    node.net.set_relay(RELAY_B, 45.0)
    node.ask(m.Ping())  # delivers the monitor's first wakeup (due at once)
    a, b = relay_stream("local", RELAY_A), relay_stream("local", RELAY_B)
    assert node.new(a) == [
        probed(RELAY_A, 40.0),
        f"RelaySelected(relay='{RELAY_A}', rtt_ms=40.0, previous_relay=None, "
        "reason='lowest round trip (40.0 ms) of 2 relays', selection=1)"]
    assert node.new(b) == [probed(RELAY_B, 45.0)]
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "carol", "Carol", "key-carol"))  # no candidates: relay only
    node.advance(5)
    carol = f"public_key='key-carol', endpoint='{RELAY_A}', allowed_ips=('10.66.0.2/32',), keepalive_s=25"
    assert node.new(node.peer("carol"))[1:] == [
        "ConnectionAttemptStarted(attempt=1, path='relay')",
        f"RelayAllocationRequested(relay='{RELAY_A}', purpose='fallback')",
        f"RelaySessionOpened(relay='{RELAY_A}', session_id='p1/carol', endpoint='{RELAY_A}')",
        f"PathChosen(path='relay', reason='no direct candidates', endpoint='{RELAY_A}', relay='{RELAY_A}')",
        f"WireGuardPeerConfigRequested({carol})",
        f"WireGuardPeerConfigured({carol}, decided_here=False)",
        "ConnectionStateChanged(from_state='connecting', to_state='connected', "
        f"reason='first probe answered in 40.0 ms', path='relay', endpoint='{RELAY_A}', relay='{RELAY_A}', "
        "latency_ms=40.0)"]

    # Near-equal relays, even both slow, trading places round after round: never a switch.
    for rtt_a, rtt_b in [(50.0, 45.0), (160.0, 155.0), (155.0, 160.0), (170.0, 161.0), (50.0, 40.0)]:
        node.net.set_relay(RELAY_A, rtt_a)
        node.net.set_relay(RELAY_B, rtt_b)
        node.advance(30)
        degraded = ([f"RelayDegraded(relay='{RELAY_A}', rtt_ms={rtt_a}, "
                     f"reason='round trip {rtt_a} ms above 150 ms')"] if rtt_a > 150 else [])
        assert changes(node.new(a)) == degraded
        assert changes(node.new(b)) == []
    assert node.status().relay == RELAY_A

    # Degraded, and the other is better by >= 10 ms but not below 2/3 of it: stay.
    node.net.set_relay(RELAY_A, 160.0)
    node.net.set_relay(RELAY_B, 110.0)
    node.advance(30)
    assert node.new(a)[-1] == (f"RelayDegraded(relay='{RELAY_A}', rtt_ms=160.0, "
                               "reason='round trip 160.0 ms above 150 ms')")
    assert node.new(b) == [probed(RELAY_B, 110.0)]

    # Clearly better: switch, and the relayed connection moves with it.
    node.net.set_relay(RELAY_B, 100.0)
    node.advance(30)
    assert node.new(a) == [
        probed(RELAY_A, 160.0),
        f"RelayDegraded(relay='{RELAY_A}', rtt_ms=160.0, reason='round trip 160.0 ms above 150 ms')"]
    assert changes(node.new(b)) == [  # B's interval, within 10 % of the last: counted, then written
        f"RelaySelected(relay='{RELAY_B}', rtt_ms=100.0, previous_relay='{RELAY_A}', "
        f"reason='{RELAY_A} degraded (160.0 ms); {RELAY_B} is 100.0 ms', selection=2)"]
    assert node.status().relay == RELAY_B
    moved = carol.replace(RELAY_A, RELAY_B)
    assert node.new(node.peer("carol")) == [
        f"RelayAllocationRequested(relay='{RELAY_B}', purpose='relay-move')",
        f"RelaySessionOpened(relay='{RELAY_B}', session_id='p1/carol/1', endpoint='{RELAY_B}')",
        f"PathSwitched(from_path='relay', to_path='relay', reason='relay monitor selected {RELAY_B}', "
        f"endpoint='{RELAY_B}', from_relay='{RELAY_A}', to_relay='{RELAY_B}', from_latency_ms=40.0, "
        "to_latency_ms=100.0)",
        f"WireGuardPeerConfigRequested({moved})",
        f"WireGuardPeerConfigured({moved}, decided_here=False)",
        f"RelaySessionReleased(relay='{RELAY_A}', session_id='p1/carol', error='')"]
    assert node.net.wireguard_changes("local") == [
        ("configure", "key-carol", RELAY_A), ("configure", "key-carol", RELAY_B)]

    # Now the old relay is the better one, but the selected one is healthy: no flap back.
    node.net.set_relay(RELAY_A, 30.0)
    node.advance(60)
    assert node.status().relay == RELAY_B
    assert not any("RelaySelected" in e for e in node.new(a) + node.new(b))


def test_peer_leaves_and_comes_back(make_node) -> None:
    node = make_node()
    join_bob(node)
    node.tell(m.PeerDeparted("p1", "bob", "left the party"))
    gone = removed("left the party")
    assert node.new(node.peer("bob")) == [
        gone[0],
        "ConnectionStateChanged(from_state='connected', to_state='closed', reason='left the party', "
        "path='direct', endpoint='203.0.113.2:51820', relay=None, latency_ms=None)", gone[1]]
    assert node.described(node.party())[-2:] == [
        "VirtualIpReleased(peer_id='bob', virtual_ip='10.66.0.2')",
        "PeerLeft(peer_id='bob', reason='left the party')"]
    node.advance(30)
    assert node.new(node.peer("bob")) == []  # closed: no probes
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    assert node.new(node.peer("bob")) == [
        "ConnectionStateChanged(from_state='closed', to_state='connecting', reason='peer joined the party', "
        "path='direct', endpoint='203.0.113.2:51820', relay=None, latency_ms=None)", *JOINED[2:]]
    node.advance(5)
    assert node.new(node.peer("bob"))[0].startswith(
        "ConnectionStateChanged(from_state='connecting', to_state='connected'")
    assert node.described(node.party())[-2:] == [
        "PeerJoined(peer_id='bob', name='Bob', public_key='key-bob', nat_type='unknown', is_local=False, "
        "candidates=('203.0.113.2:51820',))",
        "VirtualIpAllocated(peer_id='bob', virtual_ip='10.66.0.2')"]
    assert node.net.wireguard_changes("local") == [
        ("configure", "key-bob", BOB), ("remove", "key-bob", None), ("configure", "key-bob", BOB)]


def test_a_peer_that_comes_back_gets_a_fresh_reconnect_budget(make_node) -> None:
    node = make_node()
    join_bob(node)
    node.net.block(BOB)
    node.advance(60)
    assert node.connection("p1", "bob").state == "failed"
    node.tell(m.PeerDeparted("p1", "bob", "left the party"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))  # still unreachable
    node.new(node.peer("bob"))
    node.advance(15)
    assert node.new(node.peer("bob"))[:2] == [
        "ReconnectAttempted(attempt=1, max_attempts=3, reason='3 probes lost')",
        "ConnectionStateChanged(from_state='connecting', to_state='connecting', "
        "reason='reconnect attempt 1/3: 3 probes lost', path='direct', endpoint='203.0.113.2:51820', "
        "relay=None, latency_ms=None)"]


def test_metrics_enter_the_log_as_one_sample_per_window(make_node) -> None:
    node = make_node(metrics_interval_s=60.0)
    join_bob(node)  # probe at t=5 s (20 ms)
    for latency in (30.0, 40.0, None, 30.0, 20.0):  # probes at 10, 15, 20, 25, 30 s
        node.net.set_latency("10.66.0.2", latency)
        node.advance(5)
    node.net.set_latency("10.66.0.2", 20.0)
    node.advance(30)  # probes at 35 ... 60 s, all 20 ms; the window closes at 60 s
    samples = [line.replace("peer_id='bob', ", "")  # samples have their own stream
               for line in node.new(metrics_stream("local", "p1", "bob"))]
    # The window closes at 60 s, before that instant's probe (armed later): probes at 5 ... 55 s.
    # 10 answered (20, 30, 40, 30, 20, then five 20s): mean 24.0; jitter 40 over 9 steps;
    # one of 11 lost; quality 100 - 24/10 - 4.44/5 - 9.09.
    assert samples == [
        "MetricsSampled(window_s=60.0, probes=11, latency_ms=24.0, jitter_ms=4.444444444444445, "
        "loss=0.09090909090909091, rx_bytes=0, tx_bytes=0, quality=87.6, probe_error='', windows=1, "
        "first_at='')"]
    assert not any(e.startswith("MetricsSampled") for e in node.new(node.peer("bob")))
    node.advance(120)  # two windows within 5 ms and 0.1 loss of the recorded one: counted
    assert node.new(metrics_stream("local", "p1", "bob")) == []
    node.net.set_latency("10.66.0.2", 80.0)
    node.advance(60)  # a window that differs: the run, then the window
    run, changed = node.events(metrics_stream("local", "p1", "bob"))[-2:]
    assert isinstance(run, ev.MetricsSampled) and isinstance(changed, ev.MetricsSampled)
    assert (run.windows, run.window_s, run.probes, run.latency_ms, run.loss, bool(run.first_at)) == (
        2, 120.0, 24, 20.0, 0.0, True)
    # Its first probe was sent before the change: (20 + 11 x 80) / 12.
    assert (changed.windows, changed.latency_ms, changed.first_at) == (1, 75.0, "")
    assert node.connection("p1", "bob").latency_ms == 75.0


def test_leave_closes_every_connection_and_the_party_can_be_opened_again(make_node) -> None:
    node = make_node()
    join_bob(node)
    assert node.ask(m.LeaveParty("p1")) == m.PartyClosed("p1", "left by the user")
    gone = removed("the local node left the party")
    assert node.new(node.peer("bob")) == [
        gone[0],
        "ConnectionStateChanged(from_state='connected', to_state='closed', "
        "reason='the local node left the party', path='direct', endpoint='203.0.113.2:51820', relay=None, "
        "latency_ms=None)", gone[1]]
    assert node.described(node.party())[-5:] == [
        "VirtualIpReleased(peer_id='alice', virtual_ip='10.66.0.1')",
        "PeerLeft(peer_id='alice', reason='the local node left the party')",
        "VirtualIpReleased(peer_id='bob', virtual_ip='10.66.0.2')",
        "PeerLeft(peer_id='bob', reason='the local node left the party')",
        "PartyLeft(reason='left by the user')"]
    assert node.status().parties == ()
    assert node.described(node.node_stream)[-2:] == [
        "NodePartyOpened(node_id='local', request_id='')",
        "NodePartyClosed(node_id='local', reason='left by the user')"]
    assert node.ask(m.CreateParty("p1", "LAN again", "alice", "Alice")) == m.PartyOpened(
        "p1", "alice", "10.66.0.1")
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    assert node.connection("p1", "bob").state == "connected"
    assert node.net.wireguard_changes("local") == [
        ("configure", "key-bob", BOB), ("remove", "key-bob", None), ("configure", "key-bob", BOB)]


def test_a_new_connection_is_probed_at_once_then_every_interval(make_node) -> None:
    node = make_node(first_probe_s=0.5, latency_probes_to_degrade=1)  # each probe shows
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    assert node.new(node.peer("bob")) == JOINED
    node.advance(0.5)
    assert node.new(node.peer("bob")) == CONNECTED  # not a whole probe interval later
    node.net.set_latency("10.66.0.2", 250.0)
    node.advance(4)
    assert node.new(node.peer("bob")) == []  # connected: back to one probe every 5 s
    node.advance(1)
    assert [line.split("(")[0] for line in node.new(node.peer("bob"))] == ["ConnectionStateChanged"]


def test_a_probe_error_enters_the_log_with_its_window(make_node) -> None:
    node = make_node(metrics_interval_s=60.0)
    join_bob(node)
    node.net.probe_error = "probe of 10.66.0.2 on wg0: Network is unreachable"
    node.advance(10)
    node.net.probe_error = None
    node.advance(50)
    samples = node.events(metrics_stream("local", "p1", "bob"))
    assert [(s.probes, s.loss > 0, s.probe_error) for s in samples] == [
        (11, True, "probe of 10.66.0.2 on wg0: Network is unreachable")]
    node.advance(60)
    samples = node.events(metrics_stream("local", "p1", "bob"))
    assert samples[-1].probe_error == ""  # the next window lost nothing
