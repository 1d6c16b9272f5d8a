"""``sidegate``: the command line of both programs.

sidegate sidecar --config FILE   run the proxy (standalone: a YAML file is all it needs)
sidegate demo                    run the proxy in front of a local stand-in provider
sidegate operator | broker       the cluster's control plane (see docs/)
sidegate inject -f pod.yaml      what the injection webhook would make of a pod (offline)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sidegate import (
    __version__,
    audit_commands,
    errors,
    inject_commands,
    logs,
    policy_commands,
    redact,
    sidecar_options,
)

logger = logging.getLogger("sidegate")


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # not on Linux: the standard loop works, just slower
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def cmd_sidecar(args: argparse.Namespace) -> int:
    from sidegate import scraping, serving
    from sidegate.sidecar import admin, app, draining, settings

    try:
        if args.config_env:
            text = os.environ.get(args.config_env)
            if not text:
                raise errors.ConfigError(
                    f"environment variable {args.config_env} is unset or empty"
                )
            config = settings.parse(text, args.config_env, Path.cwd(), os.environ)
        else:
            config = settings.load(Path(args.config), os.environ)
        overrides = {
            key: value
            for key, value in (
                ("host", args.host),
                ("port", args.port),
                ("allow_non_loopback", args.allow_non_loopback or None),
            )
            if value is not None
        }
        if overrides:
            try:
                listen = settings.ListenSettings.model_validate(
                    {**config.listen.model_dump(), **overrides}
                )
            except ValidationError as exc:
                raise errors.ConfigError(
                    settings.format_validation_error(exc, "command line")
                ) from None
            config = config.model_copy(update={"listen": listen})
        if config.credentials is not None and not config.credentials.directory.is_dir():
            raise errors.ConfigError(
                f"credentials.directory {config.credentials.directory} is not a directory"
            )
    except errors.ConfigError as exc:
        print(f"sidegate: {exc}", file=sys.stderr)
        return 2

    redactor = redact.Redactor()
    logs.configure(redactor, config.logging.level, config.logging.format)
    if not settings.is_loopback(config.listen.host):
        logger.warning(
            "listening on a non-loopback address: anything that reaches it can use the "
            "provider keys",
            extra={"host": config.listen.host},
        )

    async def main() -> int:
        application = app.create_app(config, redactor=redactor)
        runners = [
            await serving.start(
                application,
                config.listen.host,
                config.listen.port,
                limits=serving.ConnectionLimits(
                    max_header_bytes=config.limits.max_header_bytes,
                    header_timeout=config.listen.header_timeout_seconds,
                    keepalive_timeout=config.listen.keepalive_timeout_seconds,
                    max_connections=config.listen.max_connections,
                ),
                access_log=config.logging.access_log,
            )
        ]
        logger.info(
            "sidecar listening",
            extra={"host": config.listen.host, "port": serving.bound_port(runners[0])},
        )
        try:
            admin_app = admin.for_sidecar(application)
            if config.admin is not None and admin_app is not None:
                # The admin API is loopback only, whatever listen.host says.
                runners.append(await serving.start(admin_app, "127.0.0.1", config.admin.port))
                logger.info(
                    "admin API listening",
                    extra={"host": "127.0.0.1", "port": serving.bound_port(runners[-1])},
                )
            if config.metrics is not None:
                # Metrics only, on an address a scraper outside the pod can reach.
                registry = application[app.PIPELINE].metrics.registry
                runners.append(
                    await scraping.start(
                        scraping.create_app(registry),
                        config.metrics.host,
                        config.metrics.port,
                        limits=serving.ConnectionLimits(
                            max_connections=config.metrics.max_connections
                        ),
                    )
                )
                logger.info(
                    "metrics listening",
                    extra={"host": config.metrics.host, "port": serving.bound_port(runners[-1])},
                )
            await serving.wait_for_signal()
            await draining.drain(
                runners[0],
                application[app.PIPELINE].in_flight,
                drain_seconds=config.listen.drain_seconds,
                grace_seconds=config.listen.shutdown_grace_seconds,
            )
        finally:
            logger.info("shutting down")
            for runner in reversed(runners):
                await runner.cleanup()
        return 0

    try:
        return _run(main())
    except OSError as exc:
        logger.error("cannot listen: %s", exc.strerror)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from sidegate import demo

    # Line by line even into a pipe: the banner before the log lines it explains, and the
    # address of `--serve --port 0` while it serves, not at exit.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    redactor = redact.Redactor()
    logs.configure(redactor, "WARNING", "text")
    return _run(demo.run(port=args.port, serve=args.serve, redactor=redactor))


def cmd_operator(args: argparse.Namespace) -> int:
    from sidegate.operator import leadership, metrics, running, state
    from sidegate.operator.handlers import webhook_certificates

    redactor = redact.Redactor()
    logs.configure(redactor, args.log_level, "json")
    if args.action == "cleanup":
        return running.cleanup(
            namespace=args.own_namespace, deployment=args.stop_deployment, timeout=args.timeout
        )
    if args.webhook_only and not args.webhook_port:
        print("sidegate: --webhook-only needs --webhook-port", file=sys.stderr)
        return 2
    if args.webhook_port and not (args.webhook_cert and args.webhook_key and args.sidecar_image):
        print(
            "sidegate: --webhook-port needs --webhook-cert, --webhook-key and --sidecar-image",
            file=sys.stderr,
        )
        return 2
    sidecar = None
    if args.sidecar_image:
        try:
            sidecar = sidecar_options.spec_from(args)
        except sidecar_options.OptionsError as exc:
            print(f"sidegate: {exc}", file=sys.stderr)
            return 2
    listener = None
    if args.webhook_port:
        listener = running.WebhookListener(
            args.webhook_port, Path(args.webhook_cert), Path(args.webhook_key)
        )
    kept = (
        args.webhook_ca_secret,
        args.webhook_tls_secret,
        args.webhook_service,
        args.mutating_webhook,
        args.validating_webhook,
    )
    if any(kept) and not all(kept):
        print(
            "sidegate: --webhook-ca-secret, --webhook-tls-secret, --webhook-service, "
            "--mutating-webhook and --validating-webhook go together",
            file=sys.stderr,
        )
        return 2
    certificates = None
    if all(kept):
        certificates = webhook_certificates.WebhookCertificates(
            service=args.webhook_service,
            tls_secret=args.webhook_tls_secret,
            ca_secret=args.webhook_ca_secret,
            mutating=args.mutating_webhook,
            validating=args.validating_webhook,
        )
    peering = None
    if args.peering:
        peering = leadership.Peering(
            name=args.peering,
            identity=leadership.identity(os.environ.get("SIDEGATE_POD_NAME")),
            priority=leadership.priority(time.time()),
            lifetime=args.peering_lifetime,
        )
    shared = state.OperatorState(
        peering=peering,
        webhook_certificates=certificates,
        login=running.standard_login,
        namespace=args.own_namespace,
        overlap=args.overlap,
        admin_rotation=args.admin_token_rotation,
        source_label=args.credential_source_label,
        sidecar=sidecar,
        broker_ca_file=Path(args.broker_ca_file) if args.broker_ca_file else None,
        metrics=metrics.Metrics(
            reconcile=not args.webhook_only,
            certificate=listener.certfile if listener is not None else None,
        ),
    )
    return running.run(
        namespaces=args.namespace or [],
        state=shared,
        liveness=args.liveness,
        listener=listener,
        reconcile=not args.webhook_only,
        metrics_port=args.metrics_port,
    )


def cmd_broker(args: argparse.Namespace) -> int:
    from sidegate.broker import kube, running

    redactor = redact.Redactor()
    logs.configure(redactor, args.log_level, args.log_format)
    namespace = args.namespace or running.own_namespace(os.environ)
    if not namespace:
        print("sidegate: --namespace is required outside a pod", file=sys.stderr)
        return 2
    login = kube.in_cluster() or kube.from_kubeconfig()
    if login is None:
        print("sidegate: no service account and no kubeconfig to log in with", file=sys.stderr)
        return 2
    options = running.Options(
        namespace=namespace,
        certfile=Path(args.certfile),
        keyfile=Path(args.keyfile),
        sidecar_image=args.sidecar_image,
        sidecar_config=Path(args.sidecar_config),
        ca_file=Path(args.ca_file) if args.ca_file else None,
        listen_port=args.listen_port,
        probe_port=args.probe_port,
        audience=args.audience,
        max_wait=args.max_wait,
        fixed_user=args.sidecar_user == "fixed",
    )
    try:
        return _run(running.serve(options, login))
    except OSError as exc:
        logger.error("cannot serve: %s", exc.strerror or exc)
        return 1


def _label(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not (key and equals and value):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidegate",
        description="Sidegate: a security gateway for LLM traffic. The sidecar proxies "
        "OpenAI/Anthropic API calls from 127.0.0.1, adding provider keys the app never sees.",
    )
    parser.add_argument("--version", action="version", version=f"sidegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sidecar = commands.add_parser(
        "sidecar",
        help="run the proxy",
        description="Run the sidecar proxy. Apps point their OpenAI/Anthropic base URL at it "
        "(http://127.0.0.1:4000/v1). See docs/configuration.md for the config file.",
    )
    source = sidecar.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", "-c", metavar="FILE", help="YAML config file")
    source.add_argument(
        "--config-env",
        metavar="NAME",
        help="read the YAML config from this environment variable (how injected sidecars get "
        "it); paths in it should be absolute",
    )
    sidecar.add_argument("--host", help="listen address (overrides listen.host)")
    sidecar.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    sidecar.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="permit a non-loopback --host (the proxy has no client auth of its own)",
    )
    sidecar.set_defaults(func=cmd_sidecar)

    demo = commands.add_parser(
        "demo",
        help="see Sidegate work, no provider account needed",
        description="Start a local stand-in provider and the sidecar in front of it, send "
        "requests through it with the official openai SDK, rotate the key, and print what "
        "happened.",
    )
    demo.add_argument("--port", type=int, default=4000, help="sidecar port (default 4000, 0 = any)")
    demo.add_argument(
        "--serve", action="store_true", help="keep running afterwards, for your own requests"
    )
    demo.set_defaults(func=cmd_demo)
    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Run the operator (kopf): the RBACPolicy objects of each namespace become "
        "a signed bundle (sidegate-bundle-<ns> in the operator's namespace), with status "
        "conditions and Events for invalid policies; labelled provider key Secrets become the "
        "one sidegate-credentials Secret there; each served namespace gets a rotated admin "
        "token (sidegate-admin-<ns>); the broker serves all of these to the sidecars. Nothing "
        "is written in application namespaces. With --webhook-port, annotated pods get the "
        "sidecar injected. Logs in with the pod's service account, or the kubeconfig outside a "
        "cluster. The Helm chart (charts/sidegate) sets all of this.",
    )
    operator.add_argument(
        "--namespace",
        "-n",
        action="append",
        help="serve only the RBACPolicies of this namespace (repeatable); all by default",
    )
    operator.add_argument(
        "--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz for the pod's probes"
    )
    operator.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics (GET /metrics, plain HTTP) on this port, on all "
        "interfaces (default: none, no metrics listener; the chart sets 9464)",
    )
    operator.add_argument(
        "--own-namespace",
        default=os.environ.get("SIDEGATE_NAMESPACE", "sidegate-system"),
        help="the operator's (release) namespace: the only place it reads or writes Secrets "
        "(default: $SIDEGATE_NAMESPACE, else sidegate-system)",
    )
    operator.add_argument(
        "--overlap",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a rotated-out key or token stays as <key>.previous (default 300)",
    )
    operator.add_argument(
        "--admin-token-rotation",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="rotate each namespace's sidecar admin token this often (default 86400)",
    )
    operator.add_argument(
        "--credential-source-label",
        type=_label,
        default=("sidegate.io/credentials", "source"),
        metavar="KEY=VALUE",
        help="label marking provider key Secrets in --own-namespace as sources "
        "(default sidegate.io/credentials=source)",
    )
    operator.add_argument(
        "--peering",
        metavar="NAME",
        help="the ClusterKopfPeering object the replicas elect their leader in (the chart "
        "creates it): only the leader reconciles and writes, the others stand by and take "
        "over when it goes. Without it the operator runs alone (one replica only)",
    )
    operator.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        metavar="SECONDS",
        help="how long a replica's keep-alive counts: a leader that dies without a word is "
        "replaced after at most this long (default 60; a clean stop hands over at once)",
    )
    kept = operator.add_argument_group(
        "webhook certificates kept by the operator (all of these, or none: cert-manager or "
        "the installer provides them)"
    )
    kept.add_argument(
        "--webhook-ca-secret",
        metavar="NAME",
        help="Secret in --own-namespace holding the webhook's CA: created once if missing, "
        "renewed before expiry",
    )
    kept.add_argument(
        "--webhook-tls-secret",
        metavar="NAME",
        help="Secret (kubernetes.io/tls) the webhook pods mount: issued from that CA",
    )
    kept.add_argument(
        "--webhook-service",
        metavar="NAME",
        help="the webhook's Service: the names it is issued for",
    )
    kept.add_argument(
        "--mutating-webhook",
        metavar="NAME",
        help="MutatingWebhookConfiguration whose caBundle trusts the CA",
    )
    kept.add_argument(
        "--validating-webhook",
        metavar="NAME",
        help="ValidatingWebhookConfiguration whose caBundle trusts the CA",
    )
    webhook = operator.add_argument_group("injection webhook (off unless --webhook-port is set)")
    webhook.add_argument("--webhook-port", type=int, help="HTTPS port of the webhook, e.g. 8443")
    webhook.add_argument(
        "--webhook-only",
        action="store_true",
        help="serve the admission webhooks and nothing else: no reconciling, no writes, no "
        "leader (the chart's webhook Deployment; the operator Deployment reconciles)",
    )
    webhook.add_argument("--webhook-cert", metavar="FILE", help="serving certificate (PEM)")
    webhook.add_argument("--webhook-key", metavar="FILE", help="its private key (PEM)")
    sidecar_options.add_arguments(webhook, required=False)
    operator.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    operator.set_defaults(func=cmd_operator, action=None)
    actions = operator.add_subparsers(dest="action", metavar="ACTION")
    cleanup = actions.add_parser(
        "cleanup",
        help="remove what the operator left (a Helm pre-delete hook runs it)",
        description="Stop the operator (--stop-deployment), remove its finalizer from every "
        "RBACPolicy, and delete the Secrets and ConfigMaps it wrote in --own-namespace "
        "(bundles, credentials, admin tokens, signing keys). The source Secrets stay.",
    )
    cleanup.add_argument(
        "--stop-deployment",
        metavar="NAME",
        help="the operator's Deployment in --own-namespace: scaled to 0 first, and waited for",
    )
    cleanup.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="longest wait (300)"
    )
    broker = commands.add_parser(
        "broker",
        help="run the credential broker",
        description="Run the broker: injected sidecars call it over TLS with their projected "
        "ServiceAccount token and receive their namespace's provider keys, signed bundle, admin "
        "token and Redis settings, in memory. It checks each token with TokenReview and the "
        "caller's pod spec, and reads only the Secrets and ConfigMaps of its own namespace. "
        "See docs/broker.md.",
    )
    broker.add_argument(
        "--namespace",
        help="the release namespace (default: $POD_NAMESPACE, else the service account's)",
    )
    broker.add_argument("--listen-port", type=int, default=8443, help="TLS API port (8443)")
    broker.add_argument(
        "--certfile", required=True, help="serving certificate (PEM), re-read when it changes"
    )
    broker.add_argument("--keyfile", required=True, help="its private key (PEM)")
    broker.add_argument(
        "--probe-port", type=int, default=8080, help="plain HTTP /healthz /readyz /metrics (8080)"
    )
    broker.add_argument("--audience", default="sidegate", help="expected token audience")
    broker.add_argument(
        "--sidecar-image", required=True, help="the image an injected sidecar container runs"
    )
    broker.add_argument(
        "--sidecar-config",
        required=True,
        help="the sidecar config the operator injects (its --sidecar-config): a pod whose "
        "config differs from it, but for its trusted keys and the broker's CA, is not served",
    )
    broker.add_argument(
        "--ca-file",
        help="the broker's CA certificate (PEM), as the operator injects it (its "
        "--broker-ca-file): a pod's broker.ca_pem must be this",
    )
    broker.add_argument(
        "--sidecar-user",
        choices=["fixed", "platform"],
        default="fixed",
        help="the webhook's mode: fixed, a sidecar must run as uid and gid 65532; platform, "
        "as any non-root ids the platform assigned",
    )
    broker.add_argument(
        "--max-wait", type=float, default=30.0, help="longest long-poll, seconds (30)"
    )
    broker.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    broker.add_argument("--log-format", default="json", choices=["json", "text"])
    broker.set_defaults(func=cmd_broker)
    inject_commands.add_parser(commands)
    policy_commands.add_parser(commands)
    audit_commands.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
