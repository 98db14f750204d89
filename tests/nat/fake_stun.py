"""A tiny RFC 3489 STUN server on loopback for unit tests (the lab uses the real stund)."""

from __future__ import annotations

import select
import socket
import struct
import threading

from mesh.nat import stun_wire


class FakeStun:
    """Answers Binding Requests on two ports; honours CHANGE-REQUEST only if ``honour_change``.

    ``junk_first`` datagrams of garbage precede each real answer (to test filtering).
    """

    def __init__(self, honour_change: bool = True, junk_first: int = 0,
                 junk: bytes = b"\x01\x01junk") -> None:
        self.primary = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.primary.bind(("127.0.0.1", 0))
        self.alternate = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.alternate.bind(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.primary.getsockname()
        self.honour_change = honour_change
        self.junk_first = junk_first
        self.junk = junk
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeStun:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.primary.close()
        self.alternate.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.primary, self.alternate], [], [], 0.05)
            for sock in readable:
                data, addr = sock.recvfrom(2048)
                if len(data) < 20 or struct.unpack_from("!H", data)[0] != stun_wire.BINDING_REQUEST:
                    continue
                self.requests += 1
                change = len(data) >= 28 and struct.unpack_from("!HHI", data, 20)[2] & 0x6
                if change and not self.honour_change:
                    continue
                other = self.alternate if sock is self.primary else self.primary
                sender = other if change else sock
                for _ in range(self.junk_first):
                    sender.sendto(self.junk, addr)
                reply = stun_wire.encode_response(data[4:20], addr, sender.getsockname(),
                                                  other.getsockname())
                sender.sendto(reply, addr)
