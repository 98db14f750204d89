"""File-based discovery: a party on one machine without a control server."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import pytest

from mesh.control import ControlError, Identity
from mesh.control.filemode import FileDiscovery


def test_create_join_signal_leave_through_a_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "party"
    alice = FileDiscovery(shared, Identity.generate(), name="alice")
    bob = FileDiscovery(shared, Identity.generate(), name="bob")
    created = alice.create_party("LAN")
    party_id, secret = created["party"]["party_id"], created["secret"]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    assert secret not in (shared / party_id / "party.json").read_text()

    with pytest.raises(ControlError) as wrong:
        bob.join_party(party_id, "guess")
    assert wrong.value.code == "forbidden"
    with pytest.raises(ControlError) as missing:
        bob.join_party(party_id, "")
    assert missing.value.message == "missing party secret"
    with pytest.raises(ControlError):
        bob.join_party("../../etc", secret)

    joined = bob.join_party(party_id, secret)
    assert {m["name"]: m["virtual_ip"] for m in joined["party"]["members"]} == {
        "alice": "10.66.0.1", "bob": "10.66.0.2"}
    assert [(p["type"], p["member"]["name"]) for p in alice.poll()] == [("peer_joined", "bob")]
    assert [p["type"] for p in bob.poll()] == ["peer_joined"]

    bob.announce("symmetric", ["203.0.113.8:40000"])
    updated = alice.poll()
    assert [p["type"] for p in updated] == ["peer_updated"]
    assert updated[0]["member"]["candidates"] == ["203.0.113.8:40000"]

    alice.signal(party_id, bob.peer_id, {"kind": "punch", "at": 1.0})
    signals = bob.poll()
    assert signals == [{"type": "signal", "party_id": party_id, "from": alice.peer_id,
                        "payload": {"kind": "punch", "at": 1.0}}]
    assert bob.poll() == []  # consumed once
    with pytest.raises(ControlError):
        alice.signal(party_id, "nobody", {})

    bob.leave_party(party_id)
    assert alice.poll() == [{"type": "peer_left", "party_id": party_id, "peer_id": bob.peer_id,
                             "reason": "left"}]


def test_concurrent_joins_get_distinct_addresses(tmp_path: Path) -> None:
    host = FileDiscovery(tmp_path, Identity.generate(), name="host")
    created = host.create_party("LAN")
    joiners = [FileDiscovery(tmp_path, Identity.generate(), name=f"j{i}") for i in range(12)]
    threads = [threading.Thread(target=j.join_party, args=(created["party"]["party_id"],
                                                           created["secret"])) for j in joiners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    members = host._snapshot(created["party"]["party_id"])["members"]
    addresses = [m["virtual_ip"] for m in members]
    assert len(addresses) == 13 and len(set(addresses)) == 13


def test_background_thread_heartbeats_and_pushes(tmp_path: Path) -> None:
    alice = FileDiscovery(tmp_path, Identity.generate(), name="alice", ttl_s=0.6, poll_s=0.05).start()
    bob = FileDiscovery(tmp_path, Identity.generate(), name="bob", ttl_s=0.6, poll_s=0.05)
    try:
        created = alice.create_party("LAN")
        bob.join_party(created["party"]["party_id"], created["secret"])
        assert alice.pushes.get(timeout=2)["type"] == "peer_joined"
        # bob never heartbeats: after the TTL he shows offline; alice stays online.
        deadline = time.monotonic() + 3
        while True:
            push = alice.pushes.get(timeout=max(0.01, deadline - time.monotonic()))
            if push["type"] == "peer_updated" and push["member"]["online"] is False:
                break
        members = {m["name"]: m["online"] for m in bob._snapshot(created["party"]["party_id"])["members"]}
        assert members == {"alice": True, "bob": False}
    finally:
        alice.stop()
