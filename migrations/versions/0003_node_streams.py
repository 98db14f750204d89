"""Stream ids unique across nodes, and a ``node_id`` column in the views.

Before this revision a node's streams were ``party:<party>``, ``peer:<party>:<peer>``
and ``relay:<host:port>``, which collide when several nodes share one database.
They become ``party:<node>:<party>``, ``peer:<node>:<party>:<peer>`` and
``relay:<node>:<host:port>``; a relay server's own ``relay:<name>`` (its rows carry
no node id) becomes ``relay-server:<name>``. ``node:``, ``agent:`` and ``control:``
streams already were unique and stay.

This is the one rewrite of stored rows the log allows: only ``stream_id`` changes,
to the address the row would have had if it were written today, so that old and
new rows of one stream stay one gapless stream. Payloads, metadata, positions and
times are untouched; the node id comes from each stream's own metadata
(``node_id``), which every node has always written. A stream without one is given
the database's only node, or ``unknown`` when there are several.

Revision ID: 0003_node_streams
Revises: 0002_views
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_node_streams"
down_revision: str | None = "0002_views"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNKNOWN_NODE = "unknown"


def _field(column: str, field: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"({column} ->> '{field}')"
    return f"json_extract({column}, '$.{field}')"


def _number(field: str, dialect: str, kind: str = "double precision") -> str:
    if dialect == "postgresql":
        return f"CAST(payload ->> '{field}' AS {kind})"
    return f"json_extract(payload, '$.{field}')"


def connection_history(d: str) -> str:
    def text(field: str) -> str:
        return _field("payload", field, d)

    def is_state(expression: str) -> str:
        return f"CASE WHEN event_type = 'ConnectionStateChanged' THEN {expression} END"

    def is_switch(expression: str) -> str:
        return f"CASE WHEN event_type = 'PathSwitched' THEN {expression} END"

    return f"""
CREATE VIEW connection_history AS
SELECT
    global_position,
    recorded_at,
    {_field('metadata', 'node_id', d)} AS node_id,
    stream_id,
    stream_position,
    event_type,
    {text('party_id')} AS party_id,
    {text('peer_id')} AS peer_id,
    {is_state(text('from_state'))} AS from_state,
    {is_state(text('to_state'))} AS to_state,
    {is_switch(text('from_path'))} AS from_path,
    CASE WHEN event_type = 'PathSwitched' THEN {text('to_path')} ELSE {text('path')} END AS path,
    {text('reason')} AS reason,
    {text('endpoint')} AS endpoint,
    CASE WHEN event_type = 'PathSwitched' THEN {text('to_relay')} ELSE {text('relay')} END AS relay,
    CASE WHEN event_type = 'PathSwitched' THEN {_number('to_latency_ms', d)}
         ELSE {_number('latency_ms', d)} END AS latency_ms
FROM events
WHERE event_type IN ('ConnectionStateChanged', 'PathSwitched')
"""


def peer_metrics(d: str) -> str:
    return f"""
CREATE VIEW peer_metrics AS
SELECT
    global_position,
    recorded_at,
    {_field('metadata', 'node_id', d)} AS node_id,
    stream_id,
    {_field('payload', 'party_id', d)} AS party_id,
    {_field('payload', 'peer_id', d)} AS peer_id,
    {_number('window_s', d)} AS window_s,
    {_number('probes', d, 'bigint')} AS probes,
    {_number('latency_ms', d)} AS latency_ms,
    {_number('jitter_ms', d)} AS jitter_ms,
    {_number('loss', d)} AS loss,
    {_number('rx_bytes', d, 'bigint')} AS rx_bytes,
    {_number('tx_bytes', d, 'bigint')} AS tx_bytes,
    {_number('quality', d)} AS quality
FROM events
WHERE event_type = 'MetricsSampled'
"""


def _new_id(stream_id: str, node_id: str | None, only_node: str) -> str:
    kind, _, rest = stream_id.partition(":")
    if kind == "relay":
        # A relay monitor's rows name their node; a relay server's rows do not.
        return f"relay:{node_id}:{rest}" if node_id else f"relay-server:{rest}"
    if kind in ("party", "peer"):
        return f"{kind}:{node_id or only_node}:{rest}"
    return stream_id


def _old_id(stream_id: str) -> str:
    kind, _, rest = stream_id.partition(":")
    if kind == "relay-server":
        return f"relay:{rest}"
    if kind in ("party", "peer", "relay"):
        return f"{kind}:{rest.partition(':')[2]}"
    return stream_id


def _rename(renames: dict[str, str]) -> None:
    update = sa.text("UPDATE events SET stream_id = :new WHERE stream_id = :old")
    bind = op.get_bind()
    for old, new in renames.items():
        if old != new:
            bind.execute(update, {"old": old, "new": new})


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    streams = bind.execute(sa.text(
        f"SELECT stream_id, MIN({_field('metadata', 'node_id', dialect)}) FROM events GROUP BY stream_id"
    )).all()
    nodes = sorted(stream_id.removeprefix("node:") for stream_id, _ in streams if stream_id.startswith("node:"))
    only_node = nodes[0] if len(nodes) == 1 else UNKNOWN_NODE
    _rename({stream_id: _new_id(stream_id, node_id, only_node) for stream_id, node_id in streams})
    op.execute("DROP VIEW IF EXISTS peer_metrics")
    op.execute("DROP VIEW IF EXISTS connection_history")
    op.execute(connection_history(dialect))
    op.execute(peer_metrics(dialect))


def downgrade() -> None:
    bind = op.get_bind()
    streams = [row[0] for row in bind.execute(sa.text("SELECT DISTINCT stream_id FROM events"))]
    renames = {stream_id: _old_id(stream_id) for stream_id in streams}
    merged = [old for old, count in Counter(renames.values()).items() if count > 1]
    if merged:
        raise RuntimeError(f"cannot downgrade below 0003_node_streams: several nodes share stream "
                           f"{sorted(merged)[0]!r} in the old naming; downgrade a one-node database only")
    _rename(renames)
    op.execute("DROP VIEW IF EXISTS peer_metrics")
    op.execute("DROP VIEW IF EXISTS connection_history")
    # 0002's views: the same columns without node_id.
    op.execute(connection_history(bind.dialect.name).replace(
        f"    {_field('metadata', 'node_id', bind.dialect.name)} AS node_id,\n", ""))
    op.execute(peer_metrics(bind.dialect.name).replace(
        f"    {_field('metadata', 'node_id', bind.dialect.name)} AS node_id,\n", ""))
