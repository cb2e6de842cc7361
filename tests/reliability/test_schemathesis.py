"""Schemathesis against the service's own OpenAPI schema, through a real server with a key holding every role:
positive (schema-valid) and negative (schema-violating) cases for every operation, zero server errors."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable

import pytest
import redis
import requests  # schemathesis brings it
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.service.conftest import auth
from tests.service.live import LiveServer


def fuzz(base_url: str, examples: int) -> tuple[Counter[str], list[str]]:
    """Every operation, both generation modes, ``examples`` cases each (fewer where the space is smaller);
    returns the statuses per operation and a curl line for each 5xx."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    session = requests.Session()

    def run(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
        label = f"{operation.label} {mode.value}"

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: schemathesis.Case) -> None:
            response = case.call(session=session, headers=auth("all"), timeout=30)
            statuses[f"{label} {response.status_code}"] += 1
            if response.status_code >= 500:
                failures.append(f"{case.as_curl_command()} -> {response.status_code} {response.text[:300]}")

        with contextlib.suppress(Unsatisfiable):  # an operation without inputs has no negative case
            call()

    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(result.ok(), mode)
    session.close()
    return statuses, failures


def run_schemathesis(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    examples: int,
    minimum: int,
    figures: Callable[..., None],
) -> None:
    server = live_server(redis_url, VIGIL_LOG_LEVEL="warning", VIGIL_MAX_BODY_BYTES="200000")
    statuses, failures = fuzz(server.url, examples)
    cases = sum(statuses.values())
    by_status: Counter[str] = Counter()
    for key, count in statuses.items():
        by_status[key.rsplit(" ", 1)[1]] += count
    figures(
        cases=cases,
        operations=len({k.rsplit(" ", 2)[0] for k in statuses}),
        by_status=dict(by_status),
        server_errors=len(failures),
    )
    assert not failures, "\n".join(failures[:10])
    assert cases >= minimum, statuses
    assert server.proc is not None and server.proc.poll() is None  # still serving


def test_schemathesis_finds_no_server_error(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    clean_redis: redis.Redis,
    figures: Callable[..., None],
) -> None:
    run_schemathesis(live_server, redis_url, examples=15, minimum=300, figures=figures)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_in_thousands_of_cases(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    clean_redis: redis.Redis,
    figures: Callable[..., None],
) -> None:
    run_schemathesis(live_server, redis_url, examples=150, minimum=3000, figures=figures)
