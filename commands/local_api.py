"""A minimal HTTP/1.0 client for the local agent's API.

The client commands make one request to 127.0.0.1 and exit; ``http.client`` (with the
email parser it imports) or httpx would cost more start-up time than the request. The
answer is bounded in size and time like any bytes from a socket.
"""

from __future__ import annotations

import socket

ANSWER_LIMIT = 16 * 1024 * 1024  # a status of many parties is a few hundred kB; more is not our agent
HEADER_LIMIT = 64 * 1024  # uvicorn's headers are a few hundred bytes


class LocalApiError(Exception):
    """The agent could not be reached, or answered something that is not HTTP."""


def request(host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes | None,
            timeout_s: float) -> tuple[int, bytes]:
    """Send one request and return the status code and the body."""
    lines = [f"{method} {path} HTTP/1.0", f"Host: {host}:{port}", "Connection: close",
             *(f"{name}: {value}" for name, value in headers.items())]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    message = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(message)
            received = bytearray()
            while len(received) <= ANSWER_LIMIT + HEADER_LIMIT:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
            else:
                raise LocalApiError(f"the answer from {host}:{port} is over {ANSWER_LIMIT} bytes")
    except OSError as error:
        raise LocalApiError(str(error)) from None
    head, separator, payload = bytes(received).partition(b"\r\n\r\n")
    status_line = head[:HEADER_LIMIT].split(b"\r\n", 1)[0].split()
    if not separator or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") \
            or not status_line[1].isdigit():
        raise LocalApiError(f"{host}:{port} did not answer HTTP: {bytes(received[:40])!r}")
    return int(status_line[1]), payload
