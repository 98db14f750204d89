"""A long, mostly quiet party on the production actors, twelve faults injected, and ``diagnose``.

One node (alice's) with its production settings runs on the simulated network with a
virtual clock and a real SQLite log for nine hours: bob and carol reached directly, dave
through a relay. Each cause is injected at its own minute, hours apart, on either side of
the connection (the peer's uplink, line, NAT, leave; this node's uplink, crash, stop, leave,
control server; the relay between). Between them the log stays quiet: a steady connection
writes one sample a quarter of an hour. Then ``lanrage diagnose PEER --at HH:MM`` (the
minute of the injection, in the local zone) must name the injected cause first. The
simulated network's loss is drawn from a generator with a fixed seed: every run is the same.

The peer-side faults (bob's and dave's uplink, bob's line, carol's NAT, bob's leave) are
named here from this node's log alone. Once the peer's own account of a drop is recorded,
its cause leads: the expectations for those faults become that account.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import cli
import mesh.sim as sim
import store.sql
from actors import messages as m
from actors.config import ActorConfig
from tests.actors.conftest import BOB, CAROL, RELAY_A, RELAY_B, Node, VirtualClock

DAVE = "203.0.113.4:51820"
REBOUND = "203.0.113.3:40123"
CONTROL = "ws://198.51.100.10:8667"
VIPS = {"bob": "10.66.0.2", "carol": "10.66.0.3", "dave": "10.66.0.4"}
START = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)
ZONE = "Europe/Berlin"  # the reader's zone: --at is local time


@dataclass(frozen=True)
class Injected:
    peer: str
    cause: str
    at: datetime  # when it was injected (UTC)
    # Where the incident lies from the minute asked about: inside it (None), or this many seconds
    # after its start (a crash is recorded when the node starts again).
    offset_s: float | None = None


class Party:
    """alice's node, its simulated network and the clock, with the controls the causes need."""

    def __init__(self, node: Node, clock: VirtualClock) -> None:
        self.node = node
        self.clock = clock
        self.injected: list[Injected] = []

    @property
    def net(self) -> sim.SimNetwork:
        return self.node.net

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now, UTC)

    def quiet_until(self, hours: float) -> None:
        """Let the party run untouched until ``hours`` after the start (coarse steps: nothing happens)."""
        target = START + timedelta(hours=hours)
        self.node.advance((target - self.now).total_seconds(), step=5.0)

    def run(self, seconds: float) -> None:
        self.node.advance(seconds, step=0.5)

    def inject(self, peer: str, cause: str, offset_s: float | None = None) -> None:
        self.injected.append(Injected(peer, cause, self.now, offset_s))

    def state(self, peer: str) -> Any:
        return self.node.connection("p1", peer)


