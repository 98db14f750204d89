"""Build the network adapters inside the actor's own process from a picklable spec."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from actors.messages import AdapterSpec
from mesh.interfaces import HolePuncher, LatencyProber, NatDetector, RelayClient, WireGuard


@dataclass(frozen=True)
class Adapters:
    wireguard: WireGuard
    prober: LatencyProber
    puncher: HolePuncher
    relay_client: RelayClient
    nat_detector: NatDetector


class AdapterSpecError(ValueError):
    pass


_cache: dict[tuple[int, AdapterSpec], Adapters] = {}


def build_adapters(spec: AdapterSpec) -> Adapters:
    """One bundle per spec and process: every actor of a process shares the same adapters."""
    key = (os.getpid(), spec)
    if key not in _cache:
        module_name, _, function_name = spec.factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise AdapterSpecError(f"adapter factory {spec.factory!r} not found: {error}") from None
        bundle: Any = factory(**dict(spec.kwargs))
        _cache[key] = Adapters(
            wireguard=bundle.wireguard, prober=bundle.prober, puncher=bundle.puncher,
            relay_client=bundle.relay_client, nat_detector=bundle.nat_detector)
    return _cache[key]
