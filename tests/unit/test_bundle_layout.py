"""The bundle's bytes: the canonical layout byte for byte, where the hash and version are
looked for, hand-laid bundles, and the reasons a bad bundle is refused with."""

from __future__ import annotations

import hashlib
import json

import pytest

from sidegate import errors
from sidegate.policy import bundle, models
from tests.policies import allow, policy

ZERO = "sha256:" + "0" * 64


def sealed(text: str) -> bytes:
    """A bundle document with its hash filled in: ``text`` writes the hash as 64 zeros."""
    data = text.encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return data.replace(ZERO.encode(), digest.encode(), 1)


def two_policies() -> bundle.PolicyBundle:
    return bundle.to_bundle(
        [
            policy("b", subjects=[{"kind": "Namespace", "name": "team-a"}]),
            policy("a", rules=[allow("gpt-*", actions=["chat"])], limits={"requestsPerMinute": 5}),
        ]
    )


def test_the_canonical_layout_byte_for_byte() -> None:
    compiled = two_policies()
    data = bundle.dumps(compiled)
    assert data.decode().replace(compiled.hash, ZERO).splitlines() == [
        '{"hash":"' + ZERO + '","policies":[',
        '{"name":"a","namespace":"team-a","rateLimits":{"requestsPerMinute":5,"tenantOverrides":[]},'
        '"rules":[{"actions":["chat"],"effect":"Allow","models":["gpt-*"]}],'
        '"subjects":[{"kind":"ServiceAccount","name":"app"}]},',
        '{"name":"b","namespace":"team-a","rules":[],"subjects":[{"kind":"Namespace","name":"team-a"}]}',
        '],"schemaVersion":1}',
    ]
    assert (
        compiled.hash
        == "sha256:"
        + hashlib.sha256(data.replace(compiled.hash.encode(), ZERO.encode())).hexdigest()
    )
    assert bundle.loads(data) == compiled
    assert bundle.empty() == bundle.PolicyBundle(policies=[], hash=bundle.content_hash([]))
    assert bundle.dumps(bundle.empty()).splitlines() == [
        b'{"hash":"' + bundle.empty().hash.encode() + b'","policies":[',
        b'],"schemaVersion":1}',
    ]


def test_text_is_written_as_utf_8_not_escaped_and_read_back_whole() -> None:
    """Policies built from RBACPolicy objects are ASCII; a bundle policy read from elsewhere
    need not be, and is written back byte for byte (the hash is over those bytes)."""
    item = bundle.BundlePolicy(namespace="team-a", name="caf\u00e9 au lait")
    data = bundle.dumps(bundle.PolicyBundle(policies=[item], hash=bundle.content_hash([item])))
    assert '"name":"caf\u00e9 au lait"'.encode() in data
    assert bundle.dumps(bundle.loads(data)) == data


def test_a_glob_spelled_like_the_zero_hash_survives_the_round_trip() -> None:
    """Model globs may hold ':', so a glob can read exactly like the hash placeholder; only
    the placeholder in the header is the hash."""
    compiled = bundle.to_bundle([policy("a", rules=[allow(ZERO)])])
    loaded = bundle.loads(bundle.dumps(compiled))
    assert loaded.policies[0].rules[0].models == [ZERO] and loaded == compiled


def test_policies_are_read_lazily_and_a_bad_one_is_named_by_position() -> None:
    good = json.dumps(
        two_policies().policies[0].model_dump(mode="json", by_alias=True), separators=(",", ":")
    )
    bad = good.replace('"effect":"Allow"', '"effect":"Permit"')
    data = sealed(
        '{"hash":"' + ZERO + '","policies":[\n' + good + ",\n" + bad + '\n],"schemaVersion":1}'
    )
    _, policies = bundle.read(data)  # nothing parsed yet
    assert next(policies).name == "a"
    with pytest.raises(errors.BundleRejected) as refused:
        next(policies)
    assert str(refused.value) == "policies.1.rules.0.effect: Input should be 'Allow' or 'Deny'"


