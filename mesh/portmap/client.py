"""Asking the gateway for a mapping of WireGuard's UDP port: PCP, then NAT-PMP, then UPnP-IGD.

``PortMapper.obtain`` tries the protocols the mode allows, in that order, within a budget
(a gateway that answers nothing costs at most ``budget_s``); ``renew`` asks again with the
same protocol before the lifetime ends; ``release`` deletes the mapping. All calls block:
the agent runs them on a worker thread. Every reply is decoded strictly (``pcp``,
``natpmp``, ``upnp``); a malformed one is ignored like silence.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mesh.portmap import natpmp, pcp, upnp
from mesh.portmap.errors import PortMapError, PortMapRefused, PortMapUnanswered, PortMapWireError

OFF = "off"
PCP = "pcp"
NATPMP = "natpmp"
UPNP = "upnp"
AUTO = "auto"
MODES = (OFF, PCP, NATPMP, UPNP, AUTO)
PROTOCOLS = (PCP, NATPMP, UPNP)

# RFC 6886 section 3.3 recommends two hours; renewals come at half of what was granted.
DEFAULT_LIFETIME_S = 7200
# What one gateway that answers nothing may cost a start, all protocols together.
DEFAULT_BUDGET_S = 1.0
# In auto mode each protocol may use this share of the budget, so that a gateway which
# drops PCP silently still leaves time to ask it by NAT-PMP and UPnP.
AUTO_SHARES = {"pcp": 0.4, "natpmp": 0.3, "upnp": 0.3}
# A retransmission this often within the budget (RFC 6887's 3 s first wait is far past it).
RETRY_S = 0.25
DESCRIPTION = "LANrage WireGuard"
MAX_DATAGRAM = 1100

T = TypeVar("T")


@dataclass(frozen=True)
class Mapping:
    """A mapping the gateway granted: ``external_ip:external_port`` reaches our internal port."""

    protocol: str
    gateway: str
    external_ip: str
    external_port: int
    internal_port: int
    lifetime_s: int
    epoch_s: int | None = None  # the gateway's seconds since its own start (PCP, NAT-PMP)

    @property
    def endpoint(self) -> str:
        return f"{self.external_ip}:{self.external_port}"


def default_gateway(route_file: Path = Path("/proc/net/route")) -> str | None:
    """The IPv4 default gateway of this network namespace, from the kernel's table."""
    try:
        lines = route_file.read_text().splitlines()[1:64]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:
            try:
                return str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
            except (ValueError, struct.error):
                return None
    return None


