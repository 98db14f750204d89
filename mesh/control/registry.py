"""The control server's party registry as a pure fold of its Control* events.

The server appends events to its own stream and applies them with ``apply``; a
restart reads the stream and folds it back, so the registry survives crashes and
can be replayed, in time linear in the number of events. Presence (who is online,
their candidates) is deliberately not here: it is soft state that a reconnecting
node re-announces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from events import types as ev
from events.base import Event
from events.fold import MemberState, PartyState
from mesh import ipam

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


class Registry:
    """Parties by id, and the parties of each peer, indexed: every lookup is constant time.

    ``apply`` updates a registry in place (one fold owns it: the server's, or a replay's),
    so replaying the stream costs one step per event, however many parties there are.
    """

    def __init__(self) -> None:
        self._parties: dict[str, Party] = {}
        self._member_of: dict[str, dict[str, None]] = {}  # peer id -> its party ids, in join order
        self.relays: tuple[str, ...] = ()
        self.refused_joins = 0

    @property
    def parties(self) -> tuple[tuple[str, Party], ...]:
        return tuple(self._parties.items())

    @property
    def by_id(self) -> dict[str, Party]:
        return dict(self._parties)

    def __len__(self) -> int:
        return len(self._parties)

    def party(self, party_id: str) -> Party | None:
        return self._parties.get(party_id)

    def parties_of(self, peer_id: str) -> list[Party]:
        return [self._parties[party_id] for party_id in self._member_of.get(peer_id, ())]

    def memberships(self, peer_id: str) -> int:
        return len(self._member_of.get(peer_id, ()))

    def _put(self, party: Party) -> None:
        self._parties[party.party_id] = party

    def _admit(self, party_id: str, peer_id: str) -> None:
        self._member_of.setdefault(peer_id, {})[party_id] = None

    def _discharge(self, party_id: str, peer_id: str) -> None:
        parties = self._member_of.get(peer_id)
        if parties is not None:
            parties.pop(party_id, None)
            if not parties:
                del self._member_of[peer_id]


def apply(registry: Registry, event: Event) -> Registry:
    match event:
        case ev.ControlPartyRegistered():
            registry._put(Party(party_id=event.party_id, name=event.name, host_peer_id=event.host_peer_id,
                                secret_hash=event.secret_hash, subnet=event.subnet))
        case ev.ControlMemberAdmitted():
            party = registry.party(event.party_id)
            if party is not None:
                members = tuple(m for m in party.members if m.peer_id != event.peer_id)
                member = Member(peer_id=event.peer_id, public_key=event.public_key,
                                virtual_ip=event.virtual_ip, name=event.name)
                registry._put(replace(party, members=(*members, member)))
                registry._admit(event.party_id, event.peer_id)
        case ev.ControlMemberRemoved():
            party = registry.party(event.party_id)
            if party is not None:
                registry._put(replace(party, members=tuple(
                    m for m in party.members if m.peer_id != event.peer_id)))
                registry._discharge(event.party_id, event.peer_id)
        case ev.ControlJoinRefused():
            registry.refused_joins += 1
        case ev.ControlJoinRefusalsCounted():
            registry.refused_joins += event.count
        case ev.ControlRelayRegistered():
            if event.relay not in registry.relays:
                registry.relays = (*registry.relays, event.relay)
    return registry


def fold(events: Iterable[Event], registry: Registry | None = None) -> Registry:
    """Apply ``events`` to ``registry`` (in place) or to a new one."""
    state = registry if registry is not None else Registry()
    for event in events:
        state = apply(state, event)
    return state


def next_virtual_ip(party: Party, reserved: tuple[str, ...] = ()) -> str:
    """The lowest free address of the party's subnet, as ``mesh.ipam`` decides it: one allocator
    for the control server and the nodes (the server records it in ``ControlMemberAdmitted``).
    ``reserved``: addresses held outside the members (the static devices members route for)."""
    state = PartyState(party_id=party.party_id, subnet=party.subnet, members=tuple(
        (m.peer_id, MemberState(m.peer_id, m.name, m.public_key, virtual_ip=m.virtual_ip))
        for m in party.members))
    try:
        decided = ipam.allocate(state, NEW_MEMBER, reserved=reserved)
    except ipam.IpamError as error:
        raise ValueError(f"party {party.party_id}: {error}") from None
    assert decided is not None  # NEW_MEMBER holds no address yet
    return decided.virtual_ip


NEW_MEMBER = "\x00new-member"  # no peer id can be this: the member being admitted
