"""A pytest plugin for mutation runs (`scripts/mutation` loads it with `-p`): the fast tests
first. mutmut hands pytest each mutant's tests as a set, in no useful order, and stops at the
first failure (`-x`); with unit tests ahead of the ones that start servers, most mutants are
killed in milliseconds instead of seconds. The order changes no outcome."""

from __future__ import annotations

import pytest

_ORDER = ("tests/unit/", "tests/property/", "tests/security/", "tests/integration/", "tests/e2e/")


def _rank(item: pytest.Item) -> int:
    for rank, prefix in enumerate(_ORDER):
        if item.nodeid.startswith(prefix):
            return rank
    return len(_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: within a directory, the order pytest collected
