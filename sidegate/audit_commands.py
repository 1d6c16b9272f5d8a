"""`sidegate audit verify|schema`: checking an audit trail, offline or in S3."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from sidegate.audit import events, verifying


def verify(args: argparse.Namespace) -> int:
    target: str = args.target
    try:
        trusted = verifying.load_keys(args.public_key) if args.public_key else None
    except (OSError, ValueError) as exc:
        print(f"error: --public-key: {exc}", file=sys.stderr)
        return 2
    if target.startswith("s3://"):
        bucket, _, prefix = target[5:].partition("/")
        try:
            reports = asyncio.run(
                verifying.s3_trails(
                    bucket,
                    prefix,
                    endpoint_url=args.endpoint_url,
                    region=args.region,
                    trusted_keys=trusted,
                )
            )
        except Exception as exc:
            print(
                f"error: cannot read {target}: {type(exc).__name__}: {str(exc)[:300]}",
                file=sys.stderr,
            )
            return 2
    else:
        path = Path(target)
        if not path.is_dir():
            print(f"error: {target} is not a directory or an s3:// prefix", file=sys.stderr)
            return 2
        files = verifying.directory_files(path)
        reports = [verifying.verify_trail(None, files, trusted_keys=trusted)]
        reports[0].trail = reports[0].trail or str(path)
    failed = False
    for report in reports:
        if not report.events and report.ok:
            print(f"{report.trail}: no events found")
            failed = True
            continue
        state = "OK" if report.ok else "FAILED"
        print(
            f"{report.trail}: {state}: {report.events} events in {report.segments} segments, "
            f"{report.digests} signed digests, {report.first_id} .. {report.last_id}; "
            f"keys {', '.join(report.keys) or 'none'} ({report.keys_trusted})"
        )
        for problem in report.problems:
            print(f"  {problem}")
        failed = failed or not report.ok
    if not reports:
        print(f"{target}: no audit segments found")
        return 1
    return 1 if failed else 0


def schema(args: argparse.Namespace) -> int:
    print(json.dumps(events.json_schema(), indent=2))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = commands.add_parser(
        "audit",
        help="verify audit trails, print the event schema",
        description="Tools for the audit trail (docs/security.md, 'Audit trail').",
    )
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verifier = sub.add_parser(
        "verify",
        help="check the hash chain of a spool directory or an S3 prefix",
        description="Check the signed digests (signature, chain, the segment hashes they "
        "sign), event sequence numbers, every event's hash and link, that the tail is not "
        "cut off and, in S3, that no object version was overwritten or deleted. Each "
        "problem names the check that failed and where. A directory is one trail; under an "
        "s3:// prefix each NAMESPACE/POD is one. AWS credentials come from the standard "
        "chain. Exit 0 when every trail verifies, 1 when one does not, 2 when the target "
        "cannot be read.",
    )
    verifier.add_argument("target", metavar="DIR|s3://BUCKET/PREFIX")
    verifier.add_argument(
        "--public-key",
        type=Path,
        action="append",
        metavar="PEM",
        help="trust only this public key (repeat for several runs); without it, the keys "
        "published in the trail are used",
    )
    verifier.add_argument("--endpoint-url", help="another S3 endpoint (MinIO, moto)")
    verifier.add_argument("--region", help="AWS region")
    verifier.set_defaults(func=verify)
    printer = sub.add_parser("schema", help="print the audit event's JSON Schema")
    printer.set_defaults(func=schema)
