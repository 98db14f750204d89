"""A member's account of its own side is recorded as its word, checked like every network input."""

from __future__ import annotations

from actors import messages as m
from tests.actors.conftest import BOB, Node

AT = 1_795_000_000.0  # 2026-11-18: a clock's time


def _joined(make_node) -> Node:
    node: Node = make_node()
    node.ask(m.CreateParty("p1", "LAN", "alice", "Alice"))
    node.tell(m.PeerAnnounced("p1", "bob", "Bob", "key-bob", candidates=(BOB,)))
    node.advance(5)
    node.new(node.party())
    return node


def test_an_account_is_recorded_as_the_members_word(make_node) -> None:
    node = _joined(make_node)
    node.tell(m.PeerAccount("p1", "bob", (
        m.AccountItem("uplink_down", AT, AT + 729.0,
                      "this connection and every relay (1) went silent together"),
        m.AccountItem("endpoint_changed", AT + 700.0, None, "its public endpoint moved"))))
    node.drain()
    assert node.new(node.party()) == [
        "PeerAccountReceived(peer_id='bob', kind='uplink_down', started_at='2026-11-18T11:06:40+00:00', "
        "ended_at='2026-11-18T11:18:49+00:00', detail='this connection and every relay (1) went silent "
        "together', said_by='peer')",
        "PeerAccountReceived(peer_id='bob', kind='endpoint_changed', started_at='2026-11-18T11:18:20+00:00', "
        "ended_at='', detail='its public endpoint moved', said_by='peer')"]


def test_the_control_servers_word_is_recorded_as_its_own_and_only_about_silence(make_node) -> None:
    node = _joined(make_node)
    node.tell(m.PeerAccount("p1", "bob", (m.AccountItem("offline", AT, AT + 40.0, "heard nothing"),),
                            said_by="control server"))
    node.tell(m.PeerAccount("p1", "bob", (m.AccountItem("offline", AT, AT + 40.0),)))  # a member cannot
    crashed = (m.AccountItem("crashed", AT, AT + 40.0),)
    node.tell(m.PeerAccount("p1", "bob", crashed, said_by="control server"))  # the server: silence only
    node.tell(m.PeerAccount("p1", "bob", crashed, said_by="bob's friend"))
    node.drain()
    written = node.new(node.party())
    assert written[0] == ("PeerAccountReceived(peer_id='bob', kind='offline', "
                          "started_at='2026-11-18T11:06:40+00:00', ended_at='2026-11-18T11:07:20+00:00', "
                          "detail='heard nothing', said_by='control server')")
    assert [line.split(",")[0] for line in written[1:]] == ["MessageRejected(actor='party/p1'"] * 3


def test_an_account_from_a_stranger_or_out_of_bounds_is_refused_and_recorded_as_refused(make_node) -> None:
    node = _joined(make_node)
    bad = [
        m.PeerAccount("p1", "mallory", (m.AccountItem("uplink_down", AT, AT + 1),)),  # not a member
        m.PeerAccount("p1", "alice", (m.AccountItem("uplink_down", AT, AT + 1),)),  # this node itself
        m.PeerAccount("p1", "bob", (m.AccountItem("took_over_the_mesh", AT, AT + 1),)),
        m.PeerAccount("p1", "bob", (m.AccountItem("crashed", AT, AT - 1),)),  # ends before it begins
        m.PeerAccount("p1", "bob", (m.AccountItem("crashed", float("nan"), AT),)),
        m.PeerAccount("p1", "bob", (m.AccountItem("crashed", AT, AT + 1, "\x1b[2J"),)),
        m.PeerAccount("p1", "bob", tuple(m.AccountItem("crashed", AT, AT + 1) for _ in range(9))),
    ]
    for message in bad:
        node.tell(message)
    node.drain()
    written = node.new(node.party())
    assert len(written) == len(bad)
    assert all(line.startswith("MessageRejected(actor='party/p1', message_type='PeerAccount'")
               for line in written), written
