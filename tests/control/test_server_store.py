"""The control server on the real SQL event store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

from events.streams import control_stream
from store import open_store
from tests.control.helpers import logged_in, open_peer, running


def test_registry_survives_a_restart_on_the_sql_store(any_db_url: str) -> None:
    async def scenario() -> None:
        log = open_store(any_db_url)
        try:
            async with running(log, server_id="lab") as server:
                host = await logged_in(server.port, "host")
                created = await host.call(type="create_party", name="LAN")
                guest = await logged_in(server.port, "guest")
                await guest.call(type="join_party", party_id=created["party"]["party_id"], secret="nope")
                await guest.call(type="join_party", party_id=created["party"]["party_id"],
                                 secret=created["secret"])
            records = log.read_stream(control_stream("lab"))
            assert [r.event_type for r in records] == [
                "ControlPartyRegistered", "ControlMemberAdmitted", "ControlJoinRefused",
                "ControlMemberAdmitted"]
            assert created["secret"] not in json.dumps([r.event.to_payload() for r in records])
        finally:
            log.close()
        reopened = open_store(any_db_url)
        try:
            async with running(reopened, server_id="lab") as server:
                welcome = await (await open_peer(server.port, guest.identity)).login()
                party = welcome["parties"][0]
                assert party["party_id"] == created["party"]["party_id"]
                assert {m["name"]: m["virtual_ip"] for m in party["members"]} == {
                    "host": "10.66.0.1", "guest": "10.66.0.2"}
        finally:
            reopened.close()
    asyncio.run(scenario())
