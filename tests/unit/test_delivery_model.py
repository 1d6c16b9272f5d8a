"""The broker's wire contract: versions follow content, secrets never show themselves."""

from __future__ import annotations

import json

import pytest

from sidegate import errors
from sidegate.policy import delivery
from sidegate.sidecar import brokering
from tests.conftest import fake_key


def test_equal_content_gives_equal_versions_and_any_change_another() -> None:
    key = fake_key()
    one = delivery.build("team-a", credentials={"openai": key}, bundle="e30=")
    again = delivery.build("team-a", credentials={"openai": key}, bundle="e30=")
    other = delivery.build("team-a", credentials={"openai": fake_key()}, bundle="e30=")
    assert one == again and json.loads(one[1])["version"] == one[0]
    assert one[0] != other[0]


def test_a_parsed_delivery_masks_its_secrets() -> None:
    key, token, password = fake_key(), fake_key("adm-"), fake_key("pw-")
    _, body = delivery.build(
        "team-a",
        credentials={"openai": key},
        bundle="e30=",
        admin_tokens=[token],
        redis=("redis://r:6379/0", password),
    )
    parsed = delivery.loads(body)
    assert parsed.credentials["openai"].get_secret_value() == key
    shown = repr(parsed) + str(parsed) + parsed.model_dump_json()
    for secret in (key, token, password):
        assert secret not in shown


def test_a_bad_delivery_names_fields_never_values() -> None:
    key = fake_key()
    raw = json.loads(delivery.build("team-a", credentials={"openai": key}, bundle="e30=")[1])
    raw["credentials"] = {"openai": 7}
    raw["namespace"] = "Not A Namespace " + key
    with pytest.raises(errors.DeliveryRejected) as caught:
        delivery.loads(json.dumps(raw).encode())
    assert "credentials" in str(caught.value) and key not in str(caught.value)


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap() -> None:
    assert brokering.backoff(1, lambda: 0.0) == 0.25 and brokering.backoff(1, lambda: 1.0) == 0.5
    assert brokering.backoff(3, lambda: 1.0) == 2.0
    assert brokering.backoff(40, lambda: 1.0) == 30.0 and brokering.backoff(40, lambda: 0.0) == 15.0
