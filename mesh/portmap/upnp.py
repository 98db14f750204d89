"""UPnP-IGD: a unicast SSDP search sent to the gateway only, then ``miniupnpc`` for SOAP.

The search never goes to the multicast group: one M-SEARCH datagram to the gateway's port
1900, retried a bounded number of times within the budget. A reply counts only if it is a
bounded HTTP response naming a description URL on the gateway itself (``http://<gateway
ip>:<port>/...``), so the SOAP client never dials an address a stranger chose.
"""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import time
from dataclasses import dataclass
from typing import Any

from mesh.portmap.errors import PortMapError, PortMapRefused, PortMapUnanswered, PortMapWireError

SSDP_PORT = 1900
MAX_REPLY = 2048
MAX_REPLIES = 16  # datagrams read in one search, answer or not
SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
_LOCATION = re.compile(r"^location:[ \t]*(\S+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_URL = re.compile(r"^http://(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})(/[\x21-\x7e]{0,256})$")


def search_request(gateway: str) -> bytes:
    return (f"M-SEARCH * HTTP/1.1\r\nHOST: {gateway}:{SSDP_PORT}\r\nST: {SEARCH_TARGET}\r\n"
            'MAN: "ssdp:discover"\r\nMX: 1\r\n\r\n').encode()


def decode_search_reply(data: bytes, gateway: str) -> str:
    """The description URL of a search reply from ``gateway``; raises on anything else."""
    if len(data) > MAX_REPLY:
        raise PortMapWireError(f"SSDP reply of {len(data)} bytes is too long")
    text = data.decode("ascii", errors="strict") if data.isascii() else ""
    if not text.startswith("HTTP/1.1 200"):
        raise PortMapWireError("SSDP reply is not an HTTP/1.1 200 response")
    found = _LOCATION.search(text)
    if found is None:
        raise PortMapWireError("SSDP reply has no LOCATION")
    url = found.group(1)
    match = _URL.fullmatch(url)
    if match is None:
        raise PortMapWireError("SSDP LOCATION is not http://IPv4:port/path")
    host, port = match.group(1), int(match.group(2))
    try:
        same = ipaddress.IPv4Address(host) == ipaddress.IPv4Address(gateway)
    except ValueError:
        raise PortMapWireError("SSDP LOCATION host is not an IPv4 address") from None
    if not same or not 1 <= port <= 65535:
        raise PortMapWireError("SSDP LOCATION points away from the gateway")
    return url


def search(gateway: str, local_ip: str, budget_s: float, retry_s: float = 0.25) -> str:
    """The gateway's IGD description URL, found within ``budget_s``."""
    deadline = time.monotonic() + budget_s
    last_error: PortMapError = PortMapUnanswered(f"UPnP: no SSDP answer from {gateway} in {budget_s:.1f} s")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((local_ip, 0))
        sock.connect((gateway, SSDP_PORT))  # the gateway only; its ICMP "port unreachable" ends the wait
        request = search_request(gateway)
        next_send = time.monotonic()
        reads = 0
        while reads < MAX_REPLIES:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_send:
                try:
                    sock.send(request)
                except OSError as error:
                    raise PortMapUnanswered(f"UPnP: cannot reach {gateway}: {error.strerror}") from None
                next_send = now + retry_s
            readable, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - now))
            if not readable:
                continue
            reads += 1
            try:
                data = sock.recv(MAX_REPLY + 1)
            except OSError as error:  # an ICMP port unreachable: nothing listens there
                raise PortMapUnanswered(f"UPnP: the gateway does not listen ({error.strerror})") from None
            try:
                return decode_search_reply(data, gateway)
            except PortMapWireError as error:
                last_error = error
    raise last_error


@dataclass
class IgdSession:
    """One IGD found at ``location``, spoken to through ``miniupnpc`` (blocking SOAP calls)."""

    location: str
    local_ip: str
    client: Any = None

    def open(self) -> None:
        import miniupnpc

        client = miniupnpc.UPnP()
        client.discoverdelay = 200
        try:
            client.selectigd(self.location)
        except Exception as error:  # miniupnpc raises bare Exception with its own text
            raise PortMapUnanswered(f"UPnP: no IGD at {self.location}: {_text(error)}") from None
        self.client = client

    def external_ip(self) -> str:
        try:
            value = self._call("externalipaddress")
            address = ipaddress.IPv4Address(str(value)[:15])
        except ValueError:
            raise PortMapWireError("UPnP: the gateway's external address is not IPv4") from None
        if address.is_unspecified or address.is_multicast or address.is_loopback:
            raise PortMapRefused(f"UPnP: the gateway has no usable external address ({address})")
        return str(address)

    def add(self, external_port: int, internal_port: int, lifetime_s: int, description: str) -> None:
        ok = self._call("addportmapping", external_port, "UDP", self.local_ip, internal_port, description, "",
                        lifetime_s)
        if not ok:
            raise PortMapRefused(f"UPnP: the gateway refused UDP port {external_port}")

    def add_any(self, external_port: int, internal_port: int, lifetime_s: int, description: str) -> int:
        """IGDv2's AddAnyPortMapping: the gateway picks a free external port (near the one asked).

        miniupnpc's binding takes no lease for it, so the port is added again at once with
        ``lifetime_s``: a node that dies does not leave a mapping without end."""
        port = self._call("addanyportmapping", external_port, "UDP", self.local_ip, internal_port,
                          description, "")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise PortMapWireError("UPnP: AddAnyPortMapping gave no usable port")
        self.add(port, internal_port, lifetime_s, description)
        return port

    def delete(self, external_port: int) -> None:
        self._call("deleteportmapping", external_port, "UDP", "")

    def _call(self, name: str, *args: Any) -> Any:
        if self.client is None:
            self.open()
        try:
            return getattr(self.client, name)(*args)
        except Exception as error:
            raise PortMapRefused(f"UPnP {name}: {_text(error)}") from None


def _text(error: BaseException) -> str:
    return "".join(ch for ch in str(error)[:200] if ch.isprintable())
