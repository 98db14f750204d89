from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import base
from events import types as ev
from events.fold import ConnectionState, apply_connection, fold_stream


def test_every_registered_type_round_trips_through_json() -> None:
    for name, cls in base.registered_types().items():
        sample = {}
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                continue
            sample[field.name] = {"int": 1, "float": 1.5, "bool": True}.get(
                str(field.type).split(" ")[0], "x")
            if "tuple" in str(field.type):
                sample[field.name] = ("a", "b")
        event = cls(**sample)
        assert base.decode(*base.encode(event)) == event, name


def test_nat_detected_v1_is_upcast_to_v2_on_read() -> None:
    stored_v1 = '{"node_id": "n1", "nat_type": "port_restricted", "mapping": "198.51.100.7:40001"}'
    event = base.decode("NatDetected", 1, stored_v1)
    assert event == ev.NatDetected(node_id="n1", nat_type="port_restricted",
                                   public_ip="198.51.100.7", public_port=40001)


def test_v1_without_mapping_upcasts_to_no_address() -> None:
    event = base.decode("NatDetected", 1, {"node_id": "n1", "nat_type": "udp_blocked"})
    assert event.public_ip is None and event.public_port is None


def test_unknown_type_and_future_version_are_clear_errors() -> None:
    with pytest.raises(base.UnknownEventType, match="NoSuchEvent"):
        base.decode("NoSuchEvent", 1, "{}")
    with pytest.raises(base.FutureEventVersion, match="version 9"):
        base.decode("PeerLeft", 9, '{"party_id": "p", "peer_id": "q", "reason": "r"}')


def test_malformed_payloads_are_clear_errors() -> None:
    with pytest.raises(base.MalformedEvent, match="not JSON"):
        base.decode("PeerLeft", 1, "{not json")
    with pytest.raises(base.MalformedEvent, match="JSON object"):
        base.decode("PeerLeft", 1, "[1, 2]")
    with pytest.raises(base.MalformedEvent, match="does not fit"):
        base.decode("PeerLeft", 1, '{"party_id": "p"}')


def test_events_are_immutable() -> None:
    event = ev.PeerLeft(party_id="p", peer_id="q", reason="bye")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.reason = "changed"  # type: ignore[misc]


states = st.sampled_from(ev.CONNECTION_STATES)
transitions = st.builds(
    ev.ConnectionStateChanged, party_id=st.just("p"), peer_id=st.just("q"),
    from_state=st.none() | states, to_state=states, reason=st.text(max_size=5),
    path=st.none() | st.sampled_from(ev.PATHS), endpoint=st.none() | st.just("192.0.2.1:51820"),
    latency_ms=st.none() | st.floats(0, 500))


@given(st.lists(transitions, max_size=30), st.integers(0, 30))
def test_folding_the_whole_stream_equals_folding_it_in_two_parts(events: list, split: int) -> None:
    whole = fold_stream(apply_connection, ConnectionState(), events)
    first = fold_stream(apply_connection, ConnectionState(), events[:split])
    assert fold_stream(apply_connection, first, events[split:]) == whole


def test_counted_types_read_their_v1_rows_as_one_window_or_an_unnumbered_selection() -> None:
    sample = base.decode("MetricsSampled", 1, {
        "party_id": "p", "peer_id": "bob", "window_s": 60.0, "probes": 12, "latency_ms": 20.0,
        "jitter_ms": 1.0, "loss": 0.0, "rx_bytes": 1, "tx_bytes": 2, "quality": 97.8})
    assert (sample.windows, sample.first_at) == (1, "")
    probed = base.decode("RelayProbed", 1, {"relay": "198.51.100.1:3478", "probes": 60, "answered": 60,
                                            "rtt_ms": 40.0})
    assert (probed.windows, probed.first_at) == (1, "")
    selected = base.decode("RelaySelected", 1, {"relay": "198.51.100.1:3478", "rtt_ms": 40.0,
                                                "previous_relay": None, "reason": "lowest round trip"})
    assert selected.selection == 0


def test_counted_retries_fold_as_that_many_retries_and_punches() -> None:
    base_ids = {"party_id": "p", "peer_id": "bob"}
    state = fold_stream(apply_connection, ConnectionState(), [
        ev.HolePunchAttempted(**base_ids, local_candidates=(), remote_candidates=()),
        ev.DirectPathRetried(**base_ids, succeeded=False, reason="no answer"),
        ev.DirectPathRetriesRepeated(**base_ids, reason="no answer", count=119,
                                     first_at="2026-01-01T00:00:30+00:00",
                                     last_at="2026-01-01T00:59:30+00:00")])
    assert (state.direct_retries, state.punches, state.punching) == (120, 120, False)
