"""A party in the lab that faults are done to, and the checks that must hold after each.

After every fault, whatever it was:

- every pair that can reach each other pings across the virtual IPs again, within
  ``RECOVERY_S`` of the fault's end;
- a restarted agent's live state (``GET /api/actors``) equals the replay of its log;
- no orphan: each peer host holds its ``serve`` (and what it started), exactly one
  ``wireguard-go`` and exactly one WireGuard interface; each service host only its
  service; once the lab is gone, none of its namespaces or WireGuard sockets are left;
- no service exited but the ones the test killed, and none wrote a traceback.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.party import LabParty
from lab import Host, HostSpec, Lab
from lab.registry import NETNS_PREFIX
from lab.shell import WIREGUARD_RUN_DIR, list_netns, netns_links, netns_pids

# Failover's bound (a lab median in bench/failover.py): traffic flows again within 5 s of an
# outage's end (or of a restarted agent being up).
RECOVERY_S = 5.0
FORM_TIMEOUT_S = 30.0  # joining is not under test here: generous
HEAL_TIMEOUT_S = 20.0
# The fault files' lab: alice-bob and bob-carl go direct, alice-carl through a relay.
HOSTS = [HostSpec("alice", "port_restricted"), HostSpec("bob", "port_forwarded"),
         HostSpec("carl", "symmetric")]
# When pairs miss RECOVERY_S, how much longer to watch them, so the failure says whether
# they came back late or not at all.
LATE_WATCH_S = 25.0
REPLAY_TIMEOUT_S = 20.0
PATH_EVENTS = ("ConnectionStateChanged", "PathSwitched")


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    return children


def process_tree(root: int) -> set[int]:
    children = _children()
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class Failures:
    """Collects the failed rounds of a repeated fault, so a red test tells how many of its
    rounds failed and how; it stops the test after ``limit`` (each costs a heal)."""

    def __init__(self, faults: FaultParty, limit: int = 3) -> None:
        self.faults = faults
        self.limit = limit
        self.messages: list[str] = []
        self.rounds = 0

    @contextlib.contextmanager
    def round(self, what: str) -> Iterator[None]:
        self.rounds += 1
        try:
            yield
        except AssertionError as error:
            self.messages.append(f"{what}: {error}")
            if len(self.messages) < self.limit:
                self.faults.heal()

    @property
    def exhausted(self) -> bool:
        return len(self.messages) >= self.limit

    def check(self) -> None:
        stopped = " (stopped there)" if self.exhausted else ""
        assert not self.messages, (f"{len(self.messages)} of {self.rounds} rounds failed{stopped}:\n"
                                   + "\n".join(self.messages))


class FaultParty:
    """One lab, its services, one agent per peer host, all in one party."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.party = LabParty(lab)
        self.names = [host.name for host in lab.peers]
        self.ips: dict[str, str] = {}
        self.invite = ""
        self.stun_up = True

    @classmethod
    @contextlib.contextmanager
    def build(cls, hosts: list[HostSpec], relays: int, *, stun_down: bool = False) -> Iterator[FaultParty]:
        """The lab, its services and agents (after stopping STUN with ``stun_down``);
        on the way out, checks that the lab left nothing behind."""
        if os.geteuid() != 0:
            pytest.fail("fault tests must run as root (they build network namespaces)")
        with Lab.build(hosts=hosts, relays=relays) as lab:
            run_id = lab.run_id
            faults = cls(lab)
            if stun_down:
                lab.stop_stun()
                faults.stun_up = False
            faults.party.start_services()
            faults.party.start_agents(faults.names)
            yield faults
        left = [name for name in list_netns() if name.startswith(f"{NETNS_PREFIX}{run_id}-")]
        sockets = sorted(path.name for path in WIREGUARD_RUN_DIR.glob(f"*{run_id}*.sock")) \
            if WIREGUARD_RUN_DIR.is_dir() else []
        assert not left and not sockets, f"the lab left namespaces {left} and WireGuard sockets {sockets}"

    # ------------------------------------------------------------ the party

    def form(self, timeout_s: float = FORM_TIMEOUT_S) -> None:
        """The first host creates a party, the others join; every pair pings."""
        first, *others = self.names
        created = self.party.create(first, "faults")
        self.invite = created["invite"]
        self.ips[first] = created["virtual_ip"]
        for name in others:
            self.ips[name] = self.party.join(name, self.invite)["virtual_ip"]
        self.assert_mesh(timeout_s, what="after forming the party")

    def pairs(self, involving: Iterable[str] | None = None) -> list[tuple[str, str]]:
        wanted = set(self.names if involving is None else involving)
        return [(a, b) for a in self.names for b in self.names if a != b and (a in wanted or b in wanted)]

    def unreachable(self, pairs: list[tuple[str, str]], within_s: float,
                    since: float | None = None) -> list[tuple[str, str]]:
        """The pairs whose pings got no reply by ``since + within_s`` (monotonic; default now)."""
        deadline = (time.monotonic() if since is None else since) + within_s
        pending = list(pairs)
        while pending:
            for pair in list(pending):
                if self.party.ping(pair[0], self.ips[pair[1]], count=1, timeout_s=1.0):
                    pending.remove(pair)
            if not pending or time.monotonic() >= deadline:
                break
        return pending

    def assert_mesh(self, within_s: float, involving: Iterable[str] | None = None, since: float | None = None,
                    what: str = "") -> None:
        pairs = self.pairs(involving)
        start = time.monotonic() if since is None else since
        lost = self.unreachable(pairs, within_s, start)
        if not lost:
            return
        state = self.describe() + self.recent(lost)
        still = self.unreachable(lost, LATE_WATCH_S)
        late = f"still none {time.monotonic() - start:.0f} s after" if still else \
            f"all back {time.monotonic() - start:.1f} s after"
        raise AssertionError(f"{what}: no ping reply within {within_s:g} s across {lost} "
                             f"(of {len(pairs)} pairs; {late})\n{state}")

    def settled(self) -> bool:
        """Every host sees every other member connected (no recovery still under way)."""
        for host in self.names:
            rows = self.party.peers(host)
            others = [row for name, row in rows.items() if name != host]
            if len(others) != len(self.names) - 1 or any(row["state"] != "connected" for row in others):
                return False
        return True

    def heal(self) -> None:
        """Before a test: the mesh whole and every connection settled, so that one test's
        aftermath is not measured by the next. If an earlier test left pairs apart, every
        member leaves and the party is formed again."""
        lost = self.unreachable(self.pairs(), HEAL_TIMEOUT_S)
        if not lost:
            deadline = time.monotonic() + HEAL_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.settled():
                    return
                time.sleep(0.5)
        print(f"the party was not whole ({lost} without replies; {self.describe()}): forming it again")
        for name in self.names:
            self.party.cli(name, "party", "leave", "--state-dir", self.party.state(name), check=False)
        self.ips.clear()
        self.form()
        self.lab.wait_for(self.settled, HEAL_TIMEOUT_S, interval_s=0.5, what="the new party settled")

    # ------------------------------------------------------------ invariants

    def assert_replays(self, hosts: Iterable[str]) -> None:
        """Each host's live connection actors equal the replay of its log."""
        for host in hosts:
            seen: dict[str, Any] = {}

            def equal(host: str = host, seen: dict[str, Any] = seen) -> bool:
                seen["live"] = self.party.live_connections(host)
                seen["replay"] = self.party.replayed_connections(host)
                return bool(seen["live"] == seen["replay"])

            try:
                self.lab.wait_for(equal, REPLAY_TIMEOUT_S, interval_s=0.5,
                                  what=f"{host}: live state = replay")
            except Exception as error:
                raise AssertionError(f"{error}: live {seen.get('live')} "
                                     f"replay {seen.get('replay')}") from None

    def assert_services_alive(self, killed: Iterable[str] = ()) -> None:
        """No service exited except ``killed`` (names from ``LabParty.services``), and none
        printed a traceback."""
        skip = set(killed)
        for name, process in self.party.services().items():
            if name in skip:
                continue
            assert process.alive, f"{name} exited with {process.returncode}:\n{process.output()[-3000:]}"
            assert "Traceback" not in process.output(), f"{name} raised:\n{process.output()[-3000:]}"

    def assert_no_orphans(self) -> None:
        """Peer hosts: their ``serve`` tree, one ``wireguard-go``, one WireGuard interface;
        service hosts: their service's tree."""
        problems = []
        for host in self.lab.hosts.values():
            problems += self._orphans(host)
        assert not problems, "\n".join(problems)

    def _orphans(self, host: Host) -> list[str]:
        present = set(netns_pids(host.netns))
        if host.role == "peer":
            owner = self.party.agents.get(host.name)
            expected = process_tree(owner.pid) if owner is not None else set()
            wireguard = [pid for pid in present if command_name(pid) == "wireguard-go"]
            extra = {pid for pid in present - expected if pid not in wireguard}
            links = set(netns_links(host.netns)) - {"lo", "lan0", "wan0"}
            problems = []
            if len(wireguard) != 1:
                problems.append(f"{host.name}: {len(wireguard)} wireguard-go processes {wireguard}")
            if links != {host.wg_name}:
                problems.append(f"{host.name}: links {sorted(links)}, expected only {host.wg_name}")
            if extra:
                problems.append(f"{host.name}: processes outside serve's tree "
                                f"{sorted((pid, command_name(pid)) for pid in extra)}")
            return problems
        if host.role == "stun":
            return []
        services = [p for p in self.party.services().values() if p.host == host.name and p.alive]
        expected = set().union(*(process_tree(p.pid) for p in services)) if services else set()
        extra = present - expected
        return [f"{host.name}: processes not of its service {sorted((p, command_name(p)) for p in extra)}"] \
            if extra else []

    def assert_healthy(self, restarted: Iterable[str] = ()) -> None:
        """The checks that hold after every fault (connectivity is checked by the caller,
        which knows when the fault ended)."""
        self.assert_services_alive()
        self.assert_replays(restarted)
        self.assert_no_orphans()

    # ------------------------------------------------------------ reading the logs

    def transitions(self, host: str, after: float) -> list[dict[str, Any]]:
        """``host``'s connection transitions recorded after the wall-clock time ``after``."""
        from datetime import datetime

        return [record for record in self.party.events(host, *PATH_EVENTS)
                if datetime.fromisoformat(record["recorded_at"]).timestamp() > after]

    def peer_id(self, host: str, peer: str) -> str:
        return str(self.party.peers(host)[peer]["peer_id"])

    def recent(self, pairs: list[tuple[str, str]], count: int = 12) -> str:
        """The last connection facts each end of ``pairs`` recorded about the other: what a
        failure needs to be understood without a rerun."""
        lines = []
        for host, peer in sorted({tuple(sorted(pair)) for pair in pairs} | set(pairs)):
            with contextlib.suppress(Exception):
                peer_id = self.peer_id(host, peer)
                records = [r for r in self.party.events(host) if r["stream_id"].endswith(f":{peer_id}")
                           and r["event_type"] not in ("PeerMetricsSampled", "WireGuardPeerConfigured")]
                lines.append(f"  {host} about {peer}:")
                for record in records[-count:]:
                    payload = {k: v for k, v in record["payload"].items() if k not in ("party_id", "peer_id")}
                    lines.append(f"    {record['recorded_at'][11:23]} {record['event_type']} {payload}"[:300])
        return "\n" + "\n".join(lines)

    def describe(self) -> str:
        lines = []
        for host in self.names:
            with contextlib.suppress(Exception):
                rows = self.party.peers(host)
                lines.append(f"  {host}: " + ", ".join(f"{name} {row['state']}/{row['path']}"
                                                       for name, row in rows.items() if not row["is_local"]))
        return "\n".join(lines)


STORY_EVENTS = ("ConnectionStateChanged", "PathSwitched", "PathChosen", "RelayAllocationRequested",
                "RelaySessionOpened", "RelayAllocationFailed", "NoPathAvailable", "HolePunchFailed",
                "ControlServerReachable", "EndpointChanged", "RelayDegraded", "RelaySelected",
                "RelaySessionReleased", "WireGuardPeerConfigured")


def story(faults: FaultParty, after: float) -> str:
    """What each host recorded about its peers since ``after`` (wall clock): why a pair stayed apart."""
    from datetime import datetime

    lines = []
    for host in faults.names:
        names = {row["peer_id"]: name for name, row in faults.party.peers(host).items()}
        for record in faults.party.events(host, *STORY_EVENTS):
            at = datetime.fromisoformat(record["recorded_at"]).timestamp() - after
            if at > 0:
                payload = record["payload"]
                detail = {k: v for k, v in payload.items() if k in (
                    "to_state", "reason", "path", "to_path", "relay", "to_relay", "session_id", "error",
                    "purpose", "new_endpoint", "endpoint")}
                lines.append(f"  {at:7.2f} {host}->{names.get(payload.get('peer_id'), '-')}: "
                             f"{record['event_type']} {detail}")
    return "\n".join(lines)
