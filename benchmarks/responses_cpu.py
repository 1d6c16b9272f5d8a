"""CPU of the Responses API's own per-request work in the sidecar, in process: validating
the body and reading usage (against chat's), reading the id of a stored response and putting
it on record for its creator. Usage: uv run python benchmarks/responses_cpu.py
"""

from __future__ import annotations

import contextlib
import sys
import timeit
from pathlib import Path

from sidegate.sidecar import endpoints, ownership, payloads, proxying, usage

sys.path.insert(0, str(Path(__file__).parent))
import upstream  # the benchmark upstream's answers, as the sidecar reads them

CHAT = b'{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":64}'
RESPONSES = b'{"model":"bench-model","input":"Say something short.","max_output_tokens":64}'
BINDING = ownership.Binding("default/default", "bench", "bench-model")
N = 20_000


def per_call_us(function: object) -> float:
    return min(timeit.repeat(function, number=N, repeat=5)) / N * 1e6  # type: ignore[arg-type]


def main() -> None:
    owners = ownership.LocalOwners(100_000)
    counter = iter(range(10**9))

    def bind() -> None:
        coroutine = owners.bind(f"resp_{next(counter) % 100_000}", BINDING)
        with contextlib.suppress(StopIteration):
            coroutine.send(None)  # LocalOwners never awaits: one step runs it

    chat = per_call_us(
        lambda: (
            payloads.parse(endpoints.CHAT, CHAT, max_depth=64),
            usage.from_body("openai", upstream.COMPLETION),
        )
    )
    responses = per_call_us(
        lambda: (
            payloads.parse(endpoints.RESPONSES, RESPONSES, max_depth=64),
            usage.from_body("openai", upstream._RESPONSE_BODY),
        )
    )
    read_id = per_call_us(lambda: proxying._response_id(upstream._RESPONSE_BODY, "bench"))
    print(f"| chat: validate + usage | {chat:.1f} us |")
    print(f"| responses: validate + usage | {responses:.1f} us |")
    print(f"| responses: read the stored response's id | {read_id:.1f} us |")
    print(f"| responses: record its creator (LocalOwners.bind) | {per_call_us(bind):.1f} us |")


if __name__ == "__main__":
    main()
