"""Start-up time of the client commands against a bare interpreter, measured in one run.

    .venv/bin/python bench/cli.py [--runs 21] [--lanrage PATH]

Each case is a fresh process, run ``--runs`` times in turn with the others (so that a
burst of load elsewhere hits every case alike); the figure is the median wall time from
spawn to exit (the target), with the child's CPU time beside it (user + system, which
moves much less than wall time when other work shares the machine). The baseline is
``python -c pass`` with the same interpreter. ``status``
talks to a stand-in agent in this process (a loopback HTTP server answering ``/status``
with a two-party document), so its figure is the whole command: start-up, the request
and the printed table. ``status (no agent)`` is the error path. The command is the
``lanrage`` script beside this interpreter when installed, else ``python cli.py``.
Exits 1 when a median is over the target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.result import Figure, emit, load_average  # noqa: E402
from lab.ports import free_port  # noqa: E402

TARGET_S = 0.100  # the budget for a client command, before it does any work
RUN_TIMEOUT_S = 30.0  # a command that takes this long is hung, not slow


def sample_status() -> dict[str, object]:
    def peer(name: str, index: int, local: bool = False) -> dict[str, object]:
        return {"name": name, "peer_id": f"{index:032x}", "is_local": local, "virtual_ip": f"10.66.0.{index}",
                "nat_type": "symmetric" if index % 2 else "port_restricted",
                "state": None if local else "connected",
                "path": None if local else ("relay" if index % 3 == 0 else "direct"),
                "endpoint": f"198.51.100.{index}:51820", "relay": "203.0.113.20:3478",
                "latency_ms": None if local else 12.5 + index, "loss": None if local else 0.0}

    parties = [{"name": f"party {n}", "party_id": f"{n:016x}", "virtual_ip": "10.66.0.1",
                "peers": [peer("me", 1, local=True)] + [peer(f"friend{i}", i) for i in range(2, 9)]}
               for n in range(2)]
    return {"node": {"node_id": "ab" * 16, "nat_type": "symmetric", "relay": "203.0.113.20:3478"},
            "agent": {"name": "me", "nat_type": "symmetric",
                      "control": [{"url": "ws://203.0.113.10:8667", "connected": True}]},
            "parties": parties}


class StandInAgent(BaseHTTPRequestHandler):
    body = json.dumps(sample_status()).encode()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def command() -> list[str]:
    script = Path(sys.executable).parent / "lanrage"
    return [str(script)] if script.exists() else [sys.executable, str(ROOT / "cli.py")]


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall time, CPU time (user + system, from the kernel's accounting of the child) and status."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/")
    # wait(timeout=...) polls in steps of up to 50 ms, which would quantise every figure: block
    # in wait4 instead (it also gives the child's CPU time), with a timer that kills a hung command.
    killer = threading.Timer(RUN_TIMEOUT_S, process.kill)
    killer.start()
    try:
        _, raw_status, usage = os.wait4(process.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(raw_status)
    return wall, usage.ru_utime + usage.ru_stime, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--lanrage", help="the command to time [default: lanrage beside this python]")
    options = parser.parse_args()
    lanrage = [options.lanrage] if options.lanrage else command()
    load_before = load_average()

    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    agent = f"127.0.0.1:{server.server_address[1]}"
    nobody = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, THESPIAN_BASE_IPADDR="127.0.0.1", LANRAGE_STATE_DIR="/nonexistent/lanrage-bench")
    cases: dict[str, tuple[list[str], int]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], 0),
        "lanrage --help": ([*lanrage, "--help"], 0),
        "lanrage status": ([*lanrage, "status", "--api", agent], 0),
        "lanrage status (no agent)": ([*lanrage, "status", "--api", nobody], 2),
        "lanrage party --help": ([*lanrage, "party", "--help"], 0),
        "lanrage history --help": ([*lanrage, "history", "--help"], 0),
        "lanrage sql --help": ([*lanrage, "sql", "--help"], 0),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(options.runs):
            for name, (args, expected) in cases.items():
                elapsed, used, status = timed_run(args, env)
                if status != expected:
                    print(f"{name}: exit status {status}, expected {expected}", file=sys.stderr)
                    return 1
                times[name].append(elapsed)
                cpu[name].append(used)
    finally:
        server.shutdown()

    baseline = statistics.median(times["python -c pass"])
    print(f"command: {' '.join(lanrage)}; {options.runs} runs each, interleaved; medians; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'case':28} {'wall':>9} {'p90':>9} {'vs python -c pass':>18} {'CPU':>9}")
    missed = []
    figures = []
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = sorted(samples)[int(0.9 * (len(samples) - 1))]
        print(f"{name:28} {1000 * median:7.1f}ms {1000 * p90:7.1f}ms {median / baseline:17.2f}x "
              f"{1000 * statistics.median(cpu[name]):7.1f}ms")
        if name.startswith("lanrage") and median > TARGET_S:
            missed.append(name)
        if name.startswith("lanrage"):
            figures.append(Figure(f"`{name}`, median wall", 1000 * median, "ms", 1000 * baseline,
                                  "`python -c pass`", f"≤ {1000 * TARGET_S:.0f} ms", median <= TARGET_S, 1))
    print(f"target: every lanrage median <= {1000 * TARGET_S:.0f} ms")
    emit("cli", figures, load_before)
    if missed:
        print(f"MISSED: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
