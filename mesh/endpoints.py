"""UDP endpoints as text: ``ip:port`` and ``[v6]:port``, never hostnames."""

from __future__ import annotations

import ipaddress

from mesh.interfaces import MeshError


class InvalidEndpointError(MeshError, ValueError):
    """An endpoint that is not ``IP:PORT`` (hostnames are not resolved here)."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"203.0.113.5:51820"`` or ``"[2001:db8::1]:51820"`` -> (ip, port)."""
    if not isinstance(text, str) or ":" not in text:
        raise InvalidEndpointError(f"invalid endpoint {text!r}: expected IP:PORT")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidEndpointError(f"invalid endpoint {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InvalidEndpointError(f"invalid endpoint {text!r}: port must be 1-65535")
    return str(ip), int(port_text)


def format_endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
