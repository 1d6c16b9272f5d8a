"""The injected sidecar's options, shared by ``sidegate operator`` (its webhook) and
``sidegate inject``: one set of flags, one function from them to the ``SidecarSpec`` the
injector builds from, so the offline preview and the webhook cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sidegate import errors

if TYPE_CHECKING:
    from sidegate.operator import injection


class OptionsError(Exception):
    """A sidecar option the command refuses (exit 2); the message names the flag."""


def parse_resources(text: str) -> dict[str, dict[str, str]]:
    try:
        found = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not JSON") from None
    valid = isinstance(found, dict) and all(
        kind in ("requests", "limits")
        and isinstance(amounts, dict)
        and all(isinstance(k, str) and isinstance(v, str | int) for k, v in amounts.items())
        for kind, amounts in found.items()
    )
    if not valid:
        raise argparse.ArgumentTypeError('expected {"requests"|"limits": {"cpu": "50m", ...}}')
    return {kind: {k: str(v) for k, v in amounts.items()} for kind, amounts in found.items()}


def add_arguments(group: Any, *, required: bool) -> None:
    """The flags that describe the injected sidecar (the chart sets them on the webhook);
    ``required``: the image and the config must be given (no webhook to turn off)."""
    group.add_argument("--sidecar-image", required=required, help="image of the injected sidecar")
    group.add_argument(
        "--sidecar-config",
        metavar="FILE",
        required=required,
        default=None if required else "/etc/sidegate/sidecar.yaml",
        help="the injected sidecar's YAML config (the chart's sidecar.config), passed to it in "
        "$SIDEGATE_CONFIG with the trusted signing keys (and the broker's CA) filled in",
    )
    group.add_argument(
        "--broker-ca-file",
        metavar="FILE",
        help="the broker's CA certificate (PEM), injected as broker.ca_pem (the operator "
        "reads it at each admission, so a renewed CA is picked up)",
    )
    group.add_argument(
        "--sidecar-mode",
        choices=["native", "container"],
        default="native",
        help="native: an init container with restartPolicy Always (Kubernetes 1.29+); "
        "container: a plain container",
    )
    group.add_argument(
        "--sidecar-port",
        type=int,
        default=4000,
        help="the sidecar's listen.port: where OPENAI_BASE_URL/ANTHROPIC_BASE_URL point",
    )
    group.add_argument(
        "--sidecar-pull-policy",
        choices=["Always", "IfNotPresent", "Never"],
        default="IfNotPresent",
        help="imagePullPolicy of the injected sidecar",
    )
    group.add_argument(
        "--sidecar-resources",
        type=parse_resources,
        metavar="JSON",
        help='the sidecar\'s requests and limits, e.g. {"requests": {"cpu": "50m"}} '
        "(default: 50m CPU and 64Mi requested, 256Mi memory limit)",
    )
    group.add_argument(
        "--sidecar-user",
        choices=["fixed", "platform"],
        default="fixed",
        help="fixed: the sidecar runs as the image's user (runAsUser/runAsGroup 65532); "
        "platform: neither is set, the platform assigns them (OpenShift's restricted SCC)",
    )
    group.add_argument(
        "--sidecar-max-cpu",
        default="1",
        metavar="QUANTITY",
        help="the most CPU a pod may request or limit its sidecar to with the "
        "sidegate.io/sidecar-cpu(-limit) annotations (1); empty: pods may not change it",
    )
    group.add_argument(
        "--sidecar-max-memory",
        default="1Gi",
        metavar="QUANTITY",
        help="the most memory, with sidegate.io/sidecar-memory(-limit) (1Gi); empty: pods "
        "may not change it",
    )
    group.add_argument(
        "--sidecar-log-levels",
        default="DEBUG,INFO,WARNING,ERROR",
        metavar="LEVELS",
        help="the levels sidegate.io/sidecar-log-level may choose, comma-separated (all "
        "four); empty: none",
    )


def config_problem(spec: injection.SidecarSpec) -> str | None:
    """Why the config injected sidecars would get is invalid, if it is: the sidecar's own
    validation of it as the injector completes it, with a throwaway signing key standing in
    for the published ones and placeholders for what the downward API gives each pod."""
    from sidegate.operator import injection
    from sidegate.policy import signing
    from sidegate.sidecar import settings

    stand_in = signing.encode_public_key(signing.generate_private_key().public_key())
    identity = {
        "SIDEGATE_NAMESPACE": "validating",
        "SIDEGATE_SERVICE_ACCOUNT": "validating",
        "SIDEGATE_POD_NAME": "validating",
    }
    try:
        text = injection.sidecar_config(dataclasses.replace(spec, trusted_keys=(stand_in,)))
        settings.parse(text, "sidecar config", Path("/"), identity)
    except errors.ConfigError as exc:
        return str(exc).removeprefix("sidecar config: ")
    except (ValueError, yaml.YAMLError) as exc:
        return str(exc)
    return None


def spec_from(args: argparse.Namespace) -> injection.SidecarSpec:
    """The spec the flags describe, its config checked as the sidecar would check it, or
    ``OptionsError``."""
    from sidegate.operator import injection, overrides

    try:
        config = Path(args.sidecar_config).read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionsError(f"--sidecar-config: cannot read: {exc.strerror}") from None
    try:
        bounds = overrides.Bounds(
            max_cpu=args.sidecar_max_cpu or None,
            max_memory=args.sidecar_max_memory or None,
            log_levels=tuple(level for level in args.sidecar_log_levels.split(",") if level),
        )
    except ValueError as exc:
        raise OptionsError(f"the sidecar override bounds: {exc}") from None
    spec = injection.SidecarSpec(
        image=args.sidecar_image,
        config=config,
        native=args.sidecar_mode == "native",
        port=args.sidecar_port,
        image_pull_policy=args.sidecar_pull_policy,
        fixed_user=args.sidecar_user == "fixed",
        bounds=bounds,
    )
    problem = config_problem(spec)
    if problem is not None:
        # Refused here, once, rather than crash-looping every pod injected with it.
        raise OptionsError(f"--sidecar-config (the chart's sidecar.config): {problem}")
    if args.sidecar_resources is not None:
        spec = dataclasses.replace(spec, resources=args.sidecar_resources)
    return spec
