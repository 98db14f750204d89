"""``PeerController``: configure peers of an interface another process owns.

The agent owns the interface (``WireGuardInterface``); the actors' edge only adds,
update and remove peers and read their counters. They go through the UAPI socket
(wireguard-go) like ``wg`` does, and record each peer as ours in the owner's record
(when it has a ``state_dir``), so that the owner's ``reconcile`` after a crash can
still tell our peers from someone else's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.interfaces import PeerStats
from mesh.keys import validate_public_key
from mesh.wireguard import record as records
from mesh.wireguard.config import DEFAULT_KEEPALIVE_S, PeerConfig, validate_interface_name
from mesh.wireguard.device import Device, UapiDevice
from mesh.wireguard.errors import InvalidConfigError


class PeerController:
    """Implements ``mesh.interfaces.WireGuard`` for a process that does not own the interface."""

    def __init__(self, name: str, state_dir: Path | None = None, device: Device | None = None) -> None:
        self._name = validate_interface_name(name)
        self._device = device or UapiDevice(name)
        self._record = records.record_path(state_dir, name) if state_dir else None
        observed = self._device.read()  # fails now (InterfaceNotFoundError) if there is no interface
        self._public_key = observed.public_key or ""
        self._listen_port = observed.listen_port

    @property
    def public_key(self) -> str:
        return self._public_key

    @property
    def listen_port(self) -> int:
        return self._listen_port

    def _mark(self, key: str, ours: bool) -> None:
        if self._record is None:
            return

        def change(old: records.InterfaceRecord | None) -> records.InterfaceRecord | None:
            if old is None or old.public_key != self._public_key:
                return old  # not an interface the owner recorded: nothing to keep in step
            managed = set(old.managed_peers)
            managed = managed | {key} if ours else managed - {key}
            old.managed_peers = sorted(managed)
            return old

        records.update(self._record, change)

    def configure_peer(self, public_key: str, endpoint: str | None, allowed_ips: Sequence[str],
                       keepalive_s: int = DEFAULT_KEEPALIVE_S) -> None:
        peer = PeerConfig.make(public_key, endpoint, allowed_ips, keepalive_s)
        if peer.public_key == self._public_key:
            raise InvalidConfigError("a peer cannot have this interface's own public key")
        self._mark(peer.public_key, True)
        self._device.set_peer(peer)

    def remove_peer(self, public_key: str) -> None:
        key = validate_public_key(public_key)
        if key in self._device.read().peers:
            self._device.remove_peer(key)
        self._mark(key, False)

    def peer_stats(self) -> dict[str, PeerStats]:
        if isinstance(self._device, UapiDevice):
            return self._device.read_counters()
        return {key: PeerStats(public_key=key, endpoint=peer.endpoint, last_handshake=peer.last_handshake,
                               rx_bytes=peer.rx_bytes, tx_bytes=peer.tx_bytes)
                for key, peer in self._device.read().peers.items()}
