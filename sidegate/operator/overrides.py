"""Per-pod overrides of the injected sidecar, read from the pod's annotations (pure).

Platform teams know these from Istio (``sidecar.istio.io/proxyCPU``) and Vault Agent
(``vault.hashicorp.com/agent-limits-cpu``): a pod asks for more or less CPU and memory for
its sidecar, or another log level, without a chart change. Whoever can create pods in a
namespace sets these annotations, so each is checked against the chart's bounds
(``Bounds``) and a bad one refuses the pod with the annotation's name and the reason, rather
than injecting something else.

Not offered: the image, the command, the config beyond the log level, the security context.
The broker hands the namespace's provider keys to a container that passes its pod check; a
pod's author choosing the sidecar's image would choose the code that receives them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from decimal import Decimal

PREFIX = "sidegate.io/sidecar-"
CPU = f"{PREFIX}cpu"
CPU_LIMIT = f"{PREFIX}cpu-limit"
MEMORY = f"{PREFIX}memory"
MEMORY_LIMIT = f"{PREFIX}memory-limit"
LOG_LEVEL = f"{PREFIX}log-level"
# annotation -> (requests|limits, resource)
RESOURCES = {
    CPU: ("requests", "cpu"),
    CPU_LIMIT: ("limits", "cpu"),
    MEMORY: ("requests", "memory"),
    MEMORY_LIMIT: ("limits", "memory"),
}
KNOWN = (*RESOURCES, LOG_LEVEL)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # the sidecar's logging.level

# Kubernetes resource quantities (k8s.io/apimachinery/pkg/api/resource): a decimal number
# and a binary (Ki..Ei) or decimal (n, u, m, k, M..E) suffix, or an exponent.
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<exponent>[eE][+-]?[0-9]+)|(?P<suffix>[KMGTPE]i|[numkMGTPE])?)$"
)
_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


class Invalid(ValueError):
    """An override annotation the injector refuses; the message names it."""


# Longer than any quantity a sidecar needs: refused before parsing, so a pod's author cannot
# make the webhook convert a 200,000-digit number, nor have its refusal echo the annotation.
_LONGEST = 64


def _shown(text: str) -> str:
    """A pod author's value as a refusal quotes it: cut short, whatever its size."""
    return repr(text) if len(text) <= _LONGEST else f"{text[:_LONGEST]!r}..."


def quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity ("250m" CPU is 0.25, "64Mi" is 67108864)."""
    stripped = text.strip()
    found = _QUANTITY.match(stripped) if len(stripped) <= _LONGEST else None
    if found is None:
        raise ValueError(f"{_shown(text)} is not a Kubernetes quantity")
    number = Decimal(found["number"])
    try:
        if found["exponent"]:
            return number * Decimal(10) ** int(found["exponent"][1:])
    except ArithmeticError:  # decimal.Overflow: an exponent past the context's Emax
        raise ValueError(f"{_shown(text)} is out of range") from None
    scale = _SUFFIXES[found["suffix"] or ""]
    return number * scale


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What the chart lets a pod ask for (``sidecarOverrides``). A resource without a
    maximum cannot be overridden."""

    max_cpu: str | None = "1"
    max_memory: str | None = "1Gi"
    log_levels: tuple[str, ...] = LOG_LEVELS

    def __post_init__(self) -> None:
        for text in (self.max_cpu, self.max_memory):
            if text is not None:
                quantity(text)  # a bad bound is the chart's mistake: refused at start
        unknown = set(self.log_levels) - set(LOG_LEVELS)
        if unknown:
            raise ValueError(f"unknown log levels {sorted(unknown)}; known: {list(LOG_LEVELS)}")


@dataclasses.dataclass(frozen=True)
class Overrides:
    """What a pod's annotations change: its sidecar's requests/limits and log level."""

    resources: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    log_level: str | None = None


NONE = Overrides()


def _checked_amount(name: str, value: str, resource: str, bounds: Bounds) -> str:
    limit = bounds.max_cpu if resource == "cpu" else bounds.max_memory
    if limit is None:
        raise Invalid(f"{name}: this cluster does not let pods change the sidecar's {resource}")
    try:
        amount = quantity(value)
    except ValueError as exc:
        raise Invalid(f"{name}: {exc}") from None
    if amount <= 0:
        raise Invalid(f"{name}: {_shown(value)} must be more than zero")
    if amount > quantity(limit):
        raise Invalid(f"{name}: {_shown(value)} is above the cluster's maximum of {limit}")
    return value.strip()


def parse(annotations: Mapping[str, str] | None, bounds: Bounds) -> Overrides:
    """The overrides a pod's annotations ask for, or ``Invalid`` naming the first bad one
    (an unknown ``sidegate.io/sidecar-*`` name included: a typo must not pass silently)."""
    found = {k: v for k, v in (annotations or {}).items() if k.startswith(PREFIX)}
    for name in sorted(found):
        if name not in KNOWN:
            if name == f"{PREFIX}image":
                raise Invalid(
                    f"{name}: the sidecar's image cannot be chosen per pod (the broker "
                    "gives the namespace's provider keys to the sidecar; only the chart's "
                    "image may receive them)"
                )
            raise Invalid(f"{name}: not an override; known: {', '.join(KNOWN)}")
    resources: dict[str, dict[str, str]] = {}
    for name, (kind, resource) in RESOURCES.items():
        if name in found:
            amount = _checked_amount(name, str(found[name]), resource, bounds)
            resources.setdefault(kind, {})[resource] = amount
    level = found.get(LOG_LEVEL)
    if level is not None:
        level = str(level).strip().upper()
        if level not in bounds.log_levels:
            raise Invalid(
                f"{LOG_LEVEL}: {_shown(str(found[LOG_LEVEL]))} is not one of "
                f"{', '.join(bounds.log_levels)}"
            )
    return Overrides(resources=resources, log_level=level)


def resources(
    base: Mapping[str, Mapping[str, str]], overrides: Overrides
) -> dict[str, dict[str, str]]:
    """The chart's requests and limits with the pod's overrides, or ``Invalid`` when a
    request ends up above its limit (the API server would refuse the pod less clearly)."""
    merged = {kind: dict(amounts) for kind, amounts in base.items()}
    for kind, amounts in overrides.resources.items():
        merged.setdefault(kind, {}).update(amounts)
    for resource, request_name, limit_name in (
        ("cpu", CPU, CPU_LIMIT),
        ("memory", MEMORY, MEMORY_LIMIT),
    ):
        request = merged.get("requests", {}).get(resource)
        limit = merged.get("limits", {}).get(resource)
        if request is not None and limit is not None and quantity(request) > quantity(limit):
            raise Invalid(
                f"{request_name}: the {resource} request {request} is above the sidecar's "
                f"{resource} limit {limit}; set {limit_name} too"
            )
    return merged
