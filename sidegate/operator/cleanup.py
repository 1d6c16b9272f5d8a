"""``sidegate operator cleanup``: what a Helm pre-delete hook runs so that uninstalling leaves
nothing of Sidegate's behind.

1. Stop the operator (scale its Deployment to 0 and wait): a running operator would put its
   finalizer back on each RBACPolicy it sees change, and rewrite what step 3 deletes.
2. Remove the operator's finalizer from every RBACPolicy, so deleting them (or the CRD) never
   hangs on an operator that is gone.
3. Delete every Secret and ConfigMap the operator wrote in the release namespace (labelled
   ``app.kubernetes.io/managed-by: sidegate-operator``): bundles, credentials, admin tokens,
   the signing keys and their public list. The source Secrets are the platform team's: kept.

Every step is idempotent: a hook that ran half-way runs again from the start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from sidegate.operator import objects
from sidegate.operator.kube import CONFIG_MAPS, SECRETS, ApiClient
from sidegate.policy import crd

logger = logging.getLogger(__name__)
FINALIZER = "sidegate.io/finalizer"
POLICIES = f"/apis/{crd.GROUP}/{crd.VERSION}/{crd.PLURAL}"


async def stop_operator(client: ApiClient, namespace: str, deployment: str) -> None:
    """Scale the operator's Deployment to 0 and wait until its controller reports no pods
    (the caller bounds the wait)."""
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}"
    if await client.patch(path, {"spec": {"replicas": 0}}) is None:
        return  # no operator Deployment: nothing to stop
    while True:
        found = await client.read(path)
        if found is None or _stopped(found):
            return
        await asyncio.sleep(1)


def _stopped(deployment: dict[str, Any]) -> bool:
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    observed = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    return observed and not status.get("replicas")  # the controller omits a zero count


async def release_policies(client: ApiClient) -> int:
    """Drop the operator's finalizer from every RBACPolicy; how many had it."""
    released = 0
    for _attempt in range(5):  # a 409 (changed meanwhile) is answered by reading again
        policies, _version = await client.list(POLICIES)
        pending = [p for p in policies if FINALIZER in (p["metadata"].get("finalizers") or [])]
        if not pending:
            return released
        for policy in pending:
            meta = policy["metadata"]
            path = f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{meta['namespace']}/{crd.PLURAL}"
            try:
                if await client.remove_finalizer(f"{path}/{meta['name']}", policy, FINALIZER):
                    released += 1
            except kopf.TemporaryError:
                continue  # changed under us: the next round reads it again
    raise RuntimeError("RBACPolicy finalizers kept changing; run the cleanup again")


async def delete_written(client: ApiClient, namespace: str) -> int:
    """Delete the operator's Secrets and ConfigMaps in the release namespace; how many."""
    deleted = 0
    for plural in (SECRETS, CONFIG_MAPS):
        found, _version = await client.list(
            f"/api/v1/namespaces/{namespace}/{plural}", objects.MANAGED_BY
        )
        for obj in found:
            deleted += await client.delete(namespace, obj["metadata"]["name"], plural)
    return deleted


async def run(client: ApiClient, namespace: str, deployment: str | None) -> None:
    if deployment:
        await stop_operator(client, namespace, deployment)
        logger.info("operator stopped", extra={"deployment": deployment})
    released = await release_policies(client)
    deleted = await delete_written(client, namespace)
    logger.info("cleanup done", extra={"finalizers_removed": released, "objects_deleted": deleted})
