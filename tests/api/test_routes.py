"""The HTTP routes: token on mutations, status/metrics/history from the store, Prometheus, dashboard."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.token import TokenError, read_token, token_matches, write_token
from events import types as ev
from events.streams import party_stream, peer_stream
from store import open_store
from tests.api.conftest import PARTY, TOKEN, FakeService

AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = tuple[TestClient, FakeService, str]


@pytest.mark.parametrize(("path", "body"), [
    ("/party/create", {"name": "LAN"}), ("/party/join", {"invite": "lanrage1-abc"}), ("/party/leave", {}),
    ("/party/export", {"name": "switch"})])
def test_mutations_without_the_token_get_401_and_do_nothing(api_client: Client, path: str,
                                                           body: dict) -> None:
    client, service, _ = api_client
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": "Basic " + TOKEN}, {"Authorization": "Bearer"}):
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "token" in answer.json()["detail"]
    assert service.calls == []
    assert client.post(path, json=body, headers=AUTH).status_code == 200
    assert len(service.calls) == 1


def test_export_reaches_the_agent_and_its_refusals_keep_their_status(api_client: Client) -> None:
    client, service, _ = api_client
    answer = client.post("/party/export", json={"name": "switch", "endpoint": "192.0.2.5:51820"},
                         headers=AUTH)
    assert answer.json() == {"party_id": PARTY, "device_id": "d1", "name": "switch",
                             "virtual_ip": "10.66.0.9", "endpoint": "192.0.2.5:51820",
                             "config": "[Interface]\n"}
    taken = client.post("/party/export", json={"name": "Bob"}, headers=AUTH)
    assert (taken.status_code, taken.json()) == (409, {"detail": "the name 'bob' is taken in party p1"})
    for body in ({"name": ""}, {"name": "a\nb"}, {"name": "x", "party_id": "a/b"}, {"name": "x", "key": "k"}):
        assert client.post("/party/export", json=body, headers=AUTH).status_code == 422
    assert service.calls == [("export", ("switch", None, "192.0.2.5:51820")), ("export", ("Bob", None, None))]


def test_party_commands_reach_the_agent_and_its_refusals_keep_their_status(api_client: Client) -> None:
    client, service, _ = api_client
    created = client.post("/party/create", json={"name": "Friday LAN"}, headers=AUTH).json()
    assert created == {"party_id": "p2", "name": "Friday LAN", "invite": "lanrage1-xyz",
                       "virtual_ip": "10.66.0.1", "local_peer_id": "me"}
    bad = client.post("/party/join", json={"invite": "hello"}, headers=AUTH)
    assert (bad.status_code, bad.json()) == (400, {"detail": "not a LANrage invite"})
    assert client.post("/party/leave", json={"party_id": "zz"}, headers=AUTH).status_code == 404
    assert client.post("/party/leave", headers=AUTH).json()["party_id"] == PARTY
    for body in ({"name": ""}, {"name": "x" * 65}, {"name": "a\nb"}, {"name": 5}, {"nom": "x"}, []):
        assert client.post("/party/create", json=body, headers=AUTH).status_code == 422
    assert service.calls == [("create", "Friday LAN"), ("join", "hello"), ("leave", "zz"), ("leave", None)]


def test_status_is_the_fold_of_the_log(api_client: Client) -> None:
    client, _, url = api_client
    status = client.get("/status").json()
    assert status["node"]["node_id"] == "n1" and status["agent"]["node_id"] == "n1"
    (party,) = status["parties"]
    assert (party["name"], party["virtual_ip"], party["local_peer_id"]) == ("Friday LAN", "10.66.0.1", "me")
    peers = {p["peer_id"]: p for p in party["peers"]}
    assert peers["me"]["is_local"] and peers["me"]["state"] is None
    bob = peers["bob"]
    assert (bob["state"], bob["path"], bob["relay"], bob["virtual_ip"]) == (
        "connected", "relay", "203.0.113.20:3479", "10.66.0.2")
    assert (bob["latency_ms"], bob["loss"], bob["quality"]) == (30.0, 0.1, 88.0)
    # New events show up on the next read (incremental fold).
    store = open_store(url)
    try:
        store.append(peer_stream("n1", PARTY, "bob"), [ev.PathSwitched(
            party_id=PARTY, peer_id="bob", from_path="relay", to_path="direct", reason="upgrade",
            endpoint="203.0.113.5:51820")], 3)
    finally:
        store.close()
    bob = next(p for p in client.get("/status").json()["parties"][0]["peers"] if p["peer_id"] == "bob")
    assert (bob["path"], bob["endpoint"], bob["relay"]) == ("direct", "203.0.113.5:51820", None)


def test_metrics_routes(api_client: Client) -> None:
    client, _, _ = api_client
    summary = client.get("/api/metrics/summary").json()
    assert (summary["parties"], summary["peers"], summary["relayed"], summary["direct"]) == (1, 1, 1, 0)
    assert summary["states"]["connected"] == 1 and summary["avg_latency_ms"] == 30.0
    (peer,) = client.get("/api/metrics/peers").json()
    assert (peer["peer_id"], peer["party_id"], peer["rx_bytes"]) == ("bob", PARTY, 1000)
    detail = client.get("/api/metrics/peers/bob").json()
    assert [s["latency_ms"] for s in detail["samples"]] == [30.0]
    assert client.get("/api/metrics/peers/nobody").status_code == 404
    assert client.get("/api/metrics/peers/bad%20id").status_code == 422


def test_events_filters_and_paging(api_client: Client) -> None:
    client, _, _ = api_client
    everything = client.get("/api/events").json()
    assert [e["global_position"] for e in everything["events"]] == list(range(1, 10))
    page = client.get("/api/events", params={"limit": 4}).json()
    assert len(page["events"]) == 4 and page["next_after"] == 4
    rest = client.get("/api/events", params={"after": 4}).json()
    assert rest["events"][0]["global_position"] == 5
    peer = client.get("/api/events", params={"stream": "peer:"}).json()["events"]
    assert {e["stream_id"] for e in peer} == {peer_stream("n1", PARTY, "bob")}
    typed = client.get("/api/events", params=[("type", "PeerJoined"), ("type", "NodeStarted")]).json()
    assert [e["event_type"] for e in typed["events"]] == ["NodeStarted", "PeerJoined", "PeerJoined"]
    assert client.get("/api/events", params={"since": "2999-01-01T00:00:00Z"}).json()["events"] == []
    assert client.get("/api/events", params={"limit": 0}).status_code == 422
    assert client.get("/api/events", params={"since": "yesterday"}).status_code == 422


def test_peer_history_is_the_connection_history_view(api_client: Client) -> None:
    client, _, _ = api_client
    history = client.get("/api/peers/bob/history").json()
    assert [(t["from_state"], t["to_state"], t["path"]) for t in history["transitions"]] == [
        (None, "connecting", None), ("connecting", "connected", "relay")]
    for query in ("bob", "friday lan:bob", "<B>BO", "b"):
        named = client.get(f"/api/peers/{query}/history").json()
        assert (named["peer_id"], named["name"]) == ("bob", "<b>bob</b>"), query
        assert named["transitions"] == history["transitions"]
    assert history["transitions"][-1]["peer_name"] == "<b>bob</b>"
    missing = client.get("/api/peers/nobody/history")
    assert missing.status_code == 404 and "no peer matches 'nobody'; known peers: <b>bob</b> (bob)" in \
        missing.json()["detail"]


def test_prometheus_metrics(api_client: Client) -> None:
    client, _, _ = api_client
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert 'lanrage_peer_latency_ms{name="<b>bob</b>",party="p1",path="relay",peer="bob"} 30.0' in text
    assert 'lanrage_peer_state{name="<b>bob</b>",party="p1",path="relay",peer="bob",state="connected"} 1.0' \
        in text
    assert "lanrage_peers 1.0" in text and "lanrage_event_log_position 9.0" in text


def test_dashboard_and_openapi(api_client: Client) -> None:
    client, _, _ = api_client
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "textContent" in page.text
    assert "innerHTML" not in page.text
    spec = client.get("/openapi.json").json()
    for path in ("/party/create", "/party/join", "/party/leave", "/status", "/api/metrics/summary",
                 "/api/metrics/peers", "/api/metrics/peers/{peer_id}", "/api/events",
                 "/api/peers/{peer_id}/history", "/metrics"):
        assert path in spec["paths"], path
    assert spec["paths"]["/party/create"]["post"]["security"]
    assert spec["paths"]["/status"]["get"]["security"]  # reads about peers need the token too


def test_a_missing_database_is_a_503_not_a_crash(tmp_path: Path) -> None:
    from api.app import create_app
    from api.reader import StoreReader

    app = create_app(FakeService(), StoreReader(f"sqlite:///{tmp_path / 'missing.db'}"), TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.get("/status", headers=AUTH)
        assert answer.status_code == 503 and "database" in answer.json()["detail"]


def test_token_file_is_private_and_checked_in_constant_time(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="serve"):
        read_token(tmp_path)
    token = write_token(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "api-token").st_mode) == 0o600
    assert read_token(tmp_path) == token and len(token) >= 40
    assert write_token(tmp_path) != token
    assert token_matches("abc", "abc") and not token_matches("abc", None)
    assert not token_matches("abc", "abd") and not token_matches("abc", "\udcff")
    (tmp_path / "api-token").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        read_token(tmp_path)


def test_replay_and_diagnose_routes(api_client: Client) -> None:
    client, _, url = api_client
    early = client.get("/api/replay", params={"position": 7}).json()
    assert early["position"] == 7
    assert [(c["peer_id"], c["state"]) for c in early["connections"]] == [("bob", "connecting")]
    now = client.get("/api/replay", params={"position": 9}).json()
    assert [(c["state"], c["path"], c["latency_ms"]) for c in now["connections"]] == [
        ("connected", "relay", 30.0)]
    assert now["parties"][0]["name"] == "Friday LAN"
    assert client.get("/api/peers/bob/diagnose").json()["incident"] is None
    with open_store(url) as store:
        store.append(party_stream("n1", PARTY),
                     [ev.PeerLeft(party_id=PARTY, peer_id="bob", reason="left")], 5)
        store.append(peer_stream("n1", PARTY, "bob"), [ev.ConnectionStateChanged(
            party_id=PARTY, peer_id="bob", from_state="connected", to_state="closed", reason="left")], 3)
    incident = client.get("/api/peers/bob/diagnose").json()["incident"]
    assert (incident["kind"], incident["cause"]) == ("drop", "remote_left")
    assert incident["findings"][0]["summary"] == "<b>bob</b> left the party"
    before = client.get("/api/peers/bob/diagnose", params={"position": 9}).json()
    assert before["incident"] is None
    assert client.get("/api/peers/zed/diagnose").status_code == 404
    assert client.get("/api/replay", params={"position": -1}).status_code == 422
