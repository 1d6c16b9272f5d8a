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
    if target.startswith("s3://"):
        bucket, _, prefix = target[5:].partition("/")
        try:
            reports = asyncio.run(
                verifying.s3_trails(
                    bucket, prefix, endpoint_url=args.endpoint_url, region=args.region
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
        reports = [verifying.verify_trail(str(path), verifying.directory_segments(path))]
    failed = False
    for report in reports:
        if not report.events:
            print(f"{report.trail}: no events found")
            failed = True
            continue
        state = "OK" if report.ok else "FAILED"
        print(
            f"{report.trail}: {state}: {report.events} events in {report.segments} segments, "
            f"{report.first_id} .. {report.last_id}"
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
        description="Check every event's hash and link. Reports tampering, gaps and reordering "
        "with the segment and line. A directory is one trail; under an s3:// prefix each "
        "NAMESPACE/POD is one. AWS credentials come from the standard chain. Exit 0 when "
        "every trail verifies, 1 when one does not, 2 when the target cannot be read.",
    )
    verifier.add_argument("target", metavar="DIR|s3://BUCKET/PREFIX")
    verifier.add_argument("--endpoint-url", help="another S3 endpoint (MinIO, moto)")
    verifier.add_argument("--region", help="AWS region")
    verifier.set_defaults(func=verify)
    printer = sub.add_parser("schema", help="print the audit event's JSON Schema")
    printer.set_defaults(func=schema)
