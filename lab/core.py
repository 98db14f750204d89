"""The lab: a small internet in network namespaces (see the package docstring)."""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from lab import nat as natmod
from lab import registry
from lab.shell import (
    DEFAULT_TIMEOUT_S,
    LabError,
    destroy_netns,
    ns_exec,
    pid_start_time,
    sh,
    terminate_pids,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
INTERNET = ipaddress.ip_network("203.0.113.0/24")
LANS = ipaddress.ip_network("198.51.100.0/24")
STUN_IPS = ("203.0.113.2", "203.0.113.3")
STUN_PORT = 3478
CONTROL_IP = "203.0.113.10"
MAX_RELAYS = 20
MAX_HOSTS = 32
MAX_PER_LAN = 5
DEFAULT_WG_PORT = 51820
RESERVED = {"inet", "stun", "control"}
_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_LOSS_CHAIN = "LAB_LOSS"
_BLOCK_CHAIN = "LAB_BLOCK"
_REBIND_COMMENT = "lab-rebind"
# Each rebinding moves a router's outbound mapping into the next of these port blocks, so
# the new mapping can never be the old one (MASQUERADE alone keeps the source port).
_REBIND_FIRST_PORT = 20000
_REBIND_BLOCK = 100
_REBIND_BLOCKS = 200


@dataclass(frozen=True)
class HostSpec:
    """One peer host: its name (``[a-z][a-z0-9]{0,11}``) and the NAT type of its router.

    ``forward_port`` is the UDP port a ``port_forwarded`` router DNATs to the host.
    Hosts with the same ``lan`` label share one router and LAN (same NAT type, at most
    5 per LAN; the first one gets the forwarded port); by default each host has its own.
    """

    name: str
    nat: str = natmod.PORT_RESTRICTED
    forward_port: int = DEFAULT_WG_PORT
    lan: str | None = None
    mapping: tuple[str, ...] = natmod.MAPPING_PROTOCOLS  # what a ``miniupnpd`` router answers


@dataclass(frozen=True)
class Host:
    """A host of a built lab. ``public_ip`` is what the internet sees (the router's
    WAN address behind a NAT); ``lan_ip`` is the host's own address (equal to
    ``public_ip`` for open hosts and the service hosts)."""

    name: str
    role: str  # "peer", "stun", "control" or "relay"
    nat: str
    netns: str
    lan_ip: str
    public_ip: str
    router_netns: str | None
    uplink_port: str  # the bridge port in the internet namespace
    forward_port: int = DEFAULT_WG_PORT
    wg_name: str = ""  # a WireGuard interface name unique to this run
    lan: str = ""  # the LAN label: hosts with the same one share a router ("" for public hosts)
    mapping: tuple[str, ...] = ()  # protocols its router's miniupnpd answers (``miniupnpd`` NAT only)

    @property
    def uplink_netns(self) -> str:
        """The namespace whose ``wan0`` holds the public address."""
        return self.router_netns or self.netns


class LabProcess:
    """A process started in a lab host; output goes to ``log_path`` unless redirected."""

    def __init__(self, host: str, argv: Sequence[str], popen: subprocess.Popen[Any],
                 log_path: Path | None, options: Mapping[str, Any]) -> None:
        self.host = host
        self.argv = list(argv)
        self.popen = popen
        self.log_path = log_path
        self.options = dict(options)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise LabError(f"{self.host}: {' '.join(self.argv)} still running after {timeout:g}s") from error

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr interleaved)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def __repr__(self) -> str:
        return f"<LabProcess {self.host} pid={self.pid} {' '.join(self.argv)!r}>"


_LIVE: dict[str, Lab] = {}
_HOOKS_INSTALLED = False
_HOOK_PID = 0
_HOOK_LOCK = threading.Lock()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if os.getpid() != _HOOK_PID:
        # A forked child (pyroute2's netns helper, a thespian actor...) must die as it
        # would have: unwinding its copy of our stack would run our cleanups in it.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    # Unwinding runs every `with Lab.build(...)` exit; atexit catches the rest.
    raise SystemExit(128 + signum)


def _teardown_live() -> None:
    for lab in list(_LIVE.values()):
        lab.teardown()


