"""The agent does not keep root: a real drop to the service account, checked in /proc.

Run as root (the test suite runs as root, like `serve` on a LAN host).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from pathlib import Path

from agent.privileges import CAP_NET_ADMIN, CAP_NET_RAW, DEFAULT_USER, account, blocker, capabilities
from tests.e2e.harness import PYTHON, ROOT, Node, Run, wait_for

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


def test_serve_started_as_root_drops_or_names_why_it_cannot(require_root: None) -> None:
    owner = account(DEFAULT_USER)
    base = Path(tempfile.mkdtemp(prefix="lanrage-priv-", dir="/tmp"))
    os.chmod(base, 0o711)  # the account may pass through, not list
    try:
        with Run(base) as run:
            node = Node(run, "solo", None, adapters="sim").start()
            pid = run.processes["solo"].pid
            reason = blocker(owner, node.state)
            status = Path(f"/proc/{pid}/status").read_text()
            uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
            if reason is None:
                assert uid == owner.uid
                caps = capabilities(pid)
                assert caps["CapEff"] == caps["CapBnd"] == KEPT_MASK
                for path in (node.state, node.state / "api-token", node.state / "wireguard.key"):
                    assert path.stat().st_uid == owner.uid, path
                assert pwd.getpwuid(node.state.stat().st_uid).pw_name == DEFAULT_USER
            else:
                # This machine's interpreter lies where the account cannot read it: said, not hidden.
                assert uid == 0
                log = run.log("solo").read_text()
                assert wait_for(lambda: "staying root" in run.log("solo").read_text(), 10, "the warning")
                assert reason.split(" is behind ")[0] in log or reason in log
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
