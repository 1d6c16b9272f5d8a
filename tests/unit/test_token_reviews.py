"""Reading a TokenReview's answer into the caller's identity, and a token's expiry claim:
every refusal with its message, and how long an accepted review stands."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sidegate.broker import kube, pods, reviews
from sidegate.policy import delivery

NOW = 1_795_000_000.0
BOUND = {
    "authentication.kubernetes.io/pod-name": ["app-0"],
    "authentication.kubernetes.io/pod-uid": ["uid-1"],
}


def jwt(claims: object, *, raw: bytes | None = None) -> str:
    payload = raw if raw is not None else json.dumps(claims).encode()
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"header.{body}.signature"


def status(**changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "authenticated": True,
        "audiences": ["sidegate"],
        "user": {"username": "system:serviceaccount:team-a:app", "extra": BOUND},
    }
    found.update(changes)
    return found


@pytest.mark.parametrize(
    ("token", "claim"),
    [
        (jwt({"exp": 1_795_000_300}), 1_795_000_300.0),
        (jwt({"exp": 1_795_000_300.5}), 1_795_000_300.5),
        (jwt({"exp": 7, "pad": "x"}), 7.0),  # payload lengths needing each padding
        (jwt({"exp": 7, "pad": "xy"}), 7.0),
        (jwt({"exp": 7, "pad": "xyz"}), 7.0),
        (jwt({"exp": True}), None),
        (jwt({"exp": "1795000300"}), None),
        (jwt({"iat": 1}), None),
        (jwt([1, 2]), None),
        (jwt(None, raw=b"{not json"), None),
        (jwt(None, raw=b"\xff\xfe"), None),
        ("header.!!!.signature", None),
        ("header.e30", None),
        ("a.b.c.d", None),
        ("", None),
    ],
)
def test_the_expiry_claim(token: str, claim: float | None) -> None:
    assert reviews.expiry_claim(token) == claim


def identity(found: dict[str, Any], token: str | None = None) -> reviews.Identity:
    """A token that is not a JWT unless one is given: its review stands the default time."""
    return reviews.identity_from(found, "sidegate", NOW, token or "not-a-jwt")


def refusal(found: dict[str, Any], token: str | None = None) -> str:
    with pytest.raises(reviews.Unauthenticated) as caught:
        identity(found, token)
    return str(caught.value)


def test_an_accepted_bound_token_names_the_pod() -> None:
    assert identity(status()) == reviews.Identity("team-a", "app", "app-0", "uid-1", NOW + 60)
    many = status(audiences=["other", "sidegate"])
    assert identity(many).service_account == "app"
    colon = status(user={"username": "system:serviceaccount:team-a:app:x", "extra": BOUND})
    assert identity(colon).service_account == "app:x"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"authenticated": False}, "the token was not accepted by the API server"),
        ({"authenticated": "true"}, "the token was not accepted by the API server"),
        ({"authenticated": None}, "the token was not accepted by the API server"),
        ({"audiences": ["other"]}, "the token is not meant for audience 'sidegate'"),
        ({"audiences": None}, "the token is not meant for audience 'sidegate'"),
        ({"user": {"username": "alice"}}, "the token is not a service account's"),
        ({"user": None}, "the token is not a service account's"),
        ({"user": {"username": None}}, "the token is not a service account's"),
        (
            {"user": {"username": "x-system:serviceaccount:team-a:app", "extra": BOUND}},
            "the token is not a service account's",
        ),
    ],
)
def test_a_token_the_api_server_did_not_vouch_for_is_refused(
    changes: dict[str, Any], message: str
) -> None:
    assert refusal(status(**changes)) == message


def test_an_unbound_token_is_refused_with_its_reason_code() -> None:
    for extra in ({}, None, {"authentication.kubernetes.io/pod-name": ["a", "b"]}):
        with pytest.raises(pods.Refused) as caught:
            identity(status(user={"username": "system:serviceaccount:a:b", "extra": extra}))
        assert caught.value.code == delivery.NOT_POD_BOUND
        assert caught.value.message == "the token is not bound to a pod"


def test_a_review_stands_until_the_token_expires_and_ten_minutes_at_most() -> None:
    assert identity(status(), jwt({"exp": NOW + 300})).expires == NOW + 300
    assert identity(status(), jwt({"exp": NOW + 600})).expires == NOW + 600
    assert identity(status(), jwt({"exp": NOW + 3600})).expires == NOW + 600
    assert identity(status(), "not-a-jwt").expires == NOW + 60
    assert refusal(status(), jwt({"exp": NOW})) == "the token has expired"
    assert refusal(status(), jwt({"exp": NOW - 1})) == "the token has expired"
    assert identity(status(), jwt({"exp": NOW + 0.5})).expires == NOW + 0.5


@pytest.mark.parametrize("pad", ["~", "~~", "~~~", "??>"])
def test_the_expiry_claim_is_read_from_base64url_only(pad: str) -> None:
    """A JWT's payload is base64url without padding: the same bytes in standard base64
    ("+", "/"), padded, or with a character outside the alphabet are not a claim."""
    token = jwt({"exp": 7, "p": pad})
    header, body, signature = token.split(".")
    assert {"-", "_"} & set(body)  # the payload's encoding uses the URL-safe characters
    assert reviews.expiry_claim(token) == 7.0
    standard = body.replace("-", "+").replace("_", "/")
    for bad in (standard, body + "=" * (-len(body) % 4 or 4), f"{body[:4]}!{body[4:]}"):
        assert reviews.expiry_claim(f"{header}.{bad}.{signature}") is None, bad


class VouchingForEveryToken(kube.Client):
    """An API server whose TokenReview accepts every token as bound to one pod, answered in
    process: through the emulator's HTTP, the 50,001 reviews below would take minutes."""

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        return status(audiences=audiences)


async def test_by_default_the_broker_keeps_fifty_thousand_reviews() -> None:
    client = VouchingForEveryToken(kube.Login("http://127.0.0.1:1"))
    try:
        reviewer = reviews.Reviewer(client, "sidegate", clock=lambda: NOW)
        for n in range(50_001):
            await reviewer.review(f"token-{n}")
        assert len(reviewer) == 50_000
    finally:
        await client.close()
