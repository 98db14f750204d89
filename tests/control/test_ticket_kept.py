"""A relay fallback while the control server is away (an uplink just back, its session
still redialing) uses the pair's last ticket for that relay, while it is valid."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from agent.node import Agent
from api.service import ServiceError

RELAY = "198.51.100.20:3478"


def agent_whose_control_server(answers: list[Any]) -> Any:
    async def control(_session: object, kind: str, **fields: Any) -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, ServiceError):
            raise answer
        return {"ticket": answer}

    async def session(_url: str) -> object:
        return object()

    return SimpleNamespace(offers={}, tickets={}, bindings={"p1": "ws://203.0.113.10:8667"},
                           _control=control, _session=session)


def ticket(session_id: str, valid_s: float) -> dict[str, Any]:
    return {"relay": RELAY, "session_id": session_id, "expiry_s": time.time() + valid_s}


def ask(agent: Any, failed_session: str | None = None) -> dict[str, Any]:
    return asyncio.run(Agent.relay_ticket(agent, "p1", "bob", RELAY, failed_session))


def test_the_last_ticket_serves_while_the_control_server_is_away() -> None:
    away = ServiceError(503, "cannot reach the control server ws://203.0.113.10:8667")
    agent = agent_whose_control_server([ticket("s1", 3600), away])
    assert ask(agent)["session_id"] == "s1"
    assert ask(agent)["session_id"] == "s1"  # the control server is away: the same session


def test_no_kept_ticket_for_a_failed_session_an_expiring_one_or_a_refusal() -> None:
    away = ServiceError(503, "cannot reach the control server ws://203.0.113.10:8667")
    agent = agent_whose_control_server([ticket("s1", 3600), away])
    ask(agent)
    with pytest.raises(ServiceError):
        ask(agent, failed_session="s1")  # the session that failed is never handed back
    agent = agent_whose_control_server([ticket("s2", 30), away])
    ask(agent)
    with pytest.raises(ServiceError):
        ask(agent)  # expires within a minute
    agent = agent_whose_control_server([ticket("s3", 3600), ServiceError(403, "not a member")])
    ask(agent)
    with pytest.raises(ServiceError):
        ask(agent)  # a refusal is an answer, not an absence
