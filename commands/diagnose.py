"""``lanrage diagnose PEER [--at TIME]``: why that peer dropped, cause first, with the evidence.

It reads the store only (``store.diagnosis`` holds the rules); nothing needs to run.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from commands.common import DEFAULT_STATE_DIR as _DEFAULT_STATE_DIR
from commands.common import DbOption, JsonOption, StateDirOption
from commands.history import (
    _console,
    _guard,
    _open_readonly,
    _warn,
    find_peer,
    local_times,
    with_zone,
    zone_of,
)
from commands.times import TIME_FORMS, UtcOption, iso, parse_time, shown


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
    from store.diagnosis import (
        LOOKAHEAD,
        LOOKBACK,
        NODE_TYPES,
        diagnose,
        incidents,
        node_of,
        same_node,
        select_incidents,
        window_for,
    )
    from store.peers import load_directory

    moment = parse_time(at, "--at") if at else None
    reports: list[tuple[Any, list[Any]]] = []
    with _open_readonly(db, state_dir) as store:
        chosen = find_peer(store, peer)
        names = {(e.party_id, e.peer_id): e.name for e in load_directory(store, on_error=_warn) if e.name}
        entry = chosen[0]
        label = entry.label()
        for stream in sorted({e.stream_id for e in chosen if e.stream_id}):
            connection = store.read_stream(stream, on_error=_warn)
            node_id = node_of(connection)
            node_events = [r for r in store.read_all(types=NODE_TYPES, on_error=_warn)
                           if same_node(r, node_id)]
            for incident in select_incidents(incidents(connection, node_events), at=moment):
                when = incident.record.recorded_at
                around = store.read_all(since=when - LOOKBACK, until=when + LOOKAHEAD, on_error=_warn)
                window = window_for(incident, connection, around, entry.party_id, entry.peer_id,
                                    entry.name or entry.peer_id, names, node_events)
                reports.append((incident, diagnose(window)))
    reports.sort(key=lambda report: report[0].record.global_position)
    if as_json:
        from store.diagnosis import report_json

        print(json.dumps({"peer": label, "at": iso(moment) if moment else None,
                          "incidents": [report_json(incident, findings) for incident, findings in reports]}))
        return
    _print(label, reports, moment, utc)


def _print(label: str, reports: list[tuple[Any, list[Any]]], moment: Any, utc: bool) -> None:
    from rich.text import Text

    console = _console()
    if not reports:
        when = f" at or before {with_zone(moment, utc)}" if moment else ""
        console.print(f"no drop of {label} recorded{when}")
        return
    # The zone of the times shown (CEST for a July log read in December); each time names its
    # own when they lie on both sides of a daylight saving change.
    moments = [incident.record.recorded_at for incident, _ in reports]
    moments += [fact.at for _, findings in reports for finding in findings for fact in finding.evidence]
    zone = zone_of(moments, utc)
    plural = "s" if len(reports) > 1 else ""
    console.print(Text.assemble((label, "bold"), f": {len(reports)} incident{plural}"
                                + (f" (times in {zone})" if zone else "")))
    for incident, findings in reports:
        first, *more = findings
        console.print()
        console.print(Text.assemble((_time(incident.record.recorded_at, utc, zone), "bold"),
                                    f"  {incident.kind}: {incident.description}"))
        console.print(Text.assemble("  ", ("cause:", "bold"), f" {first.summary}"))
        _facts(console, first.evidence, utc, zone)
        for finding in more:
            console.print(f"  also: {finding.summary}")
            _facts(console, finding.evidence, utc, zone)


def _time(moment: Any, utc: bool, zone: str | None) -> str:
    return shown(moment, utc) if zone else with_zone(moment, utc)


def _facts(console: Any, facts: Any, utc: bool, zone: str | None) -> None:
    for fact in facts:
        console.print(f"    {_time(fact.at, utc, zone)}  #{fact.global_position}  {fact.stream_id}  "
                      f"{fact.event_type}  {local_times(fact.detail, utc)}")


def register(app: typer.Typer) -> None:
    app.command("diagnose")(_guard(diagnose_command))
