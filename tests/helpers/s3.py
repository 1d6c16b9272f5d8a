"""moto's S3 server on 127.0.0.1: a real S3 HTTP endpoint for the audit export tests."""

from __future__ import annotations

import dataclasses
import gzip
import json
import urllib.request
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from tests.helpers.processes import free_port

BUCKET = "sidegate-audit"


@dataclasses.dataclass
class S3:
    port: int
    server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self) -> list[str]:
        found: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            found += [item["Key"] for item in page.get("Contents", [])]
        return sorted(found)

    def events(self) -> list[dict[str, Any]]:
        """Every event in every segment (digests and keys sit beside them)."""
        client = self.client()
        found = []
        for key in self.keys():
            if not key.endswith(".jsonl.gz"):
                continue
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            found += [json.loads(line) for line in gzip.decompress(body).splitlines()]
        return found


def start_s3() -> S3:
    s3 = S3(free_port())
    s3.start()
    # moto keeps its state per process, not per server: start every test from empty.
    reset = urllib.request.Request(f"{s3.endpoint}/moto-api/reset", method="POST")  # noqa: S310
    urllib.request.urlopen(reset).close()  # noqa: S310 - http to our own loopback server
    s3.client().create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    return s3
