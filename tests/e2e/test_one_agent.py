"""One agent per state directory: a second ``serve`` on a running agent's state directory
stops at once with one line naming the running one, and changes nothing of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lab.ports import free_port
from tests.e2e.harness import Node, Run, wait_for

pytestmark = pytest.mark.usefixtures("require_root")


def event_count(state: Path) -> int:
    with sqlite3.connect(f"file:{state / 'lanrage.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.mark.parametrize("other_api", [False, True], ids=["same-flags", "another-api-port"])
def test_a_second_serve_on_the_same_state_directory_is_refused_and_touches_nothing(
        tmp_path: Path, other_api: bool) -> None:
    with Run(tmp_path) as run:
        alice = Node(run, "alice", (tmp_path / "shared").as_uri()).start()
        party_id, _ = alice.create("kitchen LAN")
        pid = run.processes["alice"].pid
        lock_text = (alice.state / "agent.lock").read_text()
        assert lock_text.strip() == str(pid)
        token = (alice.state / "api-token").read_text()
        events = event_count(alice.state)

        api = f"127.0.0.1:{free_port()}" if other_api else alice.api
        second = run.cli("serve", "--adapters", "sim", "--name", "alice", "--state-dir", str(alice.state),
                         "--api-listen", api, check=False, timeout_s=30)

        assert second.returncode == 2
        assert second.stdout == ""
        assert second.stderr.strip().splitlines() == [
            f"lanrage: an agent (PID {pid}) already runs on the state directory {alice.state} (it holds "
            f"{alice.state / 'agent.lock'}); stop it first, or give this one its own --state-dir"]
        assert (alice.state / "api-token").read_text() == token
        assert (alice.state / "agent.lock").read_text() == lock_text
        assert event_count(alice.state) == events
        assert run.processes["alice"].poll() is None
        assert [party["party_id"] for party in alice.status()["parties"]] == [party_id]


def test_the_state_directory_is_free_again_once_its_agent_stopped(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        Node(run, "alice", None).start()
        first_pid = run.processes["alice"].pid
        assert run.stop("alice") == 0
        again = Node(run, "alice", None).start()
        pid = run.processes["alice"].pid
        assert pid != first_pid
        wait_for(lambda: (again.state / "agent.lock").read_text().strip() == str(pid), 10, "the new PID")
        assert again.status()["agent"]["name"] == "alice"
