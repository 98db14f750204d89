"""``serve``'s game discovery options: --broadcast-ports, --broadcast-groups and --games, merged."""

from __future__ import annotations

from commands.common import UsageError


def discovery(ports: tuple[int, ...], groups_text: str, games_text: str
              ) -> tuple[tuple[int, ...], tuple[tuple[str, int], ...]]:
    """The broadcast ports and group:port pairs to carry, from the three options."""
    from mesh.broadcast.emulator import DEFAULT_PORT, MAX_DISCOVERY_PORTS
    from mesh.broadcast.games import parse_groups, resolve

    try:
        groups = parse_groups(groups_text)
        preset_ports, preset_groups = resolve(games_text)
    except ValueError as error:
        raise UsageError(str(error)) from None
    all_ports = tuple(sorted({*ports, *preset_ports}))
    all_groups = tuple(sorted({*groups, *preset_groups}))
    if any(port == DEFAULT_PORT for _, port in all_groups):
        raise UsageError(f"--broadcast-groups: port {DEFAULT_PORT} is the broadcast tunnel port")
    if len(all_ports) + len(all_groups) > MAX_DISCOVERY_PORTS:
        raise UsageError(f"game discovery: at most {MAX_DISCOVERY_PORTS} ports and group:port pairs in all")
    return all_ports, all_groups
