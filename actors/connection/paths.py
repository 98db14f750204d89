"""Paths: the facts a path decision records, from the folded state and what the network
said (a punch's result, the peer's announce). Pure functions: they build events only."""

from __future__ import annotations

from collections.abc import Sequence

from actors.connection.facts import Ids
from events import types as ev
from events.base import Event
from events.fold import ConnectionState
from mesh.interfaces import PunchResult


def punch_succeeded(ids: Ids, result: PunchResult) -> ev.HolePunchSucceeded:
    return ev.HolePunchSucceeded(**ids.base(), endpoint=result.endpoint or "",
                                 rtt_ms=result.rtt_ms or 0.0, elapsed_ms=result.elapsed_ms)


def direct_chosen(ids: Ids, state: ConnectionState, result: PunchResult) -> Event:
    """The direct path a punch found: a switch from the relay, or the first choice."""
    if state.path == ev.RELAY:
        return ev.PathSwitched(
            **ids.base(), from_path=ev.RELAY, to_path=ev.DIRECT, reason="hole punch succeeded",
            endpoint=result.endpoint, from_relay=state.relay,
            from_latency_ms=state.latency_ms, to_latency_ms=result.rtt_ms)
    return ev.PathChosen(**ids.base(), path=ev.DIRECT, reason="hole punch succeeded",
                         endpoint=result.endpoint)


def remote_update(ids: Ids, state: ConnectionState, candidates: Sequence[str],
                  nat_type: str) -> ev.RemotePeerUpdated | None:
    """What the peer announced, when it changes what the state holds (an empty or unknown
    part keeps the last one)."""
    candidates = tuple(candidates) or state.candidates
    nat_type = nat_type if nat_type != ev.NAT_UNKNOWN else state.remote_nat_type
    if (candidates, nat_type) == (state.candidates, state.remote_nat_type):
        return None
    return ev.RemotePeerUpdated(**ids.base(), candidates=candidates, nat_type=nat_type)


def announced_move(ids: Ids, state: ConnectionState, candidates: Sequence[str]) -> list[Event]:
    """The peer announced candidates without the direct endpoint in use: it moved (once a change)."""
    if state.path != ev.DIRECT or not state.endpoint or not candidates or state.endpoint in candidates:
        return []
    new = next((c for c in candidates if c not in state.candidates), candidates[0])
    return [ev.EndpointChanged(**ids.base(), old_endpoint=state.endpoint, new_endpoint=new,
                               reason="the peer announced candidates without the endpoint in use",
                               seen_by=ev.SEEN_IN_ANNOUNCE)]
