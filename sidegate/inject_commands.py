"""``sidegate inject -f pod.yaml``: what the injection webhook would make of a pod, offline
(like ``istioctl kube-inject``).

The same decision as the webhook (``injection.admit``), from the webhook Deployment's flags
(``sidecar_options``): a pod or pod template labelled ``sidegate.io/inject: "true"`` comes
out with the sidecar, one the webhook would refuse is refused with the webhook's message,
one without the label comes out as it went in. What the webhook reads from the cluster at
admission is given as files: the published signing keys and the broker's CA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import yaml

from sidegate import sidecar_options

# Where each workload kind keeps its pod template.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

EXAMPLES = """\
examples:
  # The flags the chart gives the webhook Deployment, and what it reads from the cluster:
  kubectl -n sidegate-system get configmap sidegate-sidecar \\
      -o jsonpath='{.data.sidecar\\.yaml}' > sidecar.yaml
  kubectl -n sidegate-system get configmap sidegate-signing-public \\
      -o jsonpath='{.data.trusted_keys}' > trusted-keys.json
  kubectl -n sidegate-system get secret sidegate-broker-tls \\
      -o jsonpath='{.data.ca\\.crt}' | base64 -d > broker-ca.crt
  sidegate inject -f deployment.yaml --sidecar-image registry.example/sidegate:0.1.0 \\
      --sidecar-config sidecar.yaml --trusted-keys-file trusted-keys.json \\
      --broker-ca-file broker-ca.crt

  # Keep the injected manifest (GitOps): applied, the webhook injects it again with
  # what is in force then, the same sidecar while keys and config are unchanged.
  sidegate inject -f deployment.yaml ... > deployment.injected.yaml

exit status: 0 printed, 1 a pod the webhook would refuse (its message on stderr),
2 bad flags or input.
"""


def add_parser(commands: Any) -> None:
    inject = commands.add_parser(
        "inject",
        help="print pods or workloads with the sidecar injected, as the webhook would (offline)",
        description="Print the YAML of -f with the sidecar injected into every pod and pod "
        "template labelled sidegate.io/inject=true, exactly as the operator's webhook would "
        "inject it (the same code), honouring the pod's sidegate.io/sidecar-* overrides. "
        "Pods without the label are printed unchanged. Nothing is sent to a cluster.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inject.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="YAML of Pods or workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet, "
        "ReplicationController, Job, CronJob), several documents allowed; - reads stdin",
    )
    inject.add_argument(
        "--trusted-keys-file",
        metavar="FILE",
        help="the published signing keys, a JSON list (the trusted_keys of the "
        "sidegate-signing-public ConfigMap); without it the config trusts no key and the "
        "sidecar would refuse every bundle",
    )
    sidecar = inject.add_argument_group(
        "the sidecar (the webhook's flags, as the chart sets them on its Deployment)"
    )
    sidecar_options.add_arguments(sidecar, required=True)
    inject.set_defaults(func=run)


class InputError(Exception):
    """Input the command cannot use (exit 2)."""


def _read(name: str) -> str:
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None


def _trusted_keys(name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    try:
        keys = json.loads(_read(name))
    except ValueError:
        raise InputError(f"--trusted-keys-file {name}: not JSON") from None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InputError(f"--trusted-keys-file {name}: expected a JSON list of keys")
    return tuple(keys)


def pod_templates(document: Any) -> Iterator[tuple[str, MutableMapping[str, Any]]]:
    """(a name for messages, the Pod or pod template to inject in place) of a document."""
    if not isinstance(document, MutableMapping):
        raise InputError("a YAML document is not a Kubernetes object")
    kind = document.get("kind")
    name = f"{kind}/{(document.get('metadata') or {}).get('name', '')}"
    if kind == "Pod":
        yield name, document
        return
    if kind == "List":
        for item in document.get("items") or []:
            yield from pod_templates(item)
        return
    path = _TEMPLATES.get(str(kind))
    if path is None:
        return  # a Service, a ConfigMap...: printed as it is
    found: Any = document
    for step in path:
        found = found.get(step) if isinstance(found, MutableMapping) else None
    if not isinstance(found, MutableMapping):
        raise InputError(f"{name}: no pod template at {'.'.join(path)}")
    yield name, found


def run(args: argparse.Namespace) -> int:
    from sidegate.operator import injection

    try:
        spec = sidecar_options.spec_from(args)
        ca = _read(args.broker_ca_file) if args.broker_ca_file else None
        keys = _trusted_keys(args.trusted_keys_file)
        documents = [d for d in yaml.safe_load_all(_read(args.filename)) if d is not None]
        spec = dataclasses.replace(spec, trusted_keys=keys, broker_ca_pem=ca)
        refused = False
        for document in documents:
            for name, pod in pod_templates(document):
                try:
                    changes = injection.admit(pod, spec)
                except injection.Refused as exc:
                    print(f"{name}: {exc}", file=sys.stderr)
                    refused = True
                    continue
                if changes is None:
                    print(f"{name}: no {injection.LABEL}=true label, unchanged", file=sys.stderr)
                    continue
                pod.update(injection.apply(pod, changes))
    except (sidecar_options.OptionsError, InputError) as exc:
        print(f"sidegate: {exc}", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        print(f"sidegate: {args.filename}: not YAML: {exc}", file=sys.stderr)
        return 2
    if refused:
        return 1
    if not keys:
        print(
            "sidegate: no --trusted-keys-file: the injected config trusts no signing key "
            "(the webhook fills in the published ones)",
            file=sys.stderr,
        )
    sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False))
    return 0
