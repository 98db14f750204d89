"""Starting an actor system and the node actor.

LANrage runs thespian's ``simpleSystemBase`` only: one process, no sockets, no
pickled bytes from anywhere (thespian's TCP base listens on every interface and
unpickles what arrives: anyone who reaches it runs code as the agent). The agent
drives it from one thread (``actors.runtime.ActorRuntime``); tests drive it
directly, with a virtual clock and the edge running effects inline.
"""

from __future__ import annotations

import os
from typing import Any

from thespian.actors import ActorAddress, ActorSystem

from actors import messages as m
from actors.node import NodeActor

BASE = "simpleSystemBase"


class NodeStartError(RuntimeError):
    pass


def start_system(log_defs: Any = None) -> ActorSystem:
    """A new one-process actor system; shut it down in ``finally``.

    ``THESPIAN_BASE_IPADDR`` defaults to 127.0.0.1 so thespian never probes the internet.
    """
    os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
    return ActorSystem(BASE, {}, logDefs=log_defs, transientUnique=True)


def start_node(system: ActorSystem, start: m.StartNode, timeout_s: float = 30.0) -> ActorAddress:
    """Create the node actor, send it StartNode and wait for NodeReady (tests: inline edge)."""
    node = system.createActor(NodeActor)
    reply = system.ask(node, start, timeout_s)
    if not isinstance(reply, m.NodeReady):
        raise NodeStartError(f"node {start.node_id} did not start: {reply!r}")
    return node
