"""Simulated adapters for the interfaces of mesh/interfaces.py (deterministic, in memory)."""

from mesh.sim.network import (
    SimAdapters,
    SimInterface,
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

__all__ = ["SimAdapters", "SimInterface", "SimNatDetector", "SimNetwork", "SimProber", "SimPuncher",
           "SimRelayClient", "SimWireGuard", "adapters", "network", "reset"]
