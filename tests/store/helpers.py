"""Small builders shared by the store tests."""

from __future__ import annotations

from events import types as ev


def left(n: int = 0, peer: str = "q") -> ev.PeerLeft:
    return ev.PeerLeft(party_id="p", peer_id=peer, reason=f"r{n}")


def state(peer: str, to: str, frm: str | None = None,
          path: str | None = "direct") -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id=peer, from_state=frm, to_state=to,
                                     reason="test", path=path, endpoint="192.0.2.1:51820",
                                     latency_ms=12.5)


def metrics(peer: str, latency: float = 20.0) -> ev.MetricsSampled:
    return ev.MetricsSampled(party_id="p", peer_id=peer, window_s=10.0, probes=10, latency_ms=latency,
                             jitter_ms=1.5, loss=0.0, rx_bytes=1000, tx_bytes=2000, quality=97.5)
