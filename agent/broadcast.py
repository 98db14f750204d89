"""Broadcast emulation for the node agent (``serve --broadcast-ports``): see docs/broadcast.md.

The emulator starts once the WireGuard interface exists (the first party opened) and
its peers follow the store, every second: every other member's virtual IP in every
active party, each with this node's own address in that party, which is the source
that member's WireGuard accepts from us (docs/broadcast.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from loguru import logger

from mesh.broadcast import BroadcastConfig, BroadcastEmulator, BroadcastError

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
        loop = asyncio.get_running_loop()
        while True:
            try:
                # Store reads go through the agent's single actor/store worker thread.
                address, subnet, peers = await loop.run_in_executor(self.agent._actors, desired, self.agent)
                self._apply(address, subnet, peers)
            except BroadcastError as error:
                logger.error("{}", error)
                return
            except Exception as error:  # keep refreshing: a bad read must not end broadcasts
                logger.warning("broadcast peers not refreshed: {}", error)
            await asyncio.sleep(REFRESH_S)

    def _apply(self, address: str | None, subnet: str, peers: dict[str, str]) -> None:
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
            logger.info("broadcast emulation on {} ports {} from {}", config.interface,
                        ",".join(map(str, self.ports)), address)
        if peers != self._last:
            self.emulator.set_peers(peers)
            self._last = dict(peers)
            logger.info("broadcast peers: {}", ", ".join(sorted(peers)) or "none")
