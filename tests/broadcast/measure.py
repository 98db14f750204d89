"""Measure the emulator in the lab (run by hand, not by pytest; needs root).

    .venv/bin/python tests/broadcast/measure.py [--count 200]

Two hosts behind port-restricted NATs, a real WireGuard tunnel, an emulator on each.
Prints one-way latency (CLOCK_MONOTONIC is shared by every namespace of the machine)
of broadcasts carried by the emulator against plain unicast through the same tunnel,
what a back-to-back burst delivers under the rate limit, and the emulator's CPU time
while iperf3 pushes bulk traffic through the tunnel (the BPF filter keeps it out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

PORT = 4445


def _receive(seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", PORT))
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            break
        print(json.dumps({"at": time.monotonic(), "data": data.decode()}), flush=True)


def _send(dst: str, count: int, gap: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    for i in range(min(count, 2000)):
        sock.sendto(f"{i} {time.monotonic()}".encode(), (dst, PORT))
        if gap:
            time.sleep(gap)


def _lab_main(count: int) -> None:
    from lab import HostSpec, Lab
    from mesh.keys import generate_keypair
    from mesh.wireguard import WireGuardInterface

    me = [sys.executable, str(Path(__file__).resolve())]
    vips = {"alice": "10.66.9.1", "bob": "10.66.9.2"}
    with Lab.build([HostSpec("alice", "port_restricted"), HostSpec("bob", "port_restricted")],
                   relays=0, stun=False) as lab:
        keys = {h: generate_keypair()[0] for h in vips}
        wgs = {h: WireGuardInterface.create(keys[h], f"{vips[h]}/16", name=lab.host(h).wg_name,
                                            listen_port=51820, netns=lab.host(h).netns) for h in vips}
        try:
            for h, o in (("alice", "bob"), ("bob", "alice")):
                wgs[h].configure_peer(keys[o].public_key, f"{lab.host(o).public_ip}:51820", [f"{vips[o]}/32"])
            lab.wait_for(lambda: lab.ping("alice", vips["bob"], count=1, timeout_s=1), 20)
            emulators = {}
            for h, o in (("alice", "bob"), ("bob", "alice")):
                peers = lab.workdir / f"{h}.peers"
                peers.write_text(vips[o] + "\n")
                emulators[h] = lab.popen(h, [sys.executable, "-m", "mesh.broadcast", "--interface",
                                             lab.host(h).wg_name, "--virtual-ip", vips[h],
                                             "--ports", str(PORT), "--peers-file", str(peers),
                                             "--counters-file", str(lab.workdir / f"{h}.json")],
                                      stdout=subprocess.PIPE, text=True)
                assert emulators[h].popen.stdout.readline()

            def one_way(dst: str, n: int, gap: float) -> list[float]:
                rx = lab.popen("bob", [*me, "receive", str(n * gap + 3)])
                lab.wait_udp_listening("bob", PORT)
                lab.run("alice", [*me, "send", dst, str(n), str(gap)], timeout=120)
                rx.wait(timeout=n * gap + 10)
                lines = [json.loads(x) for x in rx.output().splitlines() if x.startswith("{")]
                return [(x["at"] - float(x["data"].split()[1])) * 1000 for x in lines]

            def show(label: str, ms: list[float], sent: int) -> None:
                q = statistics.quantiles(ms, n=20) if len(ms) > 1 else ms * 19
                print(f"{label}: {len(ms)}/{sent} delivered, one-way median {statistics.median(ms):.3f} ms, "
                      f"p95 {q[18]:.3f} ms")

            for _ in range(2):
                show("unicast through the tunnel", one_way(vips["bob"], count, 0.02), count)
                show("broadcast 255.255.255.255 via emulator", one_way("255.255.255.255", count, 0.02), count)
            burst = one_way("255.255.255.255", 500, 0.0)
            print(f"burst of 500 back-to-back broadcasts: {len(burst)} delivered (burst 100, 50/s)")

            lab.popen("bob", ["iperf3", "-s", "-1", "-p", "5201"])
            lab.wait_tcp_listening("bob", 5201)
            pid = emulators["alice"].pid

            def cpu() -> float:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            before = cpu()
            out = lab.run("alice", ["iperf3", "-c", vips["bob"], "-p", "5201", "-t", "5", "-J"], timeout=30)
            mbps = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
            print(f"iperf3 5 s through the tunnel: {mbps:.0f} Mbit/s; emulator CPU time meanwhile "
                  f"{cpu() - before:.2f} s")
            for h, proc in emulators.items():
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
                print(h, (lab.workdir / f"{h}.json").read_text())
        finally:
            for wg in wgs.values():
                wg.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "receive":
        _receive(float(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "send":
        _send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--count", type=int, default=200)
        _lab_main(parser.parse_args().count)
