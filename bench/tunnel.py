"""A configuration-parity check: the project's tunnel against bare wireguard-go, in one run.

Both tunnels are the same userspace ``wireguard-go`` binary: one set up through
``mesh.wireguard.WireGuardInterface`` (the project's backend, pinned to
``implementation="userspace"``), one with plain ``wireguard-go`` configured by ``wg``
and ``ip``. So this checks that the backend configures the data path as well as the
stock tools do (link settings, keepalive, endpoints); it is not a comparison with
kernel WireGuard or with any other VPN. Builds a lab with two hosts behind NAT routers.
First ``--rounds`` of ``ping`` (``--pings`` each, median RTT) through both idle tunnels at
the same time, then ``--rounds`` of ``iperf3`` for ``--seconds`` each, alternating in ABBA
order (so background load hits both alike), then ``--rounds`` with both ``iperf3`` at once (each
wireguard-go then sees exactly the same machine, whatever else runs on it). Prints the medians
and the ratios (project / bare for throughput, bare / project for RTT and for the
wireguard-go CPU time per byte delivered: 1.0 is parity). Target: the median of paired
rounds at least 0.95 for throughput and for RTT; exits 1 when missed.

    sudo .venv/bin/python bench/tunnel.py [--rounds 5] [--seconds 3] [--pings 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.result import Figure, emit, load_average
from lab import HostSpec, Lab
from mesh.keys import PrivateKey, write_private_key
from mesh.wireguard import WireGuardInterface

TARGET_RATIO = 0.95  # parity within 5 %: both sides run the same wireguard-go

IPERF_PORT = 5201
PROJECT = {"alice": "10.66.0.1", "bob": "10.66.0.2", "port": 51820}
BARE = {"alice": "10.66.100.1", "bob": "10.66.100.2", "port": 51821}


def project_tunnel(lab: Lab, keys: dict[str, PrivateKey]) -> list[WireGuardInterface]:
    interfaces = []
    for host, other in (("alice", "bob"), ("bob", "alice")):
        wg = WireGuardInterface.create(keys[host], f"{PROJECT[host]}/24", name=f"p{lab.run_id}{host[0]}",
                                       listen_port=PROJECT["port"], netns=lab.host(host).netns,
                                       implementation="userspace")
        interfaces.append(wg)
        wg.configure_peer(keys[other].public_key, f"{lab.host(other).public_ip}:{PROJECT['port']}",
                          [f"{PROJECT[other]}/32"])
    return interfaces


def bare_tunnel(lab: Lab, keys: dict[str, PrivateKey]) -> list[int]:
    """Returns the PIDs of the two wireguard-go processes."""
    pids = []
    for host, other in (("alice", "bob"), ("bob", "alice")):
        name = f"b{lab.run_id}{host[0]}"
        key_file = lab.workdir / f"bare-{host}.key"
        write_private_key(key_file, keys[host])
        pids.append(lab.popen(host, ["wireguard-go", name],
                              env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}).pid)
        lab.wait_for(lambda name=name, host=host: lab.run(host, ["ip", "link", "show", name], check=False)
                     .returncode == 0 and lab.run(host, ["wg", "show", name], check=False).returncode == 0,
                     10, what=f"bare wireguard-go {name}")
        endpoint = f"{lab.host(other).public_ip}:{BARE['port']}"
        lab.run(host, ["wg", "set", name, "private-key", str(key_file), "listen-port", str(BARE["port"]),
                       "peer", keys[other].public_key, "endpoint", endpoint,
                       "allowed-ips", f"{BARE[other]}/32", "persistent-keepalive", "25"])
        lab.run(host, ["ip", "addr", "add", f"{BARE[host]}/24", "dev", name])
        lab.run(host, ["ip", "link", "set", name, "mtu", "1420", "up"])
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def throughput(lab: Lab, target: str, seconds: int, pids: list[int]) -> tuple[float, float]:
    """(bits/s, wireguard-go CPU nanoseconds per byte delivered) of one iperf3 run."""
    for _attempt in range(3):  # the server may still be closing the previous test
        before = cpu_seconds(pids)
        out = lab.run("alice", ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
                      timeout=seconds + 20, check=False).stdout
        report = json.loads(out)
        if "error" not in report:
            received = report["end"]["sum_received"]
            cost = (cpu_seconds(pids) - before) * 1e9 / float(received["bytes"])
            return float(received["bits_per_second"]), cost
        time.sleep(1)
    raise RuntimeError(f"iperf3 to {target} failed: {report['error']}")


def concurrent_bps(lab: Lab, seconds: int) -> tuple[float, float]:
    """Both tunnels at once: each wireguard-go gets the same machine at the same moment."""
    procs = [lab.popen("alice", ["iperf3", "-c", plan["bob"], "-p", str(port), "-t", str(seconds), "-J"])
             for plan, port in ((PROJECT, IPERF_PORT), (BARE, IPERF_PORT + 1))]
    for proc in procs:
        proc.wait(timeout=seconds + 20)
    for proc in procs:
        if "error" in json.loads(proc.output()):
            raise RuntimeError(f"iperf3 failed: {json.loads(proc.output())['error']}")
    project, bare = (float(json.loads(proc.output())["end"]["sum_received"]["bits_per_second"])
                     for proc in procs)
    return project, bare


def rtt_pair(lab: Lab, count: int) -> tuple[float, float]:
    """Median ping RTT (ms) through each tunnel, both pinged at the same time (same load)."""
    procs = [lab.popen("alice", ["ping", "-n", "-c", str(count), "-i", "0.05", "-W", "1", plan["bob"]])
             for plan in (PROJECT, BARE)]
    medians = []
    for proc in procs:
        proc.wait(timeout=count + 10)
        times = [float(line.split("time=")[1].split()[0]) for line in proc.output().splitlines()
                 if "time=" in line]
        if not times:
            raise RuntimeError(f"no ping replies: {proc.output()[-500:]}")
        medians.append(statistics.median(times))
    return medians[0], medians[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3, help="iperf3 -t per round (1-30)")
    parser.add_argument("--pings", type=int, default=20, help="pings per round (1-200)")
    parser.add_argument("--nat", default="port_restricted", help="NAT type of both hosts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 50 and 1 <= args.seconds <= 30 and 1 <= args.pings <= 200):
        parser.error("rounds 1-50, seconds 1-30, pings 1-200")
    results: dict[str, dict[str, list[float]]] = {
        kind: {"bps": [], "rtt": [], "concurrent_bps": [], "cpu_ns_per_byte": []}
        for kind in ("project", "bare")}
    started = time.monotonic()
    load_before = load_average()
    with Lab.build([HostSpec("alice", args.nat), HostSpec("bob", args.nat)], relays=0, stun=False) as lab:
        keys = {host: PrivateKey.generate() for host in ("alice", "bob")}
        interfaces = project_tunnel(lab, keys)
        pids = {"project": [wg.pid for wg in interfaces if wg.pid], "bare": bare_tunnel(lab, keys)}
        for port in (IPERF_PORT, IPERF_PORT + 1):
            lab.popen("bob", ["iperf3", "-s", "-p", str(port)])
            lab.wait_tcp_listening("bob", port)
        for kind, plan in (("project", PROJECT), ("bare", BARE)):
            lab.wait_for(lambda plan=plan: lab.ping("alice", plan["bob"], count=1, timeout_s=1), 20,
                         what=f"{kind} tunnel up")
        order = (("project", PROJECT), ("bare", BARE))
        for kind, plan in order:  # warm-up, not counted: first-run costs (page faults, GC) on both
            throughput(lab, plan["bob"], 1, pids[kind])
        for _ in range(args.rounds):  # RTT first, on idle tunnels, both at once
            project_rtt, bare_rtt = rtt_pair(lab, args.pings)
            results["project"]["rtt"].append(project_rtt)
            results["bare"]["rtt"].append(bare_rtt)
        for round_ in range(args.rounds):
            for kind, plan in order if round_ % 2 == 0 else order[::-1]:  # ABBA: fair to both
                bps, cost = throughput(lab, plan["bob"], args.seconds, pids[kind])
                results[kind]["bps"].append(bps)
                results[kind]["cpu_ns_per_byte"].append(cost)
        for _ in range(args.rounds):
            project, bare = concurrent_bps(lab, args.seconds)
            results["project"]["concurrent_bps"].append(project)
            results["bare"]["concurrent_bps"].append(bare)
        for wg in interfaces:
            wg.close()
    medians = {kind: {metric: statistics.median(values) for metric, values in data.items()}
               for kind, data in results.items()}
    summary = {
        "rounds": args.rounds, "seconds": args.seconds, "pings": args.pings, "nat": args.nat,
        "project_mbps": medians["project"]["bps"] / 1e6, "bare_mbps": medians["bare"]["bps"] / 1e6,
        "project_rtt_ms": medians["project"]["rtt"], "bare_rtt_ms": medians["bare"]["rtt"],
        "throughput_ratio": medians["project"]["bps"] / medians["bare"]["bps"],
        "rtt_ratio": medians["bare"]["rtt"] / medians["project"]["rtt"],
        # Rounds are back to back, so a per-round ratio cancels most background load.
        "paired_throughput_ratio": statistics.median(
            p / b for p, b in zip(results["project"]["bps"], results["bare"]["bps"], strict=True)),
        "paired_rtt_ratio": statistics.median(
            b / p for p, b in zip(results["project"]["rtt"], results["bare"]["rtt"], strict=True)),
        "concurrent_throughput_ratio": statistics.median(
            p / b for p, b in zip(results["project"]["concurrent_bps"], results["bare"]["concurrent_bps"],
                                  strict=True)),
        "project_cpu_ns_per_byte": medians["project"]["cpu_ns_per_byte"],
        "bare_cpu_ns_per_byte": medians["bare"]["cpu_ns_per_byte"],
        # CPU per byte depends less on the background load than throughput does.
        "cpu_efficiency_ratio": medians["bare"]["cpu_ns_per_byte"] / medians["project"]["cpu_ns_per_byte"],
        "raw": results, "elapsed_s": time.monotonic() - started,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{args.rounds} rounds, iperf3 -t {args.seconds}, {args.pings} pings, both hosts {args.nat}")
        print(f"{'':10}{'throughput (median)':>22}{'RTT (median)':>16}")
        for kind in ("project", "bare"):
            print(f"{kind:10}{summary[f'{kind}_mbps']:>17.1f} Mb/s{summary[f'{kind}_rtt_ms']:>13.3f} ms")
        for kind in ("project", "bare"):
            bps, rtt = results[kind]["bps"], results[kind]["rtt"]
            print(f"  {kind} spread: {min(bps) / 1e6:.1f}-{max(bps) / 1e6:.1f} Mb/s, "
                  f"{min(rtt):.3f}-{max(rtt):.3f} ms")
        print(f"throughput ratio project/bare: {summary['throughput_ratio']:.3f} of medians, "
              f"{summary['paired_throughput_ratio']:.3f} median of paired rounds")
        print(f"RTT ratio bare/project:        {summary['rtt_ratio']:.3f} of medians, "
              f"{summary['paired_rtt_ratio']:.3f} median of paired rounds   (target >= 0.95)")
        print(f"both at once, project/bare:    {summary['concurrent_throughput_ratio']:.3f} median of "
              f"{args.rounds} rounds")
        print(f"wireguard-go CPU per byte:     project {summary['project_cpu_ns_per_byte']:.1f} ns, "
              f"bare {summary['bare_cpu_ns_per_byte']:.1f} ns; ratio bare/project "
              f"{summary['cpu_efficiency_ratio']:.3f}")
    met = summary["paired_throughput_ratio"] >= TARGET_RATIO and summary["paired_rtt_ratio"] >= TARGET_RATIO
    print(f"target: paired throughput and RTT ratios >= {TARGET_RATIO}: {'met' if met else 'missed'}",
          file=sys.stdout if met else sys.stderr)
    emit("tunnel", [
        Figure("throughput through the project's tunnel, paired rounds", summary["project_mbps"], "Mb/s",
               summary["bare_mbps"], "bare wireguard-go, same binary", f"paired ratio ≥ {TARGET_RATIO}",
               summary["paired_throughput_ratio"] >= TARGET_RATIO, 1,
               paired_ratio=summary["paired_throughput_ratio"]),
        Figure("RTT through the project's tunnel (ratio bare / project)", summary["project_rtt_ms"], "ms",
               summary["bare_rtt_ms"], "bare wireguard-go, same binary", f"paired ratio ≥ {TARGET_RATIO}",
               summary["paired_rtt_ratio"] >= TARGET_RATIO, 3, paired_ratio=summary["paired_rtt_ratio"]),
    ], load_before)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
