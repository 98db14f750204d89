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
from commands.times import (
    NEAR,
    TIME_FORMS,
    TimeWindow,
    UtcOption,
    clock,
    iso,
    parse_window,
    relative_words,
    shown,
)


def diagnose_command(
    peer: Annotated[str, typer.Argument(help="Peer name, id prefix, or PARTY:NAME.")],
    at: Annotated[str | None, typer.Option(
        "--at", help=f"Explain the drop in this minute (or second), else the nearest within "
                     f"{NEAR.seconds // 60} min: {TIME_FORMS}.")] = None,
    as_json: JsonOption = False,
    utc: UtcOption = False,
    state_dir: StateDirOption = _DEFAULT_STATE_DIR,
    db: DbOption = None,
) -> None:
    """Why PEER dropped: the cause first, in plain words, then the events that show it."""
    from events.streams import node_of as stream_owner
    from store.diagnosis import (
        LATEST_INCIDENTS,
        LOOKAHEAD,
        LOOKBACK,
        NODE_TYPES,
        UP,
        StateAt,
        diagnose,
        incidents,
        node_of,
        same_node,
        select_nearest,
        window_for,
    )
    from store.peers import load_directory
    from store.replay import iter_events

    window = parse_window(at, "--at") if at else None
    reports: list[tuple[Any, list[Any]]] = []
    inside = True
    with _open_readonly(db, state_dir) as store:
        chosen = find_peer(store, peer)
        names = {(e.party_id, e.peer_id): e.name for e in load_directory(store, on_error=_warn) if e.name}
        entry = chosen[0]
        label = entry.label()
        found = []
        for stream in sorted({e.stream_id for e in chosen if e.stream_id}):
            connection = store.read_stream(stream, on_error=_warn)
            node_id = node_of(connection)
            node_events = [r for r in store.read_all(types=NODE_TYPES, on_error=_warn)
                           if same_node(r, node_id)]
            found += [(incident, connection, node_events) for incident in incidents(connection, node_events)]
        found.sort(key=lambda item: item[0].record.global_position)
        if window is not None:
            picked, inside = select_nearest([item[0] for item in found], window.start, window.end, NEAR)
            found = [item for item in found if item[0] in picked]
        else:
            found = found[-LATEST_INCIDENTS:]
        if found:
            # The state of every connection at each incident, folded from the log's start (the
            # replay's fast reader): which others were up does not depend on how many rows lie
            # near the incident.
            state = StateAt(iter_events(store, upto=found[-1][0].record.global_position,
                                        on_error=_warn))
        for incident, connection, node_events in found:
            when = incident.record.recorded_at
            around = store.read_all(since=when - LOOKBACK, until=when + LOOKAHEAD, on_error=_warn)
            world = state.at(incident.record.global_position)
            owner = stream_owner(incident.record.stream_id)
            # Each of this node's connections that was up, with its last change however long ago.
            changes = {stream: record for stream, position in state.changes.items()
                       if stream_owner(stream) == owner
                       and (connection_state := world.connections.get(stream)) is not None
                       and connection_state.state in UP
                       and (record := next(iter(store.read_all(position - 1, 1, on_error=_warn)), None))}
            report_window = window_for(incident, connection, around, entry.party_id, entry.peer_id,
                                       entry.name or entry.peer_id, names, node_events, world, changes)
            reports.append((incident, diagnose(report_window)))
    if as_json:
        from store.diagnosis import report_json

        incidents_json = []
        for incident, findings in reports:
            report = report_json(incident, findings)
            if window is not None:
                report["in_window"] = inside
                report["offset_s"] = window.offset(incident.record.recorded_at)
                report["distance_s"] = window.distance(incident.record.recorded_at).total_seconds()
            incidents_json.append(report)
        print(json.dumps({"peer": label, "at": iso(window.start) if window else None,
                          "window": window.json() if window else None,
                          "nearest_within_s": NEAR.total_seconds() if window else None,
                          "incidents": incidents_json}))
        return
    _print(label, reports, window, inside, utc)


def _print(label: str, reports: list[tuple[Any, list[Any]]], window: TimeWindow | None, inside: bool,
           utc: bool) -> None:
    from rich.text import Text

    console = _console()
    if not reports:
        when = (f" in {window.label(utc)} or within {NEAR.seconds // 60} min of it" if window else "")
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
        moment = incident.record.recorded_at
        console.print()
        if window is not None:
            where = (f"{incident.kind} {clock(moment, utc)}, in {window.label(utc)}" if inside else
                     f"nearest {incident.kind} {clock(moment, utc)}, {relative_words(window, moment, utc)}")
            console.print(where)
        console.print(Text.assemble((_time(moment, utc, zone), "bold"),
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
        then = "afterwards: " if fact.followed else ""
        console.print(f"    {_time(fact.at, utc, zone)}  #{fact.global_position}  {fact.stream_id}  "
                      f"{fact.event_type}  {then}{local_times(fact.detail, utc)}")


def register(app: typer.Typer) -> None:
    app.command("diagnose")(_guard(diagnose_command))
