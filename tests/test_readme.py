"""The README's forensics examples run as written, against a log in which Bob dropped.

Each command of the README's block is run as a user would type it (``lanrage`` is the
checkout's ``cli.py`` here; the state directory and the database are this test's) in
several time zones, against a log whose drop is at 21:03:04 local time, and must print the
rows and the words a person would read.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from events import types as ev
from events.streams import metrics_stream, node_stream, party_stream, peer_stream
from store import open_store
from store.sql import EventStore

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


# Zones on both sides of UTC, one with a half-hour offset: "21:03" is the reader's wall clock.
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata")


def last_2103(zone: ZoneInfo) -> datetime:
    """21:03:00 local on the latest day whose 21:03 minute is over (what ``--at 21:03`` finds)."""
    while True:
        now = datetime.now(zone)
        minute = now.replace(hour=21, minute=3, second=0, microsecond=0)
        if not minute <= now < minute + timedelta(minutes=1, seconds=5):
            break
        time.sleep(1)  # inside that very minute, "21:03" is about to mean today's: wait it out
    return minute if now >= minute else minute - timedelta(days=1)


def write_log(directory: Path, minute: datetime) -> None:
    """A quiet evening: Alice's node connected to Bob and Carol from 19:00; Carol steady (her last
    row at 19:15), Bob's uplink cut at 21:03:01, the drop recorded at 21:03:04, back at 21:15:10."""
    url = f"sqlite:///{directory / 'lanrage.db'}"
    with open_store(url):
        pass  # the schema
    clock = {"now": minute}
    store = EventStore(url, metadata={"node_id": NODE}, clock=lambda: clock["now"])

    def at(hh: int, mm: int, ss: float, stream: str, *events: ev.Event) -> None:
        clock["now"] = (minute.replace(hour=hh, minute=mm, second=0)
                        + timedelta(seconds=ss)).astimezone(UTC)
        store.append(stream, list(events), store.stream_position(stream))

    def changed(peer: str, frm: str | None, to: str, reason: str,
                probes: str = "") -> ev.ConnectionStateChanged:
        return ev.ConnectionStateChanged(party_id=PARTY, peer_id=peer, from_state=frm, to_state=to,
                                         reason=reason, path="direct", endpoint=ENDPOINTS[peer],
                                         recent_probes=probes)

    def sample(peer: str, latency: float) -> ev.MetricsSampled:
        return ev.MetricsSampled(party_id=PARTY, peer_id=peer, window_s=900.0, probes=90, latency_ms=latency,
                                 jitter_ms=1.0, loss=0.0, rx_bytes=100, tx_bytes=100, quality=97.8)

    try:
        at(19, 0, 0, node_stream(NODE), ev.NodeStarted(node_id=NODE, public_key="K0", listen_port=51820))
        at(19, 0, 1, party_stream(NODE, PARTY),
           ev.PartyCreated(party_id=PARTY, name="LAN", host_peer_id="alice"),
           ev.PeerJoined(party_id=PARTY, peer_id="alice", name="Alice", public_key="K0", is_local=True),
           ev.PeerJoined(party_id=PARTY, peer_id="b0b", name="Bob", public_key="K1"),
           ev.VirtualIpAllocated(party_id=PARTY, peer_id="b0b", virtual_ip="10.66.0.2"),
           ev.PeerJoined(party_id=PARTY, peer_id="ca201", name="Carol", public_key="K2"),
           ev.VirtualIpAllocated(party_id=PARTY, peer_id="ca201", virtual_ip="10.66.0.3"))
        at(19, 0, 2, peer_stream(NODE, PARTY, "b0b"),
           changed("b0b", None, "connecting", "peer joined the party"))
        at(19, 0, 3, peer_stream(NODE, PARTY, "ca201"),
           changed("ca201", None, "connecting", "peer joined the party"))
        at(19, 0, 5, peer_stream(NODE, PARTY, "b0b"),
           changed("b0b", "connecting", "connected", "first probe answered in 20.0 ms"))
        at(19, 0, 10, peer_stream(NODE, PARTY, "ca201"),
           changed("ca201", "connecting", "connected", "first probe answered in 31.0 ms"))
        at(19, 15, 10, metrics_stream(NODE, PARTY, "ca201"), sample("ca201", 31.0))
        at(20, 45, 5, metrics_stream(NODE, PARTY, "b0b"), sample("b0b", 20.0))
        at(21, 3, 4, peer_stream(NODE, PARTY, "b0b"),
           changed("b0b", "connected", "connecting", "reconnect attempt 1/3: 3 probes lost", "++++++++---"))
        at(21, 15, 10, peer_stream(NODE, PARTY, "b0b"),
           changed("b0b", "connecting", "connected", "probe answered in 21.0 ms"))
    finally:
        store.close()


ENDPOINTS = {"b0b": "203.0.113.2:51820", "ca201": "203.0.113.3:51820"}


def run(argv: list[str], state: Path, zone: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "THESPIAN_BASE_IPADDR": "127.0.0.1",
                               "HOME": str(state.parent), "TZ": zone})
    assert done.returncode == 0, (argv, done.stderr)
    assert done.stdout.strip(), argv
    return done.stdout


