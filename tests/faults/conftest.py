"""One lab a fault file (alice behind a port-restricted cone NAT, bob port-forwarded, carl
behind a symmetric NAT, two relays), made whole again before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import HOSTS, FaultParty


@pytest.fixture(scope="module")
def shared() -> Iterator[FaultParty]:
    with FaultParty.build(HOSTS, relays=2) as built:
        built.form()
        yield built


@pytest.fixture
def faults(shared: FaultParty) -> FaultParty:
    shared.heal()
    return shared
