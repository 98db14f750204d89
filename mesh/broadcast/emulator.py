"""BroadcastEmulator: carries LAN broadcasts and multicasts between the nodes of a party.

WireGuard is layer 3 and routes by per-peer /32 allowed IPs, so a game's discovery
broadcast to 255.255.255.255 or 10.66.255.255 never reaches another node. On each node:

* a raw IPPROTO_UDP socket, narrowed by a BPF filter to the configured destinations and
  ports, sees every locally sent broadcast (Linux loops a copy of each broadcast, and of
  each multicast to a group joined on that host, into local delivery). Only datagrams
  whose source is one of this host's own addresses are taken: broadcasts heard from the
  physical LAN and our own re-emissions (whose source is a peer's virtual IP) are not.
* each taken datagram is wrapped (``wire.py``) and unicast through the tunnel to every
  peer's virtual IP on the broadcast port (8668).
* the receiver checks that the sender is a current peer and that the wrapper's origin is
  the address WireGuard authenticated, deduplicates by (origin, id), rate limits, and
  re-emits the datagram through a raw IP_HDRINCL socket bound to the WireGuard interface
  with the *origin's virtual IP and source port* as its source. The local copy reaches
  games bound to 0.0.0.0:port; the copy on the wire is dropped by WireGuard (no peer owns
  255.255.255.255). A game's unicast reply to that source goes straight through the
  tunnel to the origin game's socket.

One thread, one selector, no queues: each datagram is handled to the end before the next.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import ipaddress
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from mesh.broadcast import packet, wire
from mesh.interfaces import MeshError

DEFAULT_PORT = 8668
SO_BINDTODEVICE = 25
IP_PKTINFO = 8  # linux/in.h (not in the socket module of Python 3.11)
LIMITED_BROADCAST = "255.255.255.255"
BROADCAST = "broadcast"  # the destination kind of a limited, subnet or LAN broadcast, in per-port counters
PORT_COUNTERS = ("captured", "forwarded", "received", "reemitted", "dropped")
MAX_DISCOVERY_PORTS = 64  # ports plus group:port pairs: the BPF program stays small
DROP_REASONS = ("not_local", "rate_limited", "too_large", "no_peers", "send_error", "not_peer", "malformed",
                "spoofed", "not_allowed", "duplicate", "emit_error", "internal_error")


class BroadcastError(MeshError):
    """The emulator cannot run (no root, no interface, port taken)."""


@dataclass(frozen=True)
class BroadcastConfig:
    interface: str  # the WireGuard interface
    virtual_ip: str  # this node's address on it
    ports: tuple[int, ...]  # game discovery ports for broadcasts (and for every group in ``groups``)
    subnet: str = "10.66.0.0/16"
    groups: tuple[str, ...] = ()  # multicast groups carried on any of ``ports``
    # Multicast groups each carried on its own port only, e.g. (("239.255.255.250", 1900),) for SSDP.
    group_ports: tuple[tuple[str, int], ...] = ()
    tunnel_port: int = DEFAULT_PORT
    max_payload: int = 1400
    rate_per_s: float = 50.0  # per local source (ip, port) and per remote origin
    burst: int = 100
    dedup_size: int = 4096
    max_sources: int = 1024  # rate-limiter buckets kept
    # Also carry broadcasts to the directed broadcast address of this host's other
    # interfaces (e.g. 192.168.1.255): some games broadcast on their LAN's subnet.
    lan_broadcasts: bool = True

    def __post_init__(self) -> None:
        pairs = len(self.ports) + len(self.group_ports)
        if not 0 < pairs <= MAX_DISCOVERY_PORTS or any(not 0 < p < 65536 for p in self.capture_ports):
            raise ValueError(f"broadcast ports and group ports: 1 to {MAX_DISCOVERY_PORTS} in all, "
                             "each in 1-65535")
        if self.tunnel_port in self.capture_ports:
            raise ValueError("the broadcast tunnel port cannot be a game port")
        for group in (*self.groups, *(group for group, _ in self.group_ports)):
            if not ipaddress.IPv4Address(group).is_multicast:
                raise ValueError(f"{group} is not a multicast group")
        if ipaddress.IPv4Address(self.virtual_ip) not in ipaddress.IPv4Network(self.subnet):
            raise ValueError(f"{self.virtual_ip} is not in {self.subnet}")
        if not 0 < self.max_payload <= 65507 - wire.HEADER_SIZE:
            raise ValueError("max payload out of range")

    @property
    def subnet_broadcast(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).broadcast_address)

    @property
    def all_groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.groups, *(group for group, _ in self.group_ports))))

    @property
    def destinations(self) -> tuple[str, ...]:
        return (LIMITED_BROADCAST, self.subnet_broadcast, *self.all_groups)

    @property
    def capture_ports(self) -> tuple[int, ...]:
        return tuple(sorted({*self.ports, *(port for _, port in self.group_ports)}))

    def carries(self, destination: str, port: int) -> bool:
        """Whether a datagram to ``destination:port`` is carried (a LAN broadcast counts as limited)."""
        if (destination, port) in self.group_ports:
            return True
        return port in self.ports and destination in (LIMITED_BROADCAST, self.subnet_broadcast, *self.groups)


def counter_key(destination: str) -> str:
    """Per-port counters are kept by destination kind: the group, or ``broadcast``."""
    return destination if ipaddress.IPv4Address(destination).is_multicast else BROADCAST


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Limiter:
    rate: float
    burst: int
    max_keys: int
    buckets: collections.OrderedDict[object, _Bucket] = field(default_factory=collections.OrderedDict)

    def allow(self, key: object, now: float) -> bool:
        bucket = self.buckets.pop(key, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self.buckets[key] = bucket
        while len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


class _Lru:
    def __init__(self, size: int) -> None:
        self._items: collections.OrderedDict[object, float] = collections.OrderedDict()
        self._size = size

    def seen(self, key: object, now: float) -> bool:
        """True if `key` was added before; adds it otherwise (the oldest fall out)."""
        if key in self._items:
            return True
        self._items[key] = now
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return False


class BroadcastEmulator:
    """Start inside the node's network namespace, after the WireGuard interface exists."""

    def __init__(self, config: BroadcastConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._peers: dict[str, str] = {}  # peer virtual IP -> our address that peer knows
        self._lock = threading.Lock()
        self._counters: dict[str, int] = dict.fromkeys(
            ("captured", "forwarded", "received", "reemitted"), 0)
        self._dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        # (destination kind, port) -> counters; the keys are the configured ones, so this is bounded.
        self._by_port: dict[tuple[str, int], dict[str, int]] = {}
        self._dedup = _Lru(config.dedup_size)
        self._local: dict[str, tuple[bool, float]] = {}
        self._out_limit = _Limiter(config.rate_per_s, config.burst, config.max_sources)
        self._in_limit = _Limiter(config.rate_per_s, config.burst, config.max_sources)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sockets: list[socket.socket] = []
        self._tunnel: socket.socket | None = None
        self.joined: list[tuple[str, str]] = []  # (group, interface) memberships held
        self._directed: frozenset[str] = frozenset()  # other interfaces' subnet broadcasts
        self._emit: socket.socket | None = None
        self._msg_prefix = int.from_bytes(os.urandom(4), "big") << 32
        self._msg_seq = 0

    # -- control ----------------------------------------------------------------------
    def set_peers(self, virtual_ips: Iterable[str] | Mapping[str, str]) -> None:
        """The peers' virtual IPs; or a map peer -> this node's address in that peer's party
        (a node in several parties has one address per party; default: ``virtual_ip``)."""
        subnet = ipaddress.IPv4Network(self.config.subnet)
        pairs = virtual_ips.items() if isinstance(virtual_ips, Mapping) else \
            ((ip, self.config.virtual_ip) for ip in virtual_ips)
        peers: dict[str, str] = {}
        for peer, ours in pairs:
            peer_ip, our_ip = ipaddress.IPv4Address(peer), ipaddress.IPv4Address(ours)
            if our_ip not in subnet:
                raise ValueError(f"{ours} is not in {subnet}")
            peers[str(peer_ip)] = str(our_ip)
        mine = {self.config.virtual_ip, *peers.values()}
        self._peers = {peer: ours for peer, ours in peers.items() if peer not in mine}  # one atomic swap

    @property
    def peers(self) -> frozenset[str]:
        return frozenset(self._peers)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {**self._counters, **{f"dropped_{k}": v for k, v in self._dropped.items()}}

    def port_counters(self) -> dict[tuple[str, int], dict[str, int]]:
        """Totals since start per (``broadcast`` or group, port), for the ones that saw traffic."""
        with self._lock:
            return {key: dict(values) for key, values in self._by_port.items()}

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        try:
            self._open()
        except OSError as error:
            self.stop()
            raise BroadcastError(f"broadcast emulation on {self.config.interface} cannot start: "
                                 f"{error.strerror or error} (it needs root and the interface)") from error
        except BaseException:
            self.stop()
            raise

    def _open(self) -> None:
        cfg = self.config
        capture = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self._sockets.append(capture)
        if cfg.lan_broadcasts:
            directed = directed_broadcasts(exclude=cfg.interface)[:32]  # the BPF program stays small
            self._directed = frozenset(directed) - set(cfg.destinations)
        packet.attach_filter(capture, packet.capture_filter((*cfg.destinations, *sorted(self._directed)),
                                                            cfg.capture_ports))
        capture.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        tunnel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sockets.append(tunnel)
        # Only what arrived through WireGuard: there the source address is authenticated.
        tunnel.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, cfg.interface.encode())
        tunnel.bind(("0.0.0.0", cfg.tunnel_port))
        self._tunnel = tunnel
        self._emit = self._raw_emitter(cfg.interface)
        if cfg.all_groups:
            # A locally sent multicast is looped into local delivery (and so to the capture
            # socket) only if the host is a member of the group: join on every interface.
            for _index, name in socket.if_nameindex():
                for group in cfg.all_groups:
                    mreq = socket.inet_aton(group) + struct_mreqn_ifindex(name)
                    try:
                        tunnel.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                        self.joined.append((group, name))
                    except OSError:
                        continue  # e.g. an interface without IFF_MULTICAST
        self._thread = threading.Thread(target=self._run, args=(capture, tunnel), name="broadcast",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout_s)
        for sock in [*self._sockets, self._wake_r, self._wake_w]:
            sock.close()
        self._sockets.clear()
        if self._emit is not None:
            self._emit.close()
            self._emit = None

    def __enter__(self) -> BroadcastEmulator:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the loop ---------------------------------------------------------------------
    def _run(self, capture: socket.socket, tunnel: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(capture, selectors.EVENT_READ, self._on_capture)
        selector.register(tunnel, selectors.EVENT_READ, self._on_tunnel)
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=1.0):
                    if key.data is None:
                        return
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    for _ in range(64):  # drain a burst, bounded, then look at the others
                        try:
                            data, addr = sock.recvfrom(65535, socket.MSG_DONTWAIT)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            if self._stop.is_set():
                                return
                            break
                        try:
                            key.data(data, addr)
                        except Exception:  # one bad datagram must not end the emulator
                            self._drop("internal_error")
        finally:
            selector.close()

    def _count(self, name: str, n: int = 1, port: tuple[str, int] | None = None) -> None:
        with self._lock:
            self._counters[name] += n
            if port is not None:
                self._port_count(port, name, n)

    def _drop(self, reason: str, port: tuple[str, int] | None = None) -> None:
        with self._lock:
            self._dropped[reason] += 1
            if port is not None:
                self._port_count(port, "dropped", 1)

    def _port_count(self, port: tuple[str, int], name: str, n: int) -> None:
        values = self._by_port.get(port)
        if values is None:
            values = self._by_port[port] = dict.fromkeys(PORT_COUNTERS, 0)
        values[name] += n

    def _is_local(self, address: str, now: float) -> bool:
        cached = self._local.get(address)
        if cached is not None and now - cached[1] < 5.0:
            return cached[0]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((address, 0))  # succeeds only for one of this host's own addresses
            local = True
        except OSError:
            local = False
        finally:
            probe.close()
        if len(self._local) > 256:
            self._local.clear()
        self._local[address] = (local, now)
        return local

    def _on_capture(self, data: bytes, _addr: object) -> None:
        cfg = self.config
        dgram = packet.parse_ipv4_udp(data)
        if dgram is None:
            return  # the BPF filter already keeps these out
        dst = dgram.dst
        if dst in self._directed:
            dst = LIMITED_BROADCAST  # the peers' LANs have other subnets: deliver as a LAN-wide broadcast
        if not cfg.carries(dst, dgram.dst_port):
            return  # another group's port (the filter takes every configured group on every port)
        now = self._clock()
        if dgram.src in self._peers or not self._is_local(dgram.src, now):
            self._drop("not_local")
            return
        port = (counter_key(dst), dgram.dst_port)
        self._count("captured", port=port)
        if len(dgram.payload) > cfg.max_payload:
            self._drop("too_large", port)
            return
        if not self._out_limit.allow((dgram.src, dgram.src_port), now):
            self._drop("rate_limited", port)
            return
        peers = self._peers
        if not peers:
            self._drop("no_peers", port)
            return
        self._msg_seq = (self._msg_seq + 1) & 0xFFFFFFFF
        msg_id = self._msg_prefix | self._msg_seq
        wrapped: dict[str, bytes] = {}
        sock = self._tunnel
        assert sock is not None
        for peer, ours in sorted(peers.items()):
            if ours not in wrapped:
                wrapped[ours] = wire.Wrapped(ours, dgram.src_port, dst, dgram.dst_port, msg_id,
                                             dgram.payload).encode()
            # The source must be the address this peer knows us by: its WireGuard drops any other.
            pktinfo = struct.pack("i4s4s", 0, socket.inet_aton(ours), bytes(4))
            try:
                sock.sendmsg([wrapped[ours]], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0,
                             (peer, cfg.tunnel_port))
                self._count("forwarded", port=port)
            except OSError:
                self._drop("send_error", port)

    def _on_tunnel(self, data: bytes, addr: tuple[str, int]) -> None:
        cfg = self.config
        source = addr[0]
        if source not in self._peers:
            self._drop("not_peer")
            return
        try:
            msg = wire.decode(data, cfg.max_payload)
        except wire.WireError:
            self._drop("malformed")
            return
        if msg.origin != source:
            self._drop("spoofed")
            return
        if not cfg.carries(msg.dst, msg.dst_port):
            self._drop("not_allowed")
            return
        port = (counter_key(msg.dst), msg.dst_port)
        self._count("received", port=port)
        now = self._clock()
        if self._dedup.seen((msg.origin, msg.msg_id), now):
            self._drop("duplicate", port)
            return
        if not self._in_limit.allow(msg.origin, now):
            self._drop("rate_limited", port)
            return
        try:
            self._reemit(msg)
            self._count("reemitted", port=port)
        except OSError:
            self._drop("emit_error", port)

    def _reemit(self, msg: wire.Wrapped) -> None:
        # Multicast with TTL 0 is looped back into this host and then dropped before the wire
        # (we joined the group on every interface, so the loopback is accepted); broadcast
        # goes out with TTL 1 to WireGuard, which has no peer for it and drops it.
        ttl = 0 if ipaddress.IPv4Address(msg.dst).is_multicast else 1
        raw = packet.build_ipv4_udp(msg.origin, msg.src_port, msg.dst, msg.dst_port, msg.payload, ttl)
        assert self._emit is not None
        self._emit.sendto(raw, (msg.dst, 0))

    @staticmethod
    def _raw_emitter(interface: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # implies IP_HDRINCL
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        return sock  # IPPROTO_RAW sockets never receive: nothing to drain


def struct_mreqn_ifindex(name: str) -> bytes:
    """The tail of a `struct ip_mreqn`: local address 0.0.0.0 and the interface index."""
    return socket.inet_aton("0.0.0.0") + socket.if_nametoindex(name).to_bytes(4, "little")


SIOCGIFFLAGS, SIOCGIFADDR, SIOCGIFNETMASK = 0x8913, 0x8915, 0x891B
IFF_LOOPBACK = 0x8


def directed_broadcasts(exclude: str = "") -> list[str]:
    """The subnet broadcast of each interface's primary IPv4 address (but `exclude`'s).

    Computed from address and prefix: Linux adds a broadcast route for it whether or not
    the address was given a `brd`, so that is what a program sending there reaches.
    """
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            if name == exclude:
                continue
            request = struct.pack("16s16x", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(sock, SIOCGIFFLAGS, request), 16)[0]
                if flags & IFF_LOOPBACK:
                    continue
                address = socket.inet_ntoa(fcntl.ioctl(sock, SIOCGIFADDR, request)[20:24])
                netmask = socket.inet_ntoa(fcntl.ioctl(sock, SIOCGIFNETMASK, request)[20:24])
            except OSError:
                continue  # no IPv4 address
            network = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
            if network.prefixlen < 31 and str(network.broadcast_address) not in found:
                found.append(str(network.broadcast_address))
    return found
