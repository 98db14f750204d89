"""Starting an actor system and the node actor (what the node agent calls)."""

from __future__ import annotations

import os
from typing import Any

from thespian.actors import ActorAddress, ActorSystem

from actors import messages as m
from actors.node import NodeActor

PRODUCTION_BASE = "multiprocTCPBase"
TEST_BASE = "simpleSystemBase"


class NodeStartError(RuntimeError):
    pass


def start_system(base: str = PRODUCTION_BASE, admin_port: int | None = None,
                 log_defs: Any = None) -> ActorSystem:
    """A new actor system. Call it before starting any thread; shut it down in ``finally``.

    ``THESPIAN_BASE_IPADDR`` defaults to 127.0.0.1 so thespian never probes the internet.
    """
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    capabilities: dict[str, Any] = {}
    if admin_port is not None:
        capabilities["Admin Port"] = admin_port
    return ActorSystem(base, capabilities, logDefs=log_defs, transientUnique=admin_port is None)


def start_node(system: ActorSystem, start: m.StartNode, timeout_s: float = 30.0) -> ActorAddress:
    """Create the node actor, send it StartNode and wait for NodeReady; returns its address."""
    node = system.createActor(NodeActor)
    reply = system.ask(node, start, timeout_s)
    if not isinstance(reply, m.NodeReady):
        raise NodeStartError(f"node {start.node_id} did not start: {reply!r}")
    return node
