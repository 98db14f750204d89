"""Coordinated hole punching from WireGuard's own port, confirmed by a real PUNCH/ACK protocol.

Both peers learn each other's candidates (public mapping, LAN addresses, forwarded
port) and a session secret through signalling, and call ``punch`` at the same agreed
moment. Each sends PUNCH to every candidate every ``interval_s``; whoever receives a
PUNCH answers it with an ACK to the address it came from (and adds that address to its
own targets: a symmetric NAT's mapping towards us is only learnt this way). An ACK
confirms a path: its source is the endpoint WireGuard must use. A confirmed side keeps
sending PUNCH with the "confirmed" flag to that endpoint until it sees the peer's flag
(or a short linger passes), so the peer gets its ACK too, and says so once more when it
stops so the peer stops as well.

Messages (MAC'd with a key derived from the session secret, so a stranger cannot
confirm a path and the session secret never travels)::

    MAGIC(3) type(1) flags(1) sender(8) seq(4) echo(4) mac(16)

Packets leave from WireGuard's listen port (``rawudp``): the NAT mapping they open
is the one WireGuard's handshake will use a moment later.

A MAC'd message can still be captured and replayed, from any source address. So an
ACK confirms a path only when it comes from the very address its echoed sequence
number was sent to; a PUNCH whose (sender, seq) was already seen, or is older than a
window, is dropped unanswered; and a session learns at most a few peer-reflexive
targets. A replayed PUNCH thus gets no answer, and never turns the puncher into a
sender towards an address the attacker chose.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hmac
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from hashlib import sha256

from events.types import NAT_SYMMETRIC
from mesh.endpoints import InvalidEndpointError, parse_endpoint
from mesh.interfaces import MeshError, NatInfo, PunchResult
from mesh.keys import PrivateKey, validate_public_key
from mesh.nat.rawudp import UdpPort, open_port

MAGIC = b"LRp"
PUNCH = 1
ACK = 2
CONFIRMED = 1
_BODY = struct.Struct("!3sBB8sII")
MESSAGE_LEN = _BODY.size + 16
REPLAY_WINDOW = 256  # a PUNCH more than this many sequence numbers behind the newest is a replay
MAX_SENDERS = 4  # sender ids one session keeps a replay window for (the peer, and its restarts)
# Peer-reflexive targets one session may learn: a symmetric NAT shows one or two mappings;
# more can only be replays from addresses an attacker chose.
MAX_LEARNED_TARGETS = 4
# PUNCHes sent to a learned target per PUNCH received from it: a live peer-reflexive address keeps
# sending (each fresh PUNCH renews this), one captured PUNCH replayed from an address an attacker
# chose draws this many datagrams there, not one every interval until the deadline.
LEARNED_PUNCHES = 3
TUNNEL_NET = ipaddress.ip_network("10.66.0.0/16")

Address = tuple[str, int]


def should_try_direct(local_nat: str | None, remote_nat: str | None) -> bool:
    """Always try direct, unless both sides are symmetric (their mappings are unpredictable)."""
    return not (local_nat == NAT_SYMMETRIC and remote_nat == NAT_SYMMETRIC)


def session_key(session: str, shared_secret: bytes = b"") -> bytes:
    """The MAC key of one punch session.

    With ``shared_secret`` (the two WireGuard keys' X25519 agreement, see
    ``pair_secret``) only the two peers can compute it, even when the session name is
    predictable; without, the session name itself must be a secret from signalling.
    """
    if shared_secret:
        return hmac.new(shared_secret, b"lanrage-punch-v2|" + session.encode(), sha256).digest()
    return hmac.new(b"lanrage-punch-v1", session.encode(), sha256).digest()


def pair_secret(private_key: PrivateKey, peer_public_key: str) -> bytes:
    """X25519(our WireGuard private key, the peer's public key): the same on both sides."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    peer = X25519PublicKey.from_public_bytes(base64.b64decode(validate_public_key(peer_public_key)))
    ours = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_key.secret_hex()))
    return ours.exchange(peer)


