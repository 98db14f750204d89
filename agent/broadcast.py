"""Broadcast emulation for the node agent (``serve --broadcast-ports``): see docs/broadcast.md.

The emulator starts once the WireGuard interface exists (the first party opened) and
its peers follow the store, every second: every other member's virtual IP in every
active party, each with this node's own address in that party, which is the source
that member's WireGuard accepts from us (docs/broadcast.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from loguru import logger

from mesh.broadcast import BroadcastConfig, BroadcastEmulator

if TYPE_CHECKING:
    from agent.node import Agent

REFRESH_S = 1.0


def desired(agent: Agent) -> tuple[str | None, str, dict[str, str]]:
    """(the interface's primary address, the subnet, peer virtual IP -> our address in its party)."""
    owner = agent.interface
    wg = getattr(owner, "interface", None)
    if wg is None:
        return None, "", {}
    primary = wg.address.split("/")[0]
    subnet = ""
    peers: dict[str, str] = {}
    for party_id in list(agent.bindings):
        party = agent._party_state(party_id)
        ips = party.allocations
        ours = ips.get(party.local_peer_id)
        if not party.active or ours is None:
            continue
        subnet = subnet or party.subnet
        peers.update({ip: ours for pid, ip in ips.items() if pid != party.local_peer_id})
    return primary, subnet, peers


class BroadcastWiring:
    def __init__(self, agent: Agent, ports: tuple[int, ...]) -> None:
        self.agent = agent
        self.ports = ports
        self.emulator: BroadcastEmulator | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, str] = {}
        self._ifindex: int | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.emulator is not None:
            await asyncio.to_thread(self.emulator.stop)
            self.emulator = None

    def counters(self) -> dict[str, int]:
        return self.emulator.counters() if self.emulator is not None else {}

    async def _refresh_forever(self) -> None:
        last_error = ""
        while True:
            try:
                address, subnet, peers = await asyncio.to_thread(desired, self.agent)
                self._apply(address, subnet, peers)
                last_error = ""
            except Exception as error:  # keep trying: a bad read or a missing interface must not end it
                if str(error) != last_error:
                    logger.warning("broadcast emulation: {}", error)
                last_error = str(error)
            await asyncio.sleep(REFRESH_S)

    def _interface_replaced(self) -> bool:
        """The sockets are bound to the interface's index; a re-created interface has another."""
        try:
            return socket.if_nametoindex(self.agent.config.interface) != self._ifindex
        except OSError:
            return True

    def _apply(self, address: str | None, subnet: str, peers: dict[str, str]) -> None:
        if self.emulator is not None and self._interface_replaced():
            logger.warning("{} was re-created: restarting broadcast emulation", self.agent.config.interface)
            self.emulator.stop()
            self.emulator, self._last = None, {}
        if address is None or not subnet:
            if self.emulator is not None and self._last:
                self.emulator.set_peers(())  # every party was left
                self._last = {}
            return
        if self.emulator is None:
            config = BroadcastConfig(interface=self.agent.config.interface, virtual_ip=address,
                                     ports=self.ports, subnet=subnet)
            emulator = BroadcastEmulator(config)
            emulator.start()
            self.emulator = emulator
            self._ifindex = socket.if_nametoindex(config.interface)
            logger.info("broadcast emulation on {} ports {} from {}", config.interface,
                        ",".join(map(str, self.ports)), address)
        if peers != self._last:
            self.emulator.set_peers(peers)
            self._last = dict(peers)
            logger.info("broadcast peers: {}", ", ".join(sorted(peers)) or "none")
