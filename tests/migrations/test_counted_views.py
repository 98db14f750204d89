"""The views over counted repeats and metric samples in their own stream (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from events import types as ev
from events.streams import metrics_stream, peer_stream
from store import PendingEvent, open_store
from store.migrate import downgrade


def _pending(event: ev.Event) -> PendingEvent:
    return PendingEvent(event, {"node_id": "n1", "actor": "peer-connection/p/bob"})


def test_samples_in_their_own_stream_carry_the_path_of_their_connection(any_db_url: str) -> None:
    peer, samples = peer_stream("n1", "p", "bob"), metrics_stream("n1", "p", "bob")
    base = {"party_id": "p", "peer_id": "bob"}
    figures = {"probes": 12, "latency_ms": 40.0, "jitter_ms": 1.0, "loss": 0.0, "rx_bytes": 5,
               "tx_bytes": 6, "quality": 95.8}
    with open_store(any_db_url) as store:
        relay = "198.51.100.1:3478"
        store.append(peer, [_pending(ev.PathChosen(**base, path=ev.RELAY, reason="relay first",
                                                   endpoint=relay, relay=relay))], 0)
        store.append(samples, [_pending(ev.MetricsSampled(**base, window_s=60.0, **figures))], 0)
        store.append(peer, [_pending(ev.DirectPathRetried(**base, succeeded=False, reason="no answer")),
                            _pending(ev.DirectPathRetriesRepeated(**base, reason="no answer", count=7,
                                                                  first_at="2026-01-01T00:00:30+00:00",
                                                                  last_at="2026-01-01T00:03:30+00:00")),
                            _pending(ev.PathSwitched(**base, from_path=ev.RELAY, to_path=ev.DIRECT,
                                                     reason="direct path works again",
                                                     endpoint="203.0.113.2:51820"))], 1)
        run = ev.MetricsSampled(**base, window_s=900.0, windows=15, first_at="2026-01-01T00:04:00+00:00",
                                **figures)
        store.append(samples, [_pending(run)], 1)
    engine = create_engine(any_db_url)
    try:
        with engine.connect() as connection:
            metrics = connection.execute(text("SELECT stream_id, path, relay, windows, first_at"
                                              " FROM peer_metrics ORDER BY global_position")).all()
            paths = connection.execute(text(
                "SELECT event_type, outcome, repeats FROM path_events ORDER BY global_position")).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in metrics] == [
        (samples, "relay", "198.51.100.1:3478", 1, None),
        (samples, "direct", None, 15, "2026-01-01T00:04:00+00:00")]
    assert [tuple(row) for row in paths] == [
        ("PathChosen", "chosen", 1), ("DirectPathRetried", "failed", 1),
        ("DirectPathRetriesRepeated", "failed", 7), ("PathSwitched", "switched", 1)]
    assert downgrade(any_db_url, "0006_forensic_views") == "0006_forensic_views"
