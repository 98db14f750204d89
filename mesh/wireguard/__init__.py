"""The real WireGuard adapter (``mesh.interfaces.WireGuard``) on ``wireguard-tools``.

    from mesh.keys import load_or_create_private_key
    from mesh.wireguard import WireGuardInterface, PeerConfig

    key = load_or_create_private_key(state_dir / "wireguard.key")     # mode 0600
    wg = WireGuardInterface.create(key, "10.66.0.2/16", name="lanrage0", listen_port=51820,
                                   state_dir=state_dir)                # MTU 1420, up
    wg.configure_peer(peer_public_key, "203.0.113.101:51820", ["10.66.0.3/32"])  # keepalive 25
    wg.peer_stats()                     # {public_key: PeerStats(endpoint, last_handshake, rx, tx)}
    wg.reconcile([PeerConfig.make(...), ...])   # after a crash: exact, only our peers
    wg.remove_peer(peer_public_key)
    wg.close()                          # removes the interface (close(remove=False) leaves it)

Other processes (actors) configure peers of the owner's interface with
``PeerController(name, state_dir)``: same protocol, and the peers are recorded as ours.

Kernel WireGuard is used when present (netlink), else wireguard-go (UAPI socket).
Run it inside the node's namespace, or pass ``netns=`` to create it in a named one.
"""

from mesh.endpoints import parse_endpoint
from mesh.keys import InvalidKeyError, PrivateKey
from mesh.wireguard.config import (
    DEFAULT_INTERFACE,
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MTU,
    PeerConfig,
)
from mesh.wireguard.controller import PeerController
from mesh.wireguard.errors import (
    InterfaceExistsError,
    InterfaceNotFoundError,
    InvalidConfigError,
    InvalidEndpointError,
    NotRootError,
    PortInUseError,
    WireGuardError,
    WireGuardGoMissingError,
)
from mesh.wireguard.interface import AUTO, KERNEL, USERSPACE, ReconcileReport, WireGuardInterface

__all__ = ["AUTO", "DEFAULT_INTERFACE", "DEFAULT_KEEPALIVE_S", "DEFAULT_MTU", "KERNEL", "USERSPACE",
           "InterfaceExistsError", "InterfaceNotFoundError", "InvalidConfigError", "InvalidEndpointError",
           "InvalidKeyError", "NotRootError", "PeerConfig", "PeerController", "PortInUseError", "PrivateKey",
           "ReconcileReport", "WireGuardError", "WireGuardGoMissingError", "WireGuardInterface",
           "parse_endpoint"]
