"""Game discovery presets: which broadcast ports and multicast groups a game finds its peers on.

A preset is what ``serve --games NAME,...`` turns on; docs/broadcast.md has the table.
Pure data and parsing: the emulator takes the resulting ports and group:port pairs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

SSDP = ("239.255.255.250", 1900)
MDNS = ("224.0.0.251", 5353)
MINECRAFT_LAN = ("224.0.2.60", 4445)


@dataclass(frozen=True)
class Preset:
    name: str
    ports: tuple[int, ...]  # UDP broadcast discovery ports
    groups: tuple[tuple[str, int], ...]  # multicast group, port
    games: str  # what uses it, for the docs and --help


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("minecraft", (), (MINECRAFT_LAN,), "Minecraft Java Edition \"Open to LAN\" announcements"),
    Preset("terraria", (7777,), (), "Terraria (default port 7777), and other games that broadcast on 7777"),
    Preset("source", (27015, 27016), (), "Source and GoldSrc LAN server browsers: Counter-Strike, "
                                         "Half-Life, Team Fortress, Left 4 Dead"),
    Preset("blizzard", (6112,), (), "Warcraft III and StarCraft LAN games (port 6112)"),
    Preset("directplay", (6073,), (), "DirectPlay 8 session enumeration (Age of Empires II and other "
                                      "DirectX-era games)"),
    Preset("ssdp", (), (SSDP,), "SSDP / UPnP discovery (M-SEARCH), used by consoles and media apps"),
    Preset("mdns", (), (MDNS,), "mDNS / Bonjour service discovery (.local names, DNS-SD)"),
)}
ALL = "all"  # every preset above


def parse_groups(text: str, option: str = "--broadcast-groups") -> tuple[tuple[str, int], ...]:
    """``239.255.255.250:1900,224.0.0.251:5353`` -> sorted, distinct (group, port) pairs."""
    pairs: set[tuple[str, int]] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        group, _, port = item.rpartition(":")
        try:
            address = ipaddress.IPv4Address(group)
        except ValueError:
            raise ValueError(f"{option}: {item!r} is not GROUP:PORT with an IPv4 multicast group") from None
        if not address.is_multicast:
            raise ValueError(f"{option}: {group} is not a multicast group (224.0.0.0/4)")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{option}: {item!r} needs a port 1-65535")
        pairs.add((str(address), int(port)))
    return tuple(sorted(pairs))


def resolve(names: str) -> tuple[tuple[int, ...], tuple[tuple[str, int], ...]]:
    """``minecraft,source`` -> (broadcast ports, group:port pairs) of those presets."""
    wanted = [name.strip().lower() for name in names.split(",") if name.strip()]
    if ALL in wanted:
        wanted = list(PRESETS)
    unknown = [name for name in wanted if name not in PRESETS]
    if unknown:
        raise ValueError(f"--games: unknown {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(PRESETS)}, {ALL})")
    ports = sorted({port for name in wanted for port in PRESETS[name].ports})
    groups = sorted({pair for name in wanted for pair in PRESETS[name].groups})
    return tuple(ports), tuple(groups)
