"""The agent's mapping of WireGuard's UDP port at the gateway (mesh/portmap does the asking).

At start the agent asks once (at most the mapper's budget, a second, when nothing answers),
before its control sessions announce its candidates: the mapped endpoint is offered first.
The mapping is renewed at half of the lifetime the gateway granted; a renewal the router
refuses, answers with another endpoint, or answers after a restart (its epoch went back)
means the router took the mapping back, and silence means it stopped answering: both are
``PortMappingLost``, then the agent asks again (once at once, then quietly every
``RETRY_S`` until a mapping comes). A clean stop deletes the mapping.

Each step is recorded in the node stream through the node actor before the agent acts on
its outcome (``PortMappingRequested`` before asking).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from actors import messages as m
from mesh.portmap import AUTO, OFF, Mapping, PortMapError, PortMapper, PortMapRefused, default_gateway
from mesh.portmap.client import DEFAULT_BUDGET_S, PROTOCOLS

# After a mapping is lost and asking again failed, ask again this often (one log line, no row).
RETRY_S = 60.0
# Never renew sooner than this, whatever lifetime a gateway grants.
MIN_RENEW_S = 1.0


class GatewayMapping:
    """One mapping of ``internal_port`` kept for as long as the agent runs."""

    def __init__(self, mode: str, internal_port: int, lifetime_s: int,
                 record: Callable[[m.PortMappingStep], Awaitable[None]],
                 changed: Callable[[], Awaitable[None]], *, budget_s: float = DEFAULT_BUDGET_S,
                 gateway: Callable[[], str | None] = default_gateway, nonce: bytes | None = None) -> None:
        self.mode = mode
        self.internal_port = internal_port
        self.lifetime_s = lifetime_s
        self.budget_s = budget_s
        self._record = record
        self._changed = changed
        self._gateway = gateway
        self.nonce = nonce
        self.mapper: PortMapper | None = None
        self.mapping: Mapping | None = None
        self.obtained_at = 0.0  # monotonic time of the last grant (obtained or renewed)
        self.problem: str | None = None
        self.renewals = 0  # renewals of the current mapping
        self._busy = asyncio.Lock()  # one exchange with the gateway at a time
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str | None:
        return self.mapping.endpoint if self.mapping else None

    def status(self) -> dict[str, Any]:
        if self.mode == OFF:
            return {"mode": OFF}
        mapping = self.mapping
        return {"mode": self.mode, "protocol": mapping.protocol if mapping else None,
                "gateway": mapping.gateway if mapping else (self.mapper.gateway if self.mapper else None),
                "external": self.endpoint, "lifetime_s": mapping.lifetime_s if mapping else None,
                "renew_in_s": round(max(0.0, self._renew_after() - (time.monotonic() - self.obtained_at)), 1)
                if mapping else None, "renewals": self.renewals, "problem": self.problem}

    async def start(self) -> None:
        """Ask once (bounded by the budget), then keep the mapping in the background."""
        if self.mode == OFF:
            return
        await self._obtain("start")
        self._task = asyncio.create_task(self._keep_forever())

    async def stop(self) -> None:
        """Stop renewing and delete the mapping at the gateway (a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        mapping, mapper = self.mapping, self.mapper
        if mapping is None or mapper is None:
            return
        error = ""
        try:
            await asyncio.to_thread(mapper.release)
        except (PortMapError, OSError) as failure:
            error = str(failure)
        self.mapping = None
        logger.info("port mapping {} by {} deleted{}", mapping.endpoint, mapping.protocol,
                    f" (not confirmed: {error})" if error else "")
        await self._record(_step("released", mapping, error=error))

    # ------------------------------------------------------------ steps

    async def _obtain(self, reason: str, quiet: bool = False) -> bool:
        gateway = self._gateway()
        if gateway is None:
            self.problem = "no IPv4 default gateway"
            if not quiet:
                await self._record(m.PortMappingStep("refused", reason=self.problem))
            return False
        if self.mapper is None or self.mapper.gateway != gateway:
            try:
                self.mapper = await asyncio.to_thread(PortMapper, gateway, self.internal_port, self.mode,
                                                      lifetime_s=self.lifetime_s, budget_s=self.budget_s,
                                                      nonce=self.nonce)
            except (OSError, ValueError) as error:
                self.problem = f"cannot reach the gateway {gateway}: {error}"
                if not quiet:
                    await self._record(m.PortMappingStep("refused", gateway=gateway, reason=self.problem))
                return False
        protocols = PROTOCOLS if self.mode == AUTO else (self.mode,)
        if not quiet:
            await self._record(m.PortMappingStep("requested", gateway=gateway, protocols=protocols,
                                                 internal_port=self.internal_port, lifetime_s=self.lifetime_s,
                                                 reason=reason))
        try:
            mapping = await asyncio.to_thread(self.mapper.obtain)
        except (PortMapError, OSError) as error:
            self.problem = str(error)
            if quiet:
                logger.info("port mapping: the gateway {} still gives none: {}", gateway, error)
            else:
                logger.info("port mapping: the gateway {} gives none: {}", gateway, error)
                await self._record(m.PortMappingStep("refused", gateway=gateway, reason=self.problem))
            return False
        if quiet:  # the decision to ask again is recorded once it led somewhere
            await self._record(m.PortMappingStep("requested", gateway=gateway, protocols=protocols,
                                                 internal_port=self.internal_port, lifetime_s=self.lifetime_s,
                                                 reason=reason))
        await self._granted(mapping, "obtained")
        return True

    async def _granted(self, mapping: Mapping, kind: str) -> None:
        moved = self.endpoint != mapping.endpoint
        self.mapping, self.obtained_at, self.problem = mapping, time.monotonic(), None
        self.renewals = self.renewals + 1 if kind == "renewed" else 0
        logger.info("port mapping {} {} by {} at {} for {} s", mapping.endpoint, kind, mapping.protocol,
                    mapping.gateway, mapping.lifetime_s)
        await self._record(_step(kind, mapping, gateway=mapping.gateway, internal_port=mapping.internal_port,
                                 lifetime_s=mapping.lifetime_s))
        if moved:
            await self._changed()

    async def _lost(self, reason: str, by_router: bool, replaced_by: Mapping | None = None) -> None:
        """The mapping is gone; ``replaced_by`` is the one the same answer granted instead."""
        mapping = self.mapping
        if mapping is None:
            return
        self.mapping, self.problem = None, reason
        logger.warning("port mapping {} lost: {}", mapping.endpoint, reason)
        await self._record(_step("lost", mapping, reason=reason, by_router=by_router))
        if replaced_by is None:
            await self._changed()
        else:
            self.mapping = mapping  # so that an unmoved endpoint is not announced again
            await self._granted(replaced_by, "obtained")

    def _renew_after(self) -> float:
        return max(MIN_RENEW_S, (self.mapping.lifetime_s if self.mapping else 0) / 2)

    async def _renew(self) -> None:
        assert self.mapper is not None and self.mapping is not None
        before, granted_at = self.mapping, self.obtained_at
        try:
            after = await asyncio.to_thread(self.mapper.renew)
        except PortMapRefused as error:
            await self._lost(f"the router took the mapping back: it refused the renewal ({error})", True)
            return
        except (PortMapError, OSError) as error:
            await self._lost(f"the gateway stopped answering: {error}", False)
            return
        if after.endpoint != before.endpoint:
            await self._lost(f"the router took the mapping back: it moved it to {after.endpoint}", True,
                             replaced_by=after)
            return
        if before.epoch_s is not None and after.epoch_s is not None and after.epoch_s + 2 < before.epoch_s + (
                time.monotonic() - granted_at) * 7 / 8:
            # RFC 6886 3.6 / RFC 6887 8.5: the gateway restarted and lost its mappings meanwhile.
            await self._lost("the router took the mapping back: it restarted (its epoch went back)", True,
                             replaced_by=after)
            return
        await self._granted(after, "renewed")

    def _due_in(self) -> float:
        return self._renew_after() - (time.monotonic() - self.obtained_at)

    async def _keep_forever(self) -> None:
        while True:
            if self.mapping is not None:
                await asyncio.sleep(max(0.0, self._due_in()))
                async with self._busy:
                    if self.mapping is None or self._due_in() > 0.05:
                        continue  # a network change renewed or lost it meanwhile
                    try:
                        await self._renew()
                    except Exception as error:  # the next round tries again
                        logger.warning("port mapping renewal failed: {}", error)
                        await asyncio.sleep(MIN_RENEW_S)
                    if self.mapping is None:
                        await self._obtain("the mapping was lost")
                continue
            await asyncio.sleep(RETRY_S)
            async with self._busy:
                if self.mapping is not None:
                    continue
                try:
                    await self._obtain("asked again after no mapping", quiet=True)
                except Exception as error:
                    logger.warning("port mapping retry failed: {}", error)

    async def network_changed(self, reason: str) -> None:
        """The node's public mapping moved (a new uplink, a router reboot): check with the gateway
        now rather than at the next renewal; a new default gateway is asked from scratch."""
        if self.mode == OFF or self._task is None:
            return
        async with self._busy:
            gateway = self._gateway()
            if self.mapping is not None and self.mapper is not None and gateway == self.mapper.gateway:
                await self._renew()
                if self.mapping is not None:
                    return
            elif self.mapping is not None:
                await self._lost(f"the network changed: the default gateway is now {gateway or 'none'}",
                                 False)
            await self._obtain(reason)


def _step(kind: str, mapping: Mapping, **fields: Any) -> m.PortMappingStep:
    return m.PortMappingStep(kind, protocol=mapping.protocol, external_ip=mapping.external_ip,
                             external_port=mapping.external_port, **fields)
