"""A minimal node for the lab tests: runs inside a lab host like the agent will.

    python tests/mesh_wireguard/wg_node.py NAME ADDRESS PORT KEY_FILE STATE_DIR PEERS_JSON

Creates (or adopts) the interface with the project's backend, reconciles it to the
peers in PEERS_JSON ([{"public_key", "endpoint", "allowed_ips"}]), prints one JSON
line, then waits (at most 120 s) for SIGTERM and removes the interface.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from mesh.keys import load_private_key
from mesh.wireguard import PeerConfig, WireGuardInterface


def main(argv: list[str]) -> int:
    name, address, port, key_file, state_dir, peers_json = argv
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    key = load_private_key(Path(key_file))
    wg = WireGuardInterface.create(key, address, name=name, listen_port=int(port), state_dir=Path(state_dir))
    try:
        peers = [PeerConfig.make(p["public_key"], p["endpoint"], p["allowed_ips"])
                 for p in json.loads(peers_json)]
        report = wg.reconcile(peers)
        print(json.dumps({"public_key": wg.public_key, "listen_port": wg.listen_port, "pid": wg.pid,
                          "added": len(report.added), "removed": len(report.removed)}), flush=True)
        stop.wait(120)
    finally:
        wg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