def test_a_hand_laid_bundle_is_read_whole() -> None:
    """A first line that is not the canonical header means another layout, even when the
    last line looks canonical: every policy is still read."""
    a, b = (json.dumps(p.model_dump(mode="json", by_alias=True)) for p in two_policies().policies)
    data = sealed('{"hash":"' + ZERO + '","policies":[' + a + ",\n" + b + '\n],"schemaVersion":1}')
    assert [p.name for p in bundle.loads(data).policies] == ["a", "b"]
    bad = sealed(
        '{"hash": "' + ZERO + '", "policies": [{"namespace": "n", "name": 5}], "schemaVersion": 1}'
    )
    with pytest.raises(errors.BundleRejected) as refused:
        bundle.loads(bad)
    assert str(refused.value) == "policies.0.name: Input should be a valid string"
    broken = sealed('{"hash": "' + ZERO + '", "policies": [,], "schemaVersion": 1}')
    with pytest.raises(errors.BundleRejected, match=r"^not JSON: Expecting value: line 1 column"):
        bundle.loads(broken)


def test_the_hash_is_looked_for_in_the_first_256_bytes_only() -> None:
    # `{` + padding + `"hash":"sha256:<64>"` (80 bytes): the field ends at byte 1 + pad + 80.
    def padded(pad: int) -> bytes:
        return sealed("{" + " " * pad + '"hash":"' + ZERO + '","policies":[],"schemaVersion":1}')

    assert bundle.loads(padded(175)).policies == []  # ends at byte 256
    with pytest.raises(errors.BundleRejected) as refused:
        bundle.loads(padded(176))
    assert str(refused.value) == "not a bundle: no hash"


def test_the_version_is_looked_for_in_the_last_256_bytes_only() -> None:
    # `"schemaVersion":1}` is 18 bytes; trailing spaces push it back from the end.
    def padded(pad: int) -> bytes:
        return sealed('{"hash":"' + ZERO + '","policies":[],"schemaVersion":1}' + " " * pad)

    assert bundle.loads(padded(238)).policies == []  # starts 256 bytes from the end
    with pytest.raises(errors.BundleRejected) as refused:
        bundle.loads(padded(239))
    assert str(refused.value) == "schemaVersion missing is not supported (this sidecar reads 1)"


def test_refusal_reasons_are_exact() -> None:
    data = bundle.dumps(two_policies())
    with pytest.raises(errors.BundleRejected) as refused:
        bundle.loads(data.replace(b'"gpt-*"', b'"gpt-?"'))
    assert str(refused.value) == "hash does not match the content (truncated or altered)"
    wrong = bundle.PolicyBundle(policies=two_policies().policies, hash=bundle.empty().hash)
    with pytest.raises(errors.BundleRejected) as refused:
        bundle.dumps(wrong)
    assert str(refused.value) == "bundle hash does not match its policies"


def test_tenants_and_retention_go_into_the_bundle() -> None:
    """Every field of the spec the sidecar enforces is carried: a bundle that dropped the
    retention rule would let the provider keep the requests the policy says it may not."""
    plain = policy("a", rules=[allow("*", actions=["responses"])])
    spec = plain.spec.model_copy(
        update={
            "allowed_tenants": ["acme"],
            "retention": models.Retention(providerStorage="Forbidden"),
        }
    )
    compiled = bundle.to_bundle([plain.model_copy(update={"spec": spec})])
    assert bundle.dumps(compiled).decode().splitlines()[1] == (
        '{"allowedTenants":["acme"],"name":"a","namespace":"team-a",'
        '"retention":{"providerStorage":"Forbidden"},'
        '"rules":[{"actions":["responses"],"effect":"Allow","models":["*"]}],'
        '"subjects":[{"kind":"ServiceAccount","name":"app"}]}'
    )
