"""The network adapters the edge uses, from a picklable spec.

A spec names a factory (``"package.module:function"`` with keyword arguments), or a
bundle an in-process owner registered under a name (``AdapterSpec.of(REGISTERED,
name=...)``): the agent builds its real adapters itself, because they reach its own
control sessions (relay tickets) and its WireGuard interface.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from actors.messages import AdapterSpec
from mesh.interfaces import (
    HolePuncher,
    LatencyProber,
    LocalInterface,
    NatDetector,
    RelayClient,
    WireGuard,
)

REGISTERED = "registered"


@dataclass(frozen=True)
class Adapters:
    wireguard: WireGuard
    prober: LatencyProber
    puncher: HolePuncher
    relay_client: RelayClient
    nat_detector: NatDetector
    interface: LocalInterface


class AdapterSpecError(ValueError):
    pass


_cache: dict[AdapterSpec, Adapters] = {}
_registered: dict[str, Any] = {}


def register_adapters(name: str, bundle: Any) -> AdapterSpec:
    """Make ``bundle`` (with the attributes of ``Adapters``) the adapters of a spec; returns it."""
    _registered[name] = bundle
    spec = AdapterSpec.of(REGISTERED, name=name)
    _cache.pop(spec, None)
    return spec


def unregister_adapters(name: str) -> None:
    _registered.pop(name, None)
    _cache.pop(AdapterSpec.of(REGISTERED, name=name), None)


def build_adapters(spec: AdapterSpec) -> Adapters:
    """One bundle per spec: every actor of the process shares the same adapters."""
    if spec not in _cache:
        kwargs = dict(spec.kwargs)
        if spec.factory == REGISTERED:
            if kwargs.get("name") not in _registered:
                raise AdapterSpecError(f"no adapters registered as {kwargs.get('name')!r}")
            bundle: Any = _registered[kwargs["name"]]
        else:
            module_name, _, function_name = spec.factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), function_name)
            except (ImportError, AttributeError) as error:
                raise AdapterSpecError(f"adapter factory {spec.factory!r} not found: {error}") from None
            bundle = factory(**kwargs)
        _cache[spec] = Adapters(
            wireguard=bundle.wireguard, prober=bundle.prober, puncher=bundle.puncher,
            relay_client=bundle.relay_client, nat_detector=bundle.nat_detector,
            interface=bundle.interface)
    return _cache[spec]
