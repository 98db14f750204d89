"""The network lab: a small internet in Linux network namespaces.

Tests, benchmarks and the demo share it; ``lanrage lab up/down/list/exec`` is
the same thing for people. Needs root. Every name carries a random run id, so labs
of several people coexist; a lab's namespaces, links, processes and stale
WireGuard sockets all go at teardown, also on an exception, KeyboardInterrupt,
SIGTERM/SIGHUP (turned into SystemExit) and interpreter exit (atexit). Each build
first removes leftovers of dead runs (never those of a live process).

Topology (addresses are documentation ranges only)::

    internet bridge (netns lrl-<run>-inet, br0) on 203.0.113.0/24
      stun      203.0.113.2 + .3   stund on 3478/3479 (started by the lab)
      control   203.0.113.10
      relayN    203.0.113.(20+N)
      LAN i     203.0.113.(100+i)  the host itself (open) or its router (netns ...-<lan>-gw)
                LAN 198.51.100.(8i)/29: router .(8i+1), hosts .(8i+2)...(8i+6), default route
                via the router. Each peer has its own LAN unless HostSpec(lan=...) puts
                several on one (then they share the router and its public address).

Routers per NAT type (``lab.nat``): ``open`` (no router, public address on the host),
``port_forwarded`` (MASQUERADE + DNAT of ``HostSpec.forward_port``/udp),
``port_restricted`` (MASQUERADE), ``symmetric`` (MASQUERADE --random-fully),
``miniupnpd`` (``port_restricted`` plus Debian's miniupnpd answering PCP, NAT-PMP and/or
UPnP-IGD, ``HostSpec.mapping``, and editing the router's iptables); all drop unsolicited
inbound ``ctstate NEW`` on INPUT and FORWARD. Only ``miniupnpd`` routers run a mapping
service (``lab.router_mappings(host)`` lists its mappings). There is no default
route to anywhere outside the lab: traffic cannot leave it.

Usage::

    from lab import Lab, HostSpec

    with Lab.build(hosts=[HostSpec("alice", "port_restricted"), HostSpec("bob", "symmetric")],
                   relays=2) as lab:
        lab.host("alice").public_ip, lab.host("alice").lan_ip, lab.host("alice").netns
        lab.host("alice").wg_name            # a WireGuard interface name unique to this run
        lab.run("alice", ["ip", "addr"])     # bounded (timeout=30 s), raises LabError if it fails
        proc = lab.popen("relay1", [sys.executable, "cli.py", "relay-server"])  # tracked, killed at teardown
        proc.output()                        # its stdout+stderr so far (log file in lab.workdir)
        lab.ping("alice", lab.host("bob").public_ip)
        lab.cut_uplink("alice"); lab.restore_uplink("alice")
        lab.add_loss("alice", 0.2); lab.clear_loss("alice")
        lab.block_path("alice", "bob"); lab.unblock_path("alice", "bob")   # direct path only
        lab.rebind_nat("alice")              # conntrack flushed, new public UDP ports from now on
        lab.stop_stun(); lab.start_stun()    # the STUN server down, and back
        lab.kill(proc); proc = lab.restart(proc)
        lab.stun_servers                     # (("203.0.113.2", 3478),)

Processes run with ``ip netns exec`` (same PID), in their own session, with
``THESPIAN_BASE_IPADDR=127.0.0.1`` and the repository on ``PYTHONPATH``; the
working directory defaults to the repository root.
"""

from lab.core import Host, HostSpec, Lab, LabProcess
from lab.nat import MINIUPNPD, NAT_TYPES, OPEN, PORT_FORWARDED, PORT_RESTRICTED, SYMMETRIC
from lab.registry import cleanup_leftovers
from lab.shell import LabError

__all__ = ["MINIUPNPD", "NAT_TYPES", "OPEN", "PORT_FORWARDED", "PORT_RESTRICTED", "SYMMETRIC", "Host",
           "HostSpec", "Lab", "LabError", "LabProcess", "cleanup_leftovers"]
