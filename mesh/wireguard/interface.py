"""One WireGuard interface of this node: created, configured, reconciled, removed.

Kernel WireGuard is used when the kernel has it (``implementation="auto"``), else
``wireguard-go`` is started in the foreground (``WG_PROCESS_FOREGROUND=1``) so that
its PID is ours to track; links and addresses go through pyroute2. A small record
in ``<state_dir>/wireguard/<name>.json`` (no secrets) remembers the process and
which peers are ours, so that after a crash the interface is adopted and
reconciled without touching peers someone else added.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mesh.interfaces import PeerStats
from mesh.keys import PrivateKey, validate_public_key
from mesh.wireguard import record as records
from mesh.wireguard.config import (
    DEFAULT_INTERFACE,
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MTU,
    ObservedDevice,
    ObservedPeer,
    PeerConfig,
    validate_address,
    validate_interface_name,
)
from mesh.wireguard.device import (
    Device,
    NetlinkDevice,
    UapiDevice,
    remove_stale_socket,
    uapi_socket_live,
    uapi_socket_path,
)
from mesh.wireguard.errors import (
    InterfaceExistsError,
    InterfaceNotFoundError,
    InvalidConfigError,
    NotRootError,
    WireGuardError,
    WireGuardGoMissingError,
)

AUTO, KERNEL, USERSPACE = "auto", "kernel", "userspace"
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 3.0
CAP_NET_ADMIN = 12


@dataclass(frozen=True)
class ReconcileReport:
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    interface_fixed: tuple[str, ...] = ()  # e.g. "address", "mtu", "up", "recreated"

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.interface_fixed)


def _has_net_admin() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return False


def _pid_start(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class WireGuardInterface:
    """Implements ``mesh.interfaces.WireGuard``. Make one with ``WireGuardInterface.create``."""

    def __init__(self, *, name: str, private_key: PrivateKey, address: str, mtu: int, listen_port: int,
                 netns: str | None, implementation: str, wireguard_go: str, state_dir: Path | None,
                 log_path: Path | None) -> None:
        self._name = name
        self._key = private_key
        self._address = address
        self._mtu = mtu
        self._wanted_port = listen_port
        self._listen_port = listen_port
        self._netns = netns
        self._implementation = implementation
        self._wireguard_go = wireguard_go
        self._state_dir = state_dir
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._pid_start: int | None = None
        self._managed: set[str] = set()
        self._owns_link = False  # never delete a link someone else made
        self._lock = threading.RLock()
        self._closed = False
        self._owner_pid = os.getpid()  # a forked child (e.g. an actor) must never tear it down

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(cls, private_key: PrivateKey, address: str, *, name: str = DEFAULT_INTERFACE,
               listen_port: int = 0, mtu: int = DEFAULT_MTU, state_dir: Path | None = None,
               netns: str | None = None, implementation: str = AUTO, wireguard_go: str = "wireguard-go",
               adopt: bool = True) -> WireGuardInterface:
        """Create the interface with its key, port, address and MTU, and bring it up.

        ``netns`` runs it in that named namespace (default: this process's own). With
        ``adopt`` and a record in ``state_dir`` showing that an existing interface of that
        name is ours (same public key), it is adopted instead (after a crash). Raises
        ``InvalidConfigError``, ``NotRootError``, ``InterfaceExistsError``,
        ``WireGuardGoMissingError`` or ``WireGuardError``; on any failure nothing is left.
        """
        if not isinstance(private_key, PrivateKey):
            raise InvalidConfigError("private_key must be a mesh.keys.PrivateKey")
        validate_interface_name(name)
        validate_address(address)
        if not isinstance(mtu, int) or not 1280 <= mtu <= 9000:
            raise InvalidConfigError(f"invalid MTU {mtu!r}: 1280-9000")
        if not isinstance(listen_port, int) or not 0 <= listen_port <= 65535:
            raise InvalidConfigError(f"invalid listen port {listen_port!r}: 0-65535 (0 picks one)")
        if implementation not in (AUTO, KERNEL, USERSPACE):
            raise InvalidConfigError(f"invalid implementation {implementation!r}: auto, kernel or userspace")
        if not _has_net_admin():
            raise NotRootError("creating a WireGuard interface needs root (CAP_NET_ADMIN)")
        if netns is not None and not Path(f"/var/run/netns/{netns}").exists():
            raise InvalidConfigError(f"no network namespace {netns!r}")
        log_path = state_dir / "wireguard" / f"{name}.log" if state_dir else None
        iface = cls(name=name, private_key=private_key, address=address, mtu=mtu, listen_port=listen_port,
                    netns=netns, implementation=implementation, wireguard_go=wireguard_go,
                    state_dir=state_dir, log_path=log_path)
        if iface._link_index() is not None or uapi_socket_live(name):
            if not (adopt and iface._adopt()):
                raise InterfaceExistsError(f"interface name {name} is taken (a link here, or a wireguard-go "
                                           "socket in any namespace); choose another name")
            return iface
        iface._bring_up()
        return iface

    def _bring_up(self) -> None:
        """Start the device and configure it; on failure remove everything, then raise."""
        try:
            self._start()
            self._configure_device()
            self._configure_link()
            self._save()
        except BaseException:
            self._destroy()
            raise

    def _start(self) -> None:
        remove_stale_socket(self._name)
        if self._implementation in (AUTO, KERNEL):
            failure = self._start_kernel()
            if failure is None:
                self._implementation = KERNEL
                return
            if self._implementation == KERNEL:
                raise WireGuardError(f"kernel WireGuard unavailable: {failure}")
        self._implementation = USERSPACE
        self._start_userspace()

    def _start_kernel(self) -> str | None:
        try:
            with self._ipr() as ipr:
                ipr.link("add", ifname=self._name, kind="wireguard")
                self._owns_link = True
        except NetlinkError as error:
            if error.code == errno.EEXIST:
                raise InterfaceExistsError(f"interface name {self._name} is taken; choose another name"
                                           ) from None
            if error.code == errno.EPERM:
                raise NotRootError("creating a WireGuard interface needs root (CAP_NET_ADMIN)") from None
            return str(error)
        return None

    def _start_userspace(self) -> None:
        binary = shutil.which(self._wireguard_go)
        if binary is None:
            raise WireGuardGoMissingError(f"no kernel WireGuard and {self._wireguard_go!r} not found; "
                                          "install the wireguard-go package")
        argv = [binary, self._name]
        if self._netns:
            argv = ["ip", "netns", "exec", self._netns, *argv]
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1",
               "LOG_LEVEL": os.environ.get("LANRAGE_WG_LOG_LEVEL", "error")}
        out: Any = subprocess.DEVNULL
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out = open(self._log_path, "ab")  # noqa: SIM115 (handed to the child)
        try:
            # Its own session: a Ctrl-C meant for the agent must not kill the tunnel
            # before the agent removes it, and a crashed agent's tunnel stays adoptable.
            self._process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self._owns_link = True
        self._pid = self._process.pid
        self._pid_start = _pid_start(self._pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise WireGuardError(f"wireguard-go exited with status {self._process.returncode} while "
                                     f"creating {self._name}{self._log_hint()}")
            if uapi_socket_live(self._name) and self._link_index() is not None:
                return
            time.sleep(0.02)
        raise WireGuardError(f"wireguard-go did not create {self._name} within {START_TIMEOUT_S:g}s"
                             f"{self._log_hint()}")

    def _log_hint(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        tail = self._log_path.read_text(errors="replace").strip().splitlines()[-1:]
        return f": {tail[0]}" if tail else ""

    def _configure_device(self) -> None:
        device = self._device()
        device.set_interface(self._key, self._wanted_port or None)
        observed = device.read()
        self._listen_port = observed.listen_port

    def _configure_link(self) -> list[str]:
        """Make address, MTU and state exactly what we want; returns what it fixed."""
        fixed = []
        wanted = validate_address(self._address)
        with self._ipr() as ipr:
            index = self._link_index(ipr)
            if index is None:
                raise InterfaceNotFoundError(f"interface {self._name} is gone")
            link = ipr.get_links(index)[0]
            family = socket.AF_INET if wanted.version == 4 else socket.AF_INET6
            current = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                       for a in ipr.get_addr(index=index, family=family)
                       if not str(a.get_attr("IFA_ADDRESS")).startswith("fe80:")}
            want = (str(wanted.ip), wanted.network.prefixlen)
            for address, prefixlen in current - {want}:
                ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
                fixed.append("address")
            if want not in current:
                ipr.addr("add", index=index, address=want[0], prefixlen=want[1])
                fixed.append("address")
            if link.get_attr("IFLA_MTU") != self._mtu:
                ipr.link("set", index=index, mtu=self._mtu)
                fixed.append("mtu")
            if not link["flags"] & 1:  # IFF_UP
                ipr.link("set", index=index, state="up")
                fixed.append("up")
        return sorted(set(fixed))

    def _adopt(self) -> bool:
        record = self._load()
        if record is None or record.public_key != self._key.public_key or record.netns != self._netns:
            return False
        try:
            observed = self._device(record.implementation).read()
        except WireGuardError:
            return False
        if observed.public_key != self._key.public_key:
            return False
        self._implementation = record.implementation
        self._owns_link = True
        if record.pid and _pid_start(record.pid) == record.pid_start:
            self._pid, self._pid_start = record.pid, record.pid_start
        self._managed = set(record.managed_peers)
        self._listen_port = observed.listen_port
        if self._wanted_port and self._wanted_port != observed.listen_port:
            self._configure_device()
        self._configure_link()
        self._save()
        return True

    # ------------------------------------------------------------------ plumbing

    def _ipr(self) -> IPRoute:
        if self._netns:
            return IPRoute(netns=self._netns, flags=0)
        return IPRoute()

    def _link_index(self, ipr: IPRoute | None = None) -> int | None:
        if ipr is None:
            with self._ipr() as own:
                return self._link_index(own)
        found = ipr.link_lookup(ifname=self._name)
        return found[0] if found else None

    def _device(self, implementation: str | None = None) -> Device:
        if (implementation or self._implementation) == KERNEL:
            if self._netns:
                raise WireGuardError("kernel WireGuard in another namespace: run the agent inside it")
            return NetlinkDevice(self._name)
        return UapiDevice(self._name)

    def _record_path(self) -> Path | None:
        return records.record_path(self._state_dir, self._name) if self._state_dir else None

    def _load(self) -> records.InterfaceRecord | None:
        path = self._record_path()
        return records.load(path) if path else None

    def _save(self, managed: Callable[[set[str]], set[str]] | None = None) -> None:
        """Store the record; ``managed`` maps the stored set of our peers to the new one.

        The stored set wins over ours: the edge adds peers to it (``PeerController``).
        """
        def change(old: records.InterfaceRecord | None) -> records.InterfaceRecord:
            current = set(old.managed_peers) if old and old.public_key == self.public_key else self._managed
            self._managed = managed(set(current)) if managed else set(current)
            return records.InterfaceRecord(
                name=self._name, public_key=self._key.public_key, implementation=self._implementation,
                netns=self._netns, pid=self._pid, pid_start=self._pid_start,
                managed_peers=sorted(self._managed))

        path = self._record_path()
        if path is None:
            self._managed = managed(set(self._managed)) if managed else self._managed
            return
        records.update(path, change)

    def _stop_process(self) -> None:
        pid = self._pid
        if pid is None or _pid_start(pid) != self._pid_start:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                break
            if self._process is None and (_pid_start(pid) is None or _is_zombie(pid)):
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=STOP_TIMEOUT_S)
        self._pid = self._pid_start = None

    def _destroy(self) -> None:
        """Remove the process, link, socket and record: nothing half-made stays."""
        if os.getpid() != self._owner_pid:
            return
        self._stop_process()
        if self._owns_link:
            with contextlib.suppress(Exception), self._ipr() as ipr:
                index = self._link_index(ipr)
                if index is not None:
                    ipr.link("del", index=index)
        self._owns_link = False
        remove_stale_socket(self._name)
        path = self._record_path()
        if path is not None:
            records.update(path, lambda _old: None)

    # ------------------------------------------------------------------ the WireGuard protocol

    @property
    def name(self) -> str:
        return self._name

    @property
    def public_key(self) -> str:
        return self._key.public_key

    @property
    def listen_port(self) -> int:
        return self._listen_port

    @property
    def address(self) -> str:
        return self._address

    @property
    def implementation(self) -> str:
        """``kernel`` or ``userspace`` (wireguard-go)."""
        return self._implementation

    @property
    def pid(self) -> int | None:
        """The wireguard-go process, if userspace."""
        return self._pid

    @property
    def managed_peers(self) -> frozenset[str]:
        """The peers that are ours (including those added by a ``PeerController``)."""
        stored = self._load()
        if stored is not None and stored.public_key == self.public_key:
            return frozenset(stored.managed_peers)
        return frozenset(self._managed)

    def configure_peer(self, public_key: str, endpoint: str | None, allowed_ips: Sequence[str],
                       keepalive_s: int = DEFAULT_KEEPALIVE_S) -> None:
        """Add the peer, or update it in place (idempotent)."""
        peer = PeerConfig.make(public_key, endpoint, allowed_ips, keepalive_s)
        if peer.public_key == self.public_key:
            raise InvalidConfigError("a peer cannot have this interface's own public key")
        with self._lock:
            self._check_open()
            # Recorded before the device: a crash in between still knows the peer is ours.
            self._save(lambda managed: managed | {peer.public_key})
            self._device().set_peer(peer)

    def remove_peer(self, public_key: str) -> None:
        """Remove the peer if present (idempotent)."""
        key = validate_public_key(public_key)
        with self._lock:
            self._check_open()
            if key in self._device().read().peers:
                self._device().remove_peer(key)
            self._save(lambda managed: managed - {key})

    def peer_stats(self) -> dict[str, PeerStats]:
        return {key: PeerStats(public_key=key, endpoint=peer.endpoint, last_handshake=peer.last_handshake,
                               rx_bytes=peer.rx_bytes, tx_bytes=peer.tx_bytes)
                for key, peer in self.peers().items()}

    # ------------------------------------------------------------------ beyond the protocol

    def read(self) -> ObservedDevice:
        with self._lock:
            self._check_open()
            return self._device().read()

    def peers(self) -> dict[str, ObservedPeer]:
        return self.read().peers

    @property
    def alive(self) -> bool:
        try:
            self.read()
        except WireGuardError:
            return False
        return self._link_index() is not None

    @property
    def gone(self) -> bool:
        """The device is certainly not there: its link was deleted, or no wireguard-go serves its
        socket (it exited). Unlike ``alive``, a slow answer does not count as gone."""
        with self._lock:
            if self._closed or self._link_index() is None:
                return True
            return self._implementation == USERSPACE and not uapi_socket_live(self._name)

    def reconcile(self, desired: Iterable[PeerConfig]) -> ReconcileReport:
        """Make the interface and our peers exactly ``desired``; peers not ours stay.

        Recreates the interface if it vanished, restores key, port, address, MTU and
        up state, adds missing peers, rewrites drifted ones and removes ours that are
        no longer wanted. Idempotent: a second call reports no change.
        """
        wanted = {}
        for peer in desired:
            if not isinstance(peer, PeerConfig):
                raise InvalidConfigError("reconcile takes PeerConfig values (PeerConfig.make)")
            wanted[peer.public_key] = peer
        with self._lock:
            self._check_open()
            fixed: list[str] = []
            if not self.alive:
                self._destroy()
                self._bring_up()
                fixed.append("recreated")
            device = self._device()
            observed = device.read()
            if observed.public_key != self.public_key or (
                    self._wanted_port and observed.listen_port != self._wanted_port):
                self._configure_device()
                fixed.append("key/port")
            fixed += self._configure_link()
            self._save(lambda managed: managed | set(wanted))
            added, updated, removed = [], [], []
            for key, peer in wanted.items():
                current = observed.peers.get(key)
                if current is None:
                    device.set_peer(peer)
                    added.append(key)
                elif not current.matches(peer):
                    device.set_peer(peer)
                    updated.append(key)
            for key in sorted(self._managed - set(wanted)):
                if key in observed.peers:
                    device.remove_peer(key)
                    removed.append(key)
            self._save(lambda _managed: set(wanted))
            self._listen_port = device.read().listen_port
        return ReconcileReport(tuple(added), tuple(updated), tuple(removed), tuple(fixed))

    def close(self, remove: bool = True) -> None:
        """Remove the interface (default), or only let go of it so it can be adopted later."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if remove:
                self._destroy()

    def _check_open(self) -> None:
        if self._closed:
            raise WireGuardError(f"interface {self._name} was closed")

    def __enter__(self) -> WireGuardInterface:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<WireGuardInterface {self._name} {self._implementation} {self._address} "
                f"port={self._listen_port} public_key={self.public_key}>")


__all__ = ["AUTO", "KERNEL", "USERSPACE", "ReconcileReport", "WireGuardInterface", "uapi_socket_path"]
