"""`serve --broadcast-ports` rejects bad input with one clear line, before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "--broadcast-ports must be comma-separated port numbers, not 'abc'"),
    ("4445,8668", "not 8668 (the tunnel port)"),
])
def test_bad_broadcast_ports(tmp_path: Path, value: str, message: str) -> None:
    done = subprocess.run([sys.executable, "cli.py", "serve", "--broadcast-ports", value, "--state-dir",
                           str(tmp_path / "state")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_the_standalone_runner_rejects_bad_settings(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mesh.broadcast", "--interface", "wg0", "--virtual-ip",
                           "192.0.2.1", "--ports", "4445", "--peers-file", str(tmp_path / "p"),
                           "--counters-file", str(tmp_path / "c")], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == "error: 192.0.2.1 is not in 10.66.0.0/16"


def test_port_list_parsing() -> None:
    from commands.common import UsageError
    from commands.node import _broadcast_ports

    assert _broadcast_ports("") == ()
    assert _broadcast_ports(" 27015, 4445,4445") == (4445, 27015)
    for bad in ("0", "65536", ",".join(str(p) for p in range(2000, 2065))):
        with pytest.raises(UsageError):
            _broadcast_ports(bad)


@pytest.mark.parametrize(("args", "message"), [
    (["--games", "minecraft,quake"], "--games: unknown 'quake' (known: minecraft, terraria"),
    (["--broadcast-groups", "239.255.255.250"], "is not GROUP:PORT with an IPv4 multicast group"),
    (["--broadcast-groups", "192.0.2.1:1900"], "192.0.2.1 is not a multicast group"),
    (["--broadcast-groups", "224.0.0.251:0"], "needs a port 1-65535"),
    (["--broadcast-groups", "224.0.0.251:8668"], "port 8668 is the broadcast tunnel port"),
])
def test_bad_discovery_options(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "cli.py", "serve", *args, "--state-dir", str(tmp_path / "state")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_presets_and_groups_merge_with_the_ports() -> None:
    from commands.discovery import discovery
    from mesh.broadcast.games import PRESETS, resolve

    ports, groups = discovery((27015, 4445), "239.255.255.250:1900, 224.0.0.251:5353", "minecraft,SOURCE")
    assert ports == (4445, 27015, 27016)
    assert groups == (("224.0.0.251", 5353), ("224.0.2.60", 4445), ("239.255.255.250", 1900))
    every_port, every_group = resolve("all")
    assert every_port == (6073, 6112, 7777, 27015, 27016)  # the seed's ports, but 4445 (a group)
    assert every_group == (("224.0.0.251", 5353), ("224.0.2.60", 4445), ("239.255.255.250", 1900))
    assert set(PRESETS) == {"minecraft", "terraria", "source", "blizzard", "directplay", "ssdp", "mdns"}
    assert discovery((), "", "") == ((), ())
