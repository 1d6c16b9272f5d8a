"""Signing and publishing bundles in the release namespace.

``keys`` loads the signing keys from the ``sidegate-signing`` Secret (generating it on the
first start) and publishes their public halves; ``publish`` signs a namespace's compiled
bundle and writes ``sidegate-bundle-<ns>`` unless a bundle that verifies, with the same
bytes, signed by the active key, is in force already. Reading back means verifying: an
edited or forged Secret never counts as "in force", so it is rewritten (with a serial above
the last good one). ``restore`` puts back the last published envelope when the watch sees
the Secret changed to anything that does not verify; ``resign`` follows a change of the
active key.
"""

from __future__ import annotations

import logging
import time

import kopf

from sidegate.operator import bundles, fanout, metrics, signing_keys
from sidegate.operator.kube import CONFIG_MAPS
from sidegate.operator.state import OperatorState, Published
from sidegate.policy import bundle, signing

logger = logging.getLogger(__name__)
_KEYS_LOCK = "signing-keys"


async def keys(state: OperatorState) -> signing_keys.SigningKeys:
    """The signing keys in force, loaded once (the release watch reloads them on change)."""
    if state.keys is None:
        async with state.lock(_KEYS_LOCK):
            if state.keys is None:
                await load_keys(state)
    return _loaded(state)


def _loaded(state: OperatorState) -> signing_keys.SigningKeys:
    if state.keys is None:
        raise kopf.TemporaryError("no signing keys loaded yet", delay=1)
    return state.keys


async def load_keys(state: OperatorState) -> bool:
    """Read (or create) the signing Secret and publish the public keys. True when the active
    key changed. A broken Secret keeps the keys in force (and says why, without content)."""
    client = state.api()
    secret = await client.get(state.namespace, signing_keys.SECRET)
    if secret is None:
        new = signing_keys.secret(state.namespace, signing_keys.generated())
        # Create only: two operators starting at once must not overwrite each other's key.
        if await client.create(new):
            logger.info("signing key generated in %s/%s", state.namespace, signing_keys.SECRET)
        secret = await client.get(state.namespace, signing_keys.SECRET)
    try:
        loaded = signing_keys.parse(fanout.decode(secret))
    except ValueError as exc:
        if state.keys is None:
            raise kopf.TemporaryError(f"no usable signing key: {exc}", delay=10) from None
        logger.error("signing keys unchanged: %s", exc)
        return False
    previous, state.keys = state.keys, loaded
    await client.apply(signing_keys.public_config_map(state.namespace, loaded), CONFIG_MAPS)
    changed = previous is not None and previous.active_id != loaded.active_id
    if previous is None or changed or previous.public != loaded.public:
        logger.info(
            "signing keys loaded: %d trusted, active %s (%s)",
            len(loaded.public),
            loaded.active_name,
            loaded.active_id,
        )
    return changed


async def publish(
    state: OperatorState, namespace: str, compiled: bundle.PolicyBundle, log: kopf.Logger
) -> str:
    """Write the namespace's signed bundle unless the very same one is in force; its hash."""
    return await _publish(state, namespace, bundle.dumps(compiled), compiled.hash, log)


async def _publish(
    state: OperatorState, namespace: str, raw: bytes, bundle_hash: str, log: kopf.Logger
) -> str:
    """``_write``, counted by outcome (the caller, kopf or the watch, retries a failure)."""
    with metrics.failures(state.metrics.bundles):
        written = await _write(state, namespace, raw, bundle_hash, log)
    state.metrics.bundles.labels(metrics.PUBLISHED if written else metrics.UNCHANGED).inc()
    return bundle_hash


async def _write(
    state: OperatorState, namespace: str, raw: bytes, bundle_hash: str, log: kopf.Logger
) -> bool:
    """Sign and write the bundle unless the same one is in force; True when written."""
    active = await keys(state)
    client = state.api()
    name = bundles.secret_name(namespace)
    async with state.lock(name):
        stored = await client.get(state.namespace, name)
        current = bundles.verified(stored, active.trusted, namespace)
        last = state.published.get(namespace)
        if (
            current is not None
            and current.bundle == raw
            and current.key_id == active.active_id
            and (last is None or current.serial >= last.serial)  # not an older one put back
        ):
            envelope = bundles.envelope_of(stored)
            assert envelope is not None  # it verified
            state.published[namespace] = Published(
                raw, bundle_hash, envelope, current.serial, current.key_id
            )
            return False  # in force already: no write, no delivery to the sidecars
        if stored is not None and current is None:
            log.warning("bundle secret %s/%s did not verify: rewritten", state.namespace, name)
        in_force = max(current.serial if current else 0, last.serial if last else 0)
        now = time.time()
        serial = bundles.next_serial(in_force, now)
        envelope = signing.sign(
            raw,
            namespace=namespace,
            serial=serial,
            issued_at=bundles.issued_at(now),
            private_key=active.active,
        )
        written = bundles.desired_secret(state.namespace, namespace, bundle_hash, envelope)
        await client.write(written, stored)  # over the version judged above, or Conflict
        state.published[namespace] = Published(raw, bundle_hash, envelope, serial, active.active_id)
    log.info("bundle %s/%s signed (serial %d, %s)", state.namespace, name, serial, bundle_hash)
    return True


async def restore(state: OperatorState, namespace: str) -> bool:
    """After a change to ``sidegate-bundle-<ns>`` seen by the watch: when what is there now
    does not verify (edited, forged, deleted) or is older than what the operator published,
    put the published envelope back. True when it did. A newer valid one (another operator
    replica during an upgrade) is taken as the one in force."""
    with metrics.failures(state.metrics.bundles):
        restored = await _restore(state, namespace)
    if restored:
        state.metrics.bundles.labels(metrics.RESTORED).inc()
    return restored


async def _restore(state: OperatorState, namespace: str) -> bool:
    last = state.published.get(namespace)
    if last is None or state.keys is None:
        return False  # nothing published by this process yet: the reconcile handlers will
    client = state.api()
    name = bundles.secret_name(namespace)
    async with state.lock(name):
        stored = await client.get(state.namespace, name)
        current = bundles.verified(stored, state.keys.trusted, namespace)
        if current is not None and current.serial >= last.serial:
            if current.serial > last.serial:
                envelope = bundles.envelope_of(stored)
                assert envelope is not None  # it verified
                state.published[namespace] = Published(
                    current.bundle,
                    bundle.loads(current.bundle).hash,
                    envelope,
                    current.serial,
                    current.key_id,
                )
            return False
        await client.write(
            bundles.desired_secret(state.namespace, namespace, last.bundle_hash, last.envelope),
            stored,
        )
    logger.warning("bundle secret %s/%s was altered: restored", state.namespace, name)
    return True


async def resign(state: OperatorState) -> None:
    """Every published bundle again, signed by the (new) active key."""
    for namespace, last in sorted(state.published.items()):
        await _publish(state, namespace, last.bundle, last.bundle_hash, logger)
