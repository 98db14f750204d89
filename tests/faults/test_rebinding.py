"""NAT rebindings, in one lab: alice (port-restricted cone), bob (port-forwarded) and carl
(symmetric NAT), two relays. alice-bob and bob-carl are direct, alice-carl is relayed.

A rebinding (``Lab.rebind_nat``) flushes a router's conntrack table and maps every UDP
flow anew onto ports its mappings never had. After each, every pair pings again within
``RECOVERY_S`` (WireGuard roams where the peer sends first; the relay proxies say HELLO
from their new mappings), and within ``NOTICE_S`` the node whose mapping moved has seen it
(a STUN binding from its WireGuard port), recorded it, and announced its new candidates,
which its peers hold.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.faults.harness import RECOVERY_S, Failures, FaultParty

pytestmark = pytest.mark.lab

ROUNDS = 3
# An agent looks at its mapping every 10 s (agent.node.MAPPING_CHECK_S), and at once when a
# control session comes back (the rebinding breaks its TCP connection): with the STUN
# binding's own timeout and the announce's round trip, well within 15 s.
NOTICE_S = 15.0


def moves_since(faults: FaultParty, host: str, since: float) -> list[dict[str, object]]:
    return [record["payload"] for record in faults.party.events(host, "PublicEndpointChanged")
            if datetime.fromisoformat(record["recorded_at"]).timestamp() > since]


def candidates_held(faults: FaultParty, host: str, peer: str, since: float) -> list[list[str]]:
    """The candidates of ``peer`` that ``host``'s connection learnt since ``since``."""
    peer_id = faults.peer_id(host, peer)
    return [list(record["payload"]["candidates"]) for record in faults.party.events(host, "RemotePeerUpdated")
            if record["payload"]["peer_id"] == peer_id
            and datetime.fromisoformat(record["recorded_at"]).timestamp() > since]


def test_every_router_rebound_at_once(faults: FaultParty) -> None:
    failures = Failures(faults)
    for round_number in range(1, ROUNDS + 1):
        if failures.exhausted:
            break
        rebound_at = time.time()
        for name in faults.names:
            faults.lab.rebind_nat(name)
        rebound = time.monotonic()
        with failures.round(f"rebinding {round_number}"):
            faults.assert_mesh(RECOVERY_S, since=rebound, what=f"rebinding {round_number}")
            check_announced(faults, rebound_at, rebound)
            faults.assert_mesh(RECOVERY_S, what=f"after the announcements of rebinding {round_number}")
    faults.assert_healthy()
    failures.check()


def check_announced(faults: FaultParty, rebound_at: float, rebound: float) -> None:
    """alice's mapping moved into the router's new port block: she says so, and bob, her
    direct peer, holds her new candidate."""
    def left() -> float:
        return max(1.0, NOTICE_S - (time.monotonic() - rebound))

    faults.lab.wait_for(lambda: moves_since(faults, "alice", rebound_at), left(), interval_s=0.5,
                        what="alice recorded her mapping's move")
    new_endpoint = str(moves_since(faults, "alice", rebound_at)[-1]["new_endpoint"])
    assert new_endpoint.startswith(faults.lab.host("alice").public_ip + ":"), new_endpoint
    faults.lab.wait_for(lambda: any(new_endpoint in held
                                    for held in candidates_held(faults, "bob", "alice", rebound_at)),
                        left(), interval_s=0.5, what=f"bob holds alice's new candidate {new_endpoint}")
    assert new_endpoint in faults.party.status("alice")["agent"]["candidates"]
