"""The dashboard's timeline reaches any day: a peer, a time range, and pages back through all of it.

The log: Bob's connection drops and comes back every 10 minutes for two days (576 rows),
with metric samples in its last three up periods; Carol connects once. Times are fixed
(the store's clock is replaced), so every expected row and time is known.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import store.sql
from api.app import create_app
from api.reader import StoreReader
from events import types as ev
from events.streams import metrics_stream, node_stream, party_stream, peer_stream
from store import open_store
from tests.api.conftest import TOKEN, FakeService

START = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
PARTY = "p1"
CYCLES = 288  # Bob: one drop and one recovery every 10 minutes, for two days
SAMPLED = 3  # the last cycles that have metric samples


class _Clock(datetime):
    moment = START

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
        return cls.moment


def _changed(peer: str, frm: str | None, to: str, path: str | None = "direct") -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id=PARTY, peer_id=peer, from_state=frm, to_state=to,
                                     reason="3 probes lost" if to == "connecting" else "first probe answered",
                                     path=path, latency_ms=20.0 if to == "connected" else None)


def record(url: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store.sql, "datetime", _Clock)
        with open_store(url, metadata={"node_id": "n1"}) as opened:
            def at(seconds: float, stream: str, *events: object) -> None:
                _Clock.moment = START + timedelta(seconds=seconds)
                opened.append(stream, list(events), opened.stream_position(stream))  # type: ignore[arg-type]

            at(0, node_stream("n1"),
               ev.NodeStarted(node_id="n1", public_key="K" * 43 + "=", listen_port=51820))
            at(0, party_stream("n1", PARTY), ev.PartyCreated(party_id=PARTY, name="LAN", host_peer_id="me"),
               ev.PeerJoined(party_id=PARTY, peer_id="me", name="alice", public_key="A" * 43 + "=",
                             is_local=True),
               ev.PeerJoined(party_id=PARTY, peer_id="bob", name="Bob", public_key="B" * 43 + "="),
               ev.PeerJoined(party_id=PARTY, peer_id="carol", name="Carol", public_key="C" * 43 + "="))
            bob, carol = peer_stream("n1", PARTY, "bob"), peer_stream("n1", PARTY, "carol")
            at(1, carol, _changed("carol", None, "connecting"), _changed("carol", "connecting", "connected"))
            samples = metrics_stream("n1", PARTY, "bob")
            for cycle in range(CYCLES):
                start = 600 * cycle
                at(start + 5, bob, _changed("bob", "connecting" if cycle else None, "connected"))
                if cycle >= CYCLES - SAMPLED:  # two samples covering the first 195 s of each of the last
                    for end in (100, 200):
                        # In the very last, no probe of the first window was answered.
                        silent = cycle == CYCLES - 1 and end == 100
                        at(start + end, samples, ev.MetricsSampled(
                            party_id=PARTY, peer_id="bob", window_s=95.0 if end == 100 else 100.0, probes=95,
                            latency_ms=None if silent else 18.0 + end / 100, jitter_ms=1.0,
                            loss=1.0 if silent else 0.0, rx_bytes=0, tx_bytes=0,
                            quality=0.0 if silent else 95.0))
                at(start + 300, bob, _changed("bob", "connected", "connecting"))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    record(url)
    app = create_app(FakeService(), StoreReader(url), TOKEN)
    with TestClient(app, base_url="http://127.0.0.1:8666") as test_client:
        test_client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield test_client


def _time(row: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(row["recorded_at"]))


def test_pages_back_through_every_row(client: TestClient) -> None:
    seen: list[dict[str, object]] = []
    params: dict[str, object] = {"limit": 100}
    pages = 0
    while True:
        page = client.get("/api/timeline", params=params).json()
        seen += page["rows"]
        pages += 1
        if page["next_before"] is None:
            break
        params["before"] = page["next_before"]
    assert pages == 6  # 578 rows: five full pages and 78
    assert len(seen) == 2 * CYCLES + 2
    positions = [row["global_position"] for row in seen]
    assert positions == sorted(positions, reverse=True) and len(set(positions)) == len(positions)
    oldest = seen[-1]
    assert (oldest["peer_name"], oldest["to_state"], _time(oldest)) == ("Carol", "connecting",
                                                                        START + timedelta(seconds=1))


def test_one_peer_within_a_time_range(client: TestClient) -> None:
    since, until = START + timedelta(hours=3), START + timedelta(hours=4)
    rows = client.get("/api/timeline", params={"peer": "bob", "since": since.isoformat(),
                                                "until": until.isoformat()}).json()["rows"]
    # 08:00 UTC + 3 h: cycles 18..23 each bring a recovery (:x0:05) and a drop (:x5:00); 12:00:05 is after.
    assert [(_time(row), row["to_state"]) for row in rows] == [
        (START + timedelta(seconds=600 * cycle + offset), state)
        for cycle in range(23, 17, -1) for offset, state in ((300, "connecting"), (5, "connected"))]
    assert {row["peer_name"] for row in rows} == {"Bob"}
    carol = client.get("/api/timeline", params={"peer": "LAN:Carol"}).json()
    assert [row["to_state"] for row in carol["rows"]] == ["connected", "connecting"]
    assert carol["next_before"] is None
    assert client.get("/api/timeline", params={"peer": "zed"}).status_code == 404
    assert client.get("/api/timeline", params={"since": "yesterday"}).status_code == 422


def test_the_diagnosis_of_yesterdays_drop(client: TestClient) -> None:
    drop = START + timedelta(seconds=600 * 7 + 300)  # 09:15:00 UTC on the first day
    answer = client.get("/api/peers/bob/diagnose", params={"at": drop.isoformat()}).json()
    incident = answer["incident"]
    assert incident is not None and datetime.fromisoformat(incident["at"]) == drop
    assert incident["kind"] == "drop" and incident["findings"][0]["summary"]
    latest = client.get("/api/peers/bob/diagnose").json()["incident"]
    assert datetime.fromisoformat(latest["at"]) == START + timedelta(seconds=600 * (CYCLES - 1) + 300)


def test_the_diagnosis_at_a_moment_takes_the_nearest_incident_either_side(client: TestClient) -> None:
    drop = START + timedelta(seconds=600 * 7 + 300)  # 09:15:00 UTC; the recovery before it at 09:10:05
    # 4 s before the drop: the drop (4 s away) is nearer than the recovery at 09:10:05 (4 min 51 s).
    before = client.get("/api/peers/bob/diagnose", params={"at": (drop - timedelta(seconds=4)).isoformat()})
    assert datetime.fromisoformat(before.json()["incident"]["at"]) == drop
    # Nothing within 5 min of a moment before the first row: no incident, not the latest one.
    early = client.get("/api/peers/bob/diagnose", params={"at": (START - timedelta(hours=1)).isoformat()})
    assert early.json()["incident"] is None
