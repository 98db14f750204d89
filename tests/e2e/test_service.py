"""End to end through the CLI and the HTTP API only: real processes on loopback.

The nodes use the simulated network adapters (no root, no namespaces): what is
under test here is the service — control server, agents, actors, store, API, CLI.
The lab tests (test_lab.py) run the same flows on real WireGuard through real NATs.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Node, Run, free_port, wait_for


def control_server(run: Run, name: str = "control") -> str:
    port = free_port()
    run.start(name, "control-server", "--listen", f"127.0.0.1:{port}", "--state-dir",
              str(run.directory / name), "--heartbeat", "1", "--ttl", "3")
    url = f"ws://127.0.0.1:{port}"
    wait_for(lambda: "listening" in run.log(name).read_text(), 20, "the control server")
    return url


def all_see_each_other(nodes: list[Node], party_id: str) -> bool:
    names = {node.name for node in nodes}
    return all(set(node.members(party_id)) == names for node in nodes)


def test_three_then_eight_peers_join_and_one_leaves(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        url = control_server(run)
        nodes = [Node(run, f"n{i}", url).start() for i in range(3)]
        party_id, invite = nodes[0].create("Friday LAN")
        for node in nodes[1:]:
            assert node.join(invite)["party_id"] == party_id
        wait_for(lambda: all_see_each_other(nodes, party_id), 20, "3 peers to see each other")
        assert nodes[2].status_cli() == nodes[2].status() | {"position": nodes[2].status_cli()["position"]}
        addresses = {p["virtual_ip"] for p in nodes[0].members(party_id).values()}
        assert addresses == {"10.66.0.1", "10.66.0.2", "10.66.0.3"}
        # Both sides dial: every node has a connection (state) towards every other.
        for node in nodes:
            remote = [p for p in node.members(party_id).values() if not p["is_local"]]
            wait_for(lambda node=node: all(p["state"] for p in [
                q for q in node.members(party_id).values() if not q["is_local"]]), 20,
                f"{node.name}'s connections")
            assert len(remote) == 2

        nodes += [Node(run, f"n{i}", url).start() for i in range(3, 8)]
        for node in nodes[3:]:
            node.join(invite)
        wait_for(lambda: all_see_each_other(nodes, party_id), 40, "8 peers to see each other")
        assert len({p["virtual_ip"] for p in nodes[7].members(party_id).values()}) == 8

        leaver = nodes.pop(4)
        assert "left party" in leaver.cli("party", "leave").stdout
        wait_for(lambda: all_see_each_other(nodes, party_id), 20, "the others to drop the leaver")
        assert leaver.status()["parties"] == []
        # Every other peer recorded it.
        events = json.loads(nodes[0].run.cli("events", "--type", "PeerLeft", "--json", "--state-dir",
                                             str(nodes[0].state)).stdout.splitlines()[-1])
        assert events["payload"]["reason"] == "left"


def test_kill_9_and_restart_restores_the_party_matching_replay(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        url = control_server(run)
        host, guest = Node(run, "host", url).start(), Node(run, "guest", url).start()
        party_id, invite = host.create("LAN")
        guest.join(invite)
        wait_for(lambda: all_see_each_other([host, guest], party_id), 20, "the pair")
        before = guest.members(party_id)
        run.stop(guest.name, signal.SIGKILL)
        guest.start()
        after = wait_for(lambda: guest.members(party_id), 20, "the restored party")
        assert {n: (p["virtual_ip"], p["public_key"]) for n, p in after.items()} == {
            n: (p["virtual_ip"], p["public_key"]) for n, p in before.items()}
        replayed = json.loads(run.cli("replay", "--at", "now", "--json", "--state-dir",
                                      str(guest.state)).stdout)
        party = next(p for p in replayed["parties"].values() if p["party_id"] == party_id)
        assert party["active"] is True
        assert {m["name"]: m["virtual_ip"] for _, m in party["members"]} == {
            n: p["virtual_ip"] for n, p in after.items()}
        # The restarted agent is connected again and still hears about newcomers.
        wait_for(lambda: guest.status()["agent"]["control"][0]["connected"], 20, "reconnect")
        third = Node(run, "third", url).start()
        third.join(invite)
        wait_for(lambda: "third" in guest.members(party_id), 20, "the newcomer to reach the guest")


def test_control_server_restart_keeps_parties_running(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        url = control_server(run)
        host, guest = Node(run, "host", url).start(), Node(run, "guest", url).start()
        party_id, invite = host.create("LAN")
        guest.join(invite)
        wait_for(lambda: all_see_each_other([host, guest], party_id), 20, "the pair")
        run.stop("control")
        wait_for(lambda: not host.status()["agent"]["control"][0]["connected"], 10, "the disconnect")
        assert set(host.members(party_id)) == {"host", "guest"}  # nothing torn down
        late = Node(run, "late", url).start()
        refused = late.cli("party", "join", invite, check=False)
        assert refused.returncode != 0 and "control server" in refused.stderr
        assert "Traceback" not in refused.stderr
        port = url.rsplit(":", 1)[1]
        run.start("control2", "control-server", "--listen", f"127.0.0.1:{port}", "--state-dir",
                  str(run.directory / "control"), "--heartbeat", "1", "--ttl", "3")
        wait_for(lambda: all(n.status()["agent"]["control"][0]["connected"] for n in (host, guest)), 30,
                 "both agents to reconnect")
        late.join(invite)  # the registry survived the restart
        wait_for(lambda: all_see_each_other([host, guest, late], party_id), 20, "the newcomer")


def test_security_of_joins_and_the_api(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        url = control_server(run)
        host, guest = Node(run, "host", url).start(), Node(run, "guest", url).start()
        party_id, invite = host.create("LAN")
        from mesh.control.invite import Invite

        real = Invite.decode(invite)
        for secret, message in ((real.secret[:-2] + "xx", "no party with this id and secret"),
                                ("", None)):
            forged = Invite(real.control_url, real.party_id, real.party_name, secret or "-").encode()
            refused = guest.cli("party", "join", forged, check=False)
            assert refused.returncode == 2, refused
            assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
            if message:
                assert message in refused.stderr and "HTTP 403" in refused.stderr
        assert guest.status()["parties"] == []
        assert set(host.members(party_id)) == {"host"}
        # Mutations without the token: 401, nothing happens.
        for path, body in (("/party/create", {"name": "x"}), ("/party/join", {"invite": invite}),
                           ("/party/leave", {})):
            answer = httpx.post(f"http://{guest.api}{path}", json=body)
            assert answer.status_code == 401
            answer = httpx.post(f"http://{guest.api}{path}", json=body,
                                headers={"Authorization": "Bearer not-the-token"})
            assert answer.status_code == 401
        assert guest.status()["parties"] == []
        token = (guest.state / "api-token")
        assert oct(token.stat().st_mode & 0o777) == "0o600"
        assert oct(guest.state.stat().st_mode & 0o777) == "0o700"
        assert real.secret not in (guest.state / "lanrage.db").read_bytes().decode("latin-1")
        assert real.secret not in run.log("guest").read_text() + run.log("host").read_text()
        assert real.secret not in run.log("control").read_text()

        # Another node claiming the host's public key is refused; the host stays connected.
        import asyncio
        from urllib.parse import urlsplit

        from websockets.asyncio.client import connect

        from mesh.control.identity import Identity, ServerBinding

        claimed = host.status()["agent"]["public_key"]

        async def impersonate() -> dict:
            async with connect(url, proxy=None) as ws:
                await ws.send(json.dumps({"type": "hello", "v": 1, "public_key": claimed}))
                challenge = json.loads(await ws.recv())
                binding = ServerBinding(challenge["server_key"], "", urlsplit(url).netloc)
                forged = Identity.generate().prove(challenge["ephemeral"], challenge["nonce"], binding)
                await ws.send(json.dumps({"type": "auth", "v": 1, "proof": forged,
                                          "server_key": binding.server_key, "authority": binding.authority}))
                return json.loads(await ws.recv())

        assert asyncio.run(impersonate())["code"] == "auth_failed"
        assert host.status()["agent"]["control"][0]["connected"]
        assert host.create("after the impostor")[1].startswith("lanrage1-")


def test_bad_cli_input_is_one_clear_line(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        for args in (["party", "join", "nonsense", "--api", f"127.0.0.1:{free_port()}"],
                     ["serve", "--api-listen", "nowhere"], ["serve", "--adapters", "magic"],
                     ["control-server", "--listen", "x"],
                     ["control-server", "--ttl", "1", "--heartbeat", "5"],
                     ["status", "--api", f"127.0.0.1:{free_port()}"]):
            done = run.cli(*args, "--state-dir", str(tmp_path / "s"), check=False)
            assert done.returncode != 0, args
            assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        (tmp_path / "bad.toml").write_text("[serve]\nno-such-flag = 1\n")
        done = run.cli("serve", "--config", str(tmp_path / "bad.toml"), check=False)
        assert done.returncode == 2 and "unknown setting 'no-such-flag'" in done.stderr


def test_toml_config_sets_flags_and_the_command_line_wins(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        url = control_server(run)
        port = free_port()
        state = tmp_path / "cfg"
        state.mkdir(mode=0o700)
        (state / "lanrage.toml").write_text(
            f'[serve]\napi-listen = "127.0.0.1:{port}"\ncontrol = "{url}"\nname = "from-file"\n'
            f'adapters = "sim"\nlog-format = "json"\n')
        run.start("cfg", "serve", "--state-dir", str(state), "--name", "from-flag")
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200, 30, "the API")
        status = json.loads(run.cli("status", "--json", "--state-dir", str(state)).stdout)  # api from file
        assert status["agent"]["name"] == "from-flag" and status["agent"]["default_control"] == url
        records = []
        for line in run.log("cfg").read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line)["record"])
        assert any("serving the API" in r["message"] and r["level"]["name"] == "INFO" for r in records)


def test_api_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    namespace = f"lanrage-e2e-{os.urandom(4).hex()}"
    import subprocess

    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], check=True)
        prefix = ["ip", "netns", "exec", namespace]
        with Run(tmp_path, prefix=prefix) as run:
            run.start("default", "serve", "--adapters", "sim", "--state-dir", str(tmp_path / "d"))
            wait_for(lambda: "serving the API on http://127.0.0.1:8666" in run.log("default").read_text(),
                     30, "the default API")
            sockets = subprocess.run([*prefix, "cat", "/proc/net/tcp"], capture_output=True, text=True,
                                     check=True).stdout
            listening = [line.split()[1] for line in sockets.splitlines()[1:] if line.split()[3] == "0A"]
            api = [address for address in listening if address.endswith(":21DA")]  # port 8666
            assert api == ["0100007F:21DA"], listening  # 127.0.0.1 only
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


@pytest.mark.parametrize("frame", ["x" * 70_000, "{oops", '{"v": 1, "type": "hello", "public_key": 5}'])
def test_control_server_process_survives_bad_websocket_input(tmp_path: Path, frame: str) -> None:
    import asyncio

    from websockets.asyncio.client import connect

    with Run(tmp_path) as run:
        url = control_server(run)

        async def send() -> dict:
            async with connect(url, proxy=None) as ws:
                await ws.send(frame)
                return json.loads(await ws.recv())

        answer = asyncio.run(send())
        assert answer["type"] == "error" and answer["message"]
        host = Node(run, "host", url).start()
        assert host.create("still serving")[1].startswith("lanrage1-")


def test_file_discovery_party_without_a_control_server(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        shared = tmp_path / "shared"
        url = shared.as_uri()
        alice, bob = Node(run, "alice", url).start(), Node(run, "bob", url).start()
        party_id, invite = alice.create("kitchen LAN")
        from mesh.control.invite import Invite

        assert Invite.decode(invite).control_url == url
        bob.join(invite)
        wait_for(lambda: all_see_each_other([alice, bob], party_id), 20, "the pair over file discovery")
        run.stop("bob", signal.SIGKILL)
        bob.start()
        wait_for(lambda: set(bob.members(party_id)) == {"alice", "bob"}, 20, "bob's restored party")
        bob.cli("party", "leave")
        wait_for(lambda: set(alice.members(party_id)) == {"alice"}, 20, "alice to drop bob")
