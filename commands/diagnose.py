"""``lanrage diagnose PEER [--at TIME]``: why that peer dropped, cause first, with the evidence.

It reads the store only (``store.diagnosis`` holds the rules); nothing needs to run.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from commands.common import DEFAULT_STATE_DIR as _DEFAULT_STATE_DIR
from commands.common import DbOption, JsonOption, StateDirOption
from commands.history import _console, _open_readonly, _warn, find_peer
from commands.times import TIME_FORMS, UtcOption, iso, parse_time, shown, zone_name

# Without --at, the latest few incidents: enough to see a pattern, short enough to read.
LATEST_INCIDENTS = 5
NODE_TYPES = ("NodeStarted", "NodeStopped", "NodeRunEndedAbruptly")


def diagnose_command(
    peer: Annotated[str, typer.Argument(help="Peer name, id prefix, or PARTY:NAME.")],
    at: Annotated[str | None, typer.Option(
        "--at", help=f"Explain the last drop at or before this moment: {TIME_FORMS}.")] = None,
    as_json: JsonOption = False,
    utc: UtcOption = False,
    state_dir: StateDirOption = _DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """Why PEER dropped: the cause first, in plain words, then the events that show it."""
    from store.diagnosis import LOOKAHEAD, LOOKBACK, Window, diagnose, incidents
    from store.peers import load_directory

    moment = parse_time(at, "--at") if at else None
    reports: list[dict[str, Any]] = []
    with _open_readonly(db, state_dir) as store:
        chosen = find_peer(store, peer)
        names = {}
        for entry in load_directory(store, on_error=_warn):
            if entry.name:
                names[(entry.party_id, entry.peer_id)] = entry.name
        entry = chosen[0]
        label = entry.label()
        streams = sorted({e.stream_id for e in chosen if e.stream_id})
        for stream in streams:
            connection = store.read_stream(stream, on_error=_warn)
            node_id = _node_of(connection)
            node_events = [r for r in store.read_all(types=NODE_TYPES, on_error=_warn)
                           if _same_node(r, node_id)]
            found = incidents(connection, node_events)
            if moment is not None:
                found = [i for i in found if i.record.recorded_at <= moment][-1:]
            else:
                found = found[-LATEST_INCIDENTS:]
            for incident in found:
                start, end = incident.record.recorded_at - LOOKBACK, incident.record.recorded_at + LOOKAHEAD
                around = tuple(r for r in store.read_all(since=start, until=end, on_error=_warn)
                               if _same_node(r, node_id))
                upto = tuple(r for r in connection if r.global_position <= incident.record.global_position)
                window = Window(incident, entry.party_id, entry.peer_id, entry.name or entry.peer_id,
                                upto or tuple(connection), around, names)
                reports.append({"incident": incident, "findings": diagnose(window)})
    reports.sort(key=lambda report: report["incident"].record.global_position)
    if as_json:
        print(json.dumps(_as_json(label, reports, moment)))
        return
    _print(label, reports, moment, utc)


def _node_of(connection: list[Any]) -> str | None:
    for record in connection:
        node_id = record.metadata.get("node_id") if record.metadata else None
        if node_id:
            return str(node_id)
    return None


def _same_node(record: Any, node_id: str | None) -> bool:
    """In a PostgreSQL shared by many nodes, only this node's events explain its connection."""
    if node_id is None:
        return True
    other = record.metadata.get("node_id") if record.metadata else None
    return other is None or str(other) == node_id


def _as_json(label: str, reports: list[dict[str, Any]], moment: Any) -> dict[str, Any]:
    from store.diagnosis import finding_json

    return {"peer": label, "at": iso(moment) if moment else None, "incidents": [{
        "at": iso(report["incident"].record.recorded_at),
        "global_position": report["incident"].record.global_position,
        "stream_id": report["incident"].record.stream_id,
        "kind": report["incident"].kind,
        "description": report["incident"].description,
        "cause": report["findings"][0].cause,
        "findings": [finding_json(finding) for finding in report["findings"]]} for report in reports]}


def _print(label: str, reports: list[dict[str, Any]], moment: Any, utc: bool) -> None:
    console = _console()
    zone = zone_name(utc)
    if not reports:
        when = f" at or before {shown(moment, utc)} {zone}" if moment else ""
        console.print(f"no drop of {escape(label)} recorded{when}", markup=True)
        return
    console.print(f"[bold]{escape(label)}[/bold]: {len(reports)} incident{'s' if len(reports) > 1 else ''} "
                  f"(times in {zone})")
    for report in reports:
        incident = report["incident"]
        first, *more = report["findings"]
        console.print()
        console.print(f"[bold]{shown(incident.record.recorded_at, utc)}[/bold]  {incident.kind}: "
                      f"{escape(incident.description)}")
        console.print(f"  [bold]cause:[/bold] {escape(first.summary)}")
        _facts(console, first.evidence, utc)
        for finding in more:
            console.print(f"  also: {escape(finding.summary)}")
            _facts(console, finding.evidence, utc)


def _facts(console: Any, facts: Any, utc: bool) -> None:
    for fact in facts:
        console.print(f"    {shown(fact.at, utc)}  #{fact.global_position}  {escape(fact.stream_id)}  "
                      f"{fact.event_type}  {escape(fact.detail)}", highlight=False)


def register(app: typer.Typer) -> None:
    from commands.history import _guard

    app.command("diagnose")(_guard(diagnose_command))


