"""Schemathesis against the OpenAPI document: no input makes the API fail with a 5xx.

The cases come from schemathesis's strategies and run through plain hypothesis
(its pytest plugin does not load on this pytest version).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.app import PUBLIC_PATHS, create_app
from api.reader import StoreReader
from tests.api.conftest import TOKEN, FakeService, record_party


def operations(tmp_path: Path) -> list[schemathesis.APIOperation]:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    record_party(url)
    app = create_app(FakeService(), StoreReader(url), TOKEN, hosts=["testserver"])  # schemathesis's Host
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 10
    return found


@pytest.mark.parametrize("authorized", [True, False], ids=["with-token", "without-token"])
def test_no_input_makes_a_5xx(tmp_path: Path, authorized: bool) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if authorized else {}
    seen: dict[str, set[int]] = {}
    for operation in operations(tmp_path):

        @settings(max_examples=60 if authorized else 15, deadline=None,
                  suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy() | operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers)
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
            if not authorized and case.path not in PUBLIC_PATHS:
                assert response.status_code == 401

        check()
    assert len(seen) >= 10
    if authorized:
        # The generator reached the agent, not only the validation layer.
        assert 200 in seen["POST /party/create"] and 422 in seen["POST /party/create"]
