"""Finding 6: one control session per server, not per URL string; a failed join stops dialing.

A refused invite whose URL differed from the node's other URL for the same server only in its
query (``&x=1``) opened a second connection for the same key: the two superseded each other
for ever (49 logins in 10 s). A join that failed kept its session, redialing for ever.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.control import WebSocketSession
from mesh.control import Invite
from mesh.control.client import Backoff
from mesh.control.identity import Identity
from mesh.control.target import ControlTarget
from tests.control.helpers import running
from tests.e2e.harness import Node, Run
from tests.security.hostile import hostile_control

FAST = Backoff(initial_s=0.05, maximum_s=0.2)


def test_urls_differing_only_in_their_query_share_one_connection() -> None:
    async def scenario() -> tuple[int, list[bool], int]:
        async with running() as server:
            me = Identity.generate()
            reports: list[bool] = []
            logins = 0
            original = server._auth

            def counting(session: Any, request: Any) -> None:
                nonlocal logins
                logins += 1
                original(session, request)

            server._auth = counting  # type: ignore[method-assign]
            plain = f"ws://127.0.0.1:{server.port}"
            pinned = ControlTarget.parse(plain).pinned(server.server_key, None)
            urls = (plain, f"{pinned}&x=1", f"{plain}/?x=2")
            sessions = [WebSocketSession(url, me, "me", lambda *_: None, lambda *_: None, FAST,
                                         on_reachability=lambda _u, up, _e: reports.append(up))
                        for url in urls]
            for session in sessions:
                await session.start()
            assert all([await session.wait_connected(3) for session in sessions])
            await asyncio.sleep(2.0)  # two connections for one key supersede each other in well under this
            count = server.session_count()
            for session in sessions:
                await session.stop()
            return count, reports, logins
    count, reports, logins = asyncio.run(scenario())
    assert (count, reports, logins) == (1, [True], 1)


def test_a_refused_join_closes_its_session(tmp_path: Path) -> None:
    with hostile_control() as control, Run(tmp_path) as run:
        victim = Node(run, "victim", None).start()
        invite = Invite.decode(control.party("closed"))
        wrong = Invite(invite.control_url + "&x=1", invite.party_id, invite.party_name, "not the secret")
        refused = victim.cli("party", "join", wrong.encode(), check=False)
        assert refused.returncode != 0 and "no party with this id and secret" in refused.stderr
        assert control.server.session_count() == 1  # the host; the victim hung up
        asyncio.run(asyncio.sleep(2.0))
        assert control.server.session_count() == 1  # and did not dial again
        assert victim.status()["agent"]["control"] == []
