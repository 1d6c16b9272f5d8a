"""The memory budget: request and response bytes held at once, all requests together.

Python frees memory to the allocator, not always to the system: a burst of large bodies
leaves the process at its peak RSS. So the bytes a request may hold are admitted before
they are read (the Content-Length), or as they arrive (a chunked body, an answer of unknown
length), and a request that would pass the budget is refused with 503 and Retry-After
instead of being read. The request releases everything it was charged when it ends.
"""

from __future__ import annotations

from sidegate import errors
from sidegate.sidecar.metrics import Metrics

# A refused client retries after this; by then most bodies in memory have gone upstream.
RETRY_AFTER_SECONDS = 1
# A request body is held twice while the request lives: its bytes (forwarded as they are)
# and the strings of the parsed model. Measured (benchmarks/memory.py): ~2.3 bytes of RSS
# per body byte at concurrency 16.
REQUEST_BODY_COPIES = 2


class MemoryBudget:
    __slots__ = ("_metrics", "limit", "used")

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.used = 0
        self._metrics = metrics
        # Read when scraped: a gauge set twice per request would cost more than the budget.
        metrics.memory_budget_used.set_function(lambda: self.used)

    def charge(self, charges: Charges, size: int) -> None:
        """Admit ``size`` more bytes for one request, or raise Overloaded."""
        if self.used + size > self.limit:
            self._metrics.child(self._metrics.refusals, "memory_budget").inc()
            raise errors.Overloaded(
                "the sidecar is holding as many request and response bytes as its memory "
                "budget allows; retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.used += size
        charges.held += size

    def release(self, charges: Charges) -> None:
        self.used -= charges.held
        charges.held = 0


class Charges:
    """What one request holds of the budget; released once, when the request ends."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0
