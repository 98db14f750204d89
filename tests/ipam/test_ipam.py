"""IPAM: decisions from the party's events; no duplicates; replay gives the same map."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import base
from events import types as ev
from events.fold import PartyState, apply_party, fold_stream
from mesh import ipam


def _created(subnet: str = "10.66.0.0/16") -> tuple[list[ev.Event], PartyState]:
    created = ev.PartyCreated(party_id="p1", name="lan", host_peer_id="host", subnet=subnet)
    return [created], apply_party(PartyState(), created)


def _record(log: list[ev.Event], state: PartyState, event: ev.Event | None) -> PartyState:
    if event is None:
        return state
    log.append(event)
    return apply_party(state, event)


def test_first_addresses_skip_the_network_address_and_are_stable() -> None:
    log, state = _created()
    state = _record(log, state, ipam.allocate(state, "host"))
    state = _record(log, state, ipam.allocate(state, "bob"))
    assert state.allocations == {"host": "10.66.0.1", "bob": "10.66.0.2"}
    assert ipam.allocate(state, "bob") is None  # already has one: nothing to persist


def test_reserved_addresses_and_preferred_address() -> None:
    log, state = _created()
    state = _record(log, state, ipam.allocate(state, "host", reserved=["10.66.0.1", "192.0.2.7"]))
    assert state.allocations["host"] == "10.66.0.2"
    state = _record(log, state, ipam.allocate(state, "bob", preferred="10.66.9.9"))
    assert state.allocations["bob"] == "10.66.9.9"
    # A taken or out-of-subnet preference falls back to the lowest free address.
    state = _record(log, state, ipam.allocate(state, "carol", preferred="10.66.9.9"))
    state = _record(log, state, ipam.allocate(state, "dave", preferred="10.67.0.1"))
    assert state.allocations["carol"] == "10.66.0.1"
    assert state.allocations["dave"] == "10.66.0.3"


def test_exhaustion_is_a_clear_error_and_broadcast_is_never_used() -> None:
    log, state = _created("10.66.0.0/29")
    for index in range(6):
        state = _record(log, state, ipam.allocate(state, f"p{index}"))
    assert sorted(state.allocations.values(), key=ipaddress.ip_address) == [
        f"10.66.0.{n}" for n in range(1, 7)]
    with pytest.raises(ipam.AddressExhaustedError, match=r"no free virtual IP left in 10\.66\.0\.0/29"):
        ipam.allocate(state, "late")
    state = _record(log, state, ipam.release(state, "p3"))
    state = _record(log, state, ipam.allocate(state, "late"))
    assert state.allocations["late"] == "10.66.0.4"
    with pytest.raises(ipam.AddressExhaustedError):
        ipam.allocate(_created("10.66.0.0/31")[1], "x")


def test_bad_input() -> None:
    _, state = _created()
    for subnet in ("10.66.0.1/16", "nonsense", "2001:db8::/64"):
        with pytest.raises(ipam.IpamError):
            ipam.allocate(state, "a", subnet=subnet)
    with pytest.raises(ipam.IpamError):
        ipam.allocate(state, "")
    with pytest.raises(ipam.IpamError):
        ipam.allocate(state, "a", preferred="not-an-ip")
    assert ipam.release(state, "nobody") is None
    assert ipam.usable_count("10.66.0.0/16") == 65534


def test_host_addresses_lists_this_namespace() -> None:
    assert "127.0.0.1" in ipam.host_addresses()


operations = st.lists(st.tuples(st.sampled_from(["join", "leave", "release"]),
                                st.integers(min_value=0, max_value=19),
                                st.booleans()), max_size=80)


@settings(max_examples=200, deadline=None)
@given(operations, st.sampled_from(["10.66.0.0/16", "10.66.0.0/28", "10.66.7.0/29"]),
       st.lists(st.sampled_from(["10.66.0.1", "10.66.0.5", "10.66.7.3"]), max_size=2))
def test_random_joins_and_leaves_never_duplicate_and_replay_is_identical(
        ops: list[tuple[str, int, bool]], subnet: str, reserved: list[str]) -> None:
    log, state = _created(subnet)
    network = ipaddress.ip_network(subnet)
    previous: dict[str, str] = {}
    for op, index, prefer_old in ops:
        peer = f"peer{index}"
        if op == "join":
            if peer not in state.members_by_id:
                state = _record(log, state, ev.PeerJoined(party_id="p1", peer_id=peer, name=peer,
                                                          public_key="k" * 43 + "="))
            try:
                decision = ipam.allocate(state, peer, reserved=reserved,
                                         preferred=previous.get(peer) if prefer_old else None)
            except ipam.AddressExhaustedError:
                assert len(ipam.taken(state, reserved) & set(network.hosts())) == ipam.usable_count(subnet)
                continue
            state = _record(log, state, decision)
        elif op == "leave":
            state = _record(log, state, ipam.release(state, peer))
            if peer in state.members_by_id:
                state = _record(log, state, ev.PeerLeft(party_id="p1", peer_id=peer, reason="left"))
        else:
            state = _record(log, state, ipam.release(state, peer))
        addresses = list(state.allocations.values())
        assert len(addresses) == len(set(addresses)), "an address was handed out twice"
        for address in addresses:
            parsed = ipaddress.ip_address(address)
            assert parsed in network and parsed not in (network.network_address, network.broadcast_address)
            assert address not in reserved
        previous.update(state.allocations)
    assert ipam.duplicates(state) == {}
    replayed = fold_stream(apply_party, PartyState(), [base.decode(*base.encode(e)) for e in log])
    assert replayed.allocations == state.allocations
    assert replayed == state
