"""Key possession proofs, invites and party secrets."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.control.identity import (
    Challenge,
    Identity,
    IdentityError,
    ServerBinding,
    decode_key,
    encode_key,
    peer_id_for,
)
from mesh.control.invite import Invite, InviteError
from mesh.control.secrets_hash import check_secret, hash_secret, new_secret

SERVER = Identity.generate()
BINDING = ServerBinding(SERVER.public_key, "", "203.0.113.10:8667")


def test_a_node_proves_its_key_and_nobody_else_can() -> None:
    node, impostor = Identity.generate(), Identity.generate()
    challenge = Challenge.new()
    proof = node.prove(challenge.ephemeral_public, challenge.nonce_text, BINDING)
    assert challenge.verify(node.public_key, proof, SERVER, BINDING)
    # Claiming the node's key with the impostor's proof fails.
    forged = impostor.prove(challenge.ephemeral_public, challenge.nonce_text, BINDING)
    assert not challenge.verify(node.public_key, forged, SERVER, BINDING)
    # A proof for one challenge is worthless on another connection.
    assert not Challenge.new().verify(node.public_key, proof, SERVER, BINDING)
    # A proof made for another server (key, address or certificate) is worthless here.
    other = Identity.generate()
    for elsewhere in (ServerBinding(other.public_key, "", BINDING.authority),
                      ServerBinding(SERVER.public_key, "", "198.51.100.66:8667"),
                      ServerBinding(SERVER.public_key, "ab" * 32, BINDING.authority)):
        made = node.prove(challenge.ephemeral_public, challenge.nonce_text, elsewhere)
        assert not challenge.verify(node.public_key, made, SERVER, BINDING)
    # The server proves it holds its key.
    assert node.check_server_proof(SERVER.public_key, proof, SERVER.server_proof(node.public_key, proof))
    assert not node.check_server_proof(SERVER.public_key, proof, other.server_proof(node.public_key, proof))


def test_low_order_points_and_junk_never_verify() -> None:
    challenge = Challenge.new()
    node = Identity.generate()
    proof = node.prove(challenge.ephemeral_public, challenge.nonce_text, BINDING)
    assert not challenge.verify(encode_key(bytes(32)), proof, SERVER, BINDING)
    assert not challenge.verify("not a key", proof, SERVER, BINDING)
    assert not challenge.verify(node.public_key, "", SERVER, BINDING)
    assert not challenge.verify(node.public_key, "\udcff" * 3, SERVER, BINDING)
    with pytest.raises(IdentityError):
        node.prove(encode_key(bytes(32)), challenge.nonce_text, BINDING)
    with pytest.raises(IdentityError):
        node.prove(challenge.ephemeral_public, base64.b64encode(b"short").decode(), BINDING)


def test_keys_match_wireguard_format_and_private_key_is_hidden() -> None:
    node = Identity.generate()
    assert len(node.public_key) == 44 and node.public_key.endswith("=")
    assert Identity.from_private_key(node.private_key_text).public_key == node.public_key
    assert node.private_key_text not in repr(node)
    assert peer_id_for(node.public_key) == node.peer_id and len(node.peer_id) == 16
    for bad in ("", "abc", base64.b64encode(bytes(31)).decode(), "é" * 44):
        with pytest.raises(IdentityError):
            decode_key(bad)


def test_invite_round_trip_is_one_copyable_string() -> None:
    invite = Invite("ws://198.51.100.10:8667", "a1b2c3d4", "Friday LAN", new_secret())
    text = invite.encode()
    assert text.startswith("lanrage1-") and text.isprintable() and " " not in text
    assert Invite.decode(f"  {text}\n") == invite
    assert invite.secret not in repr(invite)


@pytest.mark.parametrize("text", ["", "hello", "lanrage1-", "lanrage1-!!!", "lanrage1-e30",
                                  "lanrage1-" + "A" * 5000,
                                  Invite("http://x", "p", "n", "s").encode()])
def test_damaged_invites_are_refused_clearly(text: str) -> None:
    with pytest.raises(InviteError):
        Invite.decode(text)


@given(st.text(max_size=200))
def test_invite_decoder_only_raises_invite_errors(text: str) -> None:
    with contextlib.suppress(InviteError):
        Invite.decode(text)


def test_secrets_are_stored_as_salted_hashes() -> None:
    secret = new_secret()
    stored, again = hash_secret(secret), hash_secret(secret)
    assert secret not in stored and stored != again  # salted
    assert check_secret(secret, stored) and check_secret(secret, again)
    assert not check_secret(secret + "x", stored)
    assert not check_secret(secret, "garbage") and not check_secret(secret, "md5$00$00")
