"""A lab node for the NAT tests: the real adapters, driven line by line from the test process.

    python tests/nat/lab_node.py NAME ADDRESS PORT KEY_FILE

Runs inside a lab host's namespace. It brings up a WireGuard interface, then answers
JSON commands on stdin with one JSON line each: detect (STUN), candidates, punch,
peer (WireGuard endpoint), relay (allocate a relay proxy from a ticket), release,
probe. The test process carries candidates and tickets between two such nodes: that
is the signalling. Everything here stops after 300 s or on EOF/SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mesh.keys import load_private_key
from mesh.nat import StunNatDetector, UdpHolePuncher
from mesh.relay import ProxyRelayClient, RelayTicket, probe_relay
from mesh.wireguard import WireGuardInterface


def main(argv: list[str]) -> int:
    name, address, port, key_file = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    watchdog = threading.Timer(300, lambda: signal.raise_signal(signal.SIGTERM))
    watchdog.daemon = True
    watchdog.start()
    wg = WireGuardInterface.create(load_private_key(Path(key_file)), address, name=name,
                                   listen_port=int(port))
    relays = ProxyRelayClient(lambda *_: (_ for _ in ()).throw(RuntimeError("tickets come from the test")),
                              wg_port=wg.listen_port)
    puncher = UdpHolePuncher(wg.listen_port)
    allocations: dict[str, Any] = {}
    reply({"public_key": wg.public_key, "listen_port": wg.listen_port})
    try:
        for line in sys.stdin:
            command = json.loads(line)
            try:
                reply(handle(command, wg, relays, puncher, allocations))
            except Exception as error:
                reply({"error": f"{type(error).__name__}: {error}"})
    finally:
        control = allocations.pop("control", None)
        if control is not None:
            control.stop()
        relays.close()
        wg.close()
    return 0


def handle(command: dict[str, Any], wg: WireGuardInterface, relays: ProxyRelayClient,
           puncher: UdpHolePuncher, allocations: dict[str, Any]) -> dict[str, Any]:
    kind = command["cmd"]
    if kind == "detect":
        start = time.monotonic()
        detector = StunNatDetector(command["stun"], local_port=wg.listen_port, timeout_s=0.3)
        info = detector.detect()
        puncher.nat = info
        return {"nat": None if info is None else info.__dict__, "seconds": time.monotonic() - start,
                "error": None if info else detector.last_error}
    if kind == "candidates":
        return {"candidates": list(puncher.candidates())}
    if kind == "punch":
        result = puncher.punch(command["session"], command["remote"], command["timeout"],
                               start_at=command["start_at"])
        return {"result": result.__dict__}
    if kind == "peer":
        wg.configure_peer(command["public_key"], command["endpoint"], command["allowed_ips"])
        return {"ok": True}
    if kind == "relay":
        allocation = relays.allocate_ticket(RelayTicket.from_json(command["ticket"]))
        allocations[allocation.relay] = allocation
        return {"endpoint": allocation.endpoint, "session_id": allocation.session_id}
    if kind == "release":
        relays.release(allocations.pop(command["relay"]))
        return {"ok": True}
    if kind == "probe":
        return {"rtt_ms": probe_relay(command["relay"], command.get("timeout", 0.5))}
    if kind == "control":  # connect to the control server: the real signalling channel
        from mesh.control.client import ControlClient
        from mesh.control.identity import Identity

        client = ControlClient(command["url"], Identity.generate(), name=command["name"]).start()
        if not client.wait_connected(10):
            raise RuntimeError(f"control server unreachable: {client.last_error}")
        allocations["control"] = client
        return {"peer_id": client.peer_id}
    if kind == "control_request":
        fields = {key: value for key, value in command.items() if key not in ("cmd", "kind")}
        return {"answer": allocations["control"].request(command["kind"], **fields)}
    if kind == "wait_push":
        control = allocations["control"]
        deadline = time.monotonic() + command.get("timeout", 10)
        while time.monotonic() < deadline:
            try:
                push = control.pushes.get(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:
                break
            if push.get("type") == command["type"]:
                return {"push": push}
        raise TimeoutError(f"no {command['type']} push")
    if kind == "relay_offer":  # the ticket came through the control server
        allocation = relays.allocate_ticket(RelayTicket(**command["ticket"]))
        allocations[allocation.relay] = allocation
        return {"endpoint": allocation.endpoint}
    if kind == "proxies":
        found = {}
        for relay, allocation in allocations.items():
            if relay == "control":
                continue
            proxy = relays.proxy(allocation)
            if proxy is not None:
                found[relay] = {"up": proxy.packets_up, "down": proxy.packets_down}
        return {"proxies": found}
    if kind == "stats":
        return {"peers": {key: stats.__dict__ for key, stats in wg.peer_stats().items()}}
    raise ValueError(f"unknown command {kind!r}")


def reply(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