def encode(key: bytes, kind: int, flags: int, sender: bytes, seq: int, echo: int) -> bytes:
    body = _BODY.pack(MAGIC, kind, flags, sender, seq, echo)
    return body + hmac.new(key, body, sha256).digest()[:16]


def decode(key: bytes, data: bytes) -> tuple[int, int, bytes, int, int] | None:
    """(type, flags, sender, seq, echo) of an authentic message, else None. Never raises."""
    if len(data) != MESSAGE_LEN or data[:3] != MAGIC:
        return None
    body, mac = data[:_BODY.size], data[_BODY.size:]
    if not hmac.compare_digest(hmac.new(key, body, sha256).digest()[:16], mac):
        return None
    _, kind, flags, sender, seq, echo = _BODY.unpack(body)
    if kind not in (PUNCH, ACK):
        return None
    return kind, flags, sender, seq, echo


def parse_candidate(value: str) -> Address:
    """An IPv4 ``ip:port`` (punching is IPv4 only: the raw socket builds IPv4 datagrams)."""
    try:
        ip, port = parse_endpoint(value)
    except InvalidEndpointError as error:
        raise MeshError(f"bad candidate: {error}") from None
    if ":" in ip:
        raise MeshError(f"bad candidate {value!r}: not IPv4")
    return ip, port


