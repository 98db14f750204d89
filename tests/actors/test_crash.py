"""A run that ends without a clean stop is a fact of the next start."""

from __future__ import annotations

from actors import messages as m
from tests.actors.conftest import BOB, Node


def test_a_crash_is_recorded_at_the_next_start_with_the_last_event_written(make_node) -> None:
    node: Node = make_node()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    last = node.recorder.read_all()
    newest = max(last, key=lambda record: record.global_position)
    node.crash()
    node.start()
    ended = [e for e in node.events(node.node_stream) if e.event_type == "NodeRunEndedAbruptly"]
    assert len(ended) == 1
    assert ended[0].last_global_position == newest.global_position
    assert ended[0].last_recorded_at == newest.recorded_at.isoformat()
    types = [e.event_type for e in node.events(node.node_stream)]
    assert types[-2:] == ["NodeRunEndedAbruptly", "NodeStarted"]


def test_a_clean_stop_is_not_a_crash(make_node) -> None:
    node: Node = make_node()
    node.stop()
    node.start()
    types = [e.event_type for e in node.events(node.node_stream)]
    assert "NodeRunEndedAbruptly" not in types
    assert types.count("NodeStopped") == 1 and types.count("NodeStarted") == 2


def test_a_party_request_without_an_outcome_is_settled_as_interrupted(make_node) -> None:
    node: Node = make_node()
    assert node.ask(m.RequestParty("r1", "create", "ws://198.51.100.5:8667", name="LAN")) == m.Recorded()
    node.crash()
    node.start()
    described = node.described(node.node_stream)
    assert ("PartyRequestFailed(node_id='local', request_id='r1', "
            "error='interrupted: the node stopped before the control plane answered')") in described
