"""The signing Secret's layout: several keys, one active, all trusted (active first); a broken
Secret is refused with a reason that names the entry, never its content."""

from __future__ import annotations

import pytest

from sidegate.operator import signing_keys
from sidegate.policy import signing


def pem() -> str:
    return signing.private_key_to_pem(signing.generate_private_key()).decode()


def test_a_generated_secret_has_one_active_key() -> None:
    keys = signing_keys.parse(signing_keys.generated())
    assert keys.active_name == signing_keys.FIRST_KEY
    assert keys.public == (signing.encode_public_key(keys.active.public_key()),)
    assert list(keys.trusted) == [keys.active_id]


def test_every_key_is_trusted_and_the_active_one_comes_first() -> None:
    old, new = pem(), pem()
    keys = signing_keys.parse({"a.pem": old, "b.pem": new, "active": "b.pem"})
    new_public = signing.encode_public_key(signing.private_key_from_pem(new.encode()).public_key())
    old_public = signing.encode_public_key(signing.private_key_from_pem(old.encode()).public_key())
    assert keys.public == (new_public, old_public)
    assert "PRIVATE" not in repr(keys)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "holds no"),
        ({"a.pem": "x", "active": "b.pem"}, "must name one"),
        ({"a.pem": "not a key", "active": "a.pem"}, "entry 'a.pem'"),
    ],
)
def test_a_broken_secret_is_refused_with_a_reason(data: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        signing_keys.parse(data)
    assert "not a key" not in str(caught.value)
