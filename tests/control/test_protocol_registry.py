"""Message validation and the registry fold."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import types as ev
from mesh.control import protocol as p
from mesh.control import registry as reg
from mesh.control.identity import Identity

KEY = Identity.generate().public_key


def frame(**fields: object) -> str:
    return json.dumps({"v": 1, **fields})


@pytest.mark.parametrize(("text", "code"), [
    ("{", p.BAD_JSON),
    ("[1, 2]", p.BAD_MESSAGE),
    ('{"type": "hello"}', p.UNSUPPORTED_VERSION),
    ('{"type": "hello", "v": 2}', p.UNSUPPORTED_VERSION),
    ('{"type": "hello", "v": true}', p.UNSUPPORTED_VERSION),
    (frame(type="reboot"), p.UNKNOWN_TYPE),
    (frame(type=["hello"]), p.UNKNOWN_TYPE),
    (frame(type="hello", public_key="short"), p.BAD_MESSAGE),
    (frame(type="hello", public_key=KEY, name="\x00evil"), p.BAD_MESSAGE),
    (frame(type="heartbeat", extra=1), p.BAD_MESSAGE),
    (frame(type="join_party", party_id="../etc", secret="x"), p.BAD_MESSAGE),
    (frame(type="announce", candidates=["203.0.113.5:0"]), p.BAD_MESSAGE),
    (frame(type="announce", candidates=["example.com:51820"]), p.BAD_MESSAGE),
    (frame(type="announce", candidates=["203.0.113.5:1"] * 17), p.BAD_MESSAGE),
    (frame(type="signal", party_id="a", to="b", payload=[1]), p.BAD_MESSAGE),
    (frame(type="create_party", name="x" * 65), p.BAD_MESSAGE),
    (frame(type="heartbeat", id="x" * 65), p.BAD_MESSAGE),
    ("[" * 100_000 + "]" * 100_000, p.TOO_LARGE),
    ("[" * 30_000, p.BAD_JSON),
])
def test_bad_frames_get_a_clear_code(text: str, code: str) -> None:
    with pytest.raises(p.ProtocolError) as refusal:
        p.parse_request(text)
    assert refusal.value.code == code
    assert refusal.value.message and "\n" not in refusal.value.message


def test_binary_frames_and_oversized_text_are_refused() -> None:
    with pytest.raises(p.ProtocolError, match="binary"):
        p.parse_request(b'{"type": "heartbeat", "v": 1}')
    with pytest.raises(p.ProtocolError) as refusal:
        p.parse_request(frame(type="create_party", name="x", pad="é" * 40_000))
    assert refusal.value.code == p.TOO_LARGE


def test_good_frames_parse_and_keep_their_id() -> None:
    hello = p.parse_request(frame(type="hello", public_key=KEY, name="alice", id="r1"))
    assert isinstance(hello, p.Hello) and hello.id == "r1"
    announce = p.parse_request(frame(type="announce", nat_type="symmetric",
                                     candidates=["203.0.113.5:51820", "[2001:db8::1]:9"]))
    assert isinstance(announce, p.Announce) and announce.nat_type == "symmetric"
    with pytest.raises(p.ProtocolError) as refusal:
        p.parse_request(frame(type="leave_party", id="r9"))
    assert refusal.value.request_id == "r9"


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=100),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                              lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.sampled_from(["type", "v", "id", "name", "party_id",
                                                                 "secret", "payload", "x"]), inner,
                                                max_size=5)).map(json.dumps)))
def test_parser_raises_only_protocol_errors(data: str | bytes) -> None:
    try:
        p.parse_request(data)
    except p.ProtocolError as refusal:
        assert refusal.code in {p.BAD_JSON, p.BAD_MESSAGE, p.UNKNOWN_TYPE, p.UNSUPPORTED_VERSION,
                                p.TOO_LARGE}


def test_registry_folds_parties_members_and_relays() -> None:
    events = [
        ev.ControlRelayRegistered(relay="203.0.113.20:3478"),
        ev.ControlRelayRegistered(relay="203.0.113.20:3478"),
        ev.ControlPartyRegistered(party_id="p1", name="lan", host_peer_id="a", secret_hash="h"),
        ev.ControlMemberAdmitted(party_id="p1", peer_id="a", public_key="ka", virtual_ip="10.66.0.1"),
        ev.ControlMemberAdmitted(party_id="p1", peer_id="b", public_key="kb", virtual_ip="10.66.0.2"),
        ev.ControlMemberAdmitted(party_id="nope", peer_id="c", public_key="kc", virtual_ip="10.66.0.3"),
        ev.ControlJoinRefused(party_id="p1", reason="wrong party secret"),
        ev.ControlMemberRemoved(party_id="p1", peer_id="a", reason="left"),
    ]
    state = reg.fold(events)
    party = state.party("p1")
    assert party is not None and [m.peer_id for m in party.members] == ["b"]
    assert state.relays == ("203.0.113.20:3478",) and state.refused_joins == 1
    assert state.parties_of("b") == [party] and state.parties_of("a") == []
    # The freed address is handed out again, lowest first.
    assert reg.next_virtual_ip(party) == "10.66.0.1"
    assert reg.fold(events[:5]).party("p1") is not None
    assert reg.next_virtual_ip(reg.fold(events[:5]).party("p1")) == "10.66.0.3"  # type: ignore[arg-type]


def test_a_full_subnet_is_an_error() -> None:
    party = reg.Party("p", "n", "a", subnet="10.66.0.0/30",
                      members=(reg.Member("a", "k", "10.66.0.1"), reg.Member("b", "k", "10.66.0.2")))
    with pytest.raises(ValueError, match=r"no free virtual IP left in 10\.66\.0\.0/30"):
        reg.next_virtual_ip(party)
