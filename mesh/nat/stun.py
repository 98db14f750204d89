"""NAT detection with pystun3 against configurable STUN servers.

pystun3 runs the classic RFC 3489 tests; we hand it a socket wrapper that:

- parses every datagram with our strict parser first (``stun_wire``), drops and counts
  malformed ones, and gives pystun3 only canonical Binding Responses;
- remembers the mapping of the first binding test, because pystun3 returns no
  external address for a port-restricted NAT (its last test got no answer);
- sends from the WireGuard port itself when it is given, through ``RawUdpPort`` if
  wireguard-go already holds the port, so the mapping is the one WireGuard uses.

No answer from any server means None: relay-only mode.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import stun

from events.types import (
    NAT_FULL_CONE,
    NAT_OPEN,
    NAT_PORT_RESTRICTED,
    NAT_RESTRICTED,
    NAT_SYMMETRIC,
    NAT_UNKNOWN,
    NatDetected,
    NatDetectionFailed,
)
from mesh.interfaces import MeshError, NatInfo
from mesh.nat import stun_wire
from mesh.nat.rawudp import RawUdpPort, open_port

logging.getLogger("pystun3").setLevel(logging.WARNING)

Address = tuple[str, int]

# pystun3's names -> ours. A "symmetric UDP firewall" is a public address that drops
# unsolicited inbound: for punching it behaves like a port-restricted NAT without translation.
PYSTUN_TYPES = {
    stun.OpenInternet: NAT_OPEN,
    stun.FullCone: NAT_FULL_CONE,
    stun.RestricNAT: NAT_RESTRICTED,
    stun.RestricPortNAT: NAT_PORT_RESTRICTED,
    stun.SymmetricNAT: NAT_SYMMETRIC,
    stun.SymmetricUDPFirewall: NAT_PORT_RESTRICTED,
    stun.ChangedAddressError: NAT_UNKNOWN,
}


class _Transport(Protocol):
    def settimeout(self, timeout: float | None) -> None: ...

    def sendto(self, data: bytes, addr: Address) -> int: ...

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]: ...

    def close(self) -> None: ...


@dataclass
class _FilteringSocket:
    """What pystun3 sees as its socket."""

    transport: _Transport
    timeout_s: float
    budget_s: float  # pystun3 retries forever on answers with a wrong transaction id: cap it
    malformed: int = 0
    responses: list[stun_wire.StunResponse] = field(default_factory=list)
    transaction_id: bytes = b""
    started: float = field(default_factory=time.monotonic)

    def sendto(self, data: bytes, addr: Address) -> int:
        self.transaction_id = data[4:20]
        return self.transport.sendto(data, addr)

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        deadline = min(time.monotonic() + self.timeout_s, self.started + self.budget_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.transport.settimeout(remaining)
            data, addr = self.transport.recvfrom(bufsize)
            response = stun_wire.parse_response(data)
            if response is None or response.transaction_id != self.transaction_id:
                self.malformed += 1
                continue
            self.responses.append(response)
            return stun_wire.canonical(response), addr


def _local_ip_towards(host: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 3478))
        return probe.getsockname()[0]


def parse_server(value: str | Address) -> Address:
    if isinstance(value, tuple):
        return value[0], int(value[1])
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, 3478
    if not port.isdigit():
        raise MeshError(f"bad STUN server {value!r}")
    return host, int(port)


class StunNatDetector:
    """The real ``mesh.interfaces.NatDetector``."""

    def __init__(self, servers: Sequence[str | Address], local_port: int = 0, node_id: str = "",
                 timeout_s: float = 0.4, max_age_s: float = 60.0) -> None:
        if not servers:
            raise MeshError("no STUN server configured")
        self.servers = [parse_server(server) for server in servers]
        self.local_port = local_port
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.malformed = 0
        self.last_error = ""
        self._last: tuple[float, NatInfo | None] | None = None

    def detect(self) -> NatInfo | None:
        """The NAT seen through the first answering server; a detection younger than
        ``max_age_s`` is reused (one process often asks twice: its adapters, then the node)."""
        if self._last is not None and time.monotonic() - self._last[0] < self.max_age_s:
            return self._last[1]
        info = self._detect()
        self._last = (time.monotonic(), info)
        return info

    def _detect(self) -> NatInfo | None:
        self.last_error = ""
        for host, port in self.servers:
            try:
                info = self._detect_with(host, port)
            except OSError as error:
                self.last_error = f"{host}:{port}: {error.strerror or error}"
                continue
            if info is not None:
                return info
        if not self.last_error:
            self.last_error = "no STUN server answered"
        return None

    def mapping(self) -> tuple[str, int] | None:
        """The public address and port of the WireGuard port now, as the first answering
        server sees it: one Binding Request each, no classification (a full test from the
        WireGuard port would leave conntrack entries that make the next test see another NAT
        type). None when no server answered."""
        for host, port in self.servers:
            try:
                mapped = self._binding(socket.gethostbyname(host), port)
            except OSError as error:
                self.last_error = f"{host}:{port}: {error.strerror or error}"
                continue
            if mapped is not None:
                return mapped
        return None

    def _binding(self, host: str, port: int) -> tuple[str, int] | None:
        transaction_id = os.urandom(16)
        # Never bind the WireGuard port, even for a moment: wireguard-go starting meanwhile
        # would fail to bind it. The raw socket sends from it whoever holds it.
        transport = RawUdpPort(self.local_port) if self.local_port else open_port(0)
        try:
            request = struct.pack("!HH16s", stun_wire.BINDING_REQUEST, 0, transaction_id)
            transport.sendto(request, (host, port))
            deadline = time.monotonic() + self.timeout_s
            while (remaining := deadline - time.monotonic()) > 0:
                transport.settimeout(remaining)
                try:
                    data, source = transport.recvfrom(stun_wire.MAX_MESSAGE)
                except TimeoutError:
                    return None
                response = stun_wire.parse_response(data)
                if source == (host, port) and response is not None \
                        and response.transaction_id == transaction_id:
                    return response.mapped
                self.malformed += 1
            return None
        finally:
            transport.close()

    def detect_event(self) -> tuple[NatInfo | None, NatDetected | NatDetectionFailed]:
        """Detect, and return the event for the caller to persist on the node stream."""
        info = self.detect()
        if info is None:
            return None, NatDetectionFailed(node_id=self.node_id, reason=self.last_error,
                                            stun_servers=tuple(f"{h}:{p}" for h, p in self.servers))
        return info, nat_event(self.node_id, info)

    def _detect_with(self, host: str, port: int) -> NatInfo | None:
        host = socket.gethostbyname(host)
        local_ip = _local_ip_towards(host)
        transport = open_port(self.local_port)  # wireguard-go may hold it: then shared
        wrapper = _FilteringSocket(transport, self.timeout_s, budget_s=self.timeout_s * 20)
        try:
            local_port = self.local_port or transport.getsockname()[1]  # type: ignore[attr-defined]
            stun._initialize()
            try:
                nat_type, _ = stun.get_nat_type(wrapper, local_ip, local_port, stun_host=host, stun_port=port)
            except (ValueError, KeyError, IndexError) as error:  # a pystun3 bug must not kill detection
                self.last_error = f"{host}:{port}: pystun3 failed: {error!r}"
                return None
        finally:
            self.malformed += wrapper.malformed
            transport.close()
        if nat_type == stun.Blocked or not wrapper.responses:
            self.last_error = f"{host}:{port}: no answer"
            return None
        mapped = wrapper.responses[0].mapped  # the first binding test: pystun3 may drop it
        return NatInfo(nat_type=PYSTUN_TYPES.get(nat_type, NAT_UNKNOWN),
                       public_ip=mapped[0] if mapped else None, public_port=mapped[1] if mapped else None,
                       local_ip=local_ip, local_port=local_port, stun_server=f"{host}:{port}")


def nat_event(node_id: str, info: NatInfo) -> NatDetected:
    return NatDetected(node_id=node_id, nat_type=info.nat_type, public_ip=info.public_ip,
                       public_port=info.public_port, local_ip=info.local_ip, local_port=info.local_port,
                       stun_server=info.stun_server)
