"""The LANrage demo: ``python -m demo.run`` (as root; scripts/demo.sh sets everything up first).

It builds a small internet in network namespaces, runs a real party on it over
WireGuard, breaks one peer's uplink and heals it, then shows the recorded history.
Everything it does to the party goes through the same CLI a user types.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from demo.party import LabParty, installed_command
from lab import HostSpec, Lab

PEERS = (("alice", "port_restricted", "a home router (port-restricted cone NAT)"),
         ("bob", "port_forwarded", "a router with the WireGuard port forwarded"),
         ("carl", "symmetric", "a symmetric NAT (new public port for every destination)"))
START = time.monotonic()
CUT_S = 15.0  # how long carl's uplink stays down


def say(text: str = "") -> None:
    print(f"[{time.monotonic() - START:5.1f}s] {text}" if text else "", flush=True)


def show(output: str) -> None:
    for line in output.rstrip().splitlines():
        print(f"          {line}", flush=True)


def ping_ms(party: LabParty, host: str, ip: str) -> float | None:
    done = party.lab.run(host, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", ip], check=False, timeout=10)
    match = re.search(r"= [0-9.]+/([0-9.]+)/", done.stdout)
    return float(match.group(1)) if done.returncode == 0 and match else None


def wait_mesh(party: LabParty, ips: dict[str, str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = {(a, b) for a in ips for b in ips if a != b}
    while pending and time.monotonic() < deadline:
        for a, b in sorted(pending):
            if party.ping(a, ips[b], count=1, timeout_s=1.0):
                pending.discard((a, b))
    return not pending


def peer_row(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in status["parties"][0]["peers"] if p["name"] == name)


def main() -> int:
    say("LANrage demo: three friends behind three kinds of NAT become one LAN.")
    say("Building a small internet in network namespaces: a STUN server, a control server,")
    say("two relays, and one router per friend.")
    with Lab.build(hosts=[HostSpec(name, nat) for name, nat, _ in PEERS], relays=2) as lab:
        for name, _, what in PEERS:
            host = lab.host(name)
            say(f"  {name:6} LAN {host.lan_ip:15} seen on the internet as {host.public_ip:15} - {what}")
        say(f"  control server {lab.control.public_ip}:8667, relays "
            f"{', '.join(r.public_ip + ':3479' for r in lab.relays)}")
        party = LabParty(lab, command=installed_command())
        party.start_services()
        say("Started `lanrage control-server` and two `lanrage relay-server` (they share a ticket secret).")
        party.start_agents([name for name, _, _ in PEERS])
        say("Started `lanrage serve` on each friend's machine: actors, WireGuard, STUN, the API.")
        say()
        created = party.create("alice", "Friday LAN")
        say(f"alice$ lanrage party create 'Friday LAN'   -> she is {created['virtual_ip']}; the invite:")
        show(created["invite"])
        ips = {"alice": created["virtual_ip"]}
        for name in ("bob", "carl"):
            joined = party.join(name, created["invite"])
            ips[name] = joined["virtual_ip"]
            say(f"{name}$ lanrage party join <invite>      -> {name} is {joined['virtual_ip']}")
        say("Both sides of every pair dial at once. Where a hole punch may fail, a relay carries the")
        say("first packets while they punch; the relay stays only where no direct path exists.")
        if not wait_mesh(party, ips, 60):
            say("not every pair could ping within 60 s; the status below shows where it stands")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                peer_row(party.status("alice"), name)["state"] != "connected" for name in ("bob", "carl")):
            time.sleep(0.5)
        say("Every pair pings, and the probes have confirmed it. alice$ lanrage status")
        show(party.cli("alice", "status", "--state-dir", party.state("alice")))
        say("Round trips across the virtual LAN (3 pings each):")
        for a in ips:
            cells = []
            for b in ips:
                if a != b:
                    rtt = ping_ms(party, a, ips[b])
                    cells.append(f"{b} {ips[b]}: " + (f"{rtt:.2f} ms" if rtt is not None else "lost"))
            say(f"  from {a:5}  " + "   ".join(cells))
        say()
        say(f"Now carl's uplink goes down for {CUT_S:.0f} s (his router's WAN link is cut).")
        lab.cut_uplink("carl")
        cut = time.monotonic()
        deadline = cut + 45
        while time.monotonic() < deadline:
            row = peer_row(party.status("alice"), "carl")
            if row["state"] != "connected":
                break
            time.sleep(0.5)
        row = peer_row(party.status("alice"), "carl")
        say(f"After {time.monotonic() - cut:.0f} s alice sees carl as {row['state']} "
            f"(path {row['path']}); every step is an event. She keeps trying: a friend is never given up.")
        time.sleep(max(0.0, cut + CUT_S - time.monotonic()))
        lab.restore_uplink("carl")
        restored = time.monotonic()
        say("carl's uplink is back.")
        reply = party.wait_ping("alice", ips["carl"], 60)
        back = None if reply is None else time.monotonic() - restored
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and \
                peer_row(party.status("alice"), "carl")["state"] not in ("connected", "degraded"):
            time.sleep(0.5)
        row = peer_row(party.status("alice"), "carl")
        say(f"alice pings carl again after {back:.1f} s; carl is {row['state']} via {row['path']}"
            if back is not None else "carl did not come back within 60 s")
        say()
        say("alice$ lanrage history carl     (carl's connection timeline, from alice's event log)")
        show(party.cli("alice", "history", "carl", "--state-dir", party.state("alice")))
        say("alice$ lanrage diagnose carl    (why he dropped: the cause first, then the evidence)")
        show(party.cli("alice", "diagnose", "carl", "--state-dir", party.state("alice")))
        query = ("SELECT recorded_at, state, path, round(duration_s, 1) AS lasted_s, reason "
                 "FROM peer_timeline WHERE peer_name = 'carl' ORDER BY global_position")
        say(f'alice$ lanrage sql "{query}"')
        show(party.cli("alice", "sql", query, "--state-dir", party.state("alice")))
        say("Tearing the lab down (processes, namespaces, WireGuard interfaces).")
    say("Done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
