"""A member's account of its own side: the server names the sender, keeps it for an offline
member, and refuses what is not a member's, too large or malformed; the agent says only what
its own log shows."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.accounts import own_side, restart_account
from events import types as ev
from events.base import Event
from mesh.control import protocol as p
from store.base import RecordedEvent
from tests.control.helpers import logged_in, open_peer, running
from tests.control.test_server import _party

T0 = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)
RELAY = "198.51.100.7:3478"
UPLINK = {"kind": "uplink_down", "started_at": T0.timestamp() + 181, "ended_at": T0.timestamp() + 910,
          "detail": "this connection and every relay (1) went silent together"}


def test_an_account_reaches_the_member_from_its_authenticated_sender_only() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), party, _ = await _party(server.port, 2)
            outsider = await logged_in(server.port)
            sent = await guest.call(type="account", party_id=party["party_id"], to=host.peer_id,
                                    items=[UPLINK])
            assert (sent["type"], sent["queued"]) == ("account_sent", False)
            account = await host.push("account")
            assert (account["from"], account["party_id"]) == (guest.peer_id, party["party_id"])
            assert account["items"] == [UPLINK]
            # No one speaks as another: a "from" of the sender's own is not part of the message.
            spoofed = await outsider.call(type="account", party_id=party["party_id"], to=host.peer_id,
                                          items=[UPLINK], **{"from": guest.peer_id})
            assert spoofed["code"] == p.BAD_MESSAGE
            stranger = await outsider.call(type="account", party_id=party["party_id"], to=host.peer_id,
                                           items=[UPLINK])
            assert stranger["code"] == p.NOT_MEMBER
            to_self = await guest.call(type="account", party_id=party["party_id"], to=guest.peer_id,
                                       items=[UPLINK])
            assert to_self["code"] == p.BAD_MESSAGE
    asyncio.run(scenario())


def test_an_account_is_bounded_and_checked() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), party, _ = await _party(server.port, 2)
            bad = [
                [UPLINK] * (p.MAX_ACCOUNT_ITEMS + 1),  # too many
                [],  # nothing said
                [{**UPLINK, "kind": "peer_was_evil"}],  # not a kind a member may report
                [{**UPLINK, "detail": "x" * 201}],  # too long
                [{**UPLINK, "detail": "line\x1b[2Jclear"}],  # a terminal escape
                [{**UPLINK, "started_at": 12.0}],  # not a clock's time
                [{**UPLINK, "peer_id": host.peer_id}],  # an extra field
            ]
            for items in bad:
                refused = await guest.call(type="account", party_id=party["party_id"], to=host.peer_id,
                                           items=items)
                assert refused["code"] == p.BAD_MESSAGE, (items, refused)
            assert not [body for body in host.inbox if body["type"] == "account"]
    asyncio.run(scenario())


def test_an_account_for_an_offline_member_waits_for_its_next_login() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), party, _ = await _party(server.port, 2)
            identity = host.identity
            await host.ws.close()
            await asyncio.sleep(0.2)
            for n in range(6):  # the last four of one sender are kept
                item = {**UPLINK, "detail": f"outage {n}"}
                sent = await guest.call(type="account", party_id=party["party_id"], to=host.peer_id,
                                        items=[item])
                assert (sent["type"], sent["queued"]) == ("account_sent", True)
            back = await open_peer(server.port, identity)
            await back.login("host")
            told = [await back.push("account") for _ in range(4)]
            assert [body["items"][0]["detail"] for body in told] == [f"outage {n}" for n in range(2, 6)]
            assert {body["from"] for body in told} == {guest.peer_id}
    asyncio.run(scenario())


class Log:
    def __init__(self) -> None:
        self.records: list[RecordedEvent] = []
        self.positions: dict[str, int] = {}

    def at(self, seconds: float, stream: str, *events: Event) -> RecordedEvent:
        for event in events:
            self.positions[stream] = self.positions.get(stream, 0) + 1
            self.records.append(RecordedEvent(len(self.records) + 1, stream, self.positions[stream],
                                              T0 + timedelta(seconds=seconds), event, {"node_id": "me"}))
        return self.records[-1]

    def stream(self, stream: str) -> list[RecordedEvent]:
        return [r for r in self.records if r.stream_id == stream]

    def told(self, recovery: RecordedEvent,
             relays: tuple[str, ...] = (RELAY,)) -> list[tuple[str, float, float | None]]:
        around = [r for r in self.records if r.stream_id != recovery.stream_id]
        return self.times(own_side(recovery, self.stream(recovery.stream_id), around, relays))

    def restart_told(self) -> list[tuple[str, float, float | None]]:
        return self.times(restart_account(self.stream("node:me")))

    @staticmethod
    def times(items: list[dict[str, Any]]) -> list[tuple[str, float, float | None]]:
        return [(item["kind"], item["started_at"] - T0.timestamp(),
                 None if item["ended_at"] is None else item["ended_at"] - T0.timestamp()) for item in items]


CONNECTION = "peer:me:p:alice"


def state(frm: str | None, to: str, reason: str = "") -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id="alice", from_state=frm, to_state=to,
                                     reason=reason, path="direct")


def started(log: Log, at: float = 0) -> Log:
    log.at(at, "node:me", ev.NodeStarted(node_id="me", public_key="k", listen_port=51820))
    log.at(at + 1, CONNECTION, state(None, "connecting"), state("connecting", "connected"))
    return log


def test_a_node_that_lost_every_path_at_once_tells_of_its_uplink() -> None:
    log = started(Log())
    log.at(182, f"relay:me:{RELAY}", ev.RelayDegraded(relay=RELAY, rtt_ms=None, reason="2 probes lost"))
    log.at(183, CONNECTION, state("connected", "connecting", "nothing received for 2 s while sending"))
    log.at(905, f"relay:me:{RELAY}", ev.RelayProbed(relay=RELAY, rtt_ms=20.0, probes=1, answered=1))
    recovery = log.at(911, CONNECTION, state("connecting", "connected", "peer answered again"))
    assert log.told(recovery) == [("uplink_down", 182.0, 905.0)]


def test_a_node_whose_paths_stayed_up_says_nothing_about_the_peers_outage() -> None:
    log = started(Log())
    log.at(183, CONNECTION, state("connected", "connecting", "3 probes lost"))
    recovery = log.at(911, CONNECTION, state("connecting", "connected", "peer answered again"))
    assert log.told(recovery) == []
    assert log.told(recovery, relays=()) == []


def test_a_node_that_crashed_tells_its_last_sign_of_life_when_it_starts_again() -> None:
    log = started(Log())
    assert log.restart_told() == []  # a first start has nothing to tell
    log.at(240, "node:me", ev.NodeAlive(node_id="me", quiet_s=60.0))
    alive = (T0 + timedelta(seconds=240)).isoformat()
    log.at(900, "node:me", ev.NodeRunEndedAbruptly(node_id="me", last_global_position=4,
                                                   last_recorded_at=alive))
    log.at(900, "node:me", ev.NodeStarted(node_id="me", public_key="k", listen_port=51820))
    assert log.restart_told() == [("crashed", 240.0, 900.0)]
    # A drop and return later in the same run does not tell of the crash again.
    log.at(1000, CONNECTION, state("connected", "connecting", "3 probes lost"))
    again = log.at(1010, CONNECTION, state("connecting", "connected", "peer answered again"))
    assert log.told(again) == []


def test_a_clean_restart_and_an_endpoint_move_are_told() -> None:
    log = started(Log())
    log.at(500, "node:me", ev.NodeStopped(node_id="me", reason="SIGTERM"))
    log.at(560, "node:me", ev.NodeStarted(node_id="me", public_key="k", listen_port=51820))
    assert log.restart_told() == [("restarted", 500.0, 560.0)]
    log.at(565, CONNECTION, state("connecting", "connected", "first probe answered"))
    log.at(700, CONNECTION, state("connected", "connecting", "3 probes lost"))
    log.at(702, "node:me", ev.PublicEndpointChanged(node_id="me", old_endpoint="203.0.113.5:4000",
                                                    new_endpoint="203.0.113.5:4100", reason="rebinding",
                                                    stun_server="203.0.113.3:3478"))
    back = log.at(710, CONNECTION, state("connecting", "connected", "peer answered again"))
    assert log.told(back) == [("endpoint_changed", 702.0, None)]



def test_a_moved_mapping_is_told_instead_of_an_uplink_outage() -> None:
    """A NAT rebinding breaks the control connection and the tunnels together, like a cut uplink:
    the moved mapping says why."""
    log = started(Log())
    log.at(183, CONNECTION, state("connected", "connecting", "nothing received for 2 s while sending"))
    log.at(186, "node:me", ev.ControlServerUnreachable(node_id="me", control_url="ws://198.51.100.5:8667",
                                                       error="connection reset"))
    log.at(190, "node:me", ev.PublicEndpointChanged(node_id="me", old_endpoint="203.0.113.5:4000",
                                                    new_endpoint="203.0.113.5:4100", reason="session broke",
                                                    stun_server="203.0.113.3:3478"))
    back = log.at(195, CONNECTION, state("connecting", "connected", "peer answered again"))
    assert log.told(back) == [("endpoint_changed", 190.0, None)]
    assert log.told(back, relays=()) == [("endpoint_changed", 190.0, None)]


def test_the_agent_hands_an_account_to_the_actors_under_the_sender_the_server_named(tmp_path) -> None:
    from actors import messages as m
    from agent.node import Agent, AgentConfig

    agent = Agent(AgentConfig(state_dir=tmp_path, db_url=f"sqlite:///{tmp_path / 'lanrage.db'}",
                              adapters="mesh.sim:adapters"))
    told: list[object] = []
    agent._tell = told.append  # type: ignore[method-assign]
    url = "ws://198.51.100.7:8667"
    try:
        agent.bindings["p1"] = url
        body = {"type": "account", "party_id": "p1", "from": "bob",
                "items": [UPLINK, {"kind": "crashed", "started_at": True, "ended_at": "soon", "detail": 7},
                          "not an item"]}
        agent._on_push(url, body)
        agent._on_push("ws://198.51.100.9:8667", body)  # another control plane's party: ignored
        agent._on_push(url, {**body, "party_id": "p2"})  # a party this node is not in: ignored
        assert len(told) == 1
        account = told[0]
        assert isinstance(account, m.PeerAccount) and (account.party_id, account.peer_id) == ("p1", "bob")
        first, second = account.items  # the string was no item: left out
        assert first == m.AccountItem("uplink_down", UPLINK["started_at"], UPLINK["ended_at"],
                                      UPLINK["detail"])
        # What is not a time arrives as NaN (the actors refuse it), never as something else.
        assert (second.kind, second.detail) == ("crashed", "7")
        assert math.isnan(second.started_at) and second.ended_at is not None and math.isnan(second.ended_at)
        assert account.said_by == "peer"
        # The server's own word is marked so (only the server's connection delivers pushes).
        agent._on_push(url, {**body, "by": "server", "items": [{"kind": "offline", "started_at": 1.8e9}]})
        assert told[-1] == m.PeerAccount("p1", "bob", (m.AccountItem("offline", 1.8e9),), "control server")
    finally:
        agent.store.close()


def test_the_server_tells_the_members_when_it_stopped_hearing_from_one_and_when_it_was_back() -> None:
    async def scenario() -> None:
        async with running() as server:
            (host, guest), party, _ = await _party(server.port, 2)
            await guest.call(type="heartbeat")
            heard = time.time()
            identity = guest.identity
            await guest.ws.close()
            silent = await host.push("account")
            assert (silent["from"], silent["by"]) == (guest.peer_id, "server")
            assert silent["party_id"] == party["party_id"]
            [item] = silent["items"]
            assert item["kind"] == "offline" and item["ended_at"] is None
            assert heard - 1 <= item["started_at"] <= heard + 0.5
            back = await open_peer(server.port, identity)
            await back.login("peer1")
            returned = await host.push("account")
            [again] = returned["items"]
            assert (returned["by"], again["started_at"]) == ("server", item["started_at"])
            assert again["ended_at"] >= again["started_at"]
    asyncio.run(scenario())


def test_a_relay_that_answered_again_before_the_drop_is_no_sign_of_this_nodes_uplink() -> None:
    """Relay B was degraded 30 s before the drop and answered again; relay A, the one in use,
    died with the drop: this node's account is that its relay failed, not its uplink."""
    other = "198.51.100.8:3478"
    log = started(Log())
    log.at(150, f"relay:me:{other}", ev.RelayDegraded(relay=other, rtt_ms=None, reason="2 probes lost"))
    log.at(155, f"relay:me:{other}", ev.RelayProbed(relay=other, rtt_ms=0.4, probes=2, answered=2))
    log.at(180, CONNECTION, ev.PathChosen(party_id="p", peer_id="alice", path="relay", reason="relay only",
                                          endpoint="127.0.0.1:4000", relay=RELAY))
    log.at(183, CONNECTION, state("connected", "connecting", "nothing received for 0.8 s while sending"))
    log.at(183.5, f"relay:me:{RELAY}", ev.RelayDegraded(relay=RELAY, rtt_ms=None, reason="2 probes lost"))
    recovery = log.at(185, CONNECTION, state("connecting", "connected", "answered through the other relay"))
    assert log.told(recovery, relays=(RELAY, other)) == [("relay_failed", 183.5, 185.0)]
