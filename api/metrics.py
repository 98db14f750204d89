"""Prometheus exposition of the projection: one gauge family per peer metric."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api.reader import remote_peers, summary
from events import types as ev
from events.fold import World

_PEER_LABELS = ["party", "peer", "name", "path"]
_PEER_GAUGES = (
    ("latency_ms", "lanrage_peer_latency_ms", "Last measured round trip to the peer's virtual IP."),
    ("jitter_ms", "lanrage_peer_jitter_ms", "Jitter of the last metrics window."),
    ("loss", "lanrage_peer_loss_ratio", "Probe loss of the last metrics window (0..1)."),
    ("quality", "lanrage_peer_quality", "Quality score of the last metrics window (0..100)."),
    ("rx_bytes", "lanrage_peer_rx_bytes", "Bytes received from the peer (WireGuard counter)."),
    ("tx_bytes", "lanrage_peer_tx_bytes", "Bytes sent to the peer (WireGuard counter)."),
    ("reconnects", "lanrage_peer_reconnects", "Reconnect attempts of the current connection."),
)


class WorldCollector(Collector):
    def __init__(self) -> None:
        self.world = World()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        peers = remote_peers(self.world)
        for field, name, help_text in _PEER_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=_PEER_LABELS)
            for peer in peers:
                if peer[field] is not None:
                    family.add_metric(self._labels(peer), float(peer[field]))
            yield family
        state = GaugeMetricFamily("lanrage_peer_state", "1 for the connection's current state.",
                                  labels=[*_PEER_LABELS, "state"])
        for peer in peers:
            for name in ev.CONNECTION_STATES:
                state.add_metric([*self._labels(peer), name], 1.0 if peer["state"] == name else 0.0)
        yield state
        totals = summary(self.world)
        yield GaugeMetricFamily("lanrage_parties", "Active parties of this node.", value=totals["parties"])
        yield GaugeMetricFamily("lanrage_peers", "Remote peers in active parties.", value=totals["peers"])
        yield GaugeMetricFamily("lanrage_event_log_position", "Global position of the newest event.",
                                value=self.world.position)

    @staticmethod
    def _labels(peer: dict) -> list[str]:  # type: ignore[type-arg]
        return [peer["party_id"], peer["peer_id"], peer["name"], peer["path"] or ""]


def new_registry() -> tuple[CollectorRegistry, WorldCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = WorldCollector()
    registry.register(collector)
    return registry, collector
