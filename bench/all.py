"""Rerun every benchmark on the current commit and write their tables into docs/benchmarks.md.

    sudo .venv/bin/python bench/all.py                 (every script; the lab ones need root)
    .venv/bin/python bench/all.py --only cli,journal   (some scripts; only their sections change)
    .venv/bin/python bench/all.py --list               (the scripts and how long each takes)

Each script runs as a subprocess with its default sizes (``--args NAME="..."`` adds
arguments, and the section says so); its human output goes through to this terminal and
its last line, the machine-readable result (``bench/result.py``), is what is written:
per figure the value, the like-for-like baseline of the same run, the ratio, the target
and whether it was met, with the date, the commit, the machine and its load average
before and after. Each script owns one section of docs/benchmarks.md between
``<!-- bench/all.py NAME: begin -->`` and ``<!-- bench/all.py NAME: end -->``; the
summary there and the one in README.md are rebuilt from every section's data, so the
README quotes only generated figures (tests/test_readme_figures.py checks it). Text
outside the markers is never touched. Run it on a quiet machine: the figures are wall
clock. Exits 1 when a script missed a target, failed, or printed no result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.result import load_average, parse  # noqa: E402

BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
README_MD = ROOT / "README.md"
SUMMARY = "summary"
DATA = re.compile(r"^<!-- data (\{.*\}) -->$", re.MULTILINE)


@dataclass(frozen=True)
class Bench:
    name: str
    needs_root: bool  # builds a network lab
    typical_min: float  # on a quiet 2-core machine, read from the script's sizes and past runs
    measures: str

    @property
    def script(self) -> Path:
        return ROOT / "bench" / f"{self.name}.py"


BENCHES = (
    Bench("cli", False, 0.3, "start-up of the client commands"),
    Bench("registry", False, 0.2, "control registry replay, linear or not"),
    Bench("journal", False, 2.5, "the event store against raw sqlite3"),
    Bench("log", False, 3.0, "a year of a 16-peer node's log"),
    Bench("relay", False, 1.0, "relay packets/s and added latency"),
    Bench("fuzz", False, 4.0, "every decoder of the network and the disk, 1,000,000 inputs"),
    Bench("tunnel", True, 2.0, "the project's tunnel against bare wireguard-go"),
    Bench("connect", True, 2.5, "`party join` to the first ping, direct, relayed, upgraded"),
    Bench("matrix", True, 5.0, "the NAT matrix through real agents"),
    Bench("node", True, 5.0, "memory, idle CPU and joins of a whole node"),
    Bench("failover", True, 30.0, "detection and recovery per fault; path switches under loss"),
)
BY_NAME = {bench.name: bench for bench in BENCHES}
TIMEOUT_FACTOR = 4  # a script that takes 4x its usual time (plus 10 min) is hung


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench/all.py {name}: begin -->", f"<!-- bench/all.py {name}: end -->"


def section(text: str, name: str) -> str | None:
    """What lies between a section's markers, or None when the text has no such section."""
    begin, end = markers(name)
    if begin not in text or end not in text:
        return None
    return text[text.index(begin) + len(begin):text.index(end)]


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = markers(name)
    if begin not in text or end not in text:
        raise SystemExit(f"bench/all.py: no section {name!r} in the file (markers {begin} ... {end})")
    return text[:text.index(begin) + len(begin)] + "\n" + body.rstrip("\n") + "\n" + text[text.index(end):]


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def commit() -> str:
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not line.endswith(("docs/benchmarks.md", "README.md"))]
    return head + (" with uncommitted changes" if changed else "")


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        memory_kb = 0
    parts = [f"{os.cpu_count()} CPUs", model, f"{memory_kb / 1024 / 1024:.1f} GiB" if memory_kb else ""]
    return ", ".join(part for part in parts if part)


def run(bench: Bench, extra: list[str]) -> dict[str, object]:
    """Runs one script, passing its output through; returns what its section is written from."""
    command = [sys.executable, str(bench.script.relative_to(ROOT)), *extra]
    print(f"== bench/all.py: {' '.join(command[1:])} (usually {bench.typical_min:g} min)", flush=True)
    load_before = load_average()
    started, wall = time.monotonic(), datetime.now(UTC)
    output: list[str] = []
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "THESPIAN_BASE_IPADDR": "127.0.0.1"})
    assert process.stdout is not None
    # A script that takes this long is hung, not slow: killed (its labs tear themselves down).
    killer = threading.Timer(TIMEOUT_FACTOR * bench.typical_min * 60 + 600, process.terminate)
    killer.start()
    try:
        for line in process.stdout:
            output.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        status = process.wait()
    finally:
        killer.cancel()
    result = parse("".join(output)) or {}
    return {
        "bench": bench.name, "command": " ".join(["python", *command[1:]]), "status": status,
        "date": wall.strftime("%Y-%m-%d %H:%M UTC"), "seconds": round(time.monotonic() - started),
        "commit": commit(), "machine": machine(),
        "load_before": load_before, "load_after": load_average(),
        "figures": result.get("figures", []), "note": result.get("note", ""),
        "printed_result": bool(result),
    }


