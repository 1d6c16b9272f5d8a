"""``logging.level: DEBUG``, which a pod's author may now choose for their sidecar
(sidegate.io/sidecar-log-level), puts no AWS credential in a log line: the audit exporter's
client (aioboto3, to moto's real S3 server) with temporary credentials, as IRSA or instance
metadata give them, logged through the sidecar's own logging setup."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Iterator

import aioboto3
import pytest
from moto.server import ThreadedMotoServer

from sidegate import logs, redact

# Where aioboto3 logs; configure() may set their levels, which the fixture puts back.
LIBRARIES = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    saved_levels = {name: logging.getLogger(name).level for name in LIBRARIES}
    stream = io.StringIO()
    logs.configure(redact.Redactor(), "DEBUG", "json")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def test_debug_logs_hold_no_aws_session_token(endpoint: str, captured: io.StringIO) -> None:
    token = "FwoGZXIvYXdzE" + secrets.token_hex(48)
    secret = secrets.token_hex(20)

    async def upload() -> None:
        session = aioboto3.Session(
            aws_access_key_id="ASIA" + secrets.token_hex(8).upper(),
            aws_secret_access_key=secret,
            aws_session_token=token,
            region_name="us-east-1",
        )
        async with session.client("s3", endpoint_url=endpoint) as client:
            await client.create_bucket(Bucket="audit-debug")
            await client.put_object(Bucket="audit-debug", Key="segment", Body=b"x")

    asyncio.run(upload())
    logging.getLogger("sidegate.sidecar").debug("still shown")
    text = captured.getvalue()
    assert token not in text and secret not in text
    assert "still shown" in text  # Sidegate's own DEBUG lines are not held back
