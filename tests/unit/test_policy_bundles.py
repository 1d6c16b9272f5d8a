"""Bundles: deterministic, hashed, versioned; caches die with their bundle."""

from __future__ import annotations

import json

import pytest

from sidegate import errors
from sidegate.policy import bundle, caching, documents, rules
from tests.policies import APP, allow, index, policy


def test_bundle_is_deterministic_whatever_the_order() -> None:
    a, b = policy("a", rules=[allow("x")]), policy("b", rules=[allow("y")])
    assert bundle.dumps(bundle.to_bundle([a, b])) == bundle.dumps(bundle.to_bundle([b, a]))


def test_round_trip_and_tamper_detection() -> None:
    data = bundle.dumps(bundle.to_bundle([policy("a", rules=[allow("x")])]))
    assert bundle.loads(data).policies[0].name == "a"
    tampered = data.replace(b'"x"', b'"*"')
    with pytest.raises(errors.BundleRejected, match="hash does not match"):
        bundle.loads(tampered)
    future = json.loads(data) | {"schemaVersion": 2}
    with pytest.raises(errors.BundleRejected, match="schemaVersion 2 is not supported"):
        bundle.loads(json.dumps(future).encode())
    with pytest.raises(errors.BundleRejected, match="schemaVersion missing"):
        bundle.loads(data[:-5])
    with pytest.raises(errors.BundleRejected, match="hash does not match"):
        bundle.loads(data[:200] + data[210:])  # a few bytes lost in the middle


def test_a_hand_formatted_bundle_with_the_right_hash_still_loads() -> None:
    compact = bundle.to_bundle([policy("a", rules=[allow("x")])])
    # Anyone may lay the JSON out differently, as long as the hash covers those bytes.
    document = {
        "hash": bundle._ZERO_HASH,
        "policies": json.loads(bundle.dumps(compact))["policies"],
        "schemaVersion": 1,
    }
    text = json.dumps(document, indent=2).encode()
    import hashlib

    digest = "sha256:" + hashlib.sha256(text).hexdigest()
    loaded = bundle.loads(text.replace(bundle._ZERO_HASH.encode(), digest.encode(), 1))
    assert loaded.policies == compact.policies and loaded.hash == digest


def test_empty_bundle_denies_everything() -> None:
    assert not rules.PolicyIndex(bundle.empty()).decide(APP, "gpt-4o", "chat").allowed


def test_cache_serves_within_ttl_and_expires() -> None:
    now = [0.0]
    cache = caching.DecisionCache(
        index(policy("p", rules=[allow("*")])), ttl=10, clock=lambda: now[0]
    )
    first = cache.decide(APP, "m", "chat")
    assert cache.decide(APP, "m", "chat") is first
    now[0] = 11
    assert cache.decide(APP, "m", "chat") is not first


def test_cache_is_bounded() -> None:
    cache = caching.DecisionCache(index(), ttl=60, clock=lambda: 0.0, max_entries=100)
    for i in range(1000):
        cache.decide(APP, f"model-{i}", "chat")
    assert len(cache) <= 100


YAML = """\
apiVersion: sidegate.io/v1alpha1
kind: RBACPolicy
metadata: {name: ok, namespace: team-a}
spec:
  subjects: [{kind: ServiceAccount, name: app}]
  rules: [{effect: Allow, models: ["gpt-*"]}]
---
apiVersion: sidegate.io/v1alpha1
kind: RBACPolicy
metadata: {name: bad, namespace: team-a}
spec:
  subjects:
    - kind: ServiceAccount
      name: "bad account"
  rules:
    - effect: Permit
      models: ["x"]
      colour: blue
"""


def test_documents_report_file_line_and_path() -> None:
    with pytest.raises(documents.PolicyDocumentError) as caught:
        documents.parse(YAML, "policies.yaml")
    lines = str(caught.value).splitlines()
    assert any(line.startswith("policies.yaml:14: spec.subjects.0.name:") for line in lines), lines
    assert any(line.startswith("policies.yaml:16: spec.rules.0.effect:") for line in lines), lines
    assert "policies.yaml:18: spec.rules.0.colour: unknown field" in lines
    assert len(documents.parse(YAML.split("---")[0], "one.yaml")) == 1
