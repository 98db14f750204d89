"""Simulated adapters for the interfaces of mesh/interfaces.py (deterministic, in memory)."""

from mesh.sim.network import (
    SimAdapters,
    SimNatDetector,
    SimNetwork,
    SimProber,
    SimPuncher,
    SimRelayClient,
    SimWireGuard,
    adapters,
    network,
    reset,
)

__all__ = ["SimAdapters", "SimNatDetector", "SimNetwork", "SimProber", "SimPuncher",
           "SimRelayClient", "SimWireGuard", "adapters", "network", "reset"]
