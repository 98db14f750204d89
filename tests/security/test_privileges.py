"""The agent does not keep root: a real drop to the service account, checked in /proc.

Run as root (the test suite runs as root, like `serve` on a LAN host).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import httpx

from agent.privileges import (
    CAP_NET_ADMIN,
    CAP_NET_RAW,
    DEFAULT_USER,
    Account,
    account,
    blocker,
    capabilities,
    unreachable,
)
from lab.ports import free_port
from tests.e2e.harness import CLI, PYTHON, ROOT, Run, wait_for

KEPT_MASK = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)

# Everything it needs is imported before the drop: the interpreter's own files may lie
# behind a directory the account cannot enter (the serve test below covers that case).
DROP_AND_REPORT = """
import json, os, socket, subprocess, sys
from agent.privileges import account, capabilities, drop
owner = account(sys.argv[1])
drop(owner)
report = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
          "caps": capabilities()}
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    report["raw_socket"] = True
except PermissionError:
    report["raw_socket"] = False
try:
    open("/etc/shadow").close()
    report["shadow"] = True
except PermissionError:
    report["shadow"] = False
try:
    os.setuid(0)
    report["back_to_root"] = True
except PermissionError:
    report["back_to_root"] = False
child = subprocess.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True).stdout
report["child"] = {line.split(":")[0]: int(line.split()[1], 16) for line in child.splitlines()
                   if line.startswith("Cap")}
print(json.dumps(report))
"""


def test_the_drop_leaves_only_net_admin_and_net_raw_also_to_children(require_root: None) -> None:
    assert os.geteuid() == 0, "this test checks the drop from root"
    owner = account(DEFAULT_USER)
    done = subprocess.run([PYTHON, "-c", DROP_AND_REPORT, DEFAULT_USER], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["uid"], report["euid"], report["gid"], report["groups"]) == (owner.uid, owner.uid,
                                                                                owner.gid, [])
    for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert report["caps"][name] == KEPT_MASK, (name, hex(report["caps"][name]))
        assert report["child"][name] == KEPT_MASK, (name, hex(report["child"][name]))
    assert report["raw_socket"] is True  # CAP_NET_RAW: the punch from WireGuard's port
    assert report["shadow"] is False and report["back_to_root"] is False


def reachable_python(owner: Account) -> tuple[str, dict[str, str]]:
    """An interpreter the service account can run this code with, and its environment.

    The venv's own interpreter when the account may reach it; else the system's Python
    of the same version, on the venv's packages (a Python installed under /root is
    unreachable for any other user).
    """
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                       sysconfig.get_paths()["purelib"]]))}
    if unreachable(Path(os.path.realpath(PYTHON)).parent, owner) is None and \
            unreachable(Path(sys.base_prefix), owner) is None:
        return PYTHON, {}
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    assert Path(system).exists(), f"no interpreter the account {owner.name} can run ({PYTHON} is unreachable)"
    return system, env


def serve(run: Run, name: str, state: Path, python: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    port = free_port()
    log = open(run.log(name), "ab")  # noqa: SIM115 (lives as long as the process)
    process = subprocess.Popen([python, CLI, "serve", "--adapters", "sim", "--state-dir", str(state),
                                "--api-listen", f"127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT, env={**run.env, **env}, cwd=ROOT)
    run.processes[name] = process
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200, 60,
             f"{name}'s API")
    token = (state / "api-token").read_text().strip()
    status = httpx.get(f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {token}"},
                       timeout=10)
    assert status.status_code == 200 and status.json()["node"]["running"]  # the actors work after the drop
    return process


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_serve_started_as_root_runs_as_the_service_account(require_root: None) -> None:
    owner = account(DEFAULT_USER)
    python, env = reachable_python(owner)
    base = Path(tempfile.mkdtemp(prefix="lanrage-priv-", dir="/tmp"))
    os.chmod(base, 0o711)  # the account may pass through, not list
    try:
        with Run(base) as run:
            process = serve(run, "solo", base / "state", python, env)
            family = [process.pid, *run.ours()]
            assert len(family) >= 2  # the agent and its actor processes
            for pid in set(family):
                assert uid_of(pid) == owner.uid, pid
                caps = capabilities(pid)
                assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == KEPT_MASK, (pid, caps)
            for path in (base / "state", base / "state" / "api-token", base / "state" / "wireguard.key"):
                assert path.stat().st_uid == owner.uid, path
            assert stat.S_IMODE((base / "state").stat().st_mode) == 0o700
            assert "running as lanrage" in run.log("solo").read_text()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_serve_that_cannot_drop_says_why_in_one_warning(require_root: None, tmp_path: Path) -> None:
    owner = account(DEFAULT_USER)
    python, env = reachable_python(owner)
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)  # the account cannot reach a state directory in here
    with Run(tmp_path) as run:
        process = serve(run, "boxed", hidden / "state", python, env)
        assert blocker(owner, hidden / "state") is not None
        assert uid_of(process.pid) == 0
        warnings = [line for line in run.log("boxed").read_text().splitlines() if "staying root" in line]
        assert len(warnings) == 1 and str(hidden) in warnings[0], warnings


WIREGUARD_AS_ACCOUNT = """
import json, subprocess, sys, time
from agent.privileges import account, drop, open_wireguard_to
name = sys.argv[1]
owner = account("lanrage")
open_wireguard_to(owner)
drop(owner)
foreground = {"WG_PROCESS_FOREGROUND": "1", "PATH": "/usr/bin:/bin"}
wireguard = subprocess.Popen(["wireguard-go", name], env=foreground)
try:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["wg", "show", name], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    shown = subprocess.run(["wg", "show", name], capture_output=True, text=True)
    address = subprocess.run(["ip", "address", "add", "10.66.250.1/32", "dev", name], capture_output=True,
                             text=True)
    owner_uid = __import__("os").stat(f"/var/run/wireguard/{name}.sock").st_uid
    print(json.dumps({"alive": wireguard.poll() is None, "wg": shown.returncode,
                      "address": address.returncode, "owner": owner_uid}))
finally:
    wireguard.terminate()
    wireguard.wait(5)
"""


def test_wireguard_go_runs_as_the_account_with_the_kept_capabilities(require_root: None) -> None:
    """What the agent does after the drop: start wireguard-go, configure it, address it (in a netns)."""
    owner = account(DEFAULT_USER)
    python, env = reachable_python(owner)
    suffix = os.urandom(3).hex()
    namespace, interface = f"lrpriv-{suffix}", f"lrp{suffix}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", namespace, "env", *(f"{k}={v}" for k, v in env.items()),
                               python, "-c", WIREGUARD_AS_ACCOUNT, interface], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report == {"alive": True, "wg": 0, "address": 0, "owner": owner.uid}, report
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        subprocess.run(["rm", "-f", f"/var/run/wireguard/{interface}.sock"], check=False)
