"""The hostile control server as a process, for the lab: ``python -m tests.security.hostile_server
--listen 0.0.0.0:PORT --public HOST --invites FILE``.

It creates one party per lie of ``tests.security.test_trust.CASES`` (as their host, a member
that stays online), writes ``{party name: invite}`` to FILE, and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from mesh.control import Invite
from tests.control.helpers import logged_in
from tests.security.hostile import HostileControl
from tests.security.test_trust import CASES


async def main(listen: str, public: str, invites: Path) -> None:
    host, port = listen.rsplit(":", 1)
    server = HostileControl()
    await server.start(host, int(port))
    hosts = []
    written = {}
    for name, lie, _ in CASES:
        server.lies[name] = lie
        member = await logged_in(server.port, "host")
        hosts.append(member)
        created = await member.call(type="create_party", name=name)
        written[name] = Invite(server.url(public), created["party"]["party_id"], name,
                               created["secret"]).encode()
    invites.write_text(json.dumps(written))
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
    await stopped.wait()
    for member in hosts:
        await member.ws.close()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--public", required=True)
    parser.add_argument("--invites", type=Path, required=True)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.listen, arguments.public, arguments.invites))