def local_ipv4_addresses() -> list[str]:
    """Addresses of this host's interfaces, without loopback and tunnel addresses."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            address = ipaddress.IPv4Address(packed[20:24])
            if not address.is_loopback and address not in TUNNEL_NET:
                found.append(str(address))
    return found


class UdpHolePuncher:
    """The real ``mesh.interfaces.HolePuncher`` for one WireGuard interface."""

    def __init__(self, wg_port: int, nat: NatInfo | None = None, forwarded_port: int | None = None,
                 lan_addresses: Sequence[str] | None = None, interval_s: float = 0.025,
                 linger_s: float = 1.0, private_key: PrivateKey | None = None) -> None:
        self.wg_port = wg_port
        self._private_key = private_key
        self.nat = nat
        self.forwarded_port = forwarded_port
        self._lan = list(lan_addresses) if lan_addresses is not None else None
        self.interval_s = interval_s
        self.linger_s = linger_s
        self.sent = 0
        self.dropped = 0
        self.replays = 0  # PUNCH messages refused by the replay window

    def candidates(self) -> tuple[str, ...]:
        found: list[str] = []
        if self.nat is not None and self.nat.public_ip and self.nat.public_port:
            found.append(f"{self.nat.public_ip}:{self.nat.public_port}")
        if self.forwarded_port and self.nat is not None and self.nat.public_ip:
            found.append(f"{self.nat.public_ip}:{self.forwarded_port}")
        for address in self._lan if self._lan is not None else local_ipv4_addresses():
            found.append(f"{address}:{self.wg_port}")
        return tuple(dict.fromkeys(found))

    def punch(self, session: str, remote_candidates: Sequence[str], timeout_s: float,
              start_at: float | None = None, *, peer_public_key: str | None = None) -> PunchResult:
        """Punch towards ``remote_candidates``; ``start_at`` is the agreed wall-clock moment.

        A puncher that holds the node's private key binds the session to the pair of
        WireGuard keys, and then needs ``peer_public_key``.
        """
        shared = b""
        if self._private_key is not None:
            if not peer_public_key:
                raise MeshError("this puncher binds sessions to WireGuard keys: give the peer's public key")
            shared = pair_secret(self._private_key, peer_public_key)
        targets = [parse_candidate(candidate) for candidate in dict.fromkeys(remote_candidates)]
        begin = time.monotonic()
        if start_at is not None:
            time.sleep(min(max(0.0, start_at - time.time()), timeout_s))
        started = time.monotonic()
        deadline = started + timeout_s
        port = open_port(self.wg_port)
        try:
            return self._run(port, session_key(session, shared), targets, started, deadline, begin)
        finally:
            port.close()

    def _run(self, port: UdpPort, key: bytes, targets: list[Address], started: float, deadline: float,
             begin: float) -> PunchResult:
        me = os.urandom(8)
        sent_at: dict[int, tuple[float, Address]] = {}  # our seq -> when and where it went
        seen: dict[bytes, _ReplayWindow] = {}  # their sender id -> the PUNCH seqs seen
        learned = 0
        budget: dict[Address, int] = {}  # learned target -> PUNCHes it may still get
        seq = 0
        confirmed: Address | None = None
        rtt_ms: float | None = None
        confirmed_at = 0.0
        peer_confirmed = False
        next_send = started
        while True:
            now = time.monotonic()
            if confirmed is not None and (peer_confirmed or now >= confirmed_at + self.linger_s
                                          or now >= deadline):
                with contextlib.suppress(OSError):  # tell the peer we are done, so it stops too
                    port.sendto(encode(key, PUNCH, CONFIRMED, me, seq + 1, 0), confirmed)
                break
            if now >= deadline:
                break
            if now >= next_send:
                flags = CONFIRMED if confirmed else 0
                for target in [confirmed] if confirmed else targets:
                    if target in budget and target != confirmed:
                        if budget[target] <= 0:
                            continue
                        budget[target] -= 1
                    seq += 1
                    sent_at[seq] = (now, target)
                    try:
                        port.sendto(encode(key, PUNCH, flags, me, seq, 0), target)
                        self.sent += 1
                    except OSError:
                        pass  # an unreachable LAN candidate: keep trying the others
                next_send = now + self.interval_s
            readable, _, _ = select.select([port], [], [], max(0.0, min(next_send, deadline) - now))
            if not readable:
                continue
            port.settimeout(0)
            try:
                data, addr = port.recvfrom(2048)
            except (TimeoutError, BlockingIOError, OSError):
                continue
            message = decode(key, data)
            if message is None or message[2] == me:
                self.dropped += 1
                continue
            kind, flags, sender, their_seq, echo = message
            if kind == PUNCH:
                window = seen.get(sender)
                if window is None:
                    if len(seen) >= MAX_SENDERS:
                        self.dropped += 1
                        continue
                    window = seen[sender] = _ReplayWindow()
                if not window.accept(their_seq):
                    self.replays += 1
                    continue
                peer_confirmed = peer_confirmed or bool(flags & CONFIRMED)
                if addr not in targets:
                    if learned >= MAX_LEARNED_TARGETS:
                        self.dropped += 1
                        continue
                    learned += 1
                    targets.append(addr)  # peer-reflexive: the mapping a symmetric NAT chose for us
                    budget[addr] = 0
                if addr in budget:
                    budget[addr] = LEARNED_PUNCHES
                with contextlib.suppress(OSError):
                    port.sendto(encode(key, ACK, CONFIRMED if confirmed else 0, me, 0, their_seq), addr)
            elif kind == ACK:
                sent = sent_at.get(echo)
                if sent is None or sent[1] != addr:
                    self.dropped += 1  # an ACK counts only from where its PUNCH went
                    continue
                peer_confirmed = peer_confirmed or bool(flags & CONFIRMED)
                if confirmed is None:
                    confirmed = addr
                    confirmed_at = time.monotonic()
                    rtt_ms = (confirmed_at - sent[0]) * 1000
        elapsed_ms = (time.monotonic() - begin) * 1000
        if confirmed is None:
            return PunchResult(False, None, None, elapsed_ms,
                               f"no punch ACK from {len(targets)} candidate(s) in {deadline - started:.1f} s")
        return PunchResult(True, f"{confirmed[0]}:{confirmed[1]}", rtt_ms, elapsed_ms,
                           "confirmed by punch ACK" + ("" if peer_confirmed else " (peer unconfirmed)"))


class _ReplayWindow:
    """The PUNCH sequence numbers one sender used: each is accepted once, and only if recent."""

    __slots__ = ("newest", "seen")

    def __init__(self) -> None:
        self.newest = 0
        self.seen: set[int] = set()

    def accept(self, seq: int) -> bool:
        if seq <= self.newest - REPLAY_WINDOW or seq in self.seen:
            return False
        self.seen.add(seq)
        if seq > self.newest:
            self.newest = seq
            if len(self.seen) > 2 * REPLAY_WINDOW:
                self.seen = {s for s in self.seen if s > seq - REPLAY_WINDOW}
        return True
