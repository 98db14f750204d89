"""Bad input is logged, recorded as MessageRejected, and the actor keeps running."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actors import messages as m
from events import types as ev
from tests.actors.conftest import BOB, Node


@dataclass(frozen=True)
class Bogus:
    text: str = "hello"


def rejected(node: Node, stream: str) -> list[tuple[str, str, str]]:
    return [(e.actor, e.message_type, e.reason) for e in node.events(stream)
            if isinstance(e, ev.MessageRejected)]


def open_party(node: Node) -> None:
    assert isinstance(node.ask(m.CreateParty("p1", "LAN", "alice", "Alice")), m.PartyOpened)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)


def test_unknown_message_to_the_node(make_node, tmp_path: Path) -> None:
    log = tmp_path / "actors.log"
    node = make_node(log_path=str(log))
    node.tell(Bogus())
    node.tell("just a string")
    assert rejected(node, node.node_stream) == [
        ("node", "Bogus", "unknown message for the node"),
        ("node", "str", "unknown message for the node")]
    assert isinstance(node.ask(m.Ping()), m.Pong)
    text = log.read_text()
    assert "rejected Bogus: unknown message for the node" in text
    assert "rejected str: unknown message for the node" in text


def test_messages_for_a_party_or_peer_that_does_not_exist(make_node) -> None:
    node = make_node()
    open_party(node)
    node.tell(m.PeerAnnounced("nope", "dave", "Dave", "key-dave"))
    reply = node.ask(m.LeaveParty("nope"))
    assert reply == m.CommandRejected("LeaveParty", "no open party 'nope'")
    assert rejected(node, node.node_stream) == [
        ("node", "PeerAnnounced", "no open party 'nope'"),
        ("node", "LeaveParty", "no open party 'nope'")]
    node.tell(m.PeerDeparted("p1", "dave"))
    node.tell(m.Observations("p1", "dave", (m.LatencyObserved(10.0),)))
    node.tell(m.RemoteCandidates("p1", "dave", ("203.0.113.9:1",)))
    assert rejected(node, node.party()) == [
        ("party/p1", "PeerDeparted", "no remote peer 'dave' in this party"),
        ("party/p1", "Observations", "no peer connection 'dave' in this party"),
        ("party/p1", "RemoteCandidates", "no remote peer 'dave' in this party")]
    again = node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    assert again == m.CommandRejected("CreateParty", "party p1 is already open")
    assert node.connection("p1", "bob").state == "connected"


def test_malformed_observations_from_an_adapter(make_node, tmp_path: Path) -> None:
    log = tmp_path / "actors.log"
    node = make_node(log_path=str(log))
    open_party(node)
    node.tell(m.Observations("p1", "bob", (
        m.LatencyObserved(-5.0), m.LatencyObserved(float("nan")), m.LatencyObserved("fast"),  # type: ignore[arg-type]
        m.TrafficObserved(-1, 3), Bogus(),  # type: ignore[arg-type]
        *[m.LatencyObserved(300.0)] * 3)))  # three late answers in a row: degraded
    actor, bad = "peer-connection/p1/bob", "malformed observation"
    assert rejected(node, node.peer("bob")) == [
        (actor, "LatencyObserved", f"{bad}: latency_ms -5.0 is out of range"),
        (actor, "LatencyObserved", f"{bad}: latency_ms nan is out of range"),
        (actor, "LatencyObserved", f"{bad}: latency_ms is str, not a number"),
        (actor, "TrafficObserved", f"{bad}: byte counters must be non-negative integers"),
        (actor, "Bogus", f"{bad}: Bogus is not an observation")]
    node.tell(m.Observations("p1", "bob", None))  # type: ignore[arg-type]
    assert rejected(node, node.peer("bob"))[-1] == (
        actor, "Observations", "items must be a sequence of observations")
    # The good observations in the same batch still counted, and the actor keeps going.
    assert node.connection("p1", "bob").state == "degraded"
    node.advance(5)
    assert node.connection("p1", "bob").state == "connected"
    assert "rejected observation LatencyObserved(latency_ms='fast')" in log.read_text()


def test_unknown_message_to_a_peer_connection_actor(make_node) -> None:
    node = make_node()
    open_party(node)
    party = dict(node.system.ask(node.address, m.ChildrenQuery()).children)["p1"]
    peer = dict(node.system.ask(party, m.ChildrenQuery()).children)["bob"]
    node.system.tell(peer, Bogus())
    node.system.tell(party, Bogus())
    assert rejected(node, node.peer("bob")) == [
        ("peer-connection/p1/bob", "Bogus", "unknown message for a peer connection")]
    assert rejected(node, node.party()) == [("party/p1", "Bogus", "unknown message for a party")]
    node.net.set_latency("10.66.0.2", 250.0)
    node.advance(15)  # three late answers in a row
    assert node.connection("p1", "bob").state == "degraded"


def test_bad_commands(make_node) -> None:
    node = make_node()
    assert node.ask(m.CreateParty("a:b", "x", "alice", "Alice")) == m.CommandRejected(
        "CreateParty", "invalid party id")
    open_party(node)
    node.tell(m.PeerAnnounced("p1", "eve", "Eve", ""))  # no public key
    node.tell(m.PeerAnnounced("p1", "mallory", "Mallory", "key-m", virtual_ip="10.66.0.2"))  # bob's IP
    node.tell(m.PeerAnnounced("p1", "trent", "Trent", "key-t", virtual_ip="192.0.2.7"))  # outside
    assert rejected(node, node.party()) == [
        ("party/p1", "PeerAnnounced", "peer id and public key are required"),
        ("party/p1", "PeerAnnounced", "virtual IP 10.66.0.2 already belongs to bob"),
        ("party/p1", "PeerAnnounced", "virtual IP 192.0.2.7 is outside 10.66.0.0/16")]
    assert [p.peer_id for p in node.status().parties[0].peers] == ["alice", "bob"]
