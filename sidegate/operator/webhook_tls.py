"""The webhook's serving certificate when neither cert-manager nor the installer provides one
(pure: no I/O).

The chart renders no key material (a `helm template` render is the same every time, so
GitOps sees no change); the leading operator keeps a CA in a Secret of the release
namespace, created once, issues the webhook's serving certificate from it, and puts the CA
into the webhook configurations' ``caBundle``. Renewal is before expiry: the serving
certificate when a third of its life is left (same CA: the ``caBundle`` does not change);
the CA likewise, keeping the old CA in the bundle (``previous.crt``) until it expires, so
the API server trusts the serving certificate signed by either while the kubelet refreshes
the webhook pods' files.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidegate.operator import objects

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_WHEN_LEFT = 1 / 3  # of the validity
CERT, KEY, CA, PREVIOUS = "tls.crt", "tls.key", "ca.crt", "previous.crt"


@dataclasses.dataclass(frozen=True)
class Pair:
    cert_pem: str
    key_pem: str = dataclasses.field(repr=False)


def dns_names(service: str, namespace: str) -> list[str]:
    """What the API server may call the webhook Service by (as the chart's certificates)."""
    base = f"{service}.{namespace}"
    return [service, base, f"{base}.svc", f"{base}.svc.cluster.local"]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_ca(common_name: str, now: datetime.datetime) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Pair(_cert_pem(cert), _key_pem(key))


def new_serving(ca: Pair, names: Sequence[str], now: datetime.datetime) -> Pair:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the webhook CA's key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-2])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVING_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Pair(_cert_pem(cert), _key_pem(key))


def fresh(cert_pem: str, now: datetime.datetime) -> bool:
    """Valid now, with more than a third of its life left."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start <= now and (end - now) > (end - start) * RENEW_WHEN_LEFT


def issued_by(cert_pem: str, ca_pem: str, names: Sequence[str]) -> bool:
    """``cert_pem`` is signed by ``ca_pem`` and names every one of ``names``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem.encode()))
        found = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(names) <= set(found.get_values_for_type(x509.DNSName))


def pair_of(secret: Mapping[str, Any] | None) -> Pair | None:
    """The certificate and key a Secret holds (``tls.crt``/``tls.key``), if both parse."""
    data = (secret or {}).get("data") or {}
    try:
        cert = base64.b64decode(data[CERT]).decode()
        key = base64.b64decode(data[KEY]).decode()
        x509.load_pem_x509_certificate(cert.encode())
        serialization.load_pem_private_key(key.encode(), password=None)
    except (KeyError, TypeError, ValueError):
        return None
    return Pair(cert, key)


def previous_of(secret: Mapping[str, Any] | None, now: datetime.datetime) -> str | None:
    """The CA a rotation replaced, while it is still valid (it may have signed a serving
    certificate the kubelet has not replaced yet)."""
    value = ((secret or {}).get("data") or {}).get(PREVIOUS)
    if not isinstance(value, str):
        return None
    try:
        pem = base64.b64decode(value).decode()
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None
    return pem if cert.not_valid_after_utc > now else None


def ca_secret(namespace: str, name: str, ca: Pair, previous: str | None) -> dict[str, Any]:
    data = {CERT: ca.cert_pem, KEY: ca.key_pem, **({PREVIOUS: previous} if previous else {})}
    return objects.managed_secret(namespace, name, {}, _encoded(data))


def serving_secret(namespace: str, name: str, serving: Pair, ca_bundle: str) -> dict[str, Any]:
    secret = objects.managed_secret(
        namespace, name, {}, _encoded({CERT: serving.cert_pem, KEY: serving.key_pem, CA: ca_bundle})
    )
    secret["type"] = "kubernetes.io/tls"
    return secret


def bundle(ca: Pair, previous: str | None) -> str:
    """What the API server trusts: the CA, and the one it replaced while that is valid."""
    return ca.cert_pem + (previous or "")


def _encoded(data: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
