"""The admin API: token, validation, CRUD that changes enforcement, explain, OpenAPI."""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidegate.policy import bundle, documents, signing
from tests.conftest import Stack, wait_for
from tests.helpers.http import call, chat_body
from tests.helpers.kubelet import ProjectedVolume

CHAT = "/v1/chat/completions"
POLICIES = "/admin/v1/policies"


def admin(
    stack: Stack, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {stack.admin_token if token is None else token}"}
    if token == "":
        headers = {}
    data = json.dumps(body).encode() if body is not None else None
    status, _, answer = call(stack.admin_origin, path, data, headers, method=method)
    return status, answer


def gpt_only(name: str = "gpt-only") -> dict[str, Any]:
    return {
        "apiVersion": "sidegate.io/v1alpha1",
        "kind": "RBACPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "subjects": [{"kind": "ServiceAccount", "name": "default"}],
            "rules": [{"effect": "Allow", "models": ["gpt-*"]}],
        },
    }


@pytest.fixture
def admin_stack(make_stack: Callable[..., Stack]) -> Stack:
    def no_policies(raw: dict[str, Any]) -> None:
        for old in Path(raw["policy"]["directory"]).iterdir():
            old.unlink()

    return make_stack(no_policies, admin=True)


def test_missing_or_wrong_token_is_401(admin_stack: Stack) -> None:
    for token in ("", "wrong-token", admin_stack.admin_token + "x", admin_stack.admin_token[:-1]):
        status, answer = admin(admin_stack, "GET", POLICIES, token=token)
        assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert admin(admin_stack, "GET", POLICIES)[0] == 200


def test_unexpected_fields_and_invalid_values_are_422_with_paths(admin_stack: Stack) -> None:
    policy = gpt_only()
    policy["spec"]["rules"][0]["colour"] = "blue"
    policy["spec"]["rules"].append({"effect": "Perhaps", "models": ["x"]})
    status, answer = admin(admin_stack, "PUT", f"{POLICIES}/default/gpt-only", policy)
    assert status == 422
    paths = {d["path"]: d["message"] for d in answer["error"]["details"]}
    assert paths["spec.rules.0.colour"] == "unknown field"
    assert "spec.rules.1.effect" in paths
    status, answer = admin(admin_stack, "PUT", f"{POLICIES}/default/other-name", gpt_only())
    assert status == 422 and "does not match the URL" in answer["error"]["message"]
    assert list(admin_stack.policy_dir.iterdir()) == []


