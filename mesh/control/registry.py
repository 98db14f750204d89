"""The control server's party registry as a pure fold of its Control* events.

The server appends events to its own stream and applies them with ``apply``; a
restart reads the stream and folds it back, so the registry survives crashes and
can be replayed. Presence (who is online, their candidates) is deliberately not
here: it is soft state that a reconnecting node re-announces.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from events import types as ev
from events.base import Event

DEFAULT_SUBNET = "10.66.0.0/16"


@dataclass(frozen=True)
class Member:
    peer_id: str
    public_key: str
    virtual_ip: str
    name: str = ""


@dataclass(frozen=True)
class Party:
    party_id: str
    name: str
    host_peer_id: str
    secret_hash: str = field(repr=False, default="")
    subnet: str = DEFAULT_SUBNET
    members: tuple[Member, ...] = ()

    def member(self, peer_id: str) -> Member | None:
        return next((m for m in self.members if m.peer_id == peer_id), None)


@dataclass(frozen=True)
class Registry:
    parties: tuple[tuple[str, Party], ...] = ()
    relays: tuple[str, ...] = ()
    refused_joins: int = 0

    @property
    def by_id(self) -> dict[str, Party]:
        return dict(self.parties)

    def party(self, party_id: str) -> Party | None:
        return self.by_id.get(party_id)

    def parties_of(self, peer_id: str) -> list[Party]:
        return [p for _, p in self.parties if p.member(peer_id) is not None]


def _put(registry: Registry, party: Party) -> Registry:
    parties = dict(registry.parties)
    parties[party.party_id] = party
    return replace(registry, parties=tuple(parties.items()))


def apply(registry: Registry, event: Event) -> Registry:
    match event:
        case ev.ControlPartyRegistered():
            return _put(registry, Party(party_id=event.party_id, name=event.name,
                                        host_peer_id=event.host_peer_id, secret_hash=event.secret_hash,
                                        subnet=event.subnet))
        case ev.ControlMemberAdmitted():
            party = registry.party(event.party_id)
            if party is None:
                return registry
            members = tuple(m for m in party.members if m.peer_id != event.peer_id)
            member = Member(peer_id=event.peer_id, public_key=event.public_key,
                            virtual_ip=event.virtual_ip, name=event.name)
            return _put(registry, replace(party, members=(*members, member)))
        case ev.ControlMemberRemoved():
            party = registry.party(event.party_id)
            if party is None:
                return registry
            return _put(registry, replace(party, members=tuple(
                m for m in party.members if m.peer_id != event.peer_id)))
        case ev.ControlJoinRefused():
            return replace(registry, refused_joins=registry.refused_joins + 1)
        case ev.ControlRelayRegistered():
            if event.relay in registry.relays:
                return registry
            return replace(registry, relays=(*registry.relays, event.relay))
    return registry


def fold(events: Iterable[Event], registry: Registry | None = None) -> Registry:
    state = registry or Registry()
    for event in events:
        state = apply(state, event)
    return state


def next_virtual_ip(party: Party) -> str:
    """The lowest free host address of the party's subnet (the server is the one allocator)."""
    taken = {m.virtual_ip for m in party.members}
    for address in ipaddress.ip_network(party.subnet).hosts():
        text = str(address)
        if text not in taken:
            return text
    raise ValueError(f"party {party.party_id} has no free address left in {party.subnet}")