def _install_hooks() -> None:
    global _HOOKS_INSTALLED, _HOOK_PID
    with _HOOK_LOCK:
        if _HOOKS_INSTALLED and os.getpid() == _HOOK_PID:
            return
        _HOOKS_INSTALLED = True
        _HOOK_PID = os.getpid()
        atexit.register(_teardown_live)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(signum) in (signal.SIG_DFL, None):
                    signal.signal(signum, _on_signal)


class Lab:
    """A built lab. Use ``Lab.build(...)`` as a context manager; see the package docs."""

    def __init__(self, record: registry.RunRecord, hosts: dict[str, Host], owner: bool) -> None:
        self.run_id = record.run_id
        self.record = record
        self.workdir = Path(record.workdir)
        self._hosts = hosts
        self._owner_pid = os.getpid() if owner else -1
        self._processes: list[LabProcess] = []
        self._lock = threading.Lock()
        self._torn_down = False
        self._log_counter = 0
        self._stun: LabProcess | None = None
        self._mapping_services: dict[str, LabProcess] = {}  # router netns -> its miniupnpd
        self._rebinds: dict[str, int] = {}

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, hosts: Sequence[HostSpec | str] = (), relays: int = 2, *, stun: bool = True,
              persistent: bool = False) -> Lab:
        """Build a lab and return it, or tear everything down and raise ``LabError``.

        ``hosts`` are the peer hosts (a bare name means ``port_restricted``); a
        ``control`` host and ``relays`` relay hosts (``relay1`` …) are always public.
        A ``persistent`` lab (``lab up``) survives this process until ``Lab.attach``
        and ``teardown``; it installs no exit hooks.
        """
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        specs = [HostSpec(spec) if isinstance(spec, str) else spec for spec in hosts]
        _validate(specs, relays)
        registry.cleanup_leftovers()
        run_id = _new_run_id()
        workdir = tempfile.mkdtemp(prefix=f"lanrage-lab-{run_id}-")
        record = registry.RunRecord(run_id=run_id, owner_pid=os.getpid(),
                                    owner_start=pid_start_time(os.getpid()), persistent=persistent,
                                    created_at=time.time(), workdir=workdir)
        record.save()  # before any namespace: a namespace without a record is a leftover
        layout = _layout(run_id, specs, relays, stun)
        lab = cls(record, layout, owner=True)
        if not persistent:
            _LIVE[run_id] = lab
            _install_hooks()
        try:
            lab._create()
            record.topology = {"hosts": {name: asdict(host) for name, host in layout.items()}}
            record.save()
            if stun:
                lab.start_stun()
            routers = {host.router_netns: host for host in layout.values() if host.nat == natmod.MINIUPNPD}
            if routers and not stun:
                raise LabError("a miniupnpd router needs the lab's STUN server (its own WAN check)")
            for host in routers.values():
                lab.start_mapping_service(host.name)
        except BaseException:
            lab.teardown()
            raise
        return lab

    @classmethod
    def attach(cls, run_id: str) -> Lab:
        """A handle on an existing lab (e.g. made by ``lab up``); ``teardown`` removes it."""
        record = registry.load(run_id)
        if record is None or not record.topology:
            raise LabError(f"no lab with run id {run_id!r} (see `lab list`)")
        hosts = {name: Host(**data) for name, data in record.topology["hosts"].items()}
        lab = cls(record, hosts, owner=False)
        lab._owner_pid = os.getpid()
        return lab

    def _netns_names(self) -> list[str]:
        names = [f"{registry.NETNS_PREFIX}{self.run_id}-inet"]
        for host in self._hosts.values():
            names.append(host.netns)
            if host.router_netns and host.router_netns not in names:
                names.append(host.router_netns)
        return names

    def _create(self) -> None:
        inet = f"{registry.NETNS_PREFIX}{self.run_id}-inet"
        for name in self._netns_names():
            sh(["ip", "netns", "add", name])
            _ip_batch(name, ["link set lo up"])
        _ip_batch(inet, ["link add br0 type bridge", "link set br0 up"])
        wired: set[str] = set()
        for host in self._hosts.values():
            if host.uplink_netns not in wired:
                wired.add(host.uplink_netns)
                self._wire_uplink(inet, host)
            if host.router_netns:
                self._wire_lan(host)

    def _wire_uplink(self, inet: str, host: Host) -> None:
        up = host.uplink_netns
        sh(["ip", "link", "add", "name", "wan0", "netns", up, "type", "veth",
            "peer", "name", host.uplink_port, "netns", inet])
        _ip_batch(inet, [f"link set {host.uplink_port} master br0", f"link set {host.uplink_port} up"])
        wan = [f"addr add {host.public_ip}/24 dev wan0", "link set wan0 up"]
        if host.role == "stun":
            wan.append(f"addr add {STUN_IPS[1]}/24 dev wan0")
        _ip_batch(up, wan)
        for chain in (_LOSS_CHAIN, _BLOCK_CHAIN):
            _iptables(up, ["-N", chain])
            for hook in (["INPUT", "-i"], ["OUTPUT", "-o"], ["FORWARD", "-i"], ["FORWARD", "-o"]):
                _iptables(up, ["-I", hook[0], "1", hook[1], "wan0", "-j", chain])
        if host.router_netns is None:
            return
        router_lan = str(_lan_network(host.lan_ip).network_address + 1)
        _ip_batch(up, ["link add lan0 type bridge", f"addr add {router_lan}/29 dev lan0", "link set lan0 up"])
        sh(ns_exec(up, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
        for rule in natmod.router_rules(host.nat, host.lan_ip, host.forward_port):
            _iptables(up, rule)
        if host.nat == natmod.MINIUPNPD:
            for rule in natmod.mapping_service_rules(host.mapping):
                _iptables(up, rule)
            for rule in natmod.MINIUPNPD_LEGACY_CHAINS:
                sh(ns_exec(up, ["iptables-legacy", "-w", "20", *rule]))

    def _wire_lan(self, host: Host) -> None:
        assert host.router_netns is not None
        port = f"l{host.name}"
        router_lan = str(_lan_network(host.lan_ip).network_address + 1)
        sh(["ip", "link", "add", "name", "lan0", "netns", host.netns, "type", "veth",
            "peer", "name", port, "netns", host.router_netns])
        _ip_batch(host.router_netns, [f"link set {port} master lan0", f"link set {port} up"])
        _ip_batch(host.netns, [f"addr add {host.lan_ip}/29 dev lan0", "link set lan0 up",
                               f"route add default via {router_lan}"])

    # ------------------------------------------------------------------ context

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Kill every process, delete every namespace, link and stale WireGuard socket.

        Idempotent; a forked child of the owner never tears its parent's lab down.
        """
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        terminate_pids([proc.pid for proc in self._processes if proc.alive])
        for proc in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1)
        destroy_netns(registry.run_namespaces(self.run_id), self.run_id)
        registry._remove_workdir(str(self.workdir))
        self.record.remove()
        _LIVE.pop(self.run_id, None)

    # ------------------------------------------------------------------ queries

    def host(self, name: str) -> Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise LabError(f"no host {name!r} in lab {self.run_id}; hosts: "
                           f"{', '.join(sorted(self._hosts))}") from None

    @property
    def hosts(self) -> dict[str, Host]:
        return dict(self._hosts)

    @property
    def peers(self) -> list[Host]:
        return [host for host in self._hosts.values() if host.role == "peer"]

    @property
    def relays(self) -> list[Host]:
        return [host for host in self._hosts.values() if host.role == "relay"]

    @property
    def control(self) -> Host:
        return self._hosts["control"]

    @property
    def stun_servers(self) -> tuple[tuple[str, int], ...]:
        """``(ip, port)`` of the STUN server's primary address (empty without STUN)."""
        return ((STUN_IPS[0], STUN_PORT),) if "stun" in self._hosts else ()

    # ------------------------------------------------------------------ processes

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside ``host``'s namespace."""
        return ns_exec(self.host(host).netns, argv)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env.update(extra or {})
        return env

    def run(self, host: str, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True,
            env: Mapping[str, str] | None = None, input_text: str | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in ``host`` to completion (bounded by ``timeout``)."""
        command = self.argv(host, argv)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                    env=self.env(env), input=input_text, cwd=cwd or REPO_ROOT, check=False)
        except subprocess.TimeoutExpired as error:
            raise LabError(f"{host}: timed out after {timeout:g}s: {' '.join(argv)}") from error
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise LabError(f"{host}: {' '.join(argv)} exited {result.returncode}: {detail[-2000:]}")
        return result

    def popen(self, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None, **popen_kwargs: Any) -> LabProcess:
        """Start a long-running process in ``host``; it is killed at teardown.

        stdout and stderr go to a log file (``LabProcess.output()``) unless given.
        """
        if self._torn_down:
            raise LabError(f"lab {self.run_id} is torn down")
        self.host(host)
        log_path = None
        options: dict[str, Any] = {"env": env, "cwd": cwd, **popen_kwargs}
        if "stdout" not in popen_kwargs:
            with self._lock:
                self._log_counter += 1
                log_path = self.workdir / f"{host}-{self._log_counter}-{Path(argv[0]).name}.log"
            log = open(log_path, "wb")  # noqa: SIM115 (the child owns it)
            popen_kwargs = {"stdout": log, "stderr": subprocess.STDOUT, **popen_kwargs}
        else:
            log = None
        try:
            popen = subprocess.Popen(self.argv(host, argv), env=self.env(env), cwd=cwd or REPO_ROOT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, **popen_kwargs)
        finally:
            if log is not None:
                log.close()
        proc = LabProcess(host, argv, popen, log_path, options)
        with self._lock:
            self._processes.append(proc)
        return proc

    def kill(self, proc: LabProcess, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int | None:
        """Send ``sig`` to a lab process (and its process group); wait for it to exit."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            return proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def restart(self, proc: LabProcess, sig: int = signal.SIGTERM) -> LabProcess:
        """Stop a lab process (``sig``, then SIGKILL) and start it again with the same arguments."""
        if self.kill(proc, sig) is None:
            self.kill(proc, signal.SIGKILL)
        options = dict(proc.options)
        return self.popen(proc.host, proc.argv, **options)

    # ------------------------------------------------------------------ faults

    def start_stun(self) -> None:
        """Start ``stund`` on the STUN host (``build`` does; again after ``stop_stun``)."""
        if self._stun is not None and self._stun.alive:
            return
        self._stun = self.popen("stun", ["stund", "-h", STUN_IPS[0], "-a", STUN_IPS[1]])
        self.wait_udp_listening("stun", STUN_PORT)

    def start_mapping_service(self, host: str) -> LabProcess:
        """Start (or start again) miniupnpd on the router of ``host`` (a ``miniupnpd`` NAT)."""
        node = self.host(host)
        if node.nat != natmod.MINIUPNPD or node.router_netns is None:
            raise LabError(f"{host}'s router runs no mapping service (NAT type {node.nat})")
        running = self._mapping_services.get(node.router_netns)
        if running is not None and running.alive:
            return running
        label = node.lan or node.name
        conf = self.workdir / f"miniupnpd-{label}.conf"
        conf.write_text(natmod.miniupnpd_config(node.mapping, str(_lan_network(node.lan_ip)), STUN_IPS[0],
                                                STUN_PORT, str(self.workdir / f"miniupnpd-{label}.leases"),
                                                str(uuid.uuid4())))
        opening = natmod.miniupnpd_stun_rules(STUN_IPS)
        for rule in opening:
            _iptables(node.router_netns, ["-I", rule[0], "1", *rule[1:]])
        pid_file = self.workdir / f"miniupnpd-{label}.pid"
        argv = ["/usr/sbin/miniupnpd", "-d", "-f", str(conf), "-P", str(pid_file)]
        with self._lock:
            self._log_counter += 1
            log_path = self.workdir / f"{label}-gw-{self._log_counter}-miniupnpd.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(ns_exec(node.router_netns, argv), env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        proc = LabProcess(f"{label}-gw", argv, popen, log_path, {})
        with self._lock:
            self._processes.append(proc)
        self._mapping_services[node.router_netns] = proc
        port = natmod.SSDP_PORT if node.mapping == (natmod.MAPPING_UPNP,) else natmod.PCP_PORT

        def listening() -> bool:
            if not proc.alive:
                raise LabError(f"miniupnpd on {label}-gw exited: {proc.output()[-1500:]}")
            out = sh(ns_exec(node.router_netns, ["ss", "-Hnlu", f"sport = :{port}"]), check=False).stdout
            return bool(out.strip()) and "Port forwarding is now enabled" in proc.output()
        try:
            self.wait_for(listening, 20.0, what=f"miniupnpd on {label}-gw answering")
        finally:
            for rule in opening:
                _iptables(node.router_netns, ["-D", *rule])
            for stun_ip in STUN_IPS:
                sh(ns_exec(node.router_netns, ["conntrack", "-D", "-s", stun_ip]), check=False)
        return proc

    def stop_mapping_service(self, host: str) -> None:
        """Kill the router's miniupnpd (its mappings stay in iptables until it starts again)."""
        node = self.host(host)
        proc = self._mapping_services.pop(node.router_netns or "", None)
        if proc is None:
            raise LabError(f"{host}'s router runs no mapping service")
        self.kill(proc)

    def reboot_mapping_service(self, host: str) -> LabProcess:
        """The router of ``host`` restarts: miniupnpd, its mappings, its lease file and every
        conntrack entry are gone, and miniupnpd starts again knowing nothing."""
        node = self.host(host)
        self.stop_mapping_service(host)
        assert node.router_netns is not None
        for table, chain in (("nat", "MINIUPNPD"), ("nat", "MINIUPNPD-POSTROUTING"), ("filter", "MINIUPNPD")):
            sh(ns_exec(node.router_netns, ["iptables-legacy", "-w", "20", "-t", table, "-F", chain]))
        (self.workdir / f"miniupnpd-{node.lan or node.name}.leases").unlink(missing_ok=True)
        sh(ns_exec(node.router_netns, ["conntrack", "-F"]), check=False)  # exits 1 when already empty
        return self.start_mapping_service(host)

    def router_mappings(self, host: str) -> list[str]:
        """The DNAT rules miniupnpd keeps on ``host``'s router (``iptables -S`` lines)."""
        node = self.host(host)
        if node.nat != natmod.MINIUPNPD or node.router_netns is None:
            raise LabError(f"{host}'s router runs no mapping service")
        listed = sh(ns_exec(node.router_netns,
                            ["iptables-legacy", "-w", "20", "-t", "nat", "-S", "MINIUPNPD"]))
        return [line for line in listed.stdout.splitlines() if line.startswith("-A ")]

    def stop_stun(self) -> None:
        """Kill ``stund``: the STUN server is down until ``start_stun``."""
        if self._stun is None:
            raise LabError(f"lab {self.run_id} has no STUN server running")
        self.kill(self._stun)
        self._stun = None

    def rebind_nat(self, host: str) -> None:
        """A NAT rebinding at the host's router: every mapping is forgotten (conntrack
        flushed) and new UDP ones get public ports the old ones never had (until the
        200th rebinding of one router); hosts sharing the router are rebound too."""
        node = self.host(host)
        if node.router_netns is None:
            raise LabError(f"{host} has a public address: there is no NAT to rebind")
        netns = node.router_netns
        count = self._rebinds.get(netns, 0)
        first = _REBIND_FIRST_PORT + (count % _REBIND_BLOCKS) * _REBIND_BLOCK
        self._rebinds[netns] = count + 1
        rule = ["POSTROUTING", "-o", natmod.WAN, "-p", "udp", "-m", "comment", "--comment", _REBIND_COMMENT,
                "-j", "MASQUERADE", "--to-ports", f"{first}-{first + _REBIND_BLOCK - 1}"]
        if node.nat == natmod.SYMMETRIC:
            rule.append("--random-fully")
        listed = sh(ns_exec(netns, ["iptables", "-w", "20", "-t", "nat", "-S", "POSTROUTING"])).stdout
        for line in listed.splitlines():
            if _REBIND_COMMENT in line and line.startswith("-A "):
                _iptables(netns, ["-t", "nat", "-D", *line.split()[1:]])
        _iptables(netns, ["-t", "nat", "-I", *rule[:1], "1", *rule[1:]])
        sh(ns_exec(netns, ["conntrack", "-F"]), check=False)  # exits 1 when the table was empty

    def cut_uplink(self, host: str) -> None:
        """Unplug the host's (or its router's) cable to the internet."""
        self._port(host, "down")

    def restore_uplink(self, host: str) -> None:
        self._port(host, "up")

    def _port(self, host: str, state: str) -> None:
        inet = f"{registry.NETNS_PREFIX}{self.run_id}-inet"
        sh(["ip", "-n", inet, "link", "set", self.host(host).uplink_port, state])

    def add_loss(self, host: str, fraction: float) -> None:
        """Drop ``fraction`` of the packets on the host's uplink, each direction independently."""
        if not 0.0 <= fraction <= 1.0:
            raise LabError(f"loss must be between 0 and 1, not {fraction}")
        netns = self.host(host).uplink_netns
        self.clear_loss(host)
        if fraction > 0:
            _iptables(netns, ["-A", _LOSS_CHAIN, "-m", "statistic", "--mode", "random",
                              "--probability", f"{fraction:.6f}", "-j", "DROP"])

    def clear_loss(self, host: str) -> None:
        _iptables(self.host(host).uplink_netns, ["-F", _LOSS_CHAIN])

    def block_path(self, host: str, other: str) -> None:
        """Drop all traffic between the public addresses of ``host`` and ``other`` (both
        directions, at ``host``'s uplink); relays, STUN and the rest stay reachable."""
        near, far = self.host(host), self.host(other)
        if near.uplink_netns == far.uplink_netns:
            raise LabError(f"{host} and {other} share a router: their direct path never leaves the LAN")
        for match in (["-s", far.public_ip], ["-d", far.public_ip]):
            rule = [*match, "-j", "DROP"]
            if sh(ns_exec(near.uplink_netns, ["iptables", "-w", "20", "-C", _BLOCK_CHAIN, *rule]),
                  check=False).returncode != 0:
                _iptables(near.uplink_netns, ["-A", _BLOCK_CHAIN, *rule])

    def unblock_path(self, host: str, other: str) -> None:
        near, far = self.host(host), self.host(other)
        for match in (["-s", far.public_ip], ["-d", far.public_ip]):
            for _ in range(10):  # block_path adds each rule once; older duplicates too
                if sh(ns_exec(near.uplink_netns, ["iptables", "-w", "20", "-D", _BLOCK_CHAIN, *match,
                                                  "-j", "DROP"]), check=False).returncode != 0:
                    break

    # ------------------------------------------------------------------ helpers

    def ping(self, host: str, ip: str, count: int = 3, timeout_s: float = 5.0) -> bool:
        """True if at least one of ``count`` pings from ``host`` to ``ip`` is answered."""
        result = self.run(host, ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1",
                                 "-w", str(max(1, round(timeout_s))), ip], check=False,
                          timeout=timeout_s + 5)
        return result.returncode == 0

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2,
                 what: str = "condition") -> None:
        """Poll ``predicate`` until true; ``LabError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise LabError(f"{what} not reached within {timeout_s:g}s")
            time.sleep(interval_s)

    def wait_udp_listening(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        def listening() -> bool:
            out = self.run(host, ["ss", "-Hnlu", f"sport = :{port}"], check=False).stdout
            return bool(out.strip())
        self.wait_for(listening, timeout_s, what=f"UDP port {port} listening on {host}")

    def wait_tcp_listening(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        def listening() -> bool:
            out = self.run(host, ["ss", "-Hnlt", f"sport = :{port}"], check=False).stdout
            return bool(out.strip())
        self.wait_for(listening, timeout_s, what=f"TCP port {port} listening on {host}")

    def processes(self) -> Iterator[LabProcess]:
        return iter(list(self._processes))

    def describe(self) -> str:
        lines = [f"lab {self.run_id} (workdir {self.workdir})"]
        for host in self._hosts.values():
            lan = f" lan {host.lan_ip}" if host.lan_ip != host.public_ip else ""
            lines.append(f"  {host.name:<12} {host.role:<8} {host.nat:<16} public {host.public_ip}{lan}"
                         f"  netns {host.netns}  wg {host.wg_name}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- layout


def _new_run_id() -> str:
    existing = {record.run_id for record in registry.all_records()}
    while True:
        run_id = secrets.token_hex(3)
        if run_id not in existing:
            return run_id


def _validate(specs: Sequence[HostSpec], relays: int) -> None:
    if not 0 <= relays <= MAX_RELAYS:
        raise LabError(f"relays must be 0..{MAX_RELAYS}, not {relays}")
    if len(specs) > MAX_HOSTS:
        raise LabError(f"at most {MAX_HOSTS} peer hosts, not {len(specs)}")
    seen: set[str] = set()
    for spec in specs:
        if not _NAME.fullmatch(spec.name) or spec.name in RESERVED or re.fullmatch(r"relay\d+", spec.name):
            raise LabError(f"bad host name {spec.name!r}: use [a-z][a-z0-9]{{0,11}}, not a reserved name "
                           f"({', '.join(sorted(RESERVED))}, relayN)")
        if spec.name in seen:
            raise LabError(f"duplicate host name {spec.name!r}")
        seen.add(spec.name)
        if spec.nat not in natmod.NAT_TYPES:
            raise LabError(f"unknown NAT type {spec.nat!r}: use one of {', '.join(natmod.NAT_TYPES)}")
        if not 1 <= spec.forward_port <= 65535:
            raise LabError(f"bad forward port {spec.forward_port}")
        if spec.nat == natmod.MINIUPNPD and (not spec.mapping or
                                             set(spec.mapping) - set(natmod.MAPPING_PROTOCOLS)):
            raise LabError(f"a miniupnpd router answers some of {', '.join(natmod.MAPPING_PROTOCOLS)}, "
                           f"not {spec.mapping!r}")
    lans: dict[str, list[HostSpec]] = {}
    for spec in specs:
        label = spec.lan or spec.name
        if spec.lan is not None and (not _NAME.fullmatch(spec.lan) or spec.lan in RESERVED):
            raise LabError(f"bad LAN label {spec.lan!r}: use [a-z][a-z0-9]{{0,11}}")
        if spec.lan is not None and spec.nat == natmod.OPEN:
            raise LabError(f"host {spec.name!r} is open (a public address, no LAN): it cannot have a LAN")
        lans.setdefault(label, []).append(spec)
    for label, members in lans.items():
        if label in seen and all(member.name != label for member in members):
            raise LabError(f"LAN label {label!r} is also the name of a host on another LAN")
        if len({member.nat for member in members}) > 1:
            raise LabError(f"hosts on LAN {label!r} need the same NAT type (they share its router)")
        if len(members) > MAX_PER_LAN:
            raise LabError(f"at most {MAX_PER_LAN} hosts per LAN, not {len(members)} on {label!r}")


def _lan_network(lan_ip: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"{lan_ip}/29", strict=False)  # type: ignore[return-value]


def _layout(run_id: str, specs: Sequence[HostSpec], relays: int, stun: bool) -> dict[str, Host]:
    prefix = f"{registry.NETNS_PREFIX}{run_id}-"
    hosts: dict[str, Host] = {}
    counter = iter(range(1000))

    def service(name: str, role: str, ip: str) -> Host:
        return Host(name=name, role=role, nat=natmod.OPEN, netns=prefix + name, lan_ip=ip, public_ip=ip,
                    router_netns=None, uplink_port=f"p{name}", wg_name=f"lr{run_id}w{next(counter)}")

    if stun:
        hosts["stun"] = service("stun", "stun", STUN_IPS[0])
    hosts["control"] = service("control", "control", CONTROL_IP)
    for index in range(1, relays + 1):
        hosts[f"relay{index}"] = service(f"relay{index}", "relay", str(INTERNET[20 + index]))
    lan_index: dict[str, int] = {}
    lan_members: dict[str, int] = {}
    for spec in specs:
        label = spec.lan or spec.name
        index = lan_index.setdefault(label, len(lan_index))
        public_ip = str(INTERNET[100 + index])
        if spec.nat == natmod.OPEN:
            hosts[spec.name] = service(spec.name, "peer", public_ip)
            continue
        position = lan_members.get(label, 0)
        lan_members[label] = position + 1
        first = position == 0
        hosts[spec.name] = Host(
            name=spec.name, role="peer", nat=spec.nat, netns=prefix + spec.name,
            lan_ip=str(LANS[8 * index + 2 + position]), public_ip=public_ip,
            router_netns=f"{prefix}{label}-gw", uplink_port=f"p{label}",
            forward_port=spec.forward_port if first else 0, wg_name=f"lr{run_id}w{next(counter)}", lan=label,
            mapping=tuple(spec.mapping) if spec.nat == natmod.MINIUPNPD else ())
    return hosts


def _ip_batch(netns: str, commands: list[str]) -> None:
    sh(["ip", "-n", netns, "-batch", "-"], input_text="\n".join(commands) + "\n")


def _iptables(netns: str, rule: list[str]) -> None:
    sh(ns_exec(netns, ["iptables", "-w", "20", *rule]))


__all__ = ["Host", "HostSpec", "Lab", "LabError", "LabProcess"]
