"""LAN broadcast emulation over the WireGuard mesh (see docs/broadcast.md).

    from mesh.broadcast import BroadcastConfig, BroadcastEmulator

    emulator = BroadcastEmulator(BroadcastConfig(interface="lanrage0", virtual_ip="10.66.0.1",
                                                 ports=(4445, 27015)))
    emulator.start()                        # in the node's namespace, after the interface exists
    emulator.set_peers(["10.66.0.2", "10.66.0.3"])
    emulator.counters()                     # captured, forwarded, received, reemitted, dropped_*
    emulator.stop()
"""

from mesh.broadcast.emulator import DEFAULT_PORT, BroadcastConfig, BroadcastEmulator, BroadcastError
from mesh.broadcast.wire import WireError, Wrapped, decode

__all__ = ["DEFAULT_PORT", "BroadcastConfig", "BroadcastEmulator", "BroadcastError", "WireError", "Wrapped",
           "decode"]
