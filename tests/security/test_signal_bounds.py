"""Finding 7 (last part): a burst of large signals from one member cut another member's
slower session.

The server queued every relayed frame in the target's outbox; a member sending 200 signals
of 60 kB (within the message rate) put 12 MB there, past the 2 MiB that marks a node that
stopped reading, and the server dropped the target, whose only fault was reading slower than
the loopback burst. Now the signals a member has relayed are bounded in bytes (a burst, then a rate),
a relayed frame takes at most a share of the target's outbox, and the sender is told
``rate_limited`` (logged once, then counted).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mesh.control import protocol as p
from tests.control.helpers import RawPeer, logged_in, running

BLOB = {"blob": "x" * 60_000}  # within the 64 KiB message limit


async def party(port: int, names: list[str]) -> tuple[list[RawPeer], str]:
    host = await logged_in(port, names[0])
    created = await host.call(type="create_party", name="LAN")
    party_id = created["party"]["party_id"]
    peers = [host]
    for name in names[1:]:
        peer = await logged_in(port, name)
        joined = await peer.call(type="join_party", party_id=party_id, secret=created["secret"])
        assert joined["type"] == "party_joined", joined
        peers.append(peer)
    return peers, party_id


def slow_down(peer: RawPeer) -> None:
    """The victim reads nothing for a while (only the kernel's buffers take what comes)."""
    peer.ws.transport.pause_reading()


async def burst(sender: RawPeer, party_id: str, to: str, count: int) -> list[dict[str, Any]]:
    """``count`` large signals as fast as the sender can write them, then every answer (a
    sender closed for too many refused messages ends with ``{"type": "closed"}``)."""
    answers: list[dict[str, Any]] = []
    try:
        for index in range(count):
            await sender.send({"type": "signal", "party_id": party_id, "to": to, "payload": BLOB,
                               "id": f"s{index}"})
        while len(answers) < count:
            answer = await sender.receive(5.0)
            if str(answer.get("re", "")).startswith("s"):
                answers.append(answer)
    except Exception as error:  # the sender may be closed for its bad messages: that is allowed
        answers.append({"type": "closed", "error": type(error).__name__})
    return answers


async def still_served(server: Any, victim: RawPeer) -> bool:
    victim.ws.transport.resume_reading()
    if victim.peer_id not in server._online:
        return False
    try:
        return (await victim.call(type="heartbeat", timeout_s=10.0))["type"] == "heartbeat_ack"
    except Exception:
        return False


def test_a_burst_of_large_signals_does_not_cut_a_slower_member() -> None:
    async def scenario() -> None:
        async with running(max_errors=1000) as server:  # the attacker stays to read every answer
            (attacker, victim, friend), party_id = await party(server.port, ["attacker", "victim", "friend"])
            slow_down(victim)
            answers = await burst(attacker, party_id, victim.peer_id, 200)  # 12 MB in a moment
            await asyncio.sleep(1.0)
            relayed = sum(a["type"] == "signal_sent" for a in answers)
            limited = [a for a in answers if a.get("code") == p.RATE_LIMITED]
            assert await still_served(server, victim), "the victim was cut by another member's burst"
            # What got through is the attacker's byte budget, not 12 MB.
            assert relayed * len(str(BLOB)) <= server.config.signal_burst_bytes + len(str(BLOB)), relayed
            assert limited, answers[-3:]
            # The victim reads what was relayed, and a friend's small signal still arrives.
            sent = await friend.call(type="signal", party_id=party_id, to=victim.peer_id,
                                     payload={"kind": "punch", "candidates": ["192.0.2.7:51820"]})
            assert sent["type"] == "signal_sent", sent
            for _ in range(relayed + 10):
                push = await victim.push("signal", timeout_s=5.0)
                if push["from"] == friend.peer_id:
                    break
            assert push["from"] == friend.peer_id and push["payload"]["kind"] == "punch"
    asyncio.run(scenario())


def test_many_members_together_cannot_fill_a_slower_members_outbox() -> None:
    """Each sender within its byte budget, together far over the target's outbox: the target's
    share holds, and the senders are told the target is not reading fast enough."""
    async def scenario() -> None:
        async with running() as server:
            per_sender = int(server.config.signal_burst_bytes // len(str(BLOB))) if hasattr(
                server.config, "signal_burst_bytes") else 4
            peers, party_id = await party(server.port, ["victim"] + [f"s{n}" for n in range(30)])
            victim, senders = peers[0], peers[1:]
            slow_down(victim)  # 30 senders x 4 signals: 7 MB
            answers = await asyncio.gather(*(burst(s, party_id, victim.peer_id, per_sender) for s in senders))
            await asyncio.sleep(1.0)
            assert await still_served(server, victim), "the victim was cut by other members' frames"
            busy = [a for each in answers for a in each
                    if a.get("code") == p.RATE_LIMITED and "not reading fast enough" in a["message"]]
            assert busy and all(a["type"] in ("signal_sent", "error") for each in answers for a in each)
    asyncio.run(scenario())
