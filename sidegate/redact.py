"""Keeping secrets out of logs, error bodies and exception text.

Two tools, used together:

* ``Secret`` wraps a value so that ``repr``/``str``/f-strings show a mask; the value comes
  out only through ``reveal()``, which is greppable and used where a header is built.
* ``Redactor`` scrubs text: key-shaped strings (OpenAI, Anthropic, AWS, Google, bearer
  tokens) and every secret value registered with it, so a provider that echoes part of a key
  in a 401 message cannot leak it through us. ``RedactingFilter`` applies it to every log
  record a handler emits.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable

MASK = "[REDACTED]"

# Key shapes seen in provider answers and in careless logs. Providers echo keys partly
# masked ("sk-proj-****abcd"), so `*` and `.` count as key characters after the prefix.
_KEY_SHAPES = (
    r"sk-[A-Za-z0-9_\-*.]{4,}",  # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-)
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"ASIA[0-9A-Z]{16}",  # AWS temporary access key id
    r"AIza[0-9A-Za-z_\-]{20,}",  # Google API key
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=\-]+",  # an Authorization header value
)

# How many distinct secret values the redactor remembers. Old values stay masked for a
# while after rotation (a late log line may still mention one); the bound keeps memory flat.
_MAX_REMEMBERED = 256
# Secrets at least this long also have their head and tail masked on their own, because
# providers echo "sk-abc...wxyz"-style fragments of a rejected key.
_FRAGMENT_MIN_LEN = 16
_FRAGMENT_LEN = 8


class Secret:
    """A string that never shows itself by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


# A key shape that starts a word: at the beginning, or after anything but a letter or digit.
_KEY_AT_A_WORD_START = re.compile("|".join(f"(?<![A-Za-z0-9])(?:{shape})" for shape in _KEY_SHAPES))


def looks_like_key(value: str) -> bool:
    """Whether a key shape starts a word of ``value``: a client identifier (a request id, a
    tenant) carrying a pasted credential, "sk-..." or "req-sk-..." alike. Not inside a word:
    "desk-team", "task-4242" and "risk-management" are names, and the scrubbing pattern
    (which masks "sk-" anywhere, as providers echo keys glued to other text) would refuse
    them."""
    return _KEY_AT_A_WORD_START.search(value) is not None


class Redactor:
    """Scrubs key shapes and known secret values from text. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: OrderedDict[str, None] = OrderedDict()
        self._pattern = self._compile()

    def remember(self, secrets: Iterable[Secret]) -> None:
        """Register secret values (and their fragments) to be masked from now on."""
        with self._lock:
            for secret in secrets:
                value = secret.reveal()
                if not value:
                    continue
                self._values[value] = None
                self._values.move_to_end(value)
            while len(self._values) > _MAX_REMEMBERED:
                self._values.popitem(last=False)
            self._pattern = self._compile()

    def holds_secret(self, text: str) -> bool:
        """Whether ``text`` contains a remembered secret whole (a key the sidecar holds,
        pasted by a client into an identifier)."""
        with self._lock:
            return any(value in text for value in self._values)

    def carries_credential(self, identifier: str) -> bool:
        """Whether a client's identifier (a request id, a tenant) carries a credential: a key
        shape starting a word of it, or a secret this redactor holds. One rule for both, since
        each is echoed, logged and audited as it is."""
        return looks_like_key(identifier) or self.holds_secret(identifier)

    def _compile(self) -> re.Pattern[str]:
        literals: set[str] = set()
        for value in self._values:
            literals.add(value)
            if len(value) >= _FRAGMENT_MIN_LEN:
                literals.add(value[:_FRAGMENT_LEN])
                literals.add(value[-_FRAGMENT_LEN:])
        # Longest first, so a whole key is masked before one of its fragments is.
        alternatives = [re.escape(v) for v in sorted(literals, key=len, reverse=True)]
        return re.compile("|".join([*alternatives, *_KEY_SHAPES]))

    def scrub(self, text: str) -> str:
        return self._pattern.sub(MASK, text)

    def scrub_bytes(self, data: bytes) -> bytes:
        return self.scrub(data.decode("utf-8", errors="replace")).encode()


# LogRecord attributes that are not user data; everything else on a record is an `extra`.
STANDARD_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class RedactingFilter(logging.Filter):
    """A handler filter that scrubs the message, arguments, extras and exception text."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        scrub = self._redactor.scrub
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in STANDARD_RECORD_ATTRIBUTES:
                setattr(record, key, self._scrub_value(value))
        return True

    def _scrub_value(self, value: object) -> object:
        """Every extra, whatever its type: strings inside mappings and lists are scrubbed,
        and any other object is logged as its scrubbed ``str`` (a library's extra, such as
        kopf's object references, can hold anything)."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self._redactor.scrub(value)
        if isinstance(value, dict):
            return {str(k): self._scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub_value(v) for v in value]
        return self._redactor.scrub(str(value))
