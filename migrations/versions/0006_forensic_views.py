"""Views that answer "why did Bob drop?" without window functions in the user's query.

- ``peer_names``: the latest name of every peer and its party (``PeerJoined``,
  ``PartyCreated``/``PartyJoined``).
- ``peer_timeline``: one row per connection state change or path switch, with the peer's
  name, the state and the path *after* it (a reconnect's ``PathChosen`` counts for the
  reconnect row), whether it was a drop, and how long it lasted (``until_at``,
  ``duration_s``; NULL while it still lasts).
- ``path_events``: path choices, switches, hole punches and direct retries, with outcome.
- ``connection_history`` keeps its columns (its path is now the path after the transition)
  and gains the peer name, the state, ``until_at``, ``duration_s`` and ``is_drop``.
- ``peer_metrics`` keeps its columns and gains the peer name and the path (and relay)
  each sample was taken on.

The per-row lookups ("the next transition", "the path in effect") are correlated
subqueries on a partial index of the few events that set a state or a path, so they cost
a logarithmic index probe each and a filter on a peer is applied before them.

Revision ID: 0006_forensic_views
Revises: 0005_retention
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_forensic_views"
down_revision: str | None = "0005_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The events that set a connection's state or path; the partial index holds only these.
MARKS = "('ConnectionStateChanged', 'PathChosen', 'PathSwitched')"
MARKS_INDEX = "ix_events_peer_marks"
UP_STATES = "('connected', 'degraded')"


def _text(field: str, d: str, alias: str = "") -> str:
    column = f"{alias}.payload" if alias else "payload"
    if d == "postgresql":
        return f"({column} ->> '{field}')"
    return f"json_extract({column}, '$.{field}')"


def _number(field: str, d: str, alias: str = "", kind: str = "double precision") -> str:
    column = f"{alias}.payload" if alias else "payload"
    if d == "postgresql":
        return f"CAST({column} ->> '{field}' AS {kind})"
    return f"json_extract({column}, '$.{field}')"


def _node(d: str, alias: str = "") -> str:
    """The node that wrote the row (its metadata): a shared database holds several nodes' views."""
    column = f"{alias}.metadata" if alias else "metadata"
    if d == "postgresql":
        return f"({column} ->> 'node_id')"
    return f"json_extract({column}, '$.node_id')"


def _seconds_between(start: str, end: str, d: str) -> str:
    """Seconds, to the millisecond (julianday arithmetic would show 2.99998 for 3 s)."""
    if d == "postgresql":
        return f"CAST(ROUND(CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS numeric), 3) AS double precision)"
    return f"round((julianday({end}) - julianday({start})) * 86400.0, 3)"


def _hour_utc(column: str, d: str) -> str:
    """'YYYY-MM-DD HH:00' in UTC: a portable GROUP BY key for "per hour"."""
    if d == "postgresql":
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:00')"
    return f"strftime('%Y-%m-%d %H:00', {column})"


def peer_names(d: str) -> str:
    return f"""
CREATE VIEW peer_names AS
SELECT joined.node_id, joined.party_id, joined.peer_id, joined.peer_name, party.party_name
FROM (
    SELECT {_node(d)} AS node_id, {_text('party_id', d)} AS party_id, {_text('peer_id', d)} AS peer_id,
           {_text('name', d)} AS peer_name,
           ROW_NUMBER() OVER (PARTITION BY {_node(d)}, {_text('party_id', d)}, {_text('peer_id', d)}
                              ORDER BY global_position DESC) AS newest
    FROM events WHERE event_type IN ('PeerJoined', 'PeerUpdated')
) joined
LEFT JOIN (
    SELECT {_node(d)} AS node_id, {_text('party_id', d)} AS party_id, {_text('name', d)} AS party_name,
           ROW_NUMBER() OVER (PARTITION BY {_node(d)}, {_text('party_id', d)}
                              ORDER BY global_position DESC) AS newest
    FROM events WHERE event_type IN ('PartyCreated', 'PartyJoined')
) party ON party.node_id IS NOT DISTINCT FROM joined.node_id AND party.party_id = joined.party_id
    AND party.newest = 1
WHERE joined.newest = 1
"""


def _mark_after(alias: str, types: str, before: str | None = None) -> str:
    """The position of the first mark of ``types`` after row ``alias`` (and before ``before``)."""
    bound = f" AND n.stream_position < {before}" if before else ""
    return (f"(SELECT n.stream_position FROM events n WHERE n.stream_id = {alias}.stream_id"
            f" AND n.event_type IN {MARKS} AND n.event_type IN {types}"
            f" AND n.stream_position > {alias}.stream_position{bound}"
            " ORDER BY n.stream_position LIMIT 1)")


def _mark_before(alias: str, types: str, inclusive_of: str | None = None) -> str:
    """The position of the last mark of ``types`` at or before row ``alias`` (or ``inclusive_of``)."""
    upto = inclusive_of or f"{alias}.stream_position"
    return (f"(SELECT n.stream_position FROM events n WHERE n.stream_id = {alias}.stream_id"
            f" AND n.event_type IN {MARKS} AND n.event_type IN {types}"
            f" AND n.stream_position <= {upto} ORDER BY n.stream_position DESC LIMIT 1)")


