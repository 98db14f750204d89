"""A running node leaves a counted sign of life in quiet periods: replay never shows it down,
and the next start dates a crash to within a minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import store.sql as sql_store
from actors import messages as m
from events import types as ev
from events.streams import metrics_stream, node_stream, peer_stream
from store import open_store
from store.replay import replay
from tests.actors.conftest import BOB, Node, VirtualClock


def _on_virtual_time(monkeypatch: pytest.MonkeyPatch, clock: VirtualClock) -> None:
    """Rows are stamped with the test's clock, so replay can be asked about a virtual moment."""
    monkeypatch.setattr(sql_store, "_utc_now", lambda: datetime.fromtimestamp(clock.now, UTC))


def test_a_quiet_node_writes_one_sign_of_life_a_quiet_minute(make_node) -> None:
    node: Node = make_node()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    before = len(node.events(node.node_stream))
    node.advance(600, step=5.0)
    alive = [e for e in node.events(node.node_stream)[before:] if isinstance(e, ev.NodeAlive)]
    # Ten quiet minutes: a row for each, each counting the quiet so far; nothing else in between.
    assert [e.quiet_s for e in alive] == [60.0 * n for n in range(1, len(alive) + 1)]
    assert 9 <= len(alive) <= 10


def test_no_sign_of_life_while_the_node_writes_anyway(make_node) -> None:
    node: Node = make_node()
    before = len(node.events(node.node_stream))
    for second in range(0, 300, 20):
        node.tell(m.ControlReachability("ws://198.51.100.5:8667", second % 40 != 0, error="down"))
        node.advance(20, step=5.0)
    assert not [e for e in node.events(node.node_stream)[before:] if isinstance(e, ev.NodeAlive)]


def test_the_newest_row_is_never_older_than_a_minute_whenever_the_writes_come(make_node) -> None:
    """Writes at odd moments (just after a check, just before one): a crash at any second
    would still find a row of the last minute."""
    node: Node = make_node()
    url = "ws://198.51.100.5:8667"
    writes = {13: False, 101: True, 117: False, 250: True, 251: False, 383: True}
    rows, last_row_at, widest = len(list(node.recorder.read_all())), 0, 0
    for second in range(1, 600):
        if second in writes:
            node.tell(m.ControlReachability(url, writes[second], error="down"))
        node.advance(1)
        now = len(list(node.recorder.read_all()))
        if now != rows:
            widest, rows, last_row_at = max(widest, second - last_row_at), now, second
    widest = max(widest, 599 - last_row_at)
    assert widest <= 60
    alive = [e for e in node.events(node.node_stream) if isinstance(e, ev.NodeAlive)]
    assert 6 <= len(alive) <= 10  # ~600 s less the written stretches, a minute apiece


def test_replay_shows_a_quiet_node_running_until_its_last_sign_of_life_and_the_crash_is_dated(
        make_node, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _on_virtual_time(monkeypatch, clock)
    node: Node = make_node()
    node.stop()
    node.store_url = f"sqlite:///{tmp_path / 'events.db'}"
    node.start()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(10)
    assert node.connection("p1", "bob").state == ev.CONNECTED
    quiet_from = clock.now
    node.advance(420, step=5.0)  # seven quiet minutes, then the process is killed
    killed_at = datetime.fromtimestamp(clock.now, UTC)
    node.crash()
    clock.now += 3600  # down for an hour
    node.start()
    ended = [e for e in node.events(node.node_stream) if isinstance(e, ev.NodeRunEndedAbruptly)]
    assert len(ended) == 1
    last_alive = datetime.fromisoformat(ended[0].last_recorded_at)
    assert timedelta(0) <= killed_at - last_alive <= timedelta(seconds=60)

    log = open_store(node.store_url)
    try:
        # Five minutes into the quiet stretch (nothing but signs of life since): the node runs.
        moment = datetime.fromtimestamp(quiet_from + 300, UTC)
        world = replay(log, at=moment)
        assert world.nodes[node_stream("local")].running is True
        assert world.connections[peer_stream("local", "p1", "bob")].state == ev.CONNECTED
        # Twenty minutes after the kill: down, and the connection interrupted.
        world = replay(log, at=killed_at + timedelta(minutes=20))
        assert world.nodes[node_stream("local")].running is False
        assert world.connections[peer_stream("local", "p1", "bob")].state == ev.INTERRUPTED
    finally:
        log.close()


def test_a_crash_right_after_a_metric_sample_is_dated_by_that_sample(make_node) -> None:
    """Samples have a stream of their own: the abrupt end must see them (the lab's crash found a
    last row 69 s old, the newer sample unread)."""
    node: Node = make_node(metrics_interval_s=10.0)
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    samples = metrics_stream("local", "p1", "bob")
    for _ in range(60):
        node.advance(1)
        newest = max(node.recorder.read_all(), key=lambda record: record.global_position)
        if newest.stream_id == samples:
            break
    assert newest.stream_id == samples
    node.crash()
    node.start()
    [ended] = [e for e in node.events(node.node_stream) if isinstance(e, ev.NodeRunEndedAbruptly)]
    assert (ended.last_global_position, ended.last_recorded_at) == (newest.global_position,
                                                                   newest.recorded_at.isoformat())
