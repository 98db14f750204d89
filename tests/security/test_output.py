"""Finding 3: what came from the network never reaches a terminal or a log as it is.

Names and reasons with terminal escapes (OSC, CSI, the one-byte CSI U+009B), a newline that
would forge a log line, and a bidi override are printed by every command as visible escapes,
one record per line; the control server refuses such names; the invite decoder refuses a
party id with a trailing newline.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from loguru import logger

import cli
from commands.node import print_status
from events import types as ev
from mesh.control import Invite, InviteError
from store import open_store
from tests.control.helpers import logged_in, open_peer, running

ESCAPES = "\x1b]0;owned\x07\x1b[2J"
FORGED = "2026-12-07 12:00:00.000 INFO    node forged"
HOSTILE = f"Bob{ESCAPES}\n{FORGED}\u009b31m\u202egnp.exe"
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def assert_safe(text: str) -> None:
    assert not UNSAFE.search(text), repr(text)
    assert not re.search(f"^{re.escape(FORGED)}", text, re.MULTILINE), text
    assert "\\x1b]0;owned\\x07\\x1b[2J" in text, text  # printed, as visible escapes


@pytest.fixture
def hostile_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with open_store(url) as store:
        store.append("party:n1:p1", [
            ev.PartyJoined(party_id="p1", name=f"LAN{ESCAPES}\u202e", local_peer_id="me"),
            ev.PeerJoined(party_id="p1", peer_id="me", name="Me", public_key="K0", is_local=True),
            ev.PeerJoined(party_id="p1", peer_id="b0b1", name=HOSTILE, public_key="K1"),
            ev.VirtualIpAllocated(party_id="p1", peer_id="b0b1", virtual_ip="10.66.0.2")], 0)
        store.append("peer:n1:p1:b0b1", [
            ev.ConnectionStateChanged(party_id="p1", peer_id="b0b1", from_state=None, to_state="connecting",
                                      reason="joined", path="direct", endpoint="192.0.2.1:51820"),
            ev.ConnectionStateChanged(party_id="p1", peer_id="b0b1", from_state="connecting",
                                      to_state="failed", reason=f"peer said {HOSTILE}", path="direct",
                                      endpoint="192.0.2.1:51820")], 0)
    return url


@pytest.mark.parametrize("args", [["events"], ["events", "--type", "PeerJoined"], ["history", "b0b1"],
                                  ["diagnose", "b0b1"], ["replay", "--at", "NOW"]])
def test_commands_print_hostile_names_as_escapes(hostile_store: str, args: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    code = cli.main([*(later if a == "NOW" else a for a in args), "--db", hostile_store])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert_safe(out + err)


def test_status_prints_hostile_names_and_titles_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    peer = {"is_local": False, "name": HOSTILE, "virtual_ip": "10.66.0.2", "nat_type": "open", "state": "up",
            "path": "direct", "endpoint": "192.0.2.1:51820", "relay": None, "latency_ms": 3.0, "loss": 0.0}
    print_status({"node": {"node_id": "n1"}, "agent": {"name": f"me{ESCAPES}", "control": []},
                  "parties": [{"party_id": "p1", "name": f"LAN\n{FORGED}{ESCAPES}", "virtual_ip": "10.66.0.1",
                               "peers": [peer]}]})
    out = capsys.readouterr().out
    assert "LAN\\x0a2026-12-07" in out and "Bob\\x1b" in out
    assert_safe(out)


def test_a_log_record_is_one_line_whatever_the_name(tmp_path: Path) -> None:
    from agent.logs import configure

    path = tmp_path / "agent.log"
    configure("INFO", "human", path)
    try:
        logger.info("joined party {} ({})", HOSTILE, "p1")
    finally:
        configure("INFO", "human", None)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("gnp.exe (p1)"), lines
    assert_safe(path.read_text())


def test_the_control_server_refuses_c1_and_bidi_names() -> None:
    async def scenario() -> list[str]:
        answers = []
        async with running() as server:
            for name in ("a\u009b31mb", "x\u202egnp.exe", "y\u2066z", "\x85next"):
                peer = await open_peer(server.port)
                answer = await peer.call(type="hello", public_key=peer.identity.public_key, name=name)
                answers.append(f"{answer['type']}:{answer.get('code')}")
                await peer.ws.close()
            member = await logged_in(server.port, "alice")
            created = await member.call(type="create_party", name="LAN\u202e")
            answers.append(f"{created['type']}:{created.get('code')}")
            fine = await member.call(type="create_party", name="Café 日本")
            answers.append(fine["type"])
            await member.ws.close()
        return answers
    assert asyncio.run(scenario()) == ["error:bad_message"] * 5 + ["party_created"]


def test_the_invite_decoder_refuses_a_party_id_with_a_newline() -> None:
    for party_id, name in (("x\n", "LAN"), ("x", "LAN\x1b[2J"), ("x", "\u202eLAN")):
        with pytest.raises(InviteError):
            Invite.decode(Invite("ws://192.0.2.1:8667", party_id, name, "s").encode())
    assert Invite.decode(Invite("ws://192.0.2.1:8667", "x", "LAN", "s").encode()).party_id == "x"
    assert json.dumps("x\n") == '"x\\n"'  # the id above really ends in a newline
