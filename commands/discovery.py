"""``serve``'s game discovery options: --broadcast-ports, --broadcast-groups and --games, merged."""

from __future__ import annotations

from commands.common import UsageError

TUNNEL_PORT = 8668  # the emulator's own port inside the tunnel (mesh.broadcast.DEFAULT_PORT)
MAX_PORTS = 64  # ports plus group:port pairs (mesh.broadcast.emulator.MAX_DISCOVERY_PORTS)


def discovery(ports: tuple[int, ...], groups_text: str, games_text: str
              ) -> tuple[tuple[int, ...], tuple[tuple[str, int], ...]]:
    """The broadcast ports and group:port pairs to carry, from the three options."""
    from mesh.broadcast.games import parse_groups, resolve

    try:
        groups = parse_groups(groups_text)
        preset_ports, preset_groups = resolve(games_text)
    except ValueError as error:
        raise UsageError(str(error)) from None
    all_ports = tuple(sorted({*ports, *preset_ports}))
    all_groups = tuple(sorted({*groups, *preset_groups}))
    if any(port == TUNNEL_PORT for _, port in all_groups):
        raise UsageError(f"--broadcast-groups: port {TUNNEL_PORT} is the broadcast tunnel port")
    if len(all_ports) + len(all_groups) > MAX_PORTS:
        raise UsageError(f"game discovery: at most {MAX_PORTS} ports and group:port pairs in all")
    return all_ports, all_groups