def verdict(data: dict[str, object]) -> str:
    figures = data.get("figures") or []
    assert isinstance(figures, list)
    targeted = [f for f in figures if f.get("met") is not None]
    met = sum(1 for f in targeted if f["met"])
    if not data.get("printed_result"):
        return f"failed (exit status {data['status']}, no result printed)"
    if data["status"] != 0 and met == len(targeted):
        return f"failed (exit status {data['status']})"
    return f"{met} of {len(targeted)} targets met" + ("" if data["status"] == 0 else
                                                      f", exit status {data['status']}")


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def ratio(figure: dict[str, object]) -> str:
    value = figure.get("ratio")
    return "—" if value is None else f"{value:.2f}x"  # type: ignore[str-format]


def met(figure: dict[str, object]) -> str:
    return {True: "met", False: "**missed**", None: "—"}[figure.get("met")]  # type: ignore[index]


def loads(data: dict[str, object]) -> str:
    before, after = data["load_before"], data["load_after"]
    assert isinstance(before, list) and isinstance(after, list)
    return f"{before[0]:.2f} before, {after[0]:.2f} after"


def section_body(bench: Bench, data: dict[str, object]) -> str:
    lines = [
        f"#### `bench/{bench.name}.py`: {bench.measures}",
        "",
        f"`{data['command']}` on {data['date']}, commit {data['commit']}; {data['machine']}; "
        f"load average {loads(data)}; {data['seconds']} s; {verdict(data)}.",
        "",
        "| figure | value | baseline | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    figures = data["figures"]
    assert isinstance(figures, list)
    for figure in figures:
        baseline = f"{figure['baseline_shown']} ({figure['baseline_name']})" if figure.get("baseline_shown") \
            else "—"
        lines.append(f"| {cell(figure['name'])} | {cell(figure['shown'])} | {cell(baseline)} "
                     f"| {ratio(figure)} | {cell(figure.get('target') or '—')} | {met(figure)} |")
    if not figures:
        lines.append("| (no result printed) | — | — | — | — | **missed** |")
    lines += ["", f"<!-- data {json.dumps(data, ensure_ascii=False)} -->"]
    return "\n".join(lines)


def stored(text: str, name: str) -> dict[str, object] | None:
    body = section(text, name)
    found = DATA.search(body or "")
    return json.loads(found.group(1)) if found else None


def summary(text: str) -> str:
    """One row a script: when it last ran here, on what, and how it did."""
    lines = ["| script | date, commit | load average | result |", "| --- | --- | --- | --- |"]
    for bench in BENCHES:
        data = stored(text, bench.name)
        if data is None:
            lines.append(f"| `bench/{bench.name}.py` | not yet generated | — | — |")
        else:
            lines.append(f"| `bench/{bench.name}.py` | {data['date']}, {data['commit']} | {loads(data)} "
                         f"| {verdict(data)} |")
    return "\n".join(lines)


def readme_summary(text: str) -> str:
    """The README's table: every targeted figure, as generated."""
    rows = []
    for bench in BENCHES:
        data = stored(text, bench.name)
        if data is None:
            continue
        for figure in data["figures"]:  # type: ignore[union-attr]
            if figure.get("met") is None:
                continue
            rows.append(f"| `bench/{bench.name}.py` | {cell(figure['name'])} | {cell(figure['shown'])} "
                        f"| {cell(figure['target'])} | {met(figure)} | {data['date'][:10]} |")
    if not rows:
        return ("No figure generated yet on this code: `sudo .venv/bin/python bench/all.py` on a quiet "
                "machine writes them here and in docs/benchmarks.md.")
    return "\n".join(["| script | figure | value | target | met | date |",
                      "| --- | --- | --- | --- | --- | --- |", *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated scripts, e.g. cli,journal (default: all)")
    parser.add_argument("--args", action="append", default=[], metavar='NAME="ARGS"',
                        help="extra arguments for one script (recorded in its section)")
    parser.add_argument("--list", action="store_true", help="list the scripts and their usual run time")
    options = parser.parse_args()
    if options.list:
        for bench in BENCHES:
            lab = "root, lab" if bench.needs_root else ""
            print(f"{bench.name:10} {bench.typical_min:5.1f} min  {lab:10} {bench.measures}")
        print(f"{'total':10} {sum(b.typical_min for b in BENCHES):5.1f} min")
        return 0
    names = [name for name in options.only.split(",") if name] or [bench.name for bench in BENCHES]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown scripts: {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    extra: dict[str, list[str]] = {}
    for item in options.args:
        name, _, args = item.partition("=")
        if name not in BY_NAME:
            parser.error(f"--args {item!r}: unknown script {name!r}")
        extra[name] = shlex.split(args)
    chosen = [BY_NAME[name] for name in names]
    if any(bench.needs_root for bench in chosen) and os.geteuid() != 0:
        parser.error("the lab benches (" + ", ".join(b.name for b in chosen if b.needs_root)
                     + ") need root; run as root or choose others with --only")
    failed = []
    for bench in chosen:
        data = run(bench, extra.get(bench.name, []))
        text = BENCHMARKS_MD.read_text()
        text = replace_section(text, bench.name, section_body(bench, data))
        text = replace_section(text, SUMMARY, summary(text))
        BENCHMARKS_MD.write_text(text)
        README_MD.write_text(replace_section(README_MD.read_text(), SUMMARY, readme_summary(text)))
        print(f"== bench/all.py: {bench.name}: {verdict(data)}; section written", flush=True)
        if data["status"] != 0 or not data["printed_result"]:
            failed.append(bench.name)
    print("== bench/all.py: " + (f"missed or failed: {', '.join(failed)}" if failed else "every target met"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
