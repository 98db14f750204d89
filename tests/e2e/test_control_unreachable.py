"""A `--control` with a wrong port starts (the server may come up later), and `party create`
says in one line which server it cannot reach and why, with a non-zero exit.

Real processes on loopback (simulated network adapters): an agent and the CLI.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import Node, Run, free_port


def test_a_control_server_on_a_wrong_port_is_named_with_its_cause_at_party_create(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        url = f"ws://127.0.0.1:{free_port()}"  # nobody listens there
        node = Node(run, "alice", url).start()
        created = node.cli("party", "create", "LAN", check=False)
        assert created.returncode != 0
        assert created.stderr.splitlines() == [
            f"lanrage: cannot reach the control server {url} (--control): connection refused: nothing "
            f"listens on {url.removeprefix('ws://')} (a wrong port, or the server is not running) (HTTP 503)"]
