"""Run the agent as an unprivileged user that keeps only CAP_NET_ADMIN and CAP_NET_RAW.

``serve`` started as root does the set-up only root can do, then drops for good,
before the actors fork and before anything reads the network:

- the service account exists (``lanrage`` by default, created as a system user with
  no login and no home if it is missing);
- the state directory and everything in it belong to that account, mode 0700;
- wireguard-go, which the agent starts, can open ``/dev/net/tun`` and create its UAPI
  socket in ``/var/run/wireguard`` (group access for the account where the system's
  permissions do not already allow it);
- every capability but the two kept leaves the bounding set, the process switches to
  the account's uid and gid with no supplementary groups, and the two kept become
  effective and ambient, so wireguard-go inherits exactly them.

CAP_NET_ADMIN configures the WireGuard interface, its addresses and routes;
CAP_NET_RAW sends the hole punch from WireGuard's own port (``mesh/nat/rawudp.py``).
The systemd unit in ``deploy/`` gets the same result from systemd itself.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

DEFAULT_USER = "lanrage"
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
KEPT = (CAP_NET_ADMIN, CAP_NET_RAW)
TUN_DEVICE = Path("/dev/net/tun")
WIREGUARD_RUN = Path("/var/run/wireguard")

_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_CAP_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The drop could not be done; the message says what to fix."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def account(name: str, create: bool = True) -> Account:
    """The service account ``name``; a missing one is created as a system user (no login, no home)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise PrivilegeError(f"there is no user {name!r}") from None
        done = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                               "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise PrivilegeError(f"cannot create the service user {name!r}: {done.stderr.strip()[:200]} "
                                 "(create it, or pass --user)") from None
        logger.info("created the service user {}", name)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {name!r} is root: pass --user with an unprivileged account")
    return Account(name, entry.pw_uid, entry.pw_gid)


ROOT_KEEPS = frozenset({"lanrage.toml"})  # root reads it at the next start: it stays root's


def own(paths: Iterable[Path], owner: Account) -> None:
    """Give ``paths`` (directories recursively, symlinks not followed) to ``owner``.

    The account owned the directory before, so anything in it may be its plant: a hard link
    to a file elsewhere (``/etc/shadow``) is left alone, never chowned, and so is the config
    file root reads (``ROOT_KEEPS``).
    """
    for top in paths:
        if not top.exists():
            continue
        if not _plain(top):
            logger.warning("left {} as it is: a hard link (its owner is not changed)", top)
            continue
        os.lchown(top, owner.uid, owner.gid)
        if top.is_dir() and not top.is_symlink():
            os.chmod(top, 0o700)
            for root, dirs, files in os.walk(top):
                for name in [*dirs, *files]:
                    path = os.path.join(root, name)
                    if name in ROOT_KEEPS and root == str(top):
                        continue
                    if not _plain(Path(path)):
                        logger.warning("left {} as it is: a hard link (its owner is not changed)", path)
                        continue
                    os.lchown(path, owner.uid, owner.gid)


def _plain(path: Path) -> bool:
    """Not a second name of a file (a hard link): chowning it would chown the file elsewhere too."""
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode) or info.st_nlink == 1


def check_state_dir(state_dir: Path, owner: Account) -> None:
    """Before root uses it: a real directory (not a symlink) of root or the account, that no one
    else may write (root chowns everything in it to the account)."""
    info = state_dir.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise PrivilegeError(f"the state directory {state_dir} is not a directory (a symlink?)")
    if info.st_uid not in (0, owner.uid) or info.st_mode & 0o022:
        raise PrivilegeError(f"the state directory {state_dir} belongs to uid {info.st_uid} with mode "
                             f"{stat.S_IMODE(info.st_mode):04o}: it must be root's or {owner.name}'s, "
                             "and writable by its owner only")


def open_wireguard_to(owner: Account) -> None:
    """Let ``owner`` run wireguard-go: open the TUN device, create its UAPI socket."""
    WIREGUARD_RUN.mkdir(mode=0o755, parents=True, exist_ok=True)
    _group_access(WIREGUARD_RUN, owner, stat.S_IRWXG)
    readable_by_all = stat.S_IROTH | stat.S_IWOTH
    if TUN_DEVICE.exists() and TUN_DEVICE.stat().st_mode & readable_by_all != readable_by_all:
        _group_access(TUN_DEVICE, owner, stat.S_IRGRP | stat.S_IWGRP)


def _group_access(path: Path, owner: Account, bits: int) -> None:
    info = path.stat()
    if info.st_gid == owner.gid and (info.st_mode & bits) == bits:
        return
    if info.st_gid not in (0, owner.gid):
        group = grp.getgrgid(info.st_gid).gr_name
        raise PrivilegeError(f"{path} belongs to group {group}; give {owner.name} access to it")
    os.chown(path, -1, owner.gid)
    os.chmod(path, stat.S_IMODE(info.st_mode) | bits)
    logger.info("gave group {} access to {}", owner.name, path)


