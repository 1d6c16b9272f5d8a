"""The broker's token reviewer against the emulated API server's TokenReview: what it asks,
what it caches (accepted tokens until they expire, refusals for ten seconds), the bounds on
both caches, and an API server that cannot answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sidegate.broker import kube, pods, reviews
from sidegate.policy import delivery
from tests.helpers.brokers import create_pod
from tests.helpers.kubernetes import BROKER_TOKEN, Emulator, cluster
from tests.helpers.processes import free_port


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, k8s: Emulator, client: kube.Client) -> None:
        self.k8s = k8s
        self.client = client
        self.reviews: list[str] = []

    def reviewer(self, clock: Clock, max_entries: int = 100) -> reviews.Reviewer:
        return reviews.Reviewer(
            self.client,
            "sidegate",
            clock=clock,
            max_entries=max_entries,
            on_review=self.reviews.append,
        )

    async def token(self, name: str = "app-0", seconds: float = 300) -> str:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "a", "image": "a"}]},
        }
        found = await create_pod(self.k8s, pod)
        return self.k8s.issue_token("team-a", "app", pod=found, seconds=seconds)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with cluster() as (k8s, url):
        client = kube.Client(kube.Login(url, token=lambda: BROKER_TOKEN))
        try:
            yield World(k8s, client)
        finally:
            await client.close()


async def test_an_accepted_token_is_reviewed_once_until_it_expires(world: World) -> None:
    token = await world.token(seconds=300)
    issued = world.k8s.tokens[token]
    clock = Clock(issued.expires - 300)
    reviewer = world.reviewer(clock)
    found = await reviewer.review(token)
    assert (found.namespace, found.service_account, found.pod_name) == ("team-a", "app", "app-0")
    assert found.pod_uid == world.k8s.pod("team-a", "app-0")["metadata"]["uid"]  # type: ignore[index]
    assert found.expires == int(issued.expires)
    clock.now = found.expires - 0.001
    assert await reviewer.review(token) is found
    assert (world.k8s.token_reviews, world.reviews, len(reviewer)) == (1, ["accepted"], 1)
    clock.now = found.expires  # the review no longer stands: asked again (and now refused)
    with pytest.raises(reviews.Unauthenticated, match=r"^the token has expired$"):
        await reviewer.review(token)
    assert world.k8s.token_reviews == 2 and len(reviewer) == 0


async def test_a_refusal_is_remembered_for_ten_seconds(world: World) -> None:
    clock = Clock(1_000.0)
    reviewer = world.reviewer(clock)
    bogus = "not.a-token.issued"
    for _ in range(3):
        with pytest.raises(reviews.Unauthenticated) as caught:
            await reviewer.review(bogus)
        assert str(caught.value) == "the token was not accepted by the API server"
    assert world.k8s.token_reviews == 1 and world.reviews == ["refused"]
    clock.now = 1_009.999
    with pytest.raises(reviews.Unauthenticated):
        await reviewer.review(bogus)
    assert world.k8s.token_reviews == 1
    clock.now = 1_010.0
    with pytest.raises(reviews.Unauthenticated):
        await reviewer.review(bogus)
    assert world.k8s.token_reviews == 2 and world.reviews == ["refused", "refused"]
    assert len(reviewer) == 0  # refusals are not identities


async def test_a_refusal_with_a_reason_code_is_remembered_with_it(world: World) -> None:
    unbound = world.k8s.issue_token("team-a", "app", seconds=300)  # no pod: not pod-bound
    reviewer = world.reviewer(Clock(1_000.0))
    for _ in range(2):
        with pytest.raises(pods.Refused) as caught:
            await reviewer.review(unbound)
        assert caught.value.code == delivery.NOT_POD_BOUND
        assert caught.value.message == "the token is not bound to a pod"
    assert world.k8s.token_reviews == 1


async def test_unusable_tokens_are_refused_without_asking(world: World) -> None:
    reviewer = world.reviewer(Clock(1_000.0))
    for token in ("", "x" * (16 * 1024 + 1)):
        with pytest.raises(reviews.Unauthenticated, match=r"^no usable bearer token$"):
            await reviewer.review(token)
    assert world.k8s.token_reviews == 0
    with pytest.raises(reviews.Unauthenticated, match="not accepted"):
        await reviewer.review("x" * (16 * 1024))  # the longest that is asked about
    assert world.k8s.token_reviews == 1


async def test_both_caches_are_bounded_and_keep_the_most_recent(world: World) -> None:
    one, two, three = [await world.token(f"app-{n}") for n in range(3)]
    clock = Clock(world.k8s.tokens[one].expires - 300)
    reviewer = world.reviewer(clock, max_entries=2)
    await reviewer.review(one)
    await reviewer.review(two)
    await reviewer.review(one)  # one is now the most recent
    await reviewer.review(three)  # two goes
    assert len(reviewer) == 2 and world.k8s.token_reviews == 3
    await reviewer.review(one)
    await reviewer.review(three)
    assert world.k8s.token_reviews == 3
    await reviewer.review(two)
    assert world.k8s.token_reviews == 4 and len(reviewer) == 2
    # refusals: the bound holds too, the oldest refusal is asked about again
    for bogus in ("bogus-1", "bogus-2", "bogus-3"):
        with pytest.raises(reviews.Unauthenticated):
            await reviewer.review(bogus)
    assert world.k8s.token_reviews == 7
    for bogus in ("bogus-2", "bogus-3"):
        with pytest.raises(reviews.Unauthenticated):
            await reviewer.review(bogus)
    assert world.k8s.token_reviews == 7
    with pytest.raises(reviews.Unauthenticated):
        await reviewer.review("bogus-1")
    assert world.k8s.token_reviews == 8
    with pytest.raises(reviews.Unauthenticated):
        await reviewer.review("bogus-3")  # refreshed by its last refusal: still remembered
    assert world.k8s.token_reviews == 8


async def test_an_api_server_that_cannot_answer_makes_the_review_unavailable() -> None:
    reviews_seen: list[str] = []
    client = kube.Client(kube.Login(f"http://127.0.0.1:{free_port()}"), timeout=2.0)
    try:
        reviewer = reviews.Reviewer(client, "sidegate", on_review=reviews_seen.append)
        with pytest.raises(reviews.Unavailable) as caught:
            await reviewer.review("a-token")
        assert str(caught.value) == (
            "POST /apis/authentication.k8s.io/v1/tokenreviews: ClientConnectorError"
        )
        assert reviews_seen == ["error"] and len(reviewer) == 0
    finally:
        await client.close()
