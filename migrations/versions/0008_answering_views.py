"""Views whose natural queries give the right answer.

- ``node_stops``: one row per end of a node's run: a clean stop (``NodeStopped``) or a
  crash found at the next start (``NodeRunEndedAbruptly``, ended at the last event the run
  wrote).
- ``peer_timeline`` (and ``connection_history``, the same rows): a period ends at the next
  change of its connection or at the end of the node's run, whichever comes first
  (``ended_by``: ``change``, ``stopped`` or ``crashed``), so no period runs through a night
  the node was down. ``path`` is the path traffic is on, only while the connection is up
  (``connected`` or ``degraded``): a ``connecting`` or ``failed`` row has none, and
  ``path_tried`` keeps the path it tried or failed on. ``hour_local`` groups by local hour.
- ``peer_metrics``: the connection ``state`` each sample was taken in, ``latency_window_s``
  (the seconds of ``window_s`` that measured a latency) for time-weighted averages, and
  ``hour_local``.
- ``endpoint_changes``: a peer's endpoint moving (what WireGuard saw or the peer
  announced) and this node's own public endpoint moving (STUN).

``hour_local`` is the hour in the zone of the session: the process's ``TZ`` (or
/etc/localtime) in the ``sqlite3`` shell, the session's ``TimeZone`` in ``psql``
(``lanrage sql`` sets it to the local zone).

Revision ID: 0008_answering_views
Revises: 0007_counted_repeats
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0008_answering_views"
down_revision: str | None = "0007_counted_repeats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("endpoint_changes", "peer_metrics", "connection_history", "peer_timeline", "node_stops")
# The events that end a node's run; a partial index of only these finds a row's end in one probe.
ENDS = "('NodeStopped', 'NodeRunEndedAbruptly')"
ENDS_INDEX = "ix_events_node_ends"


def _module(name: str) -> ModuleType:
    spec = spec_from_file_location(f"views_{name[:4]}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hour_local(column: str, d: str) -> str:
    """'YYYY-MM-DD HH:00' in the session's zone (timestamptz follows TimeZone on PostgreSQL)."""
    if d == "postgresql":
        return f"to_char({column}, 'YYYY-MM-DD HH24:00')"
    return f"strftime('%Y-%m-%d %H:00', {column}, 'localtime')"


def _iso_time(expression: str, d: str) -> str:
    """An ISO 8601 text with an offset, as a value comparable with ``recorded_at``."""
    if d == "postgresql":
        return f"CAST({expression} AS timestamptz)"
    return f"strftime('%Y-%m-%d %H:%M:%f', {expression})"


def _ended_at(d: str, v: ModuleType, alias: str) -> str:
    """When the run that the end event ``alias`` closes ended: the stop, or the crash's last event."""
    last = v._number("last_global_position", d, alias, "bigint")
    return (f"CASE WHEN {alias}.event_type = 'NodeStopped' THEN {alias}.recorded_at\n"
            f"         ELSE COALESCE((SELECT l.recorded_at FROM events l WHERE l.global_position = {last}),\n"
            f"                       {_iso_time(v._text('last_recorded_at', d, alias), d)}) END")


def node_stops(d: str, v: ModuleType) -> str:
    return f"""
CREATE VIEW node_stops AS
SELECT
    e.global_position, e.recorded_at, {v._node(d, 'e')} AS node_id,
    CASE WHEN e.event_type = 'NodeStopped' THEN 'stopped' ELSE 'crashed' END AS how,
    {_ended_at(d, v, 'e')} AS ended_at,
    {v._text('reason', d, 'e')} AS reason
FROM events e
WHERE e.event_type IN {ENDS}
"""


def peer_timeline(d: str, v: ModuleType) -> str:
    # 0006's rows, with the time the next change came (``next_at``) and the end of the node's
    # run that holds the row; the outer query takes whichever came first. That end is the first
    # stop or crash record of the node's stream after the row: a stop is written when it
    # happens, a crash at the next start, both before anything of a later run.
    rows = v.peer_timeline(d).split("AS\n", 1)[1]
    marker = "    nxt.recorded_at AS until_at,\n"
    assert marker in rows and "FROM (\n" in rows, "0006's peer_timeline changed shape"
    rows = rows.replace(marker, "    nxt.recorded_at AS next_at,\n"
                        f"    (SELECT s.global_position FROM events s WHERE s.stream_id = 'node:' || {v._node(d, 't')}\n"
                        f"        AND s.event_type IN {ENDS} AND s.global_position > t.global_position"
                        " ORDER BY s.global_position LIMIT 1) AS stop_position,\n")
    rows = rows.replace(f"    {v._seconds_between('t.recorded_at', 'nxt.recorded_at', d)} AS duration_s,\n", "")
    stopped = "b.stop_at IS NOT NULL AND (b.next_at IS NULL OR b.stop_at < b.next_at)"
    until = f"CASE WHEN {stopped} THEN b.stop_at ELSE b.next_at END"
    return f"""
CREATE VIEW peer_timeline AS
SELECT
    b.global_position, b.recorded_at, b.node_id, b.stream_id, b.stream_position, b.event_type,
    b.party_id, b.peer_id, b.peer_name, b.party_name, b.from_state, b.to_state, b.state, b.from_path,
    CASE WHEN b.state IN {v.UP_STATES} THEN b.path END AS path,
    b.reason, b.endpoint, b.relay, b.latency_ms, b.is_drop,
    {until} AS until_at,
    {v._seconds_between('b.recorded_at', until, d)} AS duration_s,
    b.hour_utc,
    b.path AS path_tried,
    CASE WHEN {stopped} THEN b.stop_how WHEN b.next_at IS NOT NULL THEN 'change' END AS ended_by,
    {_hour_local('b.recorded_at', d)} AS hour_local
FROM (
    SELECT r.*, {_ended_at(d, v, 'stop')} AS stop_at,
           CASE WHEN stop.event_type = 'NodeStopped' THEN 'stopped' ELSE 'crashed' END AS stop_how
    FROM ({rows.strip()}) r
    LEFT JOIN events stop ON stop.global_position = r.stop_position
) b
"""