def row_of(out: str, *words: str) -> str:
    rows = [line for line in out.splitlines() if all(word in line for word in words)]
    assert len(rows) == 1, (words, out)
    return rows[0]


@pytest.mark.parametrize("zone", ZONES)
def test_the_forensics_story_of_the_readme_as_written(tmp_path: Path, zone: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    tz = ZoneInfo(zone)
    minute = last_2103(tz)
    write_log(state, minute)
    day = minute.strftime("%Y-%m-%d")
    abbreviation = minute.strftime("%Z")
    commands = readme_block()
    assert [shlex.split(c, comments=True)[0] for c in commands] == [
        "lanrage", "lanrage", "lanrage", "lanrage", "lanrage", "sqlite3"]
    outputs: dict[str, str] = {}
    for command in commands:
        argv = shlex.split(command, comments=True)
        if argv[0] == "lanrage":
            argv = [sys.executable, str(ROOT / "cli.py"), *argv[1:], "--state-dir", str(state)]
            if "--follow" in argv:
                continue  # a live log: tests/store runs --follow; nothing is written here
        else:
            argv = [re.sub(r"^~/\.lanrage/", f"{state}/", arg) for arg in argv]
        outputs[" ".join(shlex.split(command, comments=True)[:3])] = run(argv, state, zone)
        if "bob" in command or "peer_timeline" in command or "peer_metrics" in command:
            assert "Bob" in outputs[" ".join(shlex.split(command, comments=True)[:3])]

    diagnosis = outputs["lanrage diagnose bob"]
    assert f"(times in {abbreviation})" in diagnosis
    assert "drop 21:03:04, in 21:03" in diagnosis
    assert f"{day} 21:03:04.000  drop: connected → connecting: reconnect attempt 1/3: 3 probes lost" \
        in diagnosis
    # Carol wrote nothing for 1 h 48 min: that she was up comes from the folded log.
    assert ("cause: Bob's node became unreachable (its uplink or its machine): it stopped answering "
            "probes, and this node's other connections stayed up (Carol)") in diagnosis
    assert f"{day} 19:00:10.000" in row_of(diagnosis, "Carol connected from here on, up to the drop")
    assert "incident" in diagnosis.splitlines()[0] and "1 incident" in diagnosis.splitlines()[0]

    history = outputs["lanrage history bob"]
    assert f"time ({abbreviation})" in history
    drop = row_of(history, f"{day} 21:03:04.000")
    assert "connected → connecting" in drop and "12.1 min" in drop  # back at 21:15:10
    assert "connecting → connected" in row_of(history, f"{day} 21:15:10.000")

    replay = outputs["lanrage replay --at"]
    assert f"at {day} 21:03:59.999 {abbreviation} (the end of 21:03)" in replay
    bob = row_of(replay, "reconnect attempt 1/3")
    assert " connecting " in bob and "203.0.113.2:51820" in bob
    carol = row_of(replay, "203.0.113.3:51820")
    assert " connected " in carol


def test_diagnose_at_a_minute_without_the_drop_names_the_nearest(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    zone = ZONES[0]
    minute = last_2103(ZoneInfo(zone))
    write_log(state, minute)
    lanrage = [sys.executable, str(ROOT / "cli.py")]
    out = run([*lanrage, "diagnose", "bob", "--at", "21:01", "--state-dir", str(state)], state, zone)
    assert "nearest drop 21:03:04, 2 min 4 s after 21:01" in out
    out = run([*lanrage, "diagnose", "bob", "--at", "21:01", "--utc", "--state-dir", str(state)], state, zone)
    drop = (minute + timedelta(seconds=4)).astimezone(UTC)
    asked = (minute - timedelta(minutes=2)).astimezone(UTC)
    # With --utc the minute asked about is named in UTC too, not as typed among UTC times.
    assert f"nearest drop {drop:%H:%M:%S}, 2 min 4 s after {asked:%H:%M} UTC" in out
    out = run([*lanrage, "diagnose", "bob", "--at", "21:03:04", "--state-dir", str(state), "--json"],
              state, zone)
    report = json.loads(out)
    assert report["window"]["text"] == "21:03:04"
    (incident,) = report["incidents"]
    assert (incident["cause"], incident["in_window"], incident["distance_s"]) == \
        ("remote_unreachable", True, 0)
    out = run([*lanrage, "diagnose", "bob", "--at", "20:50", "--state-dir", str(state)], state, zone)
    assert "no drop of Bob (b0b) in party LAN (p1) recorded in 20:50 or within 5 min of it" in out
    out = run([*lanrage, "history", "bob", "--at", "21:00", "--state-dir", str(state)], state, zone)
    assert "no entry in 21:00; the nearest, 21:03:04, 3 min 4 s after 21:00" in out
    assert "21:15:10" not in out
    assert "12.1 min" in row_of(out, "21:03:04.000")  # how long it lasted, though the next row is not shown


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
