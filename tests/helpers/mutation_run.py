"""A pytest plugin for mutation runs only (`scripts/mutation` loads it with `-p`).

The fast tests first: mutmut hands pytest each mutant's tests as a set, in no useful order,
and stops at the first failure (`-x`); with unit tests ahead of the ones that start servers,
most mutants are killed in milliseconds instead of seconds. The order changes no outcome.

No timing health checks or deadlines for Hypothesis: a mutation run shares the machine with
itself and others, and "input generation is slow" there says nothing about the code (it
stopped a run of `test_policy_properties.py` before its first mutant). Every example is still
drawn and checked.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

_ORDER = ("tests/unit/", "tests/property/", "tests/security/", "tests/integration/", "tests/e2e/")

settings.register_profile(
    "mutation-run", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
settings.load_profile("mutation-run")


def _rank(item: pytest.Item) -> int:
    for rank, prefix in enumerate(_ORDER):
        if item.nodeid.startswith(prefix):
            return rank
    return len(_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: within a directory, the order pytest collected
