"""What the actors write in a steady hour at ActorConfig() defaults stays inside the log's budget.

The same capture as bench/log.py (bench/sim_node.py: the production actors on the simulated
network, round trips moving by up to 20 % every probe interval), for 4 peers, direct and
relayed. The budget: 5 MB a node-day for 16 peers at ~510 bytes a row on disk (bench/log.py
measures both) is ~410 rows an hour, ~25 a peer-hour with everything else; the steady hour
must stay far below that.
"""

from __future__ import annotations

import pytest

from bench.sim_node import capture
from events.streams import parse_stream_id

PEERS = 4


@pytest.mark.parametrize("relayed", [False, True], ids=["direct", "relayed"])
def test_a_steady_hour_writes_a_few_rows_a_peer(relayed: bool) -> None:
    taken = capture(relayed, PEERS, quiet=False)
    kinds: dict[str, int] = {}
    for stream, event in taken.hour:
        key = f"{parse_stream_id(stream).kind}/{event.event_type}"
        kinds[key] = kinds.get(key, 0) + 1
    # Metric windows within tolerance: counted, one sample every 15 minutes a peer.
    assert kinds.pop("metrics/MetricsSampled") == 4 * PEERS
    if relayed:  # 120 failed direct retries a peer: one counted record
        assert kinds.pop("peer/DirectPathRetriesRepeated") == PEERS
    # Two relays probed 7,200 times each: a record when the round trip moves past the tolerance.
    assert kinds.pop("relay/RelayProbed") <= 24
    # The node's sign of life: one a minute in which nothing else was written, never more
    # (a node's, not a peer's: 16 peers under 10 rows each plus 60 stay far below ~410 an hour).
    alive = kinds.pop("node/NodeAlive")
    assert 45 <= alive <= 60
    assert kinds == {}, kinds  # nothing else in a steady hour
    assert (len(taken.hour) - alive) / PEERS < 10
