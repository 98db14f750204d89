"""The node records its NAT detection on the node stream: once, and again only when it changes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from actors import messages as m
from actors.system import start_node, start_system
from events.fold import NodeState, apply_node, fold_stream
from mesh import sim
from tests.actors.conftest import LOCAL, Node

DETECTED = ("NatDetected(node_id='local', nat_type='open', public_ip='203.0.113.1', public_port=51820, "
            "local_ip='192.0.2.1', local_port=51820, stun_server='sim-stun')")


def silent_stun(**kwargs: Any) -> sim.SimAdapters:
    """The simulated adapters with no STUN answer."""
    return replace(sim.adapters(**kwargs), nat_detector=sim.SimNatDetector(None))


def nat_rows(node: Node) -> list[str]:
    return [row for row in node.described(node.node_stream) if row.startswith("Nat")]


def test_the_nat_is_recorded_once_and_restarts_add_nothing(make_node) -> None:
    node = make_node()
    assert nat_rows(node) == [DETECTED]
    node.stop()
    node.start()
    assert nat_rows(node) == [DETECTED]
    state = fold_stream(apply_node, NodeState(), node.events(node.node_stream))
    assert (state.nat_type, state.public_endpoint, state.relay_only) == ("open", "203.0.113.1:51820", False)


def test_no_stun_answer_is_recorded_as_relay_only(make_node) -> None:
    node = make_node()
    node.stop()
    node.system = start_system("simpleSystemBase")
    spec = m.AdapterSpec.of("tests.actors.test_nat:silent_stun", network_name=node.name, node="local",
                            candidates=(LOCAL,))
    node.address = start_node(node.system, m.StartNode(
        "local", m.StoreSpec(f"memory://{node.name}"), spec, node.relays, node.config, m.LogSpec("DEBUG")))
    assert nat_rows(node) == [
        DETECTED, "NatDetectionFailed(node_id='local', reason='no STUN server answered: relay-only mode', "
        "stun_servers=())"]
    assert fold_stream(apply_node, NodeState(), node.events(node.node_stream)).relay_only
