"""Which peer a person means: a name, an id prefix, or ``PARTY:NAME``.

The directory comes from the log (``PartyCreated``/``PartyJoined`` name the parties,
``PeerJoined`` names the peers, ``StaticDeviceExported``/``StaticDeviceRouted`` the devices
without LANrage) and from the peer streams themselves, so a peer that left, or one whose
join was never recorded here, can still be found by its id.
The CLI (``history``, ``diagnose``) and the API share these rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from events import types as ev
from events.streams import peer_stream_ids
from store.base import RecordedEvent, StoreError
from store.queries import OnError
from store.sql import EventStore

DIRECTORY_TYPES = ("PartyCreated", "PartyJoined", "PeerJoined", "StaticDeviceExported", "StaticDeviceRouted")
# An error lists at most this many candidates: enough to pick from, short enough to read.
LISTED_CANDIDATES = 8


class PeerNotFound(StoreError):
    """No peer of the log matches what the user typed."""


class AmbiguousPeer(StoreError):
    """Several different peers match what the user typed."""


@dataclass(frozen=True)
class PeerRef:
    party_id: str
    peer_id: str
    name: str = ""
    party_name: str = ""
    stream_id: str | None = None  # the connection stream, when this node has one

    def label(self) -> str:
        who = f"{self.name} ({self.peer_id})" if self.name else self.peer_id
        party = f"{self.party_name} ({self.party_id})" if self.party_name else self.party_id
        return f"{who} in party {party}"


def build_directory(records: Iterable[RecordedEvent], peer_streams: Iterable[str]) -> list[PeerRef]:
    """Every remote peer known to the log, one entry per (party, peer, connection stream)."""
    party_names: dict[str, str] = {}
    names: dict[tuple[str, str], str] = {}
    local: set[tuple[str, str]] = set()
    for record in records:
        event = record.event
        if isinstance(event, ev.PartyCreated | ev.PartyJoined):
            party_names[event.party_id] = event.name
        elif isinstance(event, ev.PeerJoined):
            names[(event.party_id, event.peer_id)] = event.name
            if event.is_local:
                local.add((event.party_id, event.peer_id))
        elif isinstance(event, ev.StaticDeviceExported | ev.StaticDeviceRouted):
            names[(event.party_id, event.device_id)] = event.name  # a device without LANrage
    streams: dict[tuple[str, str], list[str]] = {}
    for stream_id in peer_streams:
        ids = peer_stream_ids(stream_id)
        if ids is not None:
            streams.setdefault(ids, []).append(stream_id)
    entries = []
    for key in sorted(set(names) | set(streams)):
        if key in local and key not in streams:
            continue  # this node itself: it has no connection to itself
        party_id, peer_id = key
        for stream_id in sorted(streams.get(key, [])) or [None]:
            entries.append(PeerRef(party_id, peer_id, names.get(key, ""), party_names.get(party_id, ""),
                                   stream_id))
    return entries


def _peer_matches(entry: PeerRef, wanted: str) -> tuple[bool, bool]:
    """(exact, prefix) match of one peer against a name or an id."""
    folded = wanted.casefold()
    exact = entry.peer_id == wanted or (bool(entry.name) and entry.name.casefold() == folded)
    prefix = entry.peer_id.startswith(wanted) or (
        bool(entry.name) and entry.name.casefold().startswith(folded))
    return exact, prefix


def _party_matches(entry: PeerRef, wanted: str) -> bool:
    return (entry.party_id.startswith(wanted)
            or (bool(entry.party_name) and entry.party_name.casefold() == wanted.casefold()))


def resolve_peer(directory: list[PeerRef], query: str) -> list[PeerRef]:
    """The entries of one peer that ``query`` names; an error listing the candidates otherwise.

    Exact matches (name, case-insensitive, or id) win over prefixes, so "bob" means Bob even
    when "bobby" exists. One peer id in several parties is one peer (all its entries come back),
    unless ``PARTY:NAME`` narrows it to one party.
    """
    wanted = query.strip()
    if not wanted:
        raise PeerNotFound("PEER must not be empty: give a peer name, an id prefix or PARTY:NAME")
    candidates = directory
    peer_part = wanted
    if ":" in wanted:
        party_part, _, peer_part = wanted.rpartition(":")
        candidates = [entry for entry in directory if _party_matches(entry, party_part)]
        if not candidates:
            raise PeerNotFound(f"no party matches {party_part!r} in {wanted!r}; parties: "
                               f"{_list_parties(directory)}")
    matched = [(entry, *_peer_matches(entry, peer_part)) for entry in candidates]
    exact = [entry for entry, is_exact, _ in matched if is_exact]
    chosen = exact or [entry for entry, _, is_prefix in matched if is_prefix]
    if not chosen:
        raise PeerNotFound(f"no peer matches {wanted!r}; known peers: {_list(candidates) or 'none'}")
    if len({entry.peer_id for entry in chosen}) > 1 or (
            ":" in wanted and len({entry.party_id for entry in chosen}) > 1):
        raise AmbiguousPeer(f"{wanted!r} matches several peers: {_list(chosen)}; "
                            "give more of the id, or PARTY:NAME")
    return chosen


def _list(entries: list[PeerRef]) -> str:
    labels = sorted({entry.label() for entry in entries})
    more = len(labels) - LISTED_CANDIDATES
    return "; ".join(labels[:LISTED_CANDIDATES]) + (f"; and {more} more" if more > 0 else "")


def _list_parties(entries: list[PeerRef]) -> str:
    parties = sorted({f"{e.party_name} ({e.party_id})" if e.party_name else e.party_id for e in entries})
    return ", ".join(parties[:LISTED_CANDIDATES]) or "none"


def load_directory(store: EventStore, on_error: OnError = "raise") -> list[PeerRef]:
    """The directory of a synchronous store (names from the party streams, ids from the peer streams)."""
    return build_directory(store.read_all(types=DIRECTORY_TYPES, on_error=on_error), store.streams("peer:"))
