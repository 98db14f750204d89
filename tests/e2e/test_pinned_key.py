"""A pinned server key with a typo that makes it no key at all is an input error at `party
join`, before any connection; a well-formed key of another server stays a security refusal.

Real processes on loopback (simulated network adapters): a control server, an agent, the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote

from mesh.control.identity import Identity
from mesh.control.invite import Invite
from tests.e2e.harness import Node, Run, wait_for
from tests.e2e.test_service import control_server

BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def same_bytes_typo(key: str) -> str:
    """``key`` with its last character before "=" mistyped into one that decodes to the same 32
    bytes (that character carries 2 unused bits): no key as the server prints one."""
    last = BASE64.index(key[-2])
    return key[:-2] + BASE64[last ^ 1] + "="


def test_a_malformed_pinned_key_is_an_input_error_and_another_servers_key_a_refusal(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        url = control_server(run)
        printed = wait_for(lambda: re.search(r"key=([^&' ]+)", run.log("control").read_text()), 10,
                           "the control server's pinned URL")
        real = unquote(printed.group(1))
        node = Node(run, "alice", None).start()
        typo = same_bytes_typo(real)
        joined = node.cli("party", "join", Invite(f"{url}/?key={quote(typo, safe='')}", "p1", "LAN",
                                                 "secret").encode(), check=False)
        assert joined.returncode != 0
        assert joined.stderr.splitlines() == [
            "lanrage: the invite names no usable control server: the control URL's key= is not a server key "
            f"(base64 of 32 bytes): its last character before '=' cannot end a key ({typo[-2]!r}): check it "
            "for a typo (HTTP 400)"]
        port = url.rpartition(":")[2]
        assert f":{port}" not in run.log("alice").read_text()  # never dialed

        other = Identity.generate().public_key
        joined = node.cli("party", "join", Invite(f"{url}/?key={quote(other, safe='')}", "p1", "LAN",
                                                 "secret").encode(), check=False)
        assert joined.returncode != 0
        assert f":{port}" in run.log("alice").read_text()
        assert joined.stderr.splitlines() == [
            f"lanrage: cannot reach the control server {url}/?key={quote(other, safe='')}: 127.0.0.1:{port} "
            f"proved the server key {real[:12]}…, not the one the URL's key= pins ({other[:12]}…): check the "
            "key for a typo (an invite copied whole carries it), or whether the server has a new key "
            "(HTTP 503)"]
