"""NAT traversal: STUN detection and coordinated hole punching (see docs/nat-relay.md)."""

from mesh.nat.punch import UdpHolePuncher, should_try_direct
from mesh.nat.stun import StunNatDetector, nat_event

__all__ = ["StunNatDetector", "UdpHolePuncher", "nat_event", "should_try_direct"]
