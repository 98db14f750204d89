"""Keys and peer configuration: validation and secrecy, no network needed."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from mesh.keys import (
    InvalidKeyError,
    KeyFileError,
    PrivateKey,
    generate_keypair,
    load_or_create_private_key,
    load_private_key,
    validate_public_key,
)
from mesh.wireguard import InvalidConfigError, InvalidEndpointError, PeerConfig, parse_endpoint
from mesh.wireguard.config import validate_interface_name


def test_key_file_is_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wireguard.key"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_private_key(path) == key
    assert len(key.public_key) == 44 and validate_public_key(key.public_key) == key.public_key


def test_private_key_never_shows_in_repr_str_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    key, public = generate_keypair()
    secret = key.secret_base64()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("key %s %r", key, key)
    assert secret not in repr(key) and secret not in str(key) and secret not in caplog.text
    assert public in repr(key)


def test_group_readable_or_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    load_or_create_private_key(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="0600"):
        load_private_key(path)
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="does not hold"):
        load_private_key(path)


@pytest.mark.parametrize("bad", ["", "hello", "A" * 44, "A" * 43 + "!", "AAAA" * 11 + "=", "0" * 64,
                                 "A" * 42 + "B=="])
def test_invalid_keys(bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_public_key(bad)
    with pytest.raises(InvalidKeyError):
        PrivateKey.from_base64(bad)


def test_invalid_key_message_does_not_echo_the_key() -> None:
    secret_like = "s3cr3t!" * 6 + "AA="
    with pytest.raises(InvalidKeyError) as info:
        PrivateKey.from_base64(secret_like)
    assert secret_like not in str(info.value)


@pytest.mark.parametrize("endpoint", ["example.com:51820", "203.0.113.5", "203.0.113.5:0",
                                      "203.0.113.5:99999", "203.0.113.5:port", ":51820", "[2001:db8::1]",
                                      "300.1.1.1:5"])
def test_endpoint_must_be_ip_and_port(endpoint: str) -> None:
    with pytest.raises(InvalidEndpointError):
        parse_endpoint(endpoint)


def test_endpoint_forms() -> None:
    assert parse_endpoint("203.0.113.5:51820") == ("203.0.113.5", 51820)
    assert parse_endpoint("[2001:db8::1]:51820") == ("2001:db8::1", 51820)


def test_peer_config_normalises() -> None:
    _, public = generate_keypair()
    peer = PeerConfig.make(public, "203.0.113.5:51820", ["10.66.0.3", "10.66.0.3/32", "10.66.1.0/24"])
    assert peer.allowed_ips == ("10.66.0.3/32", "10.66.1.0/24") and peer.keepalive_s == 25
    with pytest.raises(InvalidConfigError):
        PeerConfig.make(public, None, ["10.66.0.300/32"])
    with pytest.raises(InvalidConfigError):
        PeerConfig.make(public, None, ["10.66.0.3/32"], keepalive_s=-1)


@pytest.mark.parametrize("name", ["", "-h", "a" * 16, "has space", "slash/x", ".", "..", "eth0\n"])
def test_bad_interface_names(name: str) -> None:
    with pytest.raises(InvalidConfigError):
        validate_interface_name(name)


def test_counter_readings_parse_as_the_full_reading_does() -> None:
    """The counters-only parse of a device's ``get=1`` answer gives what ``read`` gives."""
    from wireguard_tools.wireguard_uapi import WireguardUAPIDevice

    from mesh.wireguard.device import _observe, _parse_counters

    keys = [generate_keypair()[1] for _ in range(3)]
    private = generate_keypair()[0]
    lines = [f"private_key={private.secret_hex()}", "listen_port=51820"]
    for index, key in enumerate(keys):
        lines += [f"public_key={base64.b64decode(key).hex()}", "preshared_key=" + "0" * 64,
                  "protocol_version=1"]
        if index == 0:
            lines.append("endpoint=192.0.2.7:51820")
        elif index == 1:
            lines.append("endpoint=[2001:db8::1]:4000")
        lines += [f"last_handshake_time_sec={1_700_000_000 + index if index < 2 else 0}",
                  f"last_handshake_time_nsec={5000 * index if index < 2 else 0}",
                  f"tx_bytes={100 + index}", f"rx_bytes={200 + index}",
                  "persistent_keepalive_interval=25", "allowed_ip=10.66.0.2/32"]
    answer = "\n".join([*lines, "errno=0"]) + "\n\n"
    device = WireguardUAPIDevice.__new__(WireguardUAPIDevice)
    device._buffer = answer
    device.uapi_socket = type("Sent", (), {"sendall": lambda self, data: None})()
    full = _observe(device.get_config())
    counters = _parse_counters(answer)
    assert set(counters) == set(full.peers) == set(keys)
    for key, peer in full.peers.items():
        stats = counters[key]
        assert (stats.endpoint, stats.last_handshake, stats.rx_bytes, stats.tx_bytes) == (
            peer.endpoint, peer.last_handshake, peer.rx_bytes, peer.tx_bytes)
    with pytest.raises(ValueError):
        _parse_counters("errno=2\n\n")
