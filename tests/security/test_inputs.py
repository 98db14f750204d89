"""Hostile inputs from invites and files: a clear refusal, never a 500, a traceback or a loop.

The join tests run against a real `serve` (simulated network adapters) through its
HTTP API, as a user pasting an invite from chat would.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mesh.control.filemode import FileDiscovery
from mesh.control.identity import Identity
from mesh.control.invite import Invite, InviteError
from mesh.relay.server import load_secret
from tests.e2e.harness import ROOT, Node, Run


def invite_of(body: bytes) -> str:
    return "lanrage1-" + base64.urlsafe_b64encode(body).decode().rstrip("=")


NESTED = [invite_of(b"[" * 1500), invite_of(b'{"c":' + b"[" * 1400), invite_of(b"{" * 1500)]
ESCAPING = [
    Invite("file:///tmp/../etc/lanrage-pwned", "p1", "x", "s").encode(),
    invite_of(json.dumps({"c": "ws://127.0.0.1:1", "p": "..", "n": "x", "s": "s"}).encode()),
    invite_of(json.dumps({"c": "ws://127.0.0.1:1/?key=notakey", "p": "p1", "n": "x", "s": "s"}).encode()),
    invite_of(json.dumps({"c": "ws://127.0.0.1:1/?k=A" + "&" * 100, "p": "p1", "n": "x", "s": "s"}).encode()),
    invite_of(json.dumps({"c": "file://[/x", "p": "p1", "n": "x", "s": "s"}).encode()),
]


@pytest.mark.parametrize("text", NESTED + ESCAPING)
def test_the_decoder_refuses_crafted_invites_cleanly(text: str) -> None:
    with pytest.raises(InviteError):
        Invite.decode(text)


def test_a_real_agent_answers_crafted_invites_with_4xx_and_creates_no_directory(tmp_path: Path) -> None:
    discovery = tmp_path / "discovery"
    outside = tmp_path / "outside"
    crafted = [*NESTED, *ESCAPING,
               Invite("file:///etc/lanrage-pwned", "p1", "x", "s").encode(),  # well formed, but elsewhere
               Invite(outside.as_uri(), "p1", "x", "s").encode(),
               Invite((discovery / ".." / "outside").as_uri(), "p1", "x", "s").encode()]
    with Run(tmp_path) as run:
        node = Node(run, "victim", discovery.as_uri()).start()
        for text in crafted:
            answer = httpx.post(f"http://{node.api}/party/join", json={"invite": text}, headers=node.auth(),
                                timeout=10)
            assert 400 <= answer.status_code < 500, (text[:60], answer.status_code, answer.text)
        assert not outside.exists() and not Path("/etc/lanrage-pwned").exists()
        assert "Traceback" not in run.log("victim").read_text()


def test_file_discovery_refuses_dot_ids(tmp_path: Path) -> None:
    discovery = FileDiscovery(tmp_path / "d", Identity.generate())
    for bad in ("..", ".", ".hidden", "../x"):
        with pytest.raises(Exception, match="not a party id"):
            discovery.join_party(bad, "secret")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_relay_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "relay.key"
    secret.write_text(os.urandom(32).hex())
    os.chmod(secret, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_secret(str(secret))
    command = [sys.executable, "cli.py", "relay-server", "--listen", "127.0.0.1:0", "--secret-file",
               str(secret), "--state-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "chmod 600" in done.stderr and "Traceback" not in done.stderr
    os.chmod(secret, 0o600)
    assert len(load_secret(str(secret))) == 32


def test_a_frame_nested_past_the_parser_does_not_end_a_nodes_control_session() -> None:
    """A server's frame of 200,000 nested arrays raised RecursionError in the node's control
    client, which ended its session task for good (no reconnect); now it is skipped like any
    frame that is not a JSON object, and the session goes on."""
    import asyncio

    from mesh.control.client import AsyncControlClient, Backoff
    from tests.control.helpers import running

    async def scenario() -> None:
        async with running() as server:
            client = AsyncControlClient(server.url("127.0.0.1"), Identity.generate(),
                                        backoff=Backoff(initial_s=0.05, maximum_s=0.2))
            task = asyncio.create_task(client.run())
            try:
                assert await client.wait_connected(5)
                server._online[client.peer_id].send("[" * 200_000)  # within the 1 MiB frame limit
                await asyncio.sleep(0.5)
                assert not task.done(), task.exception() if task.done() else None
                answer = await client.request("list_relays", timeout_s=5)
                assert answer["type"] == "relays"
            finally:
                await client.stop()
                task.cancel()
    asyncio.run(scenario())
