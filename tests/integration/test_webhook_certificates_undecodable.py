"""A webhook serving Secret whose ``ca.crt`` is not text (a hand edit, e.g. a DER file put
there) is what the upkeep repairs, not what stops it: the API server stores any bytes in a
Secret, so the operator must read them without assuming UTF-8. An undecodable value is one
that differs from the wanted one: it is rewritten, and the webhook configurations' caBundle
is still kept."""

from __future__ import annotations

import base64
import secrets

import kopf
import pytest

from sidegate.operator import webhook_tls
from sidegate.operator.handlers import webhook_certificates
from sidegate.operator.kube import ApiClient
from sidegate.operator.state import OperatorState
from tests.helpers.kubernetes import OPERATOR_TOKEN, RELEASE, SOURCES, cluster, get, send
from tests.integration.test_webhook_certificates import (
    WANTED,
    ca_bundles,
    decoded,
    install_configurations,
    remove_ca_bundles,
)


@pytest.mark.asyncio
async def test_a_serving_secret_with_a_ca_that_is_not_text_is_rewritten() -> None:
    serving_path = f"{SOURCES}/{WANTED.tls_secret}"
    async with cluster() as (k8s, url):
        await install_configurations(k8s)
        info = kopf.ConnectionInfo(server=url, token=OPERATOR_TOKEN)
        state = OperatorState(login=lambda **_: info, namespace=RELEASE, client=ApiClient(info))
        try:
            await webhook_certificates.ensure(state, WANTED)
            serving = await get(k8s, serving_path)
            ca = await get(k8s, f"{SOURCES}/{WANTED.ca_secret}")
            wanted = decoded(ca, webhook_tls.CERT)

            # DER-like bytes (0x30 0x82 ..., never UTF-8) as the CA, and the caBundles gone
            # (a `helm upgrade` of a chart that rendered none).
            der = b"\x30\x82\xff\xfe" + secrets.token_bytes(32)
            data = {webhook_tls.CA: base64.b64encode(der).decode()}
            assert await send(k8s, "PATCH", serving_path, {"data": data}) < 300
            await remove_ca_bundles(k8s)

            await webhook_certificates.ensure(state, WANTED)
        finally:
            await state.api().close()
        repaired = await get(k8s, serving_path)
        assert decoded(repaired, webhook_tls.CA) == wanted
        # The same serving certificate: only the CA copy was wrong.
        assert decoded(repaired, webhook_tls.CERT) == decoded(serving, webhook_tls.CERT)
        assert set(await ca_bundles(k8s)) == {base64.b64encode(wanted.encode()).decode()}
