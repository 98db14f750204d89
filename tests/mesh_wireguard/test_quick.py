"""mesh.wireguard.quick: the wg-quick file for a device without LANrage (units; the lab test is
test_lab_quick.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mesh.keys import PrivateKey
from mesh.wireguard import InvalidConfigError, InvalidEndpointError
from mesh.wireguard.quick import QuickDevice, QuickRouter, render_quick_config

ROUTER_KEY = PrivateKey.generate().public_key


def router(**changes: object) -> QuickRouter:
    fields: dict[str, object] = {"public_key": ROUTER_KEY, "endpoint": "198.51.100.1:51820",
                                 "allowed_ips": ("10.66.0.0/16",), "name": "alice"}
    return QuickRouter(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_file_is_what_wg_quick_reads(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    text = render_quick_config(QuickDevice(key, "10.66.0.9/32", name="switch"), router(), party="Friday LAN")
    path = tmp_path / "lrq0.conf"
    path.write_text(text)
    path.chmod(0o600)
    # `wg-quick strip` is wg-quick's own parser: it keeps what `wg setconf` takes.
    stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=10,
                              check=True).stdout
    assert [line for line in stripped.strip().split("\n") if not line.startswith("#")] == [
        "[Interface]", f"PrivateKey = {key.secret_base64()}", "", "[Peer]", f"PublicKey = {ROUTER_KEY}",
        "Endpoint = 198.51.100.1:51820", "AllowedIPs = 10.66.0.0/16", "PersistentKeepalive = 25"]
    assert "Address = 10.66.0.9/32" in text and "MTU = 1420" in text
    assert text.startswith("# LANrage party Friday LAN: device switch (10.66.0.9), through member alice.")


def test_names_cannot_inject_lines() -> None:
    evil = "x\n[Peer]\nPublicKey = " + PrivateKey.generate().public_key + "\rAllowedIPs = 0.0.0.0/0"
    text = render_quick_config(QuickDevice(PrivateKey.generate(), "10.66.0.9/32", name=evil),
                               router(name=evil), party=evil)
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert settings.count("[Peer]") == 1
    assert [line for line in settings if line.startswith("PublicKey")] == [f"PublicKey = {ROUTER_KEY}"]
    assert [line for line in settings if line.startswith("AllowedIPs")] == ["AllowedIPs = 10.66.0.0/16"]
    plain = render_quick_config(QuickDevice(PrivateKey.generate(), "10.66.0.9/32", name="x"),
                                router(name="x"), party="x")
    assert len(text.splitlines()) == len(plain.splitlines())


@pytest.mark.parametrize(("device", "changes", "error", "message"), [
    ("10.66.0.9", {}, InvalidConfigError, "give the prefix"),
    ("fd00::9/128", {"allowed_ips": ("fd00::/64",)}, InvalidConfigError, "must be IPv4"),
    ("10.66.0.9/32", {"endpoint": "router.example:51820"}, InvalidEndpointError, ""),
    ("10.66.0.9/32", {"allowed_ips": ("192.0.2.0/24",)}, InvalidConfigError, "do not cover"),
    ("10.66.0.9/32", {"allowed_ips": ("not-a-net",)}, InvalidConfigError, "invalid allowed IP"),
])
def test_bad_input_is_a_clear_error(device: str, changes: dict[str, object], error: type[Exception],
                                    message: str) -> None:
    with pytest.raises(error, match=message):
        render_quick_config(QuickDevice(PrivateKey.generate(), device), router(**changes))


def test_the_router_cannot_be_the_device_itself() -> None:
    key = PrivateKey.generate()
    with pytest.raises(InvalidConfigError, match="own public key"):
        render_quick_config(QuickDevice(key, "10.66.0.9/32"), router(public_key=key.public_key))
