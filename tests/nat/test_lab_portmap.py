"""The port-mapping client against Debian's miniupnpd in the lab, without agents: two nodes
on one LAN each get a mapping of their own by every protocol, and deleting them empties the
router's table; a router without a mapping service says so at once."""

from __future__ import annotations

import json
import sys

import pytest

from lab import HostSpec, Lab

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("require_root")]

# Obtain (or release) a mapping of UDP 51820 in one process; prints what happened as JSON.
CLIENT = """
import hashlib, json, socket, sys, time
from mesh.portmap import PortMapper, PortMapError, default_gateway
mode, action = sys.argv[1], sys.argv[2]
nonce = hashlib.sha256(socket.gethostname().encode() + sys.argv[3].encode()).digest()[:12]  # one per host
mapper = PortMapper(default_gateway(), 51820, mode, lifetime_s=30, nonce=nonce)
started = time.monotonic()
try:
    mapping = mapper.obtain()
    if action == "release":
        mapper.release()
    print(json.dumps({"protocol": mapping.protocol, "endpoint": mapping.endpoint}))
except PortMapError as error:
    print(json.dumps({"error": str(error), "seconds": time.monotonic() - started}))
"""


def ask(lab: Lab, host: str, mode: str, action: str = "keep") -> dict[str, str]:
    done = lab.run(host, [sys.executable, "-c", CLIENT, mode, action, host], timeout=30)
    return dict(json.loads(done.stdout))


def test_two_nodes_on_one_lan_get_a_port_each_by_every_protocol_and_release_it() -> None:
    hosts = [HostSpec("alice", "miniupnpd", lan="home"), HostSpec("bob", "miniupnpd", lan="home"),
             HostSpec("carl", "port_restricted")]
    with Lab.build(hosts, relays=0) as lab:
        public = lab.host("alice").public_ip
        for mode in ("pcp", "natpmp", "upnp"):
            first, second = ask(lab, "alice", mode), ask(lab, "bob", mode)
            assert (first["protocol"], second["protocol"]) == (mode, mode)
            assert first["endpoint"] == f"{public}:51820"
            assert second["endpoint"].startswith(f"{public}:") and second["endpoint"] != first["endpoint"]
            assert len(lab.router_mappings("alice")) == 2
            # Asked again (the same nonce, as a restarted agent asks), each gets its own mapping
            # back, and deletes it.
            assert ask(lab, "bob", mode, "release") == second
            assert ask(lab, "alice", mode, "release") == first
            assert lab.router_mappings("alice") == [], mode
        answer = ask(lab, "carl", "auto")
        assert answer["error"].count("the gateway does not listen") == 3
        assert float(answer["seconds"]) < 0.5
