"""The router rules of each NAT type (docs/architecture.md, "The network lab")."""

from __future__ import annotations

OPEN = "open"
PORT_FORWARDED = "port_forwarded"
PORT_RESTRICTED = "port_restricted"
SYMMETRIC = "symmetric"
NAT_TYPES = (OPEN, PORT_FORWARDED, PORT_RESTRICTED, SYMMETRIC)

WAN = "wan0"
LAN = "lan0"


def router_rules(nat: str, lan_ip: str, forward_port: int) -> list[list[str]]:
    """iptables argument lists for a router namespace (WAN ``wan0``, LAN ``lan0``).

    Every NAT type drops unsolicited inbound ``ctstate NEW`` on INPUT and FORWARD, as
    home routers do: without it a Linux router answers early punch packets itself and
    its conntrack entry pushes the outbound mapping onto another port. The forwarded
    port of ``port_forwarded`` is let through by ``ctstate DNAT``.
    """
    if nat not in NAT_TYPES or nat == OPEN:
        raise ValueError(f"no router for NAT type {nat!r}")
    masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", WAN, "-j", "MASQUERADE"]
    if nat == SYMMETRIC:
        masquerade.append("--random-fully")
    rules = [masquerade]
    if nat == PORT_FORWARDED:
        rules.append(["-t", "nat", "-A", "PREROUTING", "-i", WAN, "-p", "udp", "--dport", str(forward_port),
                      "-j", "DNAT", "--to-destination", f"{lan_ip}:{forward_port}"])
        rules.append(["-A", "FORWARD", "-i", WAN, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"])
    rules.append(["-A", "INPUT", "-i", WAN, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"])
    rules.append(["-A", "FORWARD", "-i", WAN, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"])
    return rules