def connection_history() -> str:
    return """
CREATE VIEW connection_history AS
SELECT global_position, recorded_at, node_id, stream_id, stream_position, event_type, party_id, peer_id,
       from_state, to_state, from_path, path, reason, endpoint, relay, latency_ms,
       peer_name, state, is_drop, until_at, duration_s, hour_utc, path_tried, ended_by, hour_local
FROM peer_timeline
"""


def peer_metrics(d: str, v: ModuleType, previous: ModuleType) -> str:
    view = previous.peer_metrics(d, v)
    head = "    NULLIF({first}, '') AS first_at\nFROM events m\n".format(first=v._text("first_at", d, "m"))
    assert head in view, "0007's peer_metrics changed shape"
    connection = previous._connection_stream(d, "m")
    state = (f"(SELECT {v._text('to_state', d, 'n')} FROM events n WHERE n.stream_id = {connection}"
             f" AND n.event_type IN {v.MARKS} AND n.event_type = 'ConnectionStateChanged'"
             " AND n.global_position < m.global_position ORDER BY n.stream_position DESC LIMIT 1)")
    latency = v._number("latency_ms", d, "m")
    return view.replace(head, head.replace(
        " AS first_at\n",
        " AS first_at,\n"
        f"    {state} AS state,\n"
        f"    CASE WHEN {latency} IS NOT NULL THEN {v._number('window_s', d, 'm')} ELSE 0 END"
        " AS latency_window_s,\n"
        f"    {_hour_local('m.recorded_at', d)} AS hour_local\n"))


def endpoint_changes(d: str, v: ModuleType) -> str:
    text = v._text
    return f"""
CREATE VIEW endpoint_changes AS
SELECT
    e.global_position, e.recorded_at, {v._node(d, 'e')} AS node_id, e.stream_id,
    CASE WHEN e.event_type = 'EndpointChanged' THEN 'peer' ELSE 'this node' END AS whose,
    {text('party_id', d, 'e')} AS party_id,
    {text('peer_id', d, 'e')} AS peer_id,
    names.peer_name,
    {text('old_endpoint', d, 'e')} AS old_endpoint,
    {text('new_endpoint', d, 'e')} AS new_endpoint,
    CASE WHEN e.event_type = 'EndpointChanged' THEN COALESCE({text('seen_by', d, 'e')}, 'wireguard')
         ELSE 'stun' END AS seen_by,
    {text('reason', d, 'e')} AS reason,
    {_hour_local('e.recorded_at', d)} AS hour_local
FROM events e
LEFT JOIN peer_names names ON names.node_id IS NOT DISTINCT FROM {v._node(d, 'e')}
    AND names.party_id = {text('party_id', d, 'e')} AND names.peer_id = {text('peer_id', d, 'e')}
WHERE e.event_type IN ('EndpointChanged', 'PublicEndpointChanged')
"""


def upgrade() -> None:
    d = op.get_bind().dialect.name
    v, previous = _module("0006_forensic_views.py"), _module("0007_counted_repeats.py")
    where = sa.text(f"event_type IN {ENDS}")
    op.create_index(ENDS_INDEX, "events", ["stream_id", "global_position"],
                    sqlite_where=where, postgresql_where=where)
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(node_stops(d, v))
    op.execute(peer_timeline(d, v))
    op.execute(connection_history())
    op.execute(peer_metrics(d, v, previous))
    op.execute(endpoint_changes(d, v))


def downgrade() -> None:
    d = op.get_bind().dialect.name
    v, previous = _module("0006_forensic_views.py"), _module("0007_counted_repeats.py")
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_index(ENDS_INDEX, table_name="events")
    op.execute(v.peer_timeline(d))
    op.execute(v.connection_history(d))
    op.execute(previous.peer_metrics(d, v))
