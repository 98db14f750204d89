"""Three `serve` agents write one PostgreSQL database: each node's log stays its own.

Real processes on loopback (control server, three agents with the simulated network
adapters, each `--db` the same PostgreSQL URL, a fresh database per test): every node's
`replay`, `history` and views show that node's streams only, and all of them at once
side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.e2e.harness import Node, Run, wait_for
from tests.e2e.test_service import all_see_each_other, control_server


def dialing(node: Node, party_id: str, count: int) -> bool:
    """A connection (a state) towards every other member (each agent simulates its own network)."""
    peers = [p for p in node.members(party_id).values() if not p["is_local"]]
    return len(peers) == count and all(p["state"] for p in peers)


def as_json(node: Node, *args: str) -> Any:
    return json.loads(node.run.cli(*args, "--json", "--state-dir", str(node.state)).stdout)


def test_three_agents_share_one_postgresql(tmp_path: Path, pg_url: str) -> None:
    with Run(tmp_path) as run:
        url = control_server(run)
        nodes = [Node(run, name, url, extra=("--db", pg_url)).start() for name in ("ann", "ben", "cat")]
        party_id, invite = nodes[0].create("Shared LAN")
        for node in nodes[1:]:
            node.join(invite)
        wait_for(lambda: all_see_each_other(nodes, party_id), 30, "three peers to see each other")
        for node in nodes:
            wait_for(lambda node=node: dialing(node, party_id, 2), 30, f"{node.name}'s connections")
        ids = {node.name: node.status()["node"]["node_id"] for node in nodes}
        peers = {node.name: next(p["peer_id"] for p in node.members(party_id).values() if p["is_local"])
                 for node in nodes}
        assert len(set(ids.values())) == 3
        nodes[2].cli("party", "leave")  # a fact only the other two record about cat
        wait_for(lambda: all_see_each_other(nodes[:2], party_id), 30, "ann and ben to drop cat")
        for node in nodes:
            run.stop(node.name)

        for node in nodes:
            mine = ids[node.name]
            world = as_json(node, "replay", "--at", "now", "--node", mine, "--db", pg_url)
            assert set(world["nodes"]) == {f"node:{mine}"}
            assert not world["nodes"][f"node:{mine}"]["running"]  # each stopped cleanly, in its own stream
            others = {peers[other.name] for other in nodes if other is not node}
            assert {c["peer_id"] for c in world["connections"].values()} == others
            assert all(stream.startswith(f"peer:{mine}:") for stream in world["connections"])
            states = {c["peer_id"]: c["state"] for c in world["connections"].values()}
            if node.name == "cat":
                assert set(states.values()) == {"closed"}  # it left the party
            else:
                assert states[peers["cat"]] == "closed"  # cat left
            # history of every other peer, as this node saw it: only this node's stream
            for other in nodes:
                if other is node:
                    continue
                rows = [json.loads(line) for line in node.run.cli(
                    "history", peers[other.name], "--node", mine, "--json", "--db", pg_url,
                    "--state-dir", str(node.state)).stdout.splitlines()]
                stream = f"peer:{mine}:{party_id}:{peers[other.name]}"
                # That connection's rows, and this node's own starts, stops and crashes while
                # it lived: never another node's.
                assert rows and {row["stream_id"] for row in rows} <= {stream, f"node:{mine}"}
                assert stream in {row["stream_id"] for row in rows}
                assert {row["event_type"] for row in rows if row["stream_id"] != stream} <= {
                    "NodeStarted", "NodeStopped", "NodeRunEndedAbruptly"}
                assert rows[0]["event_type"] == "ConnectionStateChanged"
        # Without --node the same database shows all three, side by side.
        everyone = as_json(nodes[0], "replay", "--at", "now", "--db", pg_url)
        assert set(everyone["nodes"]) == {f"node:{node_id}" for node_id in ids.values()}
        assert len(everyone["connections"]) == 6

    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            history = connection.execute(text(
                "SELECT node_id, stream_id, peer_name FROM connection_history")).all()
            names = connection.execute(text("SELECT node_id, peer_name FROM peer_names")).all()
    finally:
        engine.dispose()
    by_node: dict[str, set[str]] = {}
    for node_id, stream_id, _name in history:
        assert stream_id.startswith(f"peer:{node_id}:")
        by_node.setdefault(node_id, set()).add(stream_id)
    assert {node_id: len(streams) for node_id, streams in by_node.items()} == {i: 2 for i in ids.values()}
    for name, node_id in ids.items():  # each node names the members it saw, itself included
        assert {peer_name for node, peer_name in names if node == node_id} == {"ann", "ben", "cat"}, name