def peer_timeline(d: str) -> str:
    segment_starts = "('ConnectionStateChanged', 'PathSwitched')"
    return f"""
CREATE VIEW peer_timeline AS
SELECT
    t.global_position, t.recorded_at, {_node(d, 't')} AS node_id, t.stream_id, t.stream_position,
    t.event_type,
    {_text('party_id', d, 't')} AS party_id,
    {_text('peer_id', d, 't')} AS peer_id,
    names.peer_name, names.party_name,
    CASE WHEN t.event_type = 'ConnectionStateChanged' THEN {_text('from_state', d, 't')} END AS from_state,
    CASE WHEN t.event_type = 'ConnectionStateChanged' THEN {_text('to_state', d, 't')} END AS to_state,
    CASE WHEN t.event_type = 'ConnectionStateChanged' THEN {_text('to_state', d, 't')}
         ELSE {_text('to_state', d, 'last_state')} END AS state,
    CASE WHEN t.event_type = 'PathSwitched' THEN {_text('from_path', d, 't')} END AS from_path,
    CASE WHEN t.event_type = 'PathSwitched' THEN {_text('to_path', d, 't')}
         ELSE COALESCE({_text('path', d, 'chosen')}, {_text('path', d, 't')}) END AS path,
    {_text('reason', d, 't')} AS reason,
    CASE WHEN t.event_type = 'PathSwitched' THEN {_text('endpoint', d, 't')}
         ELSE COALESCE({_text('endpoint', d, 'chosen')}, {_text('endpoint', d, 't')}) END AS endpoint,
    CASE WHEN t.event_type = 'PathSwitched' THEN {_text('to_relay', d, 't')}
         WHEN chosen.global_position IS NOT NULL THEN {_text('relay', d, 'chosen')}
         ELSE {_text('relay', d, 't')} END AS relay,
    CASE WHEN t.event_type = 'PathSwitched' THEN {_number('to_latency_ms', d, 't')}
         ELSE {_number('latency_ms', d, 't')} END AS latency_ms,
    CASE WHEN t.event_type = 'ConnectionStateChanged'
              AND {_text('from_state', d, 't')} IN {UP_STATES}
              AND {_text('to_state', d, 't')} NOT IN {UP_STATES} THEN 1 ELSE 0 END AS is_drop,
    nxt.recorded_at AS until_at,
    {_seconds_between('t.recorded_at', 'nxt.recorded_at', d)} AS duration_s,
    {_hour_utc('t.recorded_at', d)} AS hour_utc
FROM (
    SELECT e.*,
           {_mark_after('e', segment_starts)} AS next_position,
           {_mark_before('e', "('ConnectionStateChanged')")} AS state_position
    FROM events e
    WHERE e.event_type IN {MARKS} AND e.event_type IN {segment_starts}
) t
LEFT JOIN events nxt ON nxt.stream_id = t.stream_id AND nxt.stream_position = t.next_position
LEFT JOIN events last_state ON last_state.stream_id = t.stream_id
    AND last_state.stream_position = t.state_position
LEFT JOIN events chosen ON chosen.stream_id = t.stream_id AND t.event_type = 'ConnectionStateChanged'
    AND chosen.stream_position = (
        SELECT n.stream_position FROM events n WHERE n.stream_id = t.stream_id
        AND n.event_type IN {MARKS} AND n.event_type = 'PathChosen'
        AND n.stream_position > t.stream_position
        AND n.stream_position < COALESCE(t.next_position, 2147483647)
        ORDER BY n.stream_position DESC LIMIT 1)
LEFT JOIN peer_names names ON names.node_id IS NOT DISTINCT FROM {_node(d, 't')}
    AND names.party_id = {_text('party_id', d, 't')} AND names.peer_id = {_text('peer_id', d, 't')}
"""


def connection_history(d: str) -> str:
    return """
CREATE VIEW connection_history AS
SELECT global_position, recorded_at, node_id, stream_id, stream_position, event_type, party_id, peer_id,
       from_state, to_state, from_path, path, reason, endpoint, relay, latency_ms,
       peer_name, state, is_drop, until_at, duration_s, hour_utc
FROM peer_timeline
"""


