"""The webhooks in a Deployment of their own (`sidegate operator --webhook-only`, with the
chart's webhook service account and its RBAC): they inject the keys the operator published,
write nothing, need no leader, and keep admitting pods while no operator runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trustme
import yaml

from sidegate.operator import injection, signing_keys
from tests.helpers import admission
from tests.helpers.kubernetes import (
    RELEASE,
    WEBHOOK_TOKEN,
    cluster,
    eventually,
    get,
    operator,
    writers,
)

SPEC = injection.SidecarSpec(
    image="registry.invalid/sidegate:0.1.0",
    config="listen: {port: 4000}\nbroker: {url: 'https://sidegate-broker:8443'}\n",
)
PUBLIC = f"/api/v1/namespaces/{RELEASE}/configmaps/{signing_keys.PUBLIC}"


@pytest.mark.asyncio
async def test_the_webhook_alone_injects_the_published_keys_and_writes_nothing(
    tmp_path: Path, server_cert: trustme.LeafCert, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    listener = admission.listener_for(tmp_path, server_cert)
    labelled = admission.pod({injection.LABEL: "true"})
    async with (
        cluster() as (k8s, url),
        operator(url, listener, token=WEBHOOK_TOKEN, reconcile=False, sidecar=SPEC),
    ):
        # No operator has published keys yet: refused (and retried by the API server's
        # client), never injected without them.
        response, _ops = await admission.admit(listener, ca, labelled, allowed=False)
        assert response["status"]["code"] == 503

        async with operator(url):  # the reconciler publishes the keys, then goes away
            public = await eventually(lambda: get(k8s, PUBLIC), seconds=20)
        trusted = json.loads(public["data"][signing_keys.TRUSTED_KEYS])

        _response, ops = await admission.admit(listener, ca, labelled)
        added = next(op["value"] for op in ops if op["path"] == "/spec/initContainers")
        config = yaml.safe_load(added[0]["env"][0]["value"])
        assert config["policy"]["trusted_keys"] == trusted
    assert WEBHOOK_TOKEN not in writers(k8s)  # read the keys, wrote nothing
    assert not k8s.forbidden  # and needed no right the chart does not give it
    # Nor tried one: kopf's scanning of CRDs and namespaces is off (the harness leaves a
    # webhook-only registry's own setting alone), so no refusal is logged at all.
    messages = [record.getMessage().lower() for record in caplog.records]
    assert not [m for m in messages if "forbidden" in m or "not enough permissions" in m]
