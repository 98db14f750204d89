"""Run one emulator in the current namespace (lab tests, manual checks).

    python -m mesh.broadcast --interface wg0 --virtual-ip 10.66.0.1 --ports 4445 \
        --peers-file peers.txt --counters-file counters.json

Prints one JSON line when ready. SIGHUP re-reads the peers file (one a line: a peer's
virtual IP, optionally followed by this node's address in that peer's party),
SIGUSR1 writes the counters file, SIGTERM/SIGINT stop (and write the counters file).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from mesh.broadcast.emulator import DEFAULT_PORT, BroadcastConfig, BroadcastEmulator, BroadcastError


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(",") if p)


def _ips(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh.broadcast")
    parser.add_argument("--interface", required=True)
    parser.add_argument("--virtual-ip", required=True)
    parser.add_argument("--subnet", default="10.66.0.0/16")
    parser.add_argument("--ports", type=_ints, required=True)
    parser.add_argument("--groups", type=_ips, default=())
    parser.add_argument("--peers-file", type=Path, required=True)
    parser.add_argument("--counters-file", type=Path, required=True)
    parser.add_argument("--tunnel-port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        config = BroadcastConfig(interface=args.interface, virtual_ip=args.virtual_ip, ports=args.ports,
                                 subnet=args.subnet, groups=args.groups, tunnel_port=args.tunnel_port,
                                 rate_per_s=args.rate, burst=args.burst)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    emulator = BroadcastEmulator(config)
    done = threading.Event()

    def load_peers() -> None:
        # One peer a line: "PEER_IP" or "PEER_IP OUR_IP" (our address in that peer's party).
        text = args.peers_file.read_text() if args.peers_file.exists() else ""
        rows = [line.split() for line in text.splitlines() if line.strip()]
        emulator.set_peers({row[0]: row[1] if len(row) > 1 else config.virtual_ip for row in rows})

    def write_counters() -> None:
        tmp = args.counters_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**emulator.counters(), "peers": sorted(emulator.peers)}))
        tmp.replace(args.counters_file)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            load_peers()
            write_counters()
        elif signum == signal.SIGUSR1:
            write_counters()
        else:
            done.set()

    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    load_peers()
    try:
        emulator.start()
    except BroadcastError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        ready = {"ready": True, "peers": sorted(emulator.peers), "joined": emulator.joined}
        print(json.dumps(ready), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        emulator.stop()
        write_counters()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