def path_events(d: str) -> str:
    def of(kind: str, expression: str) -> str:
        return f"CASE WHEN event_type = '{kind}' THEN {expression} END"

    return f"""
CREATE VIEW path_events AS
SELECT
    e.global_position, e.recorded_at, e.node_id, e.stream_id, e.stream_position, e.event_type,
    e.party_id, e.peer_id, names.peer_name,
    CASE e.event_type WHEN 'PathChosen' THEN 'chosen' WHEN 'PathSwitched' THEN 'switched'
         WHEN 'HolePunchAttempted' THEN 'attempted' WHEN 'HolePunchSucceeded' THEN 'succeeded'
         WHEN 'HolePunchFailed' THEN 'failed'
         ELSE CASE WHEN e.retry_succeeded THEN 'succeeded' ELSE 'failed' END END AS outcome,
    e.path, e.from_path, e.reason, e.endpoint, e.relay, e.from_relay, e.rtt_ms, e.elapsed_ms
FROM (
    SELECT global_position, recorded_at, {_node(d)} AS node_id, stream_id, stream_position, event_type,
           {_text('party_id', d)} AS party_id, {_text('peer_id', d)} AS peer_id,
           CASE WHEN event_type = 'PathSwitched' THEN {_text('to_path', d)}
                WHEN event_type = 'HolePunchSucceeded' THEN 'direct'
                ELSE {_text('path', d)} END AS path,
           {of('PathSwitched', _text('from_path', d))} AS from_path,
           {_text('reason', d)} AS reason,
           {_text('endpoint', d)} AS endpoint,
           CASE WHEN event_type = 'PathSwitched' THEN {_text('to_relay', d)} ELSE {_text('relay', d)} END
               AS relay,
           {of('PathSwitched', _text('from_relay', d))} AS from_relay,
           CASE WHEN event_type = 'PathSwitched' THEN {_number('to_latency_ms', d)}
                ELSE {_number('rtt_ms', d)} END AS rtt_ms,
           {_number('elapsed_ms', d)} AS elapsed_ms,
           {of('DirectPathRetried', _text('succeeded', d) + (" = 'true'" if d == "postgresql" else " = 1"))}
               AS retry_succeeded
    FROM events
    WHERE event_type IN ('PathChosen', 'PathSwitched', 'HolePunchAttempted', 'HolePunchSucceeded',
                         'HolePunchFailed', 'DirectPathRetried')
) e
LEFT JOIN peer_names names ON names.node_id IS NOT DISTINCT FROM e.node_id
    AND names.party_id = e.party_id AND names.peer_id = e.peer_id
"""


def peer_metrics(d: str) -> str:
    return f"""
CREATE VIEW peer_metrics AS
SELECT
    m.global_position, m.recorded_at, {_node(d, 'm')} AS node_id, m.stream_id,
    {_text('party_id', d, 'm')} AS party_id,
    {_text('peer_id', d, 'm')} AS peer_id,
    {_number('window_s', d, 'm')} AS window_s,
    {_number('probes', d, 'm', 'bigint')} AS probes,
    {_number('latency_ms', d, 'm')} AS latency_ms,
    {_number('jitter_ms', d, 'm')} AS jitter_ms,
    {_number('loss', d, 'm')} AS loss,
    {_number('rx_bytes', d, 'm', 'bigint')} AS rx_bytes,
    {_number('tx_bytes', d, 'm', 'bigint')} AS tx_bytes,
    {_number('quality', d, 'm')} AS quality,
    names.peer_name,
    CASE WHEN mark.event_type = 'PathSwitched' THEN {_text('to_path', d, 'mark')}
         ELSE {_text('path', d, 'mark')} END AS path,
    CASE WHEN mark.event_type = 'PathSwitched' THEN {_text('to_relay', d, 'mark')}
         ELSE {_text('relay', d, 'mark')} END AS relay
FROM events m
LEFT JOIN events mark ON mark.stream_id = m.stream_id AND mark.stream_position = (
    SELECT n.stream_position FROM events n WHERE n.stream_id = m.stream_id
    AND n.event_type IN {MARKS} AND n.stream_position < m.stream_position
    AND ({_text('path', d, 'n')} IS NOT NULL OR n.event_type = 'PathSwitched')
    ORDER BY n.stream_position DESC LIMIT 1)
LEFT JOIN peer_names names ON names.node_id IS NOT DISTINCT FROM {_node(d, 'm')}
    AND names.party_id = {_text('party_id', d, 'm')} AND names.peer_id = {_text('peer_id', d, 'm')}
WHERE m.event_type = 'MetricsSampled'
"""


def upgrade() -> None:
    d = op.get_bind().dialect.name
    where = sa.text(f"event_type IN {MARKS}")
    op.create_index(MARKS_INDEX, "events", ["stream_id", "stream_position"],
                    sqlite_where=where, postgresql_where=where)
    op.execute("DROP VIEW IF EXISTS peer_metrics")
    op.execute("DROP VIEW IF EXISTS connection_history")
    for create in (peer_names, peer_timeline, connection_history, path_events, peer_metrics):
        op.execute(create(d))


def downgrade() -> None:
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    # The previous views, exactly as revision 0003 created them.
    spec = spec_from_file_location("views_0003", Path(__file__).with_name("0003_node_streams.py"))
    assert spec is not None and spec.loader is not None
    previous = module_from_spec(spec)
    spec.loader.exec_module(previous)
    d = op.get_bind().dialect.name
    for view in ("peer_metrics", "path_events", "connection_history", "peer_timeline", "peer_names"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_index(MARKS_INDEX, table_name="events")
    op.execute(previous.connection_history(d))
    op.execute(previous.peer_metrics(d))
