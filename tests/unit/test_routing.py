"""Model name → provider."""

from __future__ import annotations

from sidegate.sidecar import routing, settings


def table(*routes: tuple[str, str, str | None]) -> routing.RouteTable:
    return routing.RouteTable(
        settings.Route(model=m, provider=p, upstream_model=u) for m, p, u in routes
    )


def test_exact_names_beat_globs_and_globs_go_in_order() -> None:
    routes = table(("gpt-*", "a", None), ("gpt-4o", "b", None), ("gpt-4*", "c", None))
    assert routes.resolve("gpt-4o") is not None and routes.resolve("gpt-4o").provider == "b"  # type: ignore[union-attr]
    assert routes.resolve("gpt-4-turbo").provider == "a"  # type: ignore[union-attr]


def test_unknown_model_and_case_sensitivity() -> None:
    routes = table(("claude-*", "anthropic", None))
    assert routes.resolve("Claude-3") is None
    assert routes.resolve("") is None
    assert routes.resolve("claude-") is not None


def test_memo_stays_bounded_under_many_names() -> None:
    routes = table(("gpt-*", "a", None))
    for index in range(10_000):
        routes.resolve(f"unknown-{index}")
    assert len(routes._memo) <= routing._MEMO_LIMIT
