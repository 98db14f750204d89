"""Property: for random commands and network observations, what the live actors hold equals
the fold of what they stored (the replay tool's view), after every step, on SQLite."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from thespian.actors import ActorExitRequest

import mesh.sim as sim
from actors import messages as m
from events.fold import ConnectionState, PartyState, apply_connection, apply_party, fold_stream
from events.streams import METRICS, PEER, stream_kind
from tests.actors.conftest import RELAY_A, RELAY_B, VirtualClock, make_config
from tests.actors.conftest import Node as Harness

PEERS = ("bob", "carol", "dave")
latency = st.one_of(st.none(), st.sampled_from([15.0, 150.0, 199.0, 201.0, 450.0]))
observation = st.one_of(latency.map(lambda v: m.ProbeFailed() if v is None else m.LatencyObserved(v)),
                        st.just(m.LatencyObserved(-1.0)))
steps = st.one_of(
    st.tuples(st.just("announce"), st.sampled_from(PEERS), st.booleans()),
    st.tuples(st.just("depart"), st.sampled_from(PEERS)),
    st.tuples(st.just("observe"), st.sampled_from(PEERS),
              st.lists(observation, min_size=1, max_size=6)),
    st.tuples(st.just("latency"), st.sampled_from(PEERS), latency),
    st.tuples(st.just("block"), st.sampled_from(PEERS), st.booleans()),
    st.tuples(st.just("relay"), st.sampled_from((RELAY_A, RELAY_B)), latency),
    st.tuples(st.just("advance"), st.integers(1, 60)),
    st.tuples(st.just("wait"), st.integers(60, 400)),  # long enough to fail and to be cleaned up
    st.tuples(st.just("kill"), st.sampled_from(("party", "peer"))),
)


def candidate(peer: str) -> str:
    return f"203.0.113.{10 + PEERS.index(peer)}:51820"


def virtual_ip(node: Harness, peer: str) -> str | None:
    for party in node.status().parties:
        for status in party.peers:
            if status.peer_id == peer:
                return status.virtual_ip
    return None


def apply_step(node: Harness, step: tuple[Any, ...]) -> None:
    match step:
        case ("announce", peer, direct):
            node.tell(m.PeerAnnounced("p1", peer, peer.title(), f"key-{peer}",
                                      candidates=(candidate(peer),) if direct else ()))
        case ("depart", peer):
            node.tell(m.PeerDeparted("p1", peer))
        case ("observe", peer, items):
            node.tell(m.Observations("p1", peer, tuple(items)))
        case ("latency", peer, value):
            ip = virtual_ip(node, peer)
            if ip:
                node.net.set_latency(ip, value)
        case ("block", peer, blocked):
            (node.net.block if blocked else node.net.unblock)(candidate(peer))
        case ("relay", relay, value):
            node.net.set_relay(relay, value)
        case ("advance", seconds) | ("wait", seconds):
            node.advance(seconds, step=5.0)
        case ("kill", what):
            party = dict(node.system.ask(node.address, m.ChildrenQuery()).children)["p1"]
            target = party
            if what == "peer":
                peers = [a for _, a in node.system.ask(party, m.ChildrenQuery()).children if a is not None]
                if not peers:
                    return
                target = peers[0]
            node.system.tell(target, ActorExitRequest())
            node.ask(m.Ping())


def check(node: Harness) -> set[str]:
    """Live equals replay; the connection states seen."""
    status = node.status()
    live = {p.peer_id: p for p in status.parties[0].peers}
    party = fold_stream(apply_party, PartyState(), node.events(node.party()))
    assert party.active and status.parties[0].active
    assert {pid: (mb.name, mb.public_key, mb.virtual_ip) for pid, mb in party.members} == {
        pid: (p.name, p.public_key, p.virtual_ip) for pid, p in live.items()}
    records = list(node.recorder.read_all())
    streams = {r.stream_id for r in records if stream_kind(r.stream_id) == "peer"}
    seen = set()
    for stream in streams:
        peer = stream.rsplit(":", 1)[1]
        # As the replay tool folds it: the connection's stream and its samples' stream, in log order.
        samples = METRICS + stream[len(PEER):]
        replayed = fold_stream(apply_connection, ConnectionState(),
                               [r.event for r in records if r.stream_id in (stream, samples)])
        seen.add(str(replayed.state))
        if peer in live:
            assert live[peer].connection == replayed, peer
        else:
            assert replayed.state == "closed"
    return seen


REACHES_FAILED = [("relay", RELAY_A, None), ("relay", RELAY_B, None), ("announce", "bob", True),
                   ("advance", 5), ("block", "bob", True), ("wait", 100), ("wait", 300),
                   ("announce", "bob", True),
                   ("block", "bob", False), ("advance", 10)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(script=REACHES_FAILED)
@given(script=st.lists(steps, max_size=16))
def test_live_state_equals_replay_after_every_step(monkeypatch, tmp_path_factory, script) -> None:
    name = f"h{uuid.uuid4().hex[:10]}"
    sim.reset(name)
    url = f"sqlite:///{tmp_path_factory.mktemp('property') / 'events.db'}"
    # Metric windows of a minute: samples (and runs of them) among the steps, and restarts after them.
    node = Harness(name, VirtualClock(monkeypatch), make_config(metrics_interval_s=60.0), (RELAY_A, RELAY_B),
                   store_url=url)
    node.start()
    seen: set[str] = set()
    try:
        node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
        for step in script:
            apply_step(node, step)
            node.ask(m.Ping())
            seen |= check(node)
    finally:
        node.stop()
    for state in seen:
        note_event(f"reached {state}")
    if script == REACHES_FAILED:
        assert {"failed", "connected"} <= seen, seen
