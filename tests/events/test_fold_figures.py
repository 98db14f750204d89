"""A connection's figures never outlive the state they were measured in."""

from __future__ import annotations

from events import types as ev
from events.fold import ConnectionState, apply_connection, fold_stream


def _state(frm: str | None, to: str, latency: float | None = None) -> ev.ConnectionStateChanged:
    return ev.ConnectionStateChanged(party_id="p", peer_id="bob", from_state=frm, to_state=to, reason="r",
                                     path="direct", latency_ms=latency)


def _sample(latency: float | None, loss: float) -> ev.MetricsSampled:
    return ev.MetricsSampled(party_id="p", peer_id="bob", window_s=30.0, probes=30, latency_ms=latency,
                             jitter_ms=2.0, loss=loss, rx_bytes=100, tx_bytes=200, quality=10.0)


def test_a_drop_clears_the_figures_and_a_recovery_starts_from_its_first_probe() -> None:
    up = fold_stream(apply_connection, ConnectionState(), [
        _state(None, "connecting"), _state("connecting", "connected", 20.0), _sample(25.0, 0.0),
        _sample(None, 1.0)])
    assert (up.latency_ms, up.loss) == (None, 1.0)
    down = apply_connection(up, _state("connected", "connecting"))
    assert (down.latency_ms, down.jitter_ms, down.loss, down.quality) == (None, None, None, None)
    back = apply_connection(down, _state("connecting", "connected", 21.0))
    assert (back.state, back.latency_ms, back.loss, back.quality) == ("connected", 21.0, None, None)
    assert (back.rx_bytes, back.tx_bytes) == (100, 200)  # counters are totals, not figures
    sampled = apply_connection(back, _sample(22.0, 0.0))
    degraded = apply_connection(sampled, _state("connected", "degraded", 300.0))
    assert (degraded.latency_ms, degraded.loss, degraded.quality) == (300.0, 0.0, 10.0)  # still up: kept
