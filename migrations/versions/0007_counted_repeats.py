"""Views for counted repeats and for metric samples in their own stream.

- ``peer_metrics``: samples are read from the ``metrics:<node>:<party>:<peer>`` streams (and
  from the connection's stream, where older logs hold them); the path (and relay) each
  sample was taken on comes from its connection's stream, the last mark before the
  sample in the log. New columns: ``windows`` (how many metric windows the row counts:
  more than one when they did not change) and ``first_at`` (the start of such a run).
- ``path_events``: also one row per ``DirectPathRetriesRepeated`` (outcome ``failed``), and a
  ``repeats`` column: how many attempts the row stands for (1 but for those).

Revision ID: 0007_counted_repeats
Revises: 0006_forensic_views
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0007_counted_repeats"
down_revision: str | None = "0006_forensic_views"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _previous() -> ModuleType:
    spec = spec_from_file_location("views_0006", Path(__file__).with_name("0006_forensic_views.py"))
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _connection_stream(d: str, alias: str) -> str:
    """The connection stream a sample belongs to: ``metrics:N:P:Q`` -> ``peer:N:P:Q``."""
    concat = f"'peer' || substr({alias}.stream_id, 8)"
    return f"CASE WHEN {alias}.stream_id LIKE 'metrics:%' THEN {concat} ELSE {alias}.stream_id END"


def peer_metrics(d: str, v: ModuleType) -> str:
    text, number, node = v._text, v._number, v._node
    return f"""
CREATE VIEW peer_metrics AS
SELECT
    m.global_position, m.recorded_at, {node(d, 'm')} AS node_id, m.stream_id,
    {text('party_id', d, 'm')} AS party_id,
    {text('peer_id', d, 'm')} AS peer_id,
    {number('window_s', d, 'm')} AS window_s,
    {number('probes', d, 'm', 'bigint')} AS probes,
    {number('latency_ms', d, 'm')} AS latency_ms,
    {number('jitter_ms', d, 'm')} AS jitter_ms,
    {number('loss', d, 'm')} AS loss,
    {number('rx_bytes', d, 'm', 'bigint')} AS rx_bytes,
    {number('tx_bytes', d, 'm', 'bigint')} AS tx_bytes,
    {number('quality', d, 'm')} AS quality,
    names.peer_name,
    CASE WHEN mark.event_type = 'PathSwitched' THEN {text('to_path', d, 'mark')}
         ELSE {text('path', d, 'mark')} END AS path,
    CASE WHEN mark.event_type = 'PathSwitched' THEN {text('to_relay', d, 'mark')}
         ELSE {text('relay', d, 'mark')} END AS relay,
    COALESCE({number('windows', d, 'm', 'bigint')}, 1) AS windows,
    NULLIF({text('first_at', d, 'm')}, '') AS first_at
FROM events m
LEFT JOIN events mark ON mark.stream_id = {_connection_stream(d, 'm')} AND mark.stream_position = (
    SELECT n.stream_position FROM events n WHERE n.stream_id = {_connection_stream(d, 'm')}
    AND n.event_type IN {v.MARKS} AND n.global_position < m.global_position
    AND ({text('path', d, 'n')} IS NOT NULL OR n.event_type = 'PathSwitched')
    ORDER BY n.stream_position DESC LIMIT 1)
LEFT JOIN peer_names names ON names.node_id IS NOT DISTINCT FROM {node(d, 'm')}
    AND names.party_id = {text('party_id', d, 'm')} AND names.peer_id = {text('peer_id', d, 'm')}
WHERE m.event_type = 'MetricsSampled'
"""


def path_events(d: str, v: ModuleType) -> str:
    repeated = "'DirectPathRetriesRepeated'"
    count = v._number("count", d, "", "bigint")
    view = v.path_events(d)
    view = view.replace("         ELSE CASE WHEN e.retry_succeeded",
                        f"         WHEN {repeated} THEN 'failed'\n         ELSE CASE WHEN e.retry_succeeded")
    view = view.replace("e.rtt_ms, e.elapsed_ms\nFROM (", "e.rtt_ms, e.elapsed_ms, e.repeats\nFROM (")
    view = view.replace("               AS retry_succeeded\n",
                        f"               AS retry_succeeded,\n"
                        f"           CASE WHEN event_type = {repeated} THEN {count} ELSE 1 END AS repeats\n")
    view = view.replace("'HolePunchFailed', 'DirectPathRetried')",
                        f"'HolePunchFailed', 'DirectPathRetried', {repeated})")
    assert view.count("repeats") == 2 and view.count(repeated) == 3, "0006's path_events changed shape"
    return view


def upgrade() -> None:
    d = op.get_bind().dialect.name
    v = _previous()
    for view in ("peer_metrics", "path_events"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(peer_metrics(d, v))
    op.execute(path_events(d, v))


def downgrade() -> None:
    d = op.get_bind().dialect.name
    v = _previous()
    for view in ("peer_metrics", "path_events"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(v.peer_metrics(d))
    op.execute(v.path_events(d))
