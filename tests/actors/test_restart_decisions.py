"""A restart changes nothing the connection decides: every input of its decisions (the loss
window, retries, the last switch for quality, offers) is folded from its stream."""

from __future__ import annotations

from tests.actors.conftest import Node, joined
from tests.actors.test_detection import kinds, run


def degraded_by_loss(make_node) -> Node:
    """alice's node, its direct path to bob degraded by 50 % loss each way on every path."""
    node = joined(make_node)
    node.net.loss = node.net.relay_loss = 0.5
    written = run(node, 300)
    states = kinds(written, "ConnectionStateChanged")
    assert states and "to_state='degraded', reason='loss " in states[-1][1], written
    assert node.connection("p1", "bob").state == "degraded"
    return node


def test_without_a_restart_a_connection_degraded_by_steady_loss_writes_nothing(make_node) -> None:
    node = degraded_by_loss(make_node)
    assert kinds(run(node, 60), "ConnectionStateChanged") == []


def test_a_clean_restart_under_steady_loss_does_not_make_a_degraded_connection_connected(
        make_node) -> None:
    """Under 50 % loss a degraded connection restarted with an empty loss window once wrote
    `degraded -> connected "latency improved"` at its first answered probe and `-> degraded`
    again 50 s later, when the window it had forgotten was half full again."""
    node = degraded_by_loss(make_node)
    node.stop()
    node.start()
    assert node.connection("p1", "bob").state == "degraded"
    assert kinds(run(node, 60), "ConnectionStateChanged") == []
    assert node.connection("p1", "bob").state == "degraded"


def test_after_a_crash_a_lossy_connection_resumes_from_its_last_metrics_beat(make_node) -> None:
    """No clean stop: what the lossy path recorded on its last metrics beat is what the next
    start resumes from, so the window it forgot is at most one beat of probes."""
    node = joined(make_node, metrics_interval_s=60.0)
    node.net.loss = node.net.relay_loss = 0.5
    run(node, 300)
    assert node.connection("p1", "bob").state == "degraded"
    recorded = [e for e in node.events(node.peer("bob")) if e.event_type == "DecisionInputsRecorded"]
    assert 3 <= len(recorded) <= 5, recorded  # one a beat once the window holds lost probes
    assert recorded[-1].windows and "-" in recorded[-1].windows[0][1]
    node.crash()
    node.start()
    assert kinds(run(node, 60), "ConnectionStateChanged") == []
    assert node.connection("p1", "bob").state == "degraded"
