"""Log set-up for both programs: one stderr handler, JSON lines, secrets scrubbed.

Called once from ``cli.main()``; importing this module configures nothing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

from sidegate import redact

LogFormat = Literal["json", "text"]
# kopf adds its whole OperatorSettings and a flag of its own to every object log record:
# noise in a log line, so both are left out (its object reference, k8s_ref, stays).
_STANDARD = redact.STANDARD_RECORD_ATTRIBUTES | {"settings", "k8s_skip"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people at a terminal: the message, then extras as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        return f"{line} {' '.join(extras)}" if extras else line


def make_handler(
    redactor: redact.Redactor, fmt: LogFormat = "json", stream: object = None
) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(redact.RedactingFilter(redactor))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    return handler


# Libraries that log credentials at DEBUG: botocore logs every request's headers (the AWS
# session token in X-Amz-Security-Token) and response bodies (an STS answer's secret key),
# none of which the redactor knows (they come from AWS's standard chain). They stay at INFO
# whatever the level: a pod's author may ask for DEBUG (sidegate.io/sidecar-log-level) and
# read the sidecar's log.
QUIET_AT_DEBUG = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")


def configure(redactor: redact.Redactor, level: str = "INFO", fmt: LogFormat = "json") -> None:
    """Route every logger through one redacting handler on stderr."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(redactor, fmt))
    root.setLevel(level)
    for name in QUIET_AT_DEBUG:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
