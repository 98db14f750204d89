"""The documented views: connection_history and peer_metrics.

They read JSON fields out of ``payload``, so each dialect gets its own SQL:
``json_extract`` for the stock sqlite3 shell, ``->>`` and casts for psql.

Revision ID: 0002_views
Revises: 0001_events
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_views"
down_revision: str | None = "0001_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _text(field: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"(payload ->> '{field}')"
    return f"json_extract(payload, '$.{field}')"


def _number(field: str, dialect: str, kind: str = "double precision") -> str:
    if dialect == "postgresql":
        return f"CAST(payload ->> '{field}' AS {kind})"
    return f"json_extract(payload, '$.{field}')"


def connection_history(d: str) -> str:
    def is_state(expression: str) -> str:
        return f"CASE WHEN event_type = 'ConnectionStateChanged' THEN {expression} END"

    def is_switch(expression: str) -> str:
        return f"CASE WHEN event_type = 'PathSwitched' THEN {expression} END"

    return f"""
CREATE VIEW connection_history AS
SELECT
    global_position,
    recorded_at,
    stream_id,
    stream_position,
    event_type,
    {_text('party_id', d)} AS party_id,
    {_text('peer_id', d)} AS peer_id,
    {is_state(_text('from_state', d))} AS from_state,
    {is_state(_text('to_state', d))} AS to_state,
    {is_switch(_text('from_path', d))} AS from_path,
    CASE WHEN event_type = 'PathSwitched' THEN {_text('to_path', d)} ELSE {_text('path', d)} END AS path,
    {_text('reason', d)} AS reason,
    {_text('endpoint', d)} AS endpoint,
    CASE WHEN event_type = 'PathSwitched' THEN {_text('to_relay', d)} ELSE {_text('relay', d)} END AS relay,
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
    stream_id,
    {_text('party_id', d)} AS party_id,
    {_text('peer_id', d)} AS peer_id,
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


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(connection_history(dialect))
    op.execute(peer_metrics(dialect))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS peer_metrics")
    op.execute("DROP VIEW IF EXISTS connection_history")