def source_address(gateway: str) -> str:
    """Our address towards ``gateway`` (a connected UDP socket sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((gateway, pcp.PORT))
        return probe.getsockname()[0]


class PortMapper:
    """One mapping of ``internal_port`` (UDP) at ``gateway``, by the protocols ``mode`` allows."""

    def __init__(self, gateway: str, internal_port: int, mode: str = AUTO, *, local_ip: str | None = None,
                 lifetime_s: int = DEFAULT_LIFETIME_S, budget_s: float = DEFAULT_BUDGET_S,
                 server_port: int = pcp.PORT, nonce: bytes | None = None) -> None:
        if mode not in MODES or mode == OFF:
            raise ValueError(f"port mapping mode must be one of {', '.join(MODES[1:])}, not {mode!r}")
        self.gateway = str(ipaddress.IPv4Address(gateway))
        self.internal_port = internal_port
        self.mode = mode
        self.local_ip = local_ip or source_address(self.gateway)
        self.lifetime_s = lifetime_s
        self.budget_s = budget_s
        self.server_port = server_port  # PCP's and NAT-PMP's 5351, but for tests
        # PCP ties a mapping to its nonce: a node that restarts with the same one (the agent
        # derives it from its key) refreshes its old mapping instead of being refused it.
        self.nonce = nonce if nonce is not None and len(nonce) == 12 else os.urandom(12)
        self.mapping: Mapping | None = None
        self._igd: upnp.IgdSession | None = None

    @property
    def protocols(self) -> tuple[str, ...]:
        return PROTOCOLS if self.mode == AUTO else (self.mode,)

    def obtain(self) -> Mapping:
        """A new mapping by the first protocol that grants one; raises with every protocol's reason."""
        reasons: list[str] = []
        deadline = time.monotonic() + self.budget_s
        for protocol in self.protocols:
            left = deadline - time.monotonic()
            if left <= 0.05:
                reasons.append(f"{protocol}: not tried (the {self.budget_s:g} s budget is spent)")
                continue
            if self.mode == AUTO:
                left = min(left, self.budget_s * AUTO_SHARES[protocol])
            try:
                self.mapping = self._request(protocol, self.lifetime_s, 0, left)
                return self.mapping
            except PortMapError as error:
                reasons.append(str(error))
        raise PortMapError("; ".join(reasons))

    def renew(self) -> Mapping:
        """The same mapping again, by the protocol that granted it (it may come back changed)."""
        if self.mapping is None:
            raise PortMapError("no mapping to renew")
        current = self.mapping
        self.mapping = self._request(current.protocol, self.lifetime_s, current.external_port, self.budget_s)
        return self.mapping

    def release(self) -> None:
        """Delete the mapping at the gateway (best effort within the budget)."""
        current, self.mapping = self.mapping, None
        if current is None:
            return
        if current.protocol == UPNP:
            if self._igd is not None:
                self._igd.delete(current.external_port)
            return
        self._request(current.protocol, 0, current.external_port if current.protocol == PCP else 0,
                      self.budget_s)

    # ------------------------------------------------------------ protocols

    def _request(self, protocol: str, lifetime_s: int, suggested_port: int, budget_s: float) -> Mapping:
        if protocol == PCP:
            request = pcp.map_request(self.local_ip, self.nonce, self.internal_port, suggested_port,
                                      lifetime_s)
            granted = self._exchange(request, budget_s, "PCP",
                                     lambda data: pcp.decode_map(data, self.nonce, self.internal_port))
            return Mapping(PCP, self.gateway, granted.external_ip, granted.external_port, self.internal_port,
                           granted.lifetime_s, granted.epoch_s)
        if protocol == NATPMP:
            start = time.monotonic()
            external_ip, _ = self._exchange(natpmp.external_address_request(), budget_s, "NAT-PMP",
                                            natpmp.decode_external_address)
            request = natpmp.map_request(self.internal_port, suggested_port, lifetime_s)
            left = max(0.1, budget_s - (time.monotonic() - start))
            granted = self._exchange(request, left, "NAT-PMP",
                                     lambda data: natpmp.decode_map(data, self.internal_port))
            if lifetime_s and not granted.external_port:
                raise PortMapWireError("NAT-PMP granted external port 0")
            return Mapping(NATPMP, self.gateway, external_ip, granted.external_port, self.internal_port,
                           granted.lifetime_s, granted.epoch_s)
        return self._upnp(lifetime_s, suggested_port, budget_s)

    def _exchange(self, request: bytes, budget_s: float, name: str, decode: Callable[[bytes], T]) -> T:
        """Send ``request`` to the gateway's port 5351 until a reply decodes, within the budget."""
        deadline = time.monotonic() + budget_s
        last: PortMapError = PortMapUnanswered(f"{name}: no answer from {self.gateway} in {budget_s:.1f} s")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.local_ip, 0))
            # Connected: only the gateway's port can answer, and its ICMP "port unreachable"
            # (no mapping service there) ends the wait at once instead of at the budget.
            sock.connect((self.gateway, self.server_port))
            next_send = time.monotonic()
            reads = 0
            while reads < 32:
                now = time.monotonic()
                if now >= deadline:
                    break
                if now >= next_send:
                    try:
                        sock.send(request)
                    except OSError as error:
                        raise PortMapUnanswered(f"{name}: cannot reach {self.gateway}: {error.strerror}"
                                                ) from None
                    next_send = now + RETRY_S
                readable, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - now))
                if not readable:
                    continue
                reads += 1
                try:
                    data = sock.recv(MAX_DATAGRAM + 1)
                except OSError as error:
                    # ICMP port unreachable: nothing listens on 5351 at the gateway.
                    raise PortMapUnanswered(f"{name}: the gateway does not listen ({error.strerror})"
                                            ) from None
                try:
                    return decode(data)
                except PortMapRefused:
                    raise
                except PortMapWireError as error:
                    last = PortMapWireError(f"{name}: {error}")
        raise last

    def _upnp(self, lifetime_s: int, suggested_port: int, budget_s: float) -> Mapping:
        if self._igd is None:
            location = upnp.search(self.gateway, self.local_ip, budget_s)
            igd = upnp.IgdSession(location, self.local_ip)
            igd.open()
            self._igd = igd
        external_ip = self._igd.external_ip()
        port = suggested_port or self.internal_port
        try:
            self._igd.add(port, self.internal_port, lifetime_s, DESCRIPTION)
        except PortMapRefused as refused:
            if suggested_port:
                raise  # a renewal keeps its port or is lost
            # The port is another host's already (two nodes on one LAN): let the gateway choose.
            try:
                port = self._igd.add_any(port, self.internal_port, lifetime_s, DESCRIPTION)
            except PortMapError as error:
                raise PortMapRefused(f"{refused}; AddAnyPortMapping: {error}") from None
        return Mapping(UPNP, self.gateway, external_ip, port, self.internal_port, lifetime_s, None)


def close_quietly(mapper: PortMapper) -> None:
    with contextlib.suppress(PortMapError, OSError):
        mapper.release()
