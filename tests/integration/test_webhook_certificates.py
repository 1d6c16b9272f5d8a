"""The webhook's certificates when the chart renders none (neither cert-manager nor an
existing Secret): the leading operator keeps a CA in a Secret (made once), issues the serving
certificate from it, and sets the caBundle of the webhook configurations the chart renders.
Checked against kmock with the chart's RBAC, and with a real TLS handshake."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
from pathlib import Path
from typing import Any

import kopf
import pytest

from sidegate.operator import webhook_tls
from sidegate.operator.handlers import webhook_certificates
from sidegate.operator.handlers.webhook_certificates import WebhookCertificates
from sidegate.operator.kube import ApiClient
from sidegate.operator.state import OperatorState
from tests.helpers import authorizing
from tests.helpers.kubernetes import (
    OPERATOR_TOKEN,
    RELEASE,
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    operator,
    send,
)

WANTED = WebhookCertificates(
    service="sidegate-webhook",
    tls_secret="sidegate-webhook-tls",  # pragma: allowlist secret - a Secret's name
    ca_secret="sidegate-webhook-ca",  # pragma: allowlist secret - a Secret's name
    mutating="sidegate-inject",
    validating="sidegate-guard",
    check_seconds=1.0,
)
CONFIGURATIONS = {
    "MutatingWebhookConfiguration": webhook_certificates.MUTATING,
    "ValidatingWebhookConfiguration": webhook_certificates.VALIDATING,
}


async def install_configurations(k8s: Emulator) -> None:
    """The webhook configurations as the chart renders them (no caBundle), as Helm would."""
    for doc in authorizing.rendered_chart():
        if doc["kind"] in CONFIGURATIONS:
            assert "caBundle" not in doc["webhooks"][0]["clientConfig"]
            assert await send(k8s, "POST", CONFIGURATIONS[doc["kind"]].rstrip("/"), doc) < 300


async def remove_ca_bundles(k8s: Emulator) -> None:
    """Both webhook configurations without their caBundle, as a `helm upgrade` from a chart
    that rendered one leaves them."""
    for path in WANTED.configurations:
        found = await get(k8s, path)
        assert found is not None
        for hook in found["webhooks"]:
            hook["clientConfig"].pop("caBundle")
        assert await send(k8s, "PATCH", path, {"webhooks": found["webhooks"]}) < 300


async def ca_bundles(k8s: Emulator) -> list[str | None]:
    found = []
    for path in WANTED.configurations:
        for hook in ((await get(k8s, path)) or {}).get("webhooks") or []:
            found.append(hook["clientConfig"].get("caBundle"))
    return found


def decoded(secret: dict[str, Any] | None, key: str) -> str:
    return base64.b64decode((secret or {})["data"][key]).decode()


async def handshake(serving: dict[str, Any], ca_bundle: str, tmp_path: Path) -> str:
    """A TLS server with the serving Secret's certificate, a client trusting ``ca_bundle``
    and asking for the Service's name, as the API server calls the webhook."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text(decoded(serving, "tls.crt"))
    key.write_text(decoded(serving, "tls.key"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cadata=ca_bundle)
    try:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=client_context,
            server_hostname=f"sidegate-webhook.{RELEASE}.svc",
        )
        version = str(writer.get_extra_info("ssl_object").version())
        writer.close()
        return version
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_the_leader_issues_the_certificate_and_sets_the_ca_bundle(tmp_path: Path) -> None:
    async with cluster() as (k8s, url):
        await install_configurations(k8s)
        async with operator(url, webhook_certificates=WANTED):
            encoded = await eventually(lambda: _all_set(k8s), seconds=20)
            ca = await get(k8s, f"{SOURCES}/sidegate-webhook-ca")
            serving = await get(k8s, f"{SOURCES}/sidegate-webhook-tls")
            assert serving is not None and serving["type"] == "kubernetes.io/tls"
            bundle = base64.b64decode(encoded).decode()
            assert bundle == decoded(ca, "tls.crt") == decoded(serving, "ca.crt")
            assert (await handshake(serving, bundle, tmp_path)).startswith("TLSv1.")

            # A `helm upgrade` from a chart that rendered a caBundle removes it: put back.
            await remove_ca_bundles(k8s)
            assert await eventually(lambda: _all_set(k8s), seconds=20) == encoded

        # Another process (a restarted or new leader) keeps the same CA and certificate.
        written = len(k8s.writers)
        state = _state(url)
        try:
            await webhook_certificates.ensure(state, WANTED)
        finally:
            await state.api().close()
        assert [w for w in k8s.writers[written:] if w[1][0] != "clusterkopfpeerings"] == []


