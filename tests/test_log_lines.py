"""Each log line of the agent is written once: its actors run in its own process and log
through the agent's own sink (they added a second one, and every line came twice)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from actors import logs as actor_logs
from actors.messages import LogSpec
from agent import logs as agent_logs


def test_an_actor_line_in_the_agents_process_is_written_once_and_names_its_actor(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    log = tmp_path / "agent.log"
    root_handlers, root_level = logging.root.handlers[:], logging.root.level
    monkeypatch.setattr(actor_logs, "_MAIN_PID", os.getpid())
    monkeypatch.setattr(actor_logs, "_configured", {})
    try:
        agent_logs.configure("INFO", "human", log)
        actor_logs.configure(LogSpec("INFO", str(log), program_sinks=True))
        actor_logs.logger.bind(actor="peer-connection/p1/bob").warning("relay allocation failed")
        actor_logs.logger.info("node started")
    finally:
        agent_logs.logger.remove()
        agent_logs.logger.add(sys.stderr)  # loguru's default sink, as the other tests found it
        logging.root.handlers[:], logging.root.level = root_handlers, root_level
    lines = log.read_text().splitlines()
    assert [line[24:] for line in lines] == ["WARNING peer-connection/p1/bob | relay allocation failed",
                                             "INFO    node started"]


def test_a_first_connection_to_the_control_server_is_not_called_reachable_again() -> None:
    from types import SimpleNamespace

    from loguru import logger

    from agent.node import Agent

    told: list[object] = []
    agent = SimpleNamespace(control_lost_at={}, _tell=told.append)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message).strip()), format="{message}")
    try:
        Agent._on_reachability(agent, "ws://203.0.113.10:8667", True, None)  # type: ignore[arg-type]
        Agent._on_reachability(agent, "ws://203.0.113.10:8667", False, "refused")  # type: ignore[arg-type]
        Agent._on_reachability(agent, "ws://203.0.113.10:8667", True, None)  # type: ignore[arg-type]
    finally:
        logger.remove(sink)
    assert [line.split(" after ")[0] for line in lines] == [
        "control server ws://203.0.113.10:8667 unreachable: refused; tunnels stay up",
        "control server ws://203.0.113.10:8667 reachable again"]
    assert len(told) == 3
