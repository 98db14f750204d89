"""The agent's control sessions: pinned and unpinned URLs of one server share one connection,
and a URL pinning another key is refused without disturbing it (a real control server)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.control import WebSocketSession
from mesh.control.client import Backoff
from mesh.control.identity import Identity
from mesh.control.target import ControlTarget
from tests.control.helpers import running

FAST = Backoff(initial_s=0.05, maximum_s=0.2)


def test_one_connection_per_server_and_pins_checked_per_session() -> None:
    async def scenario() -> None:
        async with running() as server:
            me = Identity.generate()
            pushes: list[tuple[str, Any]] = []

            def on_push(url: str, body: Any) -> None:
                pushes.append((url, body))

            plain = f"ws://127.0.0.1:{server.port}"
            pinned = ControlTarget.parse(plain).pinned(server.server_key, None)
            rogue_pin = ControlTarget.parse(plain).pinned(Identity.generate().public_key, None)
            sessions = [WebSocketSession(url, me, "me", on_push, on_push, FAST)
                        for url in (plain, pinned, rogue_pin)]
            for session in sessions:
                await session.start()
            first, second, third = sessions
            assert await first.wait_connected(3) and await second.wait_connected(3)
            assert not await third.wait_connected(1)
            assert "pins" in (third.last_error or "")
            assert server.session_count() == 1  # no connection superseding the other
            assert first.invite_url == second.invite_url == pinned
            created = await second.request("create_party", name="LAN")
            assert created["type"] == "party_created"
            await asyncio.sleep(0.5)
            assert server.session_count() == 1
            for session in sessions:
                await session.stop()
    asyncio.run(scenario())
