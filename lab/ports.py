"""Free loopback ports for the servers that tests and benchmarks start."""

from __future__ import annotations

import random
import socket


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1, below the ephemeral range (32768+).

    A port from the ephemeral range could be handed to some other socket (a probe's, a
    client's) between this check and the server binding it.
    """
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")