def test_crud_round_trip_changes_enforcement_within_a_second(admin_stack: Stack) -> None:
    assert call(admin_stack.origin, CHAT, chat_body())[0] == 403  # deny by default
    started = time.monotonic()
    status, stored = admin(admin_stack, "PUT", f"{POLICIES}/default/gpt-only", gpt_only())
    assert status == 201 and stored["metadata"]["name"] == "gpt-only"
    wait_for(lambda: call(admin_stack.origin, CHAT, chat_body())[0] == 200, timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert admin(admin_stack, "GET", f"{POLICIES}/default/gpt-only") == (200, stored)
    assert [p["metadata"]["name"] for p in admin(admin_stack, "GET", POLICIES)[1]["items"]] == [
        "gpt-only"
    ]
    # The file on disk is the policy, readable as kubectl YAML.
    (written,) = admin_stack.policy_dir.iterdir()
    assert documents.parse(written.read_text(), str(written))[0].metadata.name == "gpt-only"

    narrowed = gpt_only()
    narrowed["spec"]["rules"].append({"effect": "Deny", "models": ["gpt-4o-mini"]})
    assert admin(admin_stack, "PUT", f"{POLICIES}/default/gpt-only", narrowed)[0] == 200
    wait_for(lambda: call(admin_stack.origin, CHAT, chat_body())[0] == 403, timeout=1.0)

    assert admin(admin_stack, "DELETE", f"{POLICIES}/default/gpt-only")[0] == 204
    assert admin(admin_stack, "GET", f"{POLICIES}/default/gpt-only")[0] == 404
    assert admin(admin_stack, "DELETE", f"{POLICIES}/default/gpt-only")[0] == 404


def test_explain_says_why(admin_stack: Stack) -> None:
    denying = gpt_only()
    denying["spec"]["rules"].append({"effect": "Deny", "models": ["gpt-4*"]})
    denying["spec"]["rateLimits"] = {"requestsPerMinute": 10}
    admin(admin_stack, "PUT", f"{POLICIES}/default/gpt-only", denying)
    status, answer = admin(admin_stack, "GET", "/admin/v1/explain?model=gpt-4o&action=chat")
    assert status == 200
    assert answer["decision"] == "denied" and answer["reason"] == "denied_by_rule"
    assert answer["decidingPolicy"] == "default/gpt-only"
    assert {(m["effect"], m["pattern"]) for m in answer["matchingRules"]} == {
        ("Deny", "gpt-4*"),
        ("Allow", "gpt-*"),
    }
    assert answer["limits"] == {"requestsPerMinute": {"value": 10, "policy": "default/gpt-only"}}
    status, answer = admin(
        admin_stack, "GET", "/admin/v1/explain?model=x&serviceAccount=other&namespace=team-b"
    )
    assert answer["reason"] == "no_policy_for_caller"
    status, answer = admin(admin_stack, "GET", "/admin/v1/explain?model=x&colour=blue")
    assert status == 422 and answer["error"]["details"][0]["path"] == "colour"


def test_openapi_document(admin_stack: Stack) -> None:
    status, document = admin(admin_stack, "GET", "/admin/v1/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/admin/v1/policies",
        "/admin/v1/policies/{namespace}/{name}",
        "/admin/v1/explain",
        "/admin/v1/openapi.json",
    }
    assert "RBACPolicy" in document["components"]["schemas"]


def test_a_file_with_several_policies_is_not_rewritten(admin_stack: Stack) -> None:
    text = json.dumps(gpt_only("a")) + "\n---\n" + json.dumps(gpt_only("b"))
    (admin_stack.policy_dir / "shared.yaml").write_text(text)
    wait_for(lambda: len(admin(admin_stack, "GET", POLICIES)[1]["items"]) == 2)
    status, answer = admin(admin_stack, "PUT", f"{POLICIES}/default/a", gpt_only("a"))
    assert status == 409 and "shared.yaml" in answer["error"]["message"]
    assert (admin_stack.policy_dir / "shared.yaml").read_text() == text


def test_cluster_mode_refuses_writes_and_follows_the_bundle(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    key = signing.generate_private_key()
    serials = itertools.count(1)

    def signed(compiled: bundle.PolicyBundle) -> bytes:
        return signing.sign(
            bundle.dumps(compiled),
            namespace="default",
            serial=next(serials),
            issued_at="2026-11-23T18:00:00Z",
            private_key=key,
        )

    volume = ProjectedVolume(tmp_path / "bundle")
    volume.publish({"bundle.json": signed(bundle.empty())})

    def cluster(raw: dict[str, Any]) -> None:
        raw["policy"] = {
            "bundle_file": str(volume.root / "bundle.json"),
            "trusted_keys": [signing.encode_public_key(key.public_key())],
        }

    stack = make_stack(cluster, admin=True)
    status, answer = admin(stack, "PUT", f"{POLICIES}/default/gpt-only", gpt_only())
    assert status == 409 and "kubectl apply" in answer["error"]["message"]
    assert call(stack.origin, CHAT, chat_body())[0] == 403
    grant = bundle.to_bundle(documents.parse(json.dumps(gpt_only()), "x"))
    volume.publish({"bundle.json": signed(grant)})
    wait_for(lambda: call(stack.origin, CHAT, chat_body())[0] == 200, timeout=1.0)
    assert admin(stack, "GET", POLICIES)[1]["items"][0]["metadata"]["name"] == "gpt-only"
    volume.publish({"bundle.json": bundle.dumps(bundle.empty())})  # unsigned
    wait_for(lambda: stack.metric("sidegate_policy_reloads_total", result="failed") >= 1)
    assert call(stack.origin, CHAT, chat_body())[0] == 200  # a tampered bundle is refused


def test_a_rotated_admin_token_overlaps_then_expires(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """The operator's rotation as the kubelet delivers it: new token plus token.previous,
    then the new token alone. Both work during the overlap; the old one not after it."""
    volume = ProjectedVolume(tmp_path / "admin-volume")
    old, new = "old-" + secrets.token_urlsafe(24), "new-" + secrets.token_urlsafe(24)
    volume.publish({"token": old.encode()})

    def projected_token(raw: dict[str, Any]) -> None:
        raw["admin"]["token_file"] = str(volume.root / "token")

    stack = make_stack(projected_token, admin=True)
    stack.all_keys.update({old, new})
    assert admin(stack, "GET", POLICIES, token=old)[0] == 200
    volume.publish({"token": new.encode(), "token.previous": old.encode()})
    wait_for(lambda: admin(stack, "GET", POLICIES, token=new)[0] == 200)
    assert admin(stack, "GET", POLICIES, token=old)[0] == 200
    volume.publish({"token": new.encode()})
    wait_for(lambda: admin(stack, "GET", POLICIES, token=old)[0] == 401)
    assert admin(stack, "GET", POLICIES, token=new)[0] == 200