def drop(owner: Account, keep: tuple[int, ...] = KEPT) -> None:
    """Become ``owner`` for good, with only the capabilities ``keep``, inherited by every child."""
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for capability in range(last + 1):
        if capability not in keep and libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise PrivilegeError(f"cannot drop capability {capability}: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError("cannot keep capabilities across the uid change: "
                             f"{os.strerror(ctypes.get_errno())}")
    os.setgroups([])
    os.setresgid(owner.gid, owner.gid, owner.gid)
    os.setresuid(owner.uid, owner.uid, owner.uid)
    _set_kept(libc, keep)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PrivilegeError("still root after the drop")


_PR_SET_SECUREBITS = 28
# SECBIT_NOROOT and SECBIT_NOROOT_LOCKED: uid 0 gains no capability by exec (only the ambient ones).
_SECBITS_NOROOT = 0x1 | 0x2


def keep_only(keep: tuple[int, ...] = KEPT) -> None:
    """Stay uid 0, with only the capabilities ``keep``, for this process and every child, for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_SECUREBITS, _SECBITS_NOROOT, 0, 0, 0) != 0:
        raise PrivilegeError(f"cannot stop root regaining capabilities: {os.strerror(ctypes.get_errno())}")
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for capability in range(last + 1):
        if capability not in keep and libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise PrivilegeError(f"cannot drop capability {capability}: {os.strerror(ctypes.get_errno())}")
    _set_kept(libc, keep)


def _set_kept(libc: ctypes.CDLL, keep: tuple[int, ...]) -> None:
    """Exactly ``keep`` as effective, permitted and inheritable capabilities, and ambient, so that
    the programs this process starts (wireguard-go, ip) hold them too."""
    mask = sum(1 << capability for capability in keep)
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(mask, mask, mask, 0, 0, 0)  # effective, permitted, inheritable (x2 words)
    if libc.capset(header, data) != 0:
        raise PrivilegeError(f"cannot set the kept capabilities: {os.strerror(ctypes.get_errno())}")
    for capability in keep:
        if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, capability, 0, 0) != 0:
            raise PrivilegeError(f"cannot make capability {capability} ambient: "
                                 f"{os.strerror(ctypes.get_errno())}")


def unreachable(path: Path, owner: Account) -> Path | None:
    """The first directory on the way to ``path`` that ``owner`` may not traverse, if any."""
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        if not directory.is_dir():
            continue
        info = directory.stat()
        if info.st_uid == owner.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == owner.gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def blocker(owner: Account, state_dir: Path) -> str | None:
    """Why ``owner`` could not run this agent after the drop, or None.

    After the drop the process still imports modules lazily and the actors still read
    their code: the interpreter, the code and the state directory must be reachable.
    """
    code = Path(__file__).resolve().parent.parent
    interpreter = Path(os.path.realpath(sys.executable)).parent
    for what, path in (("the Python interpreter", interpreter), ("the Python library", Path(sys.base_prefix)),
                       ("the virtual environment", Path(sys.prefix)), ("LANrage's code", code)):
        closed = unreachable(path, owner)
        if closed is not None:
            return f"{what} ({path}) is behind {closed}, which {owner.name} may not enter"
    parent = state_dir.resolve().parent
    closed = unreachable(parent, owner)
    if closed is not None:
        return f"the state directory {state_dir} is behind {closed}, which {owner.name} may not enter"
    return None


def drop_for_serve(user: str, state_dir: Path, extra: Iterable[Path] = ()) -> Account | None:
    """As root: the set-up, then the drop. None when not root, or when the drop cannot work here.

    A root ``serve`` that cannot drop (its interpreter or state directory lies behind a
    directory the account may not enter, e.g. a Python installed under /root) stays uid 0
    but keeps only CAP_NET_ADMIN and CAP_NET_RAW (``keep_only``) and says so in one warning:
    install LANrage where the service account can read it, or use the systemd unit in deploy/.
    """
    if os.geteuid() != 0:
        return None
    owner = account(user)
    check_state_dir(state_dir, owner)
    reason = blocker(owner, state_dir)
    if reason is not None:
        keep_only()
        logger.warning("staying root, with only CAP_NET_ADMIN and CAP_NET_RAW (every other capability "
                       "dropped, for good and for every child): cannot run as {}: {}", owner.name, reason)
        return None
    own([state_dir, *extra], owner)
    open_wireguard_to(owner)
    drop(owner)
    logger.info("running as {} (uid {}) with CAP_NET_ADMIN and CAP_NET_RAW only", owner.name, owner.uid)
    return owner


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd and CapAmb of a process, from /proc."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Cap"):
            found[name] = int(value.strip(), 16)
    return found
