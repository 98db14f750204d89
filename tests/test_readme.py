"""The README's forensics examples run as written, against a log in which Bob dropped.

Each command of the README's block is run as a user would type it (``lanrage`` is the
checkout's ``cli.py`` here; the state directory and the database are this test's), and
must succeed and speak of Bob.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from events import types as ev
from events.streams import node_stream, party_stream, peer_stream
from store import open_store

ROOT = Path(__file__).resolve().parents[1]
NODE, PARTY = "n1", "p1"


def readme_block() -> list[str]:
    """The commands of the ```sh block under "Ask the log why Bob dropped", one per command."""
    text = (ROOT / "README.md").read_text()
    start = text.index("Ask the log why Bob dropped")
    block = text[text.index("```sh\n", start) + 6:]
    block = block[:block.index("```")]
    commands, pending = [], ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # inside a quote: the command goes on on the next line
            continue
        commands.append(pending)
        pending = ""
    return commands


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    meta = {"node_id": NODE}
    with open_store(f"sqlite:///{directory / 'lanrage.db'}", metadata=meta) as store:
        store.append(node_stream(NODE), [ev.NodeStarted(node_id=NODE, public_key="K0", listen_port=51820)], 0)
        store.append(party_stream(NODE, PARTY), [
            ev.PartyCreated(party_id=PARTY, name="LAN", host_peer_id="alice"),
            ev.PeerJoined(party_id=PARTY, peer_id="alice", name="Alice", public_key="K0", is_local=True),
            ev.PeerJoined(party_id=PARTY, peer_id="b0b", name="Bob", public_key="K1"),
            ev.VirtualIpAllocated(party_id=PARTY, peer_id="b0b", virtual_ip="10.66.0.2")], 0)

        def changed(frm: str | None, to: str, reason: str) -> ev.ConnectionStateChanged:
            return ev.ConnectionStateChanged(party_id=PARTY, peer_id="b0b", from_state=frm, to_state=to,
                                             reason=reason, path="direct", endpoint="203.0.113.2:51820")

        store.append(peer_stream(NODE, PARTY, "b0b"), [
            changed(None, "connecting", "peer joined the party"),
            changed("connecting", "connected", "first probe answered in 20.0 ms"),
            ev.MetricsSampled(party_id=PARTY, peer_id="b0b", window_s=60.0, probes=12, latency_ms=20.0,
                              jitter_ms=1.0, loss=0.0, rx_bytes=100, tx_bytes=100, quality=97.8),
            changed("connected", "connecting", "reconnect attempt 1/3: 3 probes lost")], 0)
    return directory


def test_every_forensics_example_of_the_readme_runs(state: Path) -> None:
    commands = readme_block()
    assert [shlex.split(c, comments=True)[0] for c in commands] == [
        "lanrage", "lanrage", "lanrage", "lanrage", "lanrage", "sqlite3"]
    for command in commands:
        argv = shlex.split(command, comments=True)
        if argv[0] == "lanrage":
            argv = [sys.executable, str(ROOT / "cli.py"), *argv[1:], "--state-dir", str(state)]
            if "--follow" in argv:
                argv += ["--count", "1"]  # a person stops it with Ctrl-C
        else:
            argv = [re.sub(r"^~/\.lanrage/", f"{state}/", arg) for arg in argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "THESPIAN_BASE_IPADDR": "127.0.0.1",
                                   "HOME": str(state.parent)})
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.strip(), command
        if "bob" in command or "peer_timeline" in command or "peer_metrics" in command:
            assert "Bob" in done.stdout or "bob" in done.stdout.lower(), (command, done.stdout)


def test_every_command_of_the_device_section_parses(tmp_path: Path) -> None:
    """The "A device without LANrage" commands need a running party (the lab test runs them);
    here each one's arguments and options must be ones the installed command knows."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## A device without LANrage")
    block = text[text.index("```sh\n", start) + 6:]
    commands = [shlex.split(line, comments=True) for line in block[:block.index("```")].splitlines()]
    assert [argv[:2] for argv in commands] == [["lanrage", "party"], ["lanrage", "party"],
                                               ["lanrage", "status"], ["lanrage", "history"]]
    for argv in commands:
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv[1:], "--state-dir", str(tmp_path),
                               "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "THESPIAN_BASE_IPADDR": "127.0.0.1",
                                   "HOME": str(tmp_path)})
        assert done.returncode == 0 and "Usage: " in done.stdout, (argv, done.stderr)
    bad = subprocess.run([sys.executable, str(ROOT / "cli.py"), "party", "export", "x", "--nope", "--help"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "THESPIAN_BASE_IPADDR": "127.0.0.1",
                              "HOME": str(tmp_path)})
    assert bad.returncode != 0  # an unknown option is refused even beside --help: the check can fail
