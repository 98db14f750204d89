"""An API on a real SQLite event store with a recorded party, and a fake agent behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.reader import StoreReader
from api.service import ServiceError
from events import types as ev
from events.streams import node_stream, party_stream, peer_stream
from store import open_store

TOKEN = "test-token-not-secret"
PARTY = "p1"


class FakeService:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def create_party(self, name: str) -> dict[str, Any]:
        self.calls.append(("create", name))
        return {"party_id": "p2", "name": name, "invite": "lanrage1-xyz", "virtual_ip": "10.66.0.1",
                "local_peer_id": "me"}

    async def join_party(self, invite: str) -> dict[str, Any]:
        self.calls.append(("join", invite))
        if not invite.startswith("lanrage1-"):
            raise ServiceError(400, "not a LANrage invite")
        return {"party_id": "p3", "name": "x", "virtual_ip": "10.66.0.2", "local_peer_id": "me"}

    async def leave_party(self, party_id: str | None) -> dict[str, Any]:
        self.calls.append(("leave", party_id))
        if party_id not in (None, PARTY):
            raise ServiceError(404, f"not in party {party_id}")
        return {"party_id": PARTY, "reason": "left by the user"}

    async def export_device(self, name: str, party_id: str | None, endpoint: str | None) -> dict[str, Any]:
        self.calls.append(("export", (name, party_id, endpoint)))
        if name.casefold() == "bob":
            raise ServiceError(409, "the name 'bob' is taken in party p1")
        return {"party_id": PARTY, "device_id": "d1", "name": name, "virtual_ip": "10.66.0.9",
                "endpoint": endpoint or "203.0.113.1:51820", "config": "[Interface]\n"}

    def info(self) -> dict[str, Any]:
        return {"node_id": "n1", "control": {"url": "ws://198.51.100.1:8667", "connected": True}}

    async def live_connections(self) -> list[dict[str, Any]]:
        return [{"party_id": PARTY, "peer_id": "bob", "name": "Bob", "state": "connected", "path": "direct"}]


def record_party(url: str) -> None:
    store = open_store(url, metadata={"node_id": "n1"})  # as the node writes it
    try:
        store.append(node_stream("n1"), [ev.NodeStarted(node_id="n1", public_key="K" * 43 + "=",
                                                        listen_port=51820)], 0)
        store.append(party_stream("n1", PARTY), [
            ev.PartyCreated(party_id=PARTY, name="Friday LAN", host_peer_id="me"),
            ev.PeerJoined(party_id=PARTY, peer_id="me", name="alice", public_key="A" * 43 + "=",
                          is_local=True),
            ev.VirtualIpAllocated(party_id=PARTY, peer_id="me", virtual_ip="10.66.0.1"),
            ev.PeerJoined(party_id=PARTY, peer_id="bob", name="<b>bob</b>", public_key="B" * 43 + "=",
                          nat_type="symmetric"),
            ev.VirtualIpAllocated(party_id=PARTY, peer_id="bob", virtual_ip="10.66.0.2"),
        ], 0)
        store.append(peer_stream("n1", PARTY, "bob"), [
            ev.ConnectionStateChanged(party_id=PARTY, peer_id="bob", from_state=None, to_state="connecting",
                                      reason="peer joined"),
            ev.ConnectionStateChanged(party_id=PARTY, peer_id="bob", from_state="connecting",
                                      to_state="connected", reason="handshake", path="relay",
                                      relay="203.0.113.20:3479", latency_ms=31.5),
            ev.MetricsSampled(party_id=PARTY, peer_id="bob", window_s=10.0, probes=10, latency_ms=30.0,
                              jitter_ms=1.5, loss=0.1, rx_bytes=1000, tx_bytes=2000, quality=88.0),
        ], 0)
    finally:
        store.close()


@pytest.fixture
def api_client(tmp_path: Path) -> Iterator[tuple[TestClient, FakeService, str]]:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    record_party(url)
    service = FakeService()
    app = create_app(service, StoreReader(url), TOKEN)
    with TestClient(app, base_url="http://127.0.0.1:8666") as client:
        # The dashboard's one-time link gives its view cookie: reads work like its page's.
        opened = client.post("/dashboard/code", headers={"Authorization": f"Bearer {TOKEN}"}).json()["path"]
        assert client.get(opened).status_code == 200
        yield client, service, url