@pytest.mark.asyncio
async def test_certificates_are_renewed_before_they_expire(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old_ca = webhook_tls.new_ca("old", now - datetime.timedelta(days=3000))  # 650 days left
    names = webhook_tls.dns_names(WANTED.service, RELEASE)
    old_serving = webhook_tls.new_serving(old_ca, names, now - datetime.timedelta(days=300))
    async with cluster() as (k8s, url):
        await install_configurations(k8s)
        state = _state(url)
        try:
            # The serving certificate has 65 days left of 365: reissued, same CA.
            ca = webhook_tls.new_ca("current", now)
            assert (
                await send(
                    k8s, "POST", SOURCES, webhook_tls.ca_secret(RELEASE, WANTED.ca_secret, ca, None)
                )
                < 300
            )
            aging = webhook_tls.new_serving(ca, names, now - datetime.timedelta(days=300))
            assert (
                await send(
                    k8s,
                    "POST",
                    SOURCES,
                    webhook_tls.serving_secret(RELEASE, WANTED.tls_secret, aging, ca.cert_pem),
                )
                < 300
            )
            await webhook_certificates.ensure(state, WANTED)
            serving = await get(k8s, f"{SOURCES}/{WANTED.tls_secret}")
            renewed = decoded(serving, "tls.crt")
            assert renewed != aging.cert_pem and webhook_tls.fresh(renewed, now)
            assert webhook_tls.issued_by(renewed, ca.cert_pem, names)

            # The CA has a third of its life left: a new one, the old kept in the bundle
            # while it is valid (pods may still serve a certificate it signed).
            path = f"{SOURCES}/{WANTED.ca_secret}"
            data = webhook_tls.ca_secret(RELEASE, WANTED.ca_secret, old_ca, None)["data"]
            assert await send(k8s, "PATCH", path, {"data": data}) < 300
            await webhook_certificates.ensure(state, WANTED)
            new_ca = webhook_tls.pair_of(await get(k8s, path))
            assert new_ca is not None and new_ca.cert_pem != old_ca.cert_pem
            serving = await get(k8s, f"{SOURCES}/{WANTED.tls_secret}")
            bundle = decoded(serving, "ca.crt")
            assert bundle == new_ca.cert_pem + old_ca.cert_pem
            assert webhook_tls.issued_by(decoded(serving, "tls.crt"), new_ca.cert_pem, names)
            assert set(await ca_bundles(k8s)) == {base64.b64encode(bundle.encode()).decode()}
            # A certificate the old CA signed is still trusted by what the API server has.
            old = webhook_tls.serving_secret(RELEASE, "x", old_serving, bundle)
            assert (await handshake(old, bundle, tmp_path)).startswith("TLSv1.")
        finally:
            await state.api().close()


def _state(url: str) -> OperatorState:
    info = kopf.ConnectionInfo(server=url, token=OPERATOR_TOKEN)
    return OperatorState(login=lambda **_: info, namespace=RELEASE, client=ApiClient(info))


async def _all_set(k8s: Emulator) -> str | None:
    found = await ca_bundles(k8s)
    return found[0] if len(found) == 2 and found[0] and len(set(found)) == 1 else None
