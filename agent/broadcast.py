"""Broadcast emulation for the node agent (``serve --broadcast-ports/--broadcast-groups/--games``).

The emulator starts once the WireGuard interface exists (the first party opened) and
its peers follow the store, every second: every other member's virtual IP in every
active party, each with this node's own address in that party, which is the source
that member's WireGuard accepts from us (docs/broadcast.md). Its per-port counters
enter the log as one ``BroadcastCountersSampled`` per port with traffic per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from events.types import BroadcastCountersSampled
from mesh.broadcast import BroadcastConfig, BroadcastEmulator
from mesh.broadcast.emulator import PORT_COUNTERS

if TYPE_CHECKING:
    from agent.node import Agent

REFRESH_S = 1.0
# After a change of the parties (one opened, a member joined or left) the emulator follows the
# store this often for a while: the peer's party events are written a few ms after its
# announcement and its tunnel answers within half a second, and a game that broadcasts as
# soon as the peer pings lost its first broadcasts to an emulator that would only start (or
# learn the peer) at its next one-second refresh.
QUICK_REFRESH_S = 0.05
QUICK_FOR_S = 5.0
SAMPLE_INTERVAL_S = 30.0  # one row per port with traffic per interval, like the relay monitor's samples


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
    def __init__(self, agent: Agent, ports: tuple[int, ...],
                 groups: tuple[tuple[str, int], ...] = ()) -> None:
        self.agent = agent
        self.ports = ports
        self.groups = groups
        self.emulator: BroadcastEmulator | None = None
        self._sampled: dict[tuple[str, int], dict[str, int]] = {}  # totals at the last sample
        self._sampled_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, str] = {}
        self._ifindex: int | None = None
        self._changed = asyncio.Event()
        self._quick_until = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    def parties_changed(self) -> None:
        """A party opened or its members changed: follow the store closely for a while (on the loop)."""
        self._quick_until = time.monotonic() + QUICK_FOR_S
        self._changed.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.emulator is not None:
            await asyncio.to_thread(self.emulator.stop)
            with contextlib.suppress(Exception):  # the last partial interval; a failed write is logged
                await self._sample()
            self.emulator = None

    def counters(self) -> dict[str, int]:
        return self.emulator.counters() if self.emulator is not None else {}

    def status(self) -> dict[str, Any]:
        """For ``GET /status`` (the ``agent`` part) and ``lanrage status``: totals since start."""
        totals = self.emulator.port_counters() if self.emulator is not None else {}
        return {"running": self.emulator is not None, "ports": list(self.ports),
                "groups": [f"{group}:{port}" for group, port in self.groups],
                "by_port": [{"destination": destination, "port": port, **values}
                            for (destination, port), values in sorted(totals.items())],
                "counters": self.counters()}

    async def _sample(self) -> None:
        """Append the counters' growth since the last sample, one event per port that saw traffic."""
        if self.emulator is None:
            return
        now = time.monotonic()
        totals = self.emulator.port_counters()
        window_s = round(now - self._sampled_at, 3)
        events = []
        for (destination, port), values in sorted(totals.items()):
            before = self._sampled.get((destination, port), dict.fromkeys(PORT_COUNTERS, 0))
            delta = {name: values[name] - before[name] for name in PORT_COUNTERS}
            if any(delta.values()):
                events.append(BroadcastCountersSampled(node_id=self.agent.node_id, destination=destination,
                                                       port=port, window_s=window_s, **delta))
        if events:
            await self.agent._append(events)  # on failure the growth is kept for the next interval
        self._sampled, self._sampled_at = totals, now

    async def _refresh_forever(self) -> None:
        last_error = ""
        while True:
            try:
                address, subnet, peers = await asyncio.to_thread(desired, self.agent)
                self._apply(address, subnet, peers)
                last_error = ""
                if time.monotonic() - self._sampled_at >= SAMPLE_INTERVAL_S:
                    await self._sample()
            except Exception as error:  # keep trying: a bad read or a missing interface must not end it
                if str(error) != last_error:
                    logger.warning("broadcast emulation: {}", error)
                last_error = str(error)
            quick = time.monotonic() < self._quick_until
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), QUICK_REFRESH_S if quick else REFRESH_S)

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
            self.emulator, self._last, self._sampled = None, {}, {}  # a new emulator counts from 0
        if address is None or not subnet:
            if self.emulator is not None and self._last:
                self.emulator.set_peers(())  # every party was left
                self._last = {}
            return
        if self.emulator is None:
            config = BroadcastConfig(interface=self.agent.config.interface, virtual_ip=address,
                                     ports=self.ports, group_ports=self.groups, subnet=subnet)
            emulator = BroadcastEmulator(config)
            emulator.start()
            self.emulator = emulator
            self._ifindex = socket.if_nametoindex(config.interface)
            logger.info("broadcast emulation on {} ports {} groups {} from {}", config.interface,
                        ",".join(map(str, self.ports)) or "-",
                        ",".join(f"{group}:{port}" for group, port in self.groups) or "-", address)
        if peers != self._last:
            self.emulator.set_peers(peers)
            self._last = dict(peers)
            logger.info("broadcast peers: {}", ", ".join(sorted(peers)) or "none")
