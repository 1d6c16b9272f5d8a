"""``metrics.failures``: the operator's handlers count a failure and let kopf retry it."""

from __future__ import annotations

import asyncio

import pytest

from sidegate.operator import metrics


def counted(served: metrics.Metrics, name: str, **labels: str) -> float:
    value = served.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_a_failure_is_counted_under_its_labels_and_raised_as_it_was() -> None:
    served = metrics.Metrics()
    failure = RuntimeError("the API server refused")
    with (
        pytest.raises(RuntimeError) as raised,
        metrics.failures(served.credentials, metrics.ADMIN_TOKEN),
    ):
        raise failure
    assert raised.value is failure
    credentials = "sidegate_operator_credentials_total"
    assert counted(served, credentials, kind=metrics.ADMIN_TOKEN, outcome=metrics.FAILED) == 1
    assert counted(served, credentials, kind=metrics.PROVIDER_KEYS, outcome=metrics.FAILED) == 0


def test_success_and_cancellation_count_nothing() -> None:
    served = metrics.Metrics()
    with metrics.failures(served.bundles):
        pass
    with pytest.raises(asyncio.CancelledError), metrics.failures(served.bundles):
        raise asyncio.CancelledError  # a shutdown, not a failed write
    bundles = "sidegate_operator_bundles_total"
    assert counted(served, bundles, outcome=metrics.FAILED) == 0
