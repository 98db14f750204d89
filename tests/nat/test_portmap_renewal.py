"""The agent's decisions on a renewal's answer (agent.portmapping), against a scripted mapper."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from actors import messages as m
from agent.portmapping import GatewayMapping
from mesh.portmap import Mapping, PortMapRefused, PortMapUnanswered

GRANTED = Mapping("pcp", "198.51.100.1", "203.0.113.100", 51820, 51820, 60, epoch_s=1000)


class ScriptedMapper:
    gateway = "198.51.100.1"

    def __init__(self, answer: Mapping | Exception) -> None:
        self.answer = answer

    def renew(self) -> Mapping:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def renew_with(answer: Mapping | Exception, granted_s_ago: float = 30.0
               ) -> tuple[list[m.PortMappingStep], int]:
    steps: list[m.PortMappingStep] = []
    announced = 0

    async def record(step: m.PortMappingStep) -> None:
        steps.append(step)

    async def changed() -> None:
        nonlocal announced
        announced += 1

    keeper = GatewayMapping("auto", 51820, 60, record, changed)
    keeper.mapper = ScriptedMapper(answer)  # type: ignore[assignment]
    keeper.mapping = GRANTED
    keeper.obtained_at = time.monotonic() - granted_s_ago
    asyncio.run(keeper._renew())
    return steps, announced


def test_a_renewal_granted_again_is_renewed_and_announces_nothing() -> None:
    steps, announced = renew_with(replace(GRANTED, epoch_s=1030))
    assert [s.kind for s in steps] == ["renewed"] and announced == 0


def test_a_refused_renewal_is_the_router_taking_the_mapping_back() -> None:
    steps, announced = renew_with(PortMapRefused("PCP: not authorized", code=2))
    assert [(s.kind, s.by_router) for s in steps] == [("lost", True)]
    assert "took the mapping back" in steps[0].reason and announced == 1


def test_silence_is_a_loss_not_by_the_router() -> None:
    steps, announced = renew_with(PortMapUnanswered("PCP: no answer"))
    assert [(s.kind, s.by_router) for s in steps] == [("lost", False)]
    assert "stopped answering" in steps[0].reason and announced == 1


def test_another_endpoint_is_a_loss_and_a_new_mapping_announced() -> None:
    steps, announced = renew_with(replace(GRANTED, external_port=40000, epoch_s=1030))
    assert [s.kind for s in steps] == ["lost", "obtained"]
    assert steps[0].by_router and "moved it to 203.0.113.100:40000" in steps[0].reason
    assert steps[1].external_port == 40000 and announced == 1


# 30 s after a grant at epoch 1000 the gateway must say at least 1000 + 30 * 7/8 - 2 (RFC 6886 3.6).
@pytest.mark.parametrize(("epoch", "restarted"), [(5, True), (1024, True), (1025, False), (1030, False)])
def test_an_epoch_that_fell_behind_is_a_restart(epoch: int, restarted: bool) -> None:
    steps, announced = renew_with(replace(GRANTED, epoch_s=epoch))
    if restarted:
        assert [s.kind for s in steps] == ["lost", "obtained"] and "restarted" in steps[0].reason
    else:
        assert [s.kind for s in steps] == ["renewed"]
    assert announced == 0  # the same endpoint either way: peers need no new candidates


def changed_network(gateway: str | None) -> list[m.PortMappingStep]:
    steps: list[m.PortMappingStep] = []

    async def record(step: m.PortMappingStep) -> None:
        steps.append(step)

    async def changed() -> None:
        pass

    async def run() -> None:
        keeper = GatewayMapping("auto", 51820, 60, record, changed, gateway=lambda: gateway)
        keeper.mapper = ScriptedMapper(replace(GRANTED, epoch_s=1030))  # type: ignore[assignment]
        keeper.mapping = GRANTED
        keeper.obtained_at = time.monotonic() - 30
        keeper._task = asyncio.create_task(asyncio.sleep(0))
        await keeper.network_changed("the public mapping moved (periodic check)")

    asyncio.run(run())
    return steps


def test_a_network_change_checks_with_the_same_gateway_at_once() -> None:
    assert [s.kind for s in changed_network("198.51.100.1")] == ["renewed"]


def test_a_network_change_without_the_old_gateway_loses_the_mapping_and_asks_again() -> None:
    steps = changed_network(None)
    assert [(s.kind, s.by_router) for s in steps] == [("lost", False), ("refused", False)]
    assert "the default gateway is now none" in steps[0].reason
    assert steps[1].reason == "no IPv4 default gateway"