@pytest.fixture
def party(clock: VirtualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    clock.now = START.timestamp()
    # recorded_at follows the virtual clock: the log reads as the evening it simulates.
    monkeypatch.setattr(store.sql, "_utc_now", lambda: datetime.fromtimestamp(clock.now, UTC))
    name = "diagnose-scenarios"
    sim.reset(name)
    node = Node(name, clock, ActorConfig(restart_delay_s=0.0), (RELAY_A, RELAY_B),
                store_url=f"sqlite:///{tmp_path / 'lanrage.db'}")
    node.start()
    try:
        yield Party(node, clock)
    finally:
        node.stop()


def test_every_injected_cause_is_named_first(party: Party, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    net = party.net
    net.set_relay(RELAY_A, 40.0)
    net.set_relay(RELAY_B, 45.0)
    net.block(DAVE)  # dave's NAT lets no punch through: the relay carries him
    node = party.node
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    for peer, candidate in (("bob", BOB), ("carol", CAROL), ("dave", DAVE)):
        node.tell(m.PeerAnnounced("p1", peer, peer.title(), f"key-{peer}", candidates=(candidate,)))
    party.run(30)
    assert [(p, party.state(p).state, party.state(p).path) for p in VIPS] == [
        ("bob", "connected", "direct"), ("carol", "connected", "direct"), ("dave", "connected", "relay")]

    # 1. bob's uplink is cut (his side): nothing reaches him, directly or through a relay.
    party.quiet_until(0.7)
    party.inject("bob", "remote_unreachable")
    net.peers_down.add(VIPS["bob"])
    net.block(BOB)
    party.run(90)
    net.peers_down.discard(VIPS["bob"])
    net.unblock(BOB)
    party.run(120)

    # 2. carol's NAT rebinds (her side): WireGuard hears her from a new port.
    party.quiet_until(1.5)
    party.inject("carol", "endpoint_changed")
    net.wireguard_peers["local"]["key-carol"].endpoint = REBOUND
    party.run(60)

    # 3. the relay carrying dave stops answering (between): the monitor moves him to the other.
    party.quiet_until(2.3)
    party.inject("dave", "relay_died")
    net.set_relay(RELAY_A, None)
    party.run(180)
    net.set_relay(RELAY_A, 40.0)
    party.run(60)

    # 4. bob's line gets lossy, then dies (his side).
    party.quiet_until(3.2)
    party.inject("bob", "loss_rose")
    net.peer_loss[VIPS["bob"]] = 0.35
    party.run(40)
    net.peers_down.add(VIPS["bob"])
    net.block(BOB)
    party.run(60)
    del net.peer_loss[VIPS["bob"]]
    net.peers_down.discard(VIPS["bob"])
    net.unblock(BOB)
    party.run(120)

    # 5. a firewall between alice and carol blocks the direct path; the relay still reaches her.
    party.quiet_until(4.0)
    party.inject("carol", "direct_path_failed")
    net.block(REBOUND)
    party.run(60)
    net.unblock(REBOUND)
    party.run(120)

    # 6. this node loses its control server for three minutes; the tunnels stay up.
    party.quiet_until(4.8)
    party.inject("bob", "control_unreachable")
    node.tell(m.ControlReachability(CONTROL, False, error="connection refused"))
    party.run(180)
    node.tell(m.ControlReachability(CONTROL, True, outage_s=180.0))
    party.run(10)

    # 7. this node's own uplink goes down: every path at once, relays included.
    party.quiet_until(5.7)
    party.inject("bob", "local_uplink")
    party.inject("dave", "local_uplink")
    net.block(BOB, CAROL, REBOUND, DAVE)
    net.set_relay(RELAY_A, None)
    net.set_relay(RELAY_B, None)
    party.run(60)
    net.unblock(BOB, CAROL, REBOUND)
    net.set_relay(RELAY_A, 40.0)
    net.set_relay(RELAY_B, 45.0)
    party.run(180)

    # 8. this node's process is killed: nothing recorded until it starts again two minutes later.
    party.quiet_until(6.5)
    # The log learns of a crash when the node starts again: "nearest restart, 2 min after".
    party.inject("carol", "local_crashed", offset_s=120.0)
    party.inject("dave", "local_crashed", offset_s=120.0)
    node.crash()
    party.clock.now += 120
    node.start()
    party.run(60)

    # 9. this node is stopped cleanly and started again.
    party.quiet_until(7.3)
    party.inject("bob", "local_stopped", offset_s=60.0)  # recorded as the restart a minute later
    node.stop()
    party.clock.now += 60
    node.start()
    party.run(60)

    # 10. bob leaves the party (his side), and joins again later.
    party.quiet_until(8.1)
    party.inject("bob", "remote_left")
    node.tell(m.PeerDeparted("p1", "bob", "left"))
    party.run(30)
    # 11. hours into the quiet party, dave's uplink is cut (his side): carol's last row is far
    # away, and only the folded state says she stayed up.
    party.quiet_until(8.4)
    party.inject("dave", "remote_unreachable")
    net.peers_down.add(VIPS["dave"])
    party.run(90)
    net.peers_down.discard(VIPS["dave"])
    party.run(120)
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    party.run(30)

    # 12. this node leaves the party.
    party.quiet_until(9.0)
    party.inject("carol", "local_left")
    node.ask(m.LeaveParty("p1"))
    party.run(5)
    node.stop()

    monkeypatch.setenv("TZ", ZONE)
    time.tzset()
    try:
        found = []
        for injected in party.injected:
            capsys.readouterr()
            # The minute of the injection as the reader's clock shows it (dated: the party is
            # in the past, and "21:03" alone means the latest 21:03).
            minute = injected.at.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%dT%H:%M")
            assert cli.main(["diagnose", injected.peer, "--at", minute, "--db", node.store_url or "",
                             "--json"]) == 0
            report = json.loads(capsys.readouterr().out)
            if injected.peer == "dave" and injected.cause == "remote_unreachable":
                summary = report["incidents"][-1]["findings"][0]["summary"]
                assert summary.endswith("this node's other connections stayed up (Carol)"), summary
            if injected.cause in ("local_crashed", "local_stopped"):
                # The restart alone: reopening dave's relay session is no "relay -> relay" switch.
                assert [i["kind"] for i in report["incidents"]] == ["restart"], report
            found.append((injected.peer, minute, [i["cause"] for i in report["incidents"]],
                          [None if i["in_window"] else i["offset_s"] for i in report["incidents"]]))
        # Every incident of the minute (a switch to the relay and the drop that followed it are
        # two) names the injected cause first; none is taken from a nearby minute.
        assert [(peer, sorted(set(causes)), sorted(set(where))) for peer, _, causes, where in found] == \
            [(i.peer, [i.cause], [i.offset_s]) for i in party.injected], found
    finally:
        monkeypatch.undo()
        time.tzset()
