"""The router rules of each NAT type (docs/architecture.md, "The network lab")."""

from __future__ import annotations

OPEN = "open"
PORT_FORWARDED = "port_forwarded"
PORT_RESTRICTED = "port_restricted"
SYMMETRIC = "symmetric"
# A port-restricted router that also runs Debian's miniupnpd: it answers PCP, NAT-PMP and
# UPnP-IGD (those of ``HostSpec.mapping`` only) and edits its own iptables for each mapping.
MINIUPNPD = "miniupnpd"
NAT_TYPES = (OPEN, PORT_FORWARDED, PORT_RESTRICTED, SYMMETRIC, MINIUPNPD)
# The routers of the other NAT types run no mapping service: nothing listens on 5351 or 1900.
NO_MAPPING_SERVICE = (PORT_FORWARDED, PORT_RESTRICTED, SYMMETRIC)

MAPPING_PCP = "pcp"
MAPPING_NATPMP = "natpmp"
MAPPING_UPNP = "upnp"
MAPPING_PROTOCOLS = (MAPPING_PCP, MAPPING_NATPMP, MAPPING_UPNP)
PCP_PORT = 5351  # PCP and NAT-PMP share it; the version byte tells them apart
SSDP_PORT = 1900

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
    if nat == MINIUPNPD:
        # DNATs made by miniupnpd pass the drop below, as the forwarded port's do.
        rules.append(["-A", "FORWARD", "-i", WAN, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"])
    if nat == PORT_FORWARDED:
        rules.append(["-t", "nat", "-A", "PREROUTING", "-i", WAN, "-p", "udp", "--dport", str(forward_port),
                      "-j", "DNAT", "--to-destination", f"{lan_ip}:{forward_port}"])
        rules.append(["-A", "FORWARD", "-i", WAN, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"])
    rules.append(["-A", "INPUT", "-i", WAN, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"])
    rules.append(["-A", "FORWARD", "-i", WAN, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"])
    return rules


def miniupnpd_stun_rules(stun_ips: tuple[str, ...]) -> list[list[str]]:
    """The opening a ``miniupnpd`` router needs while miniupnpd starts (then it is removed).

    miniupnpd refuses to map on a WAN address in a reserved range (all of the lab's are)
    unless its own STUN check at start finds the WAN unfiltered, so the STUN server's
    answers reach the router itself for that moment. Left open, they would also let a
    change-address answer to a host's STUN test create a conntrack entry on the host's
    port, and the host's next mapping would move: a port-restricted NAT would look symmetric.
    """
    return [["INPUT", "-i", WAN, "-s", stun_ip, "-p", "udp", "-j", "ACCEPT"] for stun_ip in stun_ips]


def mapping_service_rules(protocols: tuple[str, ...]) -> list[list[str]]:
    """iptables (the lab's own, nftables-backed) rules a ``miniupnpd`` router adds to its NAT rules.

    A protocol it should not answer is dropped by its version byte (NAT-PMP 0, PCP 2), and
    NAT-PMP's 2-byte request by its length; miniupnpd itself can only answer both or neither.
    """
    rules: list[list[str]] = []
    version_byte = "0>>22&0x3C@8>>24="
    if MAPPING_NATPMP not in protocols:
        rules.append(["-I", "INPUT", "1", "-i", LAN, "-p", "udp", "--dport", str(PCP_PORT),
                      "-m", "u32", "--u32", version_byte + "0", "-j", "DROP"])
        rules.append(["-I", "INPUT", "1", "-i", LAN, "-p", "udp", "--dport", str(PCP_PORT),
                      "-m", "length", "--length", "0:31", "-j", "DROP"])
    if MAPPING_PCP not in protocols:
        rules.append(["-I", "INPUT", "1", "-i", LAN, "-p", "udp", "--dport", str(PCP_PORT),
                      "-m", "u32", "--u32", version_byte + "2", "-j", "DROP"])
    return rules


# miniupnpd (Debian's miniupnpd-iptables) writes through libiptc, i.e. the legacy tables:
# its chains must exist there, hooked where its iptables_init.sh hooks them.
MINIUPNPD_LEGACY_CHAINS = [
    ["-t", "nat", "-N", "MINIUPNPD"],
    ["-t", "nat", "-A", "PREROUTING", "-i", WAN, "-j", "MINIUPNPD"],
    ["-t", "nat", "-N", "MINIUPNPD-POSTROUTING"],
    ["-t", "nat", "-A", "POSTROUTING", "-o", WAN, "-j", "MINIUPNPD-POSTROUTING"],
    ["-t", "filter", "-N", "MINIUPNPD"],
    ["-t", "filter", "-A", "FORWARD", "-i", WAN, "!", "-o", WAN, "-j", "MINIUPNPD"],
]


def miniupnpd_config(protocols: tuple[str, ...], lan_network: str, stun_ip: str, stun_port: int,
                     lease_file: str, uuid: str) -> str:
    """miniupnpd.conf for a lab router (WAN ``wan0``, LAN bridge ``lan0``)."""
    return "\n".join([
        f"ext_ifname={WAN}",
        f"listening_ip={LAN}",
        "http_port=0",
        f"enable_natpmp={'yes' if MAPPING_PCP in protocols or MAPPING_NATPMP in protocols else 'no'}",
        f"enable_upnp={'yes' if MAPPING_UPNP in protocols else 'no'}",
        "ext_perform_stun=yes",
        f"ext_stun_host={stun_ip}",
        f"ext_stun_port={stun_port}",
        "secure_mode=yes",
        "system_uptime=no",
        "min_lifetime=2",  # tests renew within seconds; real routers say 120
        "max_lifetime=86400",
        f"lease_file={lease_file}",
        f"uuid={uuid}",
        f"allow 1024-65535 {lan_network} 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
        "",
    ])
