"""What a service checks at start: each bad setting gets one line naming the option or the
file it is about, and a non-zero exit, before anything is touched."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from commands.common import UsageError
from commands.node import check_control_url

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / "cli.py")
KEY = "nHBD8xWM7" + "A" * 34 + "="  # base64 of 32 bytes


# Loaded by every CLI process these tests start: a host name lookup fails the test instead of
# asking a resolver (every check here must decide from the text alone).
NO_LOOKUPS = """
import socket, sys
def _refused(host, *args, **kwargs):
    import ipaddress
    try:
        ipaddress.ip_address(str(host).strip("[]"))
    except ValueError:
        sys.stderr.write(f"a name was looked up: {host}\\n")
        raise socket.gaierror(socket.EAI_AGAIN, "no lookups in this test") from None
    return _lookup(host, *args, **kwargs)
_lookup, socket.getaddrinfo = socket.getaddrinfo, _refused
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    guard = cwd / "no-lookups"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_LOOKUPS)
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "THESPIAN_BASE_IPADDR": "127.0.0.1",
                               "PYTHONPATH": str(guard)})


def test_a_control_host_that_is_not_known_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(host: str, *_args: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(UsageError) as raised:
        check_control_url("ws://contrl.example.org:8667")
    assert str(raised.value) == ("--control ws://contrl.example.org:8667: no such host (Name or service not "
                                 "known); give the control server's address or name")


@pytest.mark.parametrize(("url", "line"), [
    ("ws://HOST:8667/?key=" + KEY.replace("=", "%3D"),
     "--control ws://HOST:8667/: HOST is a placeholder (the control server prints it when it listens on "
     "every address): put the control server's address or name there"),
    ("ws://<host>:8667", "--control ws://<host>:8667: '<host>' is not a host name or an IP address"),
    ("ws://control..lan:8667", "--control ws://control..lan:8667: 'control..lan' is not a host name or an IP "
                               "address"),
])
def test_a_placeholder_or_a_name_no_host_can_have_is_refused_without_a_lookup(
        monkeypatch: pytest.MonkeyPatch, url: str, line: str) -> None:
    looked_up: list[str] = []

    def recorded(host: str, *_args: object) -> None:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "no resolver in this test")

    monkeypatch.setattr(socket, "getaddrinfo", recorded)
    with pytest.raises(UsageError) as raised:
        check_control_url(url)
    assert str(raised.value) == line
    assert looked_up == []


def test_a_resolver_that_does_not_answer_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_resolver(host: str, *_args: object) -> None:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
    check_control_url("wss://control.example.org:8667")  # the agent keeps dialing


def test_an_address_is_not_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *_: looked_up.append(host))
    check_control_url(f"ws://203.0.113.10:8667/?key={KEY}")
    check_control_url("file:///srv/lanrage")
    assert looked_up == []


@pytest.mark.parametrize(("args", "line"), [
    (["serve", "--control", "ws://203.0.113.10:8667/?fp=abc"],
     "lanrage: --control: the control URL's fp= is not a SHA-256 certificate fingerprint (64 hex)"),
    (["serve", "--control", "wss://203.0.113.10:8667/?key=nope"],
     "lanrage: --control: the control URL's key= is not a server key (base64 of 32 bytes): it has 4 "
     "characters, a key has 44: copy it again, in full"),
    (["serve", "--control", f"wss://203.0.113.10:8667/?key={KEY[1:]}"],  # a character lost in copying
     "lanrage: --control: the control URL's key= is not a server key (base64 of 32 bytes): it has 43 "
     "characters, a key has 44: copy it again, in full"),
    (["serve", "--control", f"wss://203.0.113.10:8667/?key={KEY[:20]}*{KEY[21:]}"],
     "lanrage: --control: the control URL's key= is not a server key (base64 of 32 bytes): '*' is not a "
     "base64 character: check it for a typo"),
    # 'B' for 'A' there decodes to the same 32 bytes, and would read as another server's key.
    (["serve", "--control", f"wss://203.0.113.10:8667/?key={KEY[:-2]}B="],
     "lanrage: --control: the control URL's key= is not a server key (base64 of 32 bytes): its last "
     "character before '=' cannot end a key ('B'): check it for a typo"),
    (["serve", "--control", f"ws://HOST:8667/?key={KEY}"],  # as the control server prints it on 0.0.0.0
     "lanrage: --control ws://HOST:8667/: HOST is a placeholder (the control server prints it when it "
     "listens on every address): put the control server's address or name there"),
    (["serve", "--control", "http://203.0.113.10:8667"],
     "lanrage: --control must start with ws://, wss:// or file://, not 'http://203.0.113.10:8667'"),
    (["control-server", "--relay", "198.51.100.1:3478", "--relay-secret-file", "nope.key"],
     "lanrage: --relay-secret-file nope.key: No such file or directory"),
    (["control-server", "--relay", "198.51.100.1:3478"],
     "lanrage: no relay secret: pass --relay-secret-file or set LANRAGE_RELAY_SECRET"),
    (["control-server", "--tls-cert", "nope.pem", "--tls-key", "nope.key"],
     "lanrage: --tls-cert nope.pem: no such file"),
    (["control-server", "--tls-cert", str(ROOT / "pyproject.toml"), "--tls-key", "nope.key"],
     "lanrage: --tls-key nope.key: no such file"),
    (["relay-server", "--secret-file", "nope.key"],
     "lanrage: --secret-file nope.key: No such file or directory"),
])
def test_each_bad_setting_is_one_line_naming_its_option(tmp_path: Path, args: list[str], line: str) -> None:
    state = tmp_path / "state"
    done = cli(*args, "--state-dir", str(state), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [line]
    if args[0] == "serve":
        assert not state.exists()  # checked before the state directory is made


def test_a_pinned_fingerprint_the_server_does_not_present_is_named(tmp_path: Path) -> None:
    import ssl
    import threading

    from mesh.control.target import self_signed, server_tls

    cert, key = tmp_path / "cert.pem", tmp_path / "cert.key"
    self_signed(cert, key, ["127.0.0.1"])
    context, real = server_tls(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(handshakes: int) -> None:
        for _ in range(handshakes):
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                connection.close()

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    try:
        wrong = "ab" * 32
        with pytest.raises(UsageError) as raised:
            check_control_url(f"wss://127.0.0.1:{port}/?fp={wrong}")
        assert str(raised.value) == (
            f"--control wss://127.0.0.1:{port}/: the server presents the certificate {real[:12]}…, not the "
            f"one fp= pins ({wrong[:12]}…): check the fingerprint for a typo, or whether the server has a "
            "new certificate")
        check_control_url(f"wss://127.0.0.1:{port}/?fp={real}")  # the right pin
    finally:
        thread.join(5)
        listener.close()
    check_control_url(f"wss://127.0.0.1:{port}/?fp={'ab' * 32}")  # nobody answers: the agent keeps dialing


def test_a_plus_in_a_key_typed_into_a_url_as_is_still_the_key() -> None:
    """A URL query reads "+" as a space; a key has no space, so a key typed without %2B works."""
    from mesh.control.target import ControlTarget

    key = "nHBD8xWM7+" + "A" * 33 + "="
    assert ControlTarget.parse(f"ws://203.0.113.10:8667/?key={key}").server_key == key
    assert ControlTarget.parse(f"ws://203.0.113.10:8667/?key={key.replace('+', '%2B')}").server_key == key
