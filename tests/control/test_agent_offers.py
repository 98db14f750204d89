"""The relay tickets the control server pushes to an agent (the peer asked for a session)
answer that request only: a stale one, or one of a member that left or joined anew, is
never used (it may name a session revoked since, while the peer is on a new one)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import agent.node as agent_node
from agent.node import Agent, AgentConfig
from api.service import ServiceError

URL = "ws://198.51.100.7:8667"


RELAY1, RELAY2 = "203.0.113.21:3479", "203.0.113.22:3479"


def offer(session_id: str, relay: str = RELAY1) -> dict[str, object]:
    return {"type": "relay_offer", "from": "carl",
            "ticket": {"party_id": "p1", "relay": relay, "session_id": session_id,
                       "expiry_s": time.time() + 3600}}


def ticket(agent: Agent, relay: str = RELAY1) -> str:
    try:
        return str(asyncio.run(agent.relay_ticket("p1", "carl", relay))["session_id"])
    except ServiceError as error:  # no offer to use: it would ask the control plane
        return f"asked ({error.status})"


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    made = Agent(AgentConfig(state_dir=tmp_path, db_url=f"sqlite:///{tmp_path / 'lanrage.db'}",
                             adapters="mesh.sim:adapters"))
    yield made
    made.store.close()


def test_a_fresh_offer_is_used_once(agent: Agent) -> None:
    agent._on_push(URL, offer("s1"))
    assert ticket(agent) == "s1"
    assert ticket(agent) == "asked (404)"


def test_only_the_pairs_latest_offer_is_used_and_only_on_its_relay(agent: Agent) -> None:
    """An offer on relay 2 followed by one on relay 1: the pair's session is the one on relay 1
    now (the one on relay 2 may have been left because this side cannot reach relay 2)."""
    agent._on_push(URL, offer("s1", RELAY2))
    agent._on_push(URL, offer("s2", RELAY1))
    assert ticket(agent, RELAY2) == "asked (404)"  # the control server decides, not an old offer
    agent._on_push(URL, offer("s3", RELAY1))
    assert ticket(agent, RELAY1) == "s3"


def test_an_offer_older_than_its_freshness_is_not_used(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    agent._on_push(URL, offer("s1"))
    later = time.monotonic() + agent_node.OFFER_FRESH_S + 1
    monkeypatch.setattr(agent_node.time, "monotonic", lambda: later)
    assert ticket(agent) == "asked (404)"


@pytest.mark.parametrize("change", [
    {"type": "peer_left", "peer_id": "carl"},
    {"type": "peer_joined", "member": {"peer_id": "carl", "public_key": "B" * 42 + "A="}}])
def test_a_member_that_left_or_joined_anew_loses_its_offers(agent: Agent, change: dict[str, object],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[object] = []
    monkeypatch.setattr(agent, "_tell", told.append)
    agent._on_push(URL, offer("s1"))
    agent.bindings["p1"] = URL
    agent._on_push(URL, {**change, "party_id": "p1"})
    del agent.bindings["p1"]
    assert told  # the change itself went on to the node
    assert ticket(agent) == "asked (404)"
