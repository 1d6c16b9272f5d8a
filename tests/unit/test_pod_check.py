"""The broker's pod check, case by case (the integration tests ask it through the API)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidegate.broker import pods
from sidegate.operator import injection
from sidegate.policy import signing
from tests.helpers import brokers

TRUSTED = brokers.public_keys(signing.generate_private_key(), signing.generate_private_key())
EXPECTED = pods.Expectations(brokers.IMAGE, "sidegate", tuple(TRUSTED), brokers.CHART_CONFIG)


def injected(**metadata: Any) -> dict[str, Any]:
    pod = brokers.injected_pod("team-a", "p", TRUSTED)
    pod["metadata"].update({"uid": "u-1", **metadata})
    return pod


def refusal(pod: dict[str, Any], uid: str = "u-1") -> str | None:
    found = refused(pod, uid=uid)
    return found[0] if found else None


def refused(
    pod: dict[str, Any], expected: pods.Expectations = EXPECTED, uid: str = "u-1"
) -> tuple[str, str] | None:
    """The refusal's reason code and message, or None when the pod is served."""
    try:
        pods.check(pod, uid=uid, expected=expected)
    except pods.Refused as exc:
        assert str(exc) == exc.message
        return exc.code, exc.message
    return None


def test_the_injected_pod_passes_as_a_native_or_a_plain_sidecar() -> None:
    assert refusal(injected()) is None
    plain = injected()
    sidecar = plain["spec"].pop("initContainers")[0]
    del sidecar["restartPolicy"]
    plain["spec"]["containers"].append(sidecar)
    assert refusal(plain) is None


@pytest.mark.parametrize("keys", [TRUSTED[:1], TRUSTED[1:], list(reversed(TRUSTED))])
def test_a_pod_trusting_some_of_the_published_keys_passes(keys: list[str]) -> None:
    """A pod created before a signing key was added carries the shorter list the webhook
    injected then: rotation adds a key, activates it later, retires the old one last."""
    pod = injected()
    pod["spec"]["initContainers"][0]["env"][0]["value"] = brokers.sidecar_config(keys)
    assert refusal(pod) is None


def test_an_init_container_that_is_not_a_native_sidecar_is_refused() -> None:
    pod = injected()
    del pod["spec"]["initContainers"][0]["restartPolicy"]
    assert refusal(pod) == "pod_not_injected"


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (
            lambda p: p["metadata"].update(uid="u-2"),
            "pod_not_found",
            "the token's pod no longer exists",
        ),
        (
            lambda p: p["status"].update(phase="Succeeded"),
            "pod_terminated",
            "the token's pod has terminated",
        ),
        (
            lambda p: p["metadata"].update(deletionTimestamp="2026-11-23T00:00:00Z"),
            "pod_terminated",
            "the token's pod has terminated",
        ),
        (lambda p: p["spec"].update(hostIPC=True), "pod_not_injected", "the pod sets hostIPC"),
        (
            lambda p: p["spec"].update(hostNetwork=True),
            "pod_not_injected",
            "the pod sets hostNetwork",
        ),
        # The config from a ConfigMap the namespace controls: not what the webhook wrote.
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                valueFrom={"configMapKeyRef": {"name": "mine", "key": "c"}}
            ),
            "pod_not_injected",
            "the sidecar's config is not the injected value",
        ),
        # A key the operator never published, or no key at all: bundles it never signed.
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                value=brokers.sidecar_config(
                    [*TRUSTED[:1], *brokers.public_keys(signing.generate_private_key())]
                )
            ),
            "pod_not_injected",
            "the sidecar's config trusts a key the operator did not publish",
        ),
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                value=brokers.sidecar_config([])
            ),
            "pod_not_injected",
            "the sidecar's config trusts a key the operator did not publish",
        ),
        # Two containers named sidegate: which one holds the token is anyone's guess.
        (
            lambda p: p["spec"]["containers"].append(
                copy.deepcopy(p["spec"]["initContainers"][0]) | {"restartPolicy": None}
            ),
            "pod_not_injected",
            "the pod has no single container named 'sidegate'",
        ),
        # An init container mounting the token runs before the sidecar, with the token.
        (
            lambda p: p["spec"]["initContainers"].insert(
                0,
                {
                    "name": "setup",
                    "image": "busybox",
                    "volumeMounts": [{"name": "sidegate-token", "mountPath": "/t"}],
                },
            ),
            "pod_not_injected",
            "container 'setup' mounts the sidecar token",
        ),
    ],
)
def test_refusals(change: Any, code: str, message: str) -> None:
    pod = injected()
    change(pod)
    assert refused(pod) == (code, message)


def _config(change: Any) -> Any:
    """Set the sidecar's config to the injected one with ``change`` applied to it."""

    def apply(pod: dict[str, Any]) -> None:
        env = pod["spec"]["initContainers"][0]["env"][0]
        config = yaml.safe_load(env["value"])
        change(config)
        env["value"] = yaml.safe_dump(config)

    return apply


def _sidecar(change: Any) -> Any:
    return lambda pod: change(pod["spec"]["initContainers"][0])


def _app(change: Any) -> Any:
    return lambda pod: change(pod["spec"]["containers"][0])


_LOOPBACK = "https://127.0.0.1:9443"
_STEAL = ["sh", "-c", "cp /var/run/sidegate/token/token /shared/"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # (a) the config: the keys go where the pod's author says.
        (
            _config(lambda c: c["broker"].update(url=_LOOPBACK)),
            "the sidecar's config is not the operator's (broker differ)",
        ),
        (
            _config(
                lambda c: c["providers"]["openai"].update(
                    base_url="http://127.0.0.1:8080/v1", allow_insecure_http=True
                )
            ),
            "the sidecar's config is not the operator's (providers differ)",
        ),
        (
            _config(lambda c: c["providers"]["openai"].update(base_url="https://evil.example/v1")),
            "the sidecar's config is not the operator's (providers differ)",
        ),
        (
            _config(lambda c: c.update(identity={"service_account": "someone-else"})),
            "the sidecar's config is not the operator's (identity differ)",
        ),
        (
            _config(lambda c: c.update(audit=None)),
            "the sidecar's config is not the operator's (audit differ)",
        ),
        (
            _config(lambda c: c["broker"].update(ca_pem="-----BEGIN CERTIFICATE-----\nx\n")),
            "the sidecar's config is not the operator's (broker differ)",
        ),
        (
            _config(lambda c: c["broker"].update(ca_file="/tmp/ca.pem")),
            "the sidecar's config is not the operator's (broker differ)",
        ),
        (
            _config(lambda c: c["broker"].update(token_file="/tmp/token")),
            "the sidecar's config is not the operator's (broker differ)",
        ),
        # (b) the sidecar's own hooks and probes copying the token out.
        (
            _sidecar(lambda s: s.update(lifecycle={"postStart": {"exec": {"command": _STEAL}}})),
            "the sidecar container sets lifecycle, which the injector does not",
        ),
        (
            _sidecar(lambda s: s["startupProbe"].update(exec={"command": _STEAL})),
            "the sidecar's startupProbe is not the injected one",
        ),
        (
            _sidecar(lambda s: s["livenessProbe"].update(exec={"command": _STEAL})),
            "the sidecar's livenessProbe is not the injected one",
        ),
        (
            _sidecar(lambda s: s["livenessProbe"].update(httpGet={"port": 4000})),
            "the sidecar's livenessProbe is not the injected one",
        ),
        # (c) environment, mounts, working directory, command.
        (
            _sidecar(lambda s: s["env"].append({"name": "PYTHONPATH", "value": "/shared"})),
            "the sidecar's environment is not the injected one",
        ),
        (
            _sidecar(lambda s: s["env"].append({"name": "HTTPS_PROXY", "value": _LOOPBACK})),
            "the sidecar's environment is not the injected one",
        ),
        (
            _sidecar(lambda s: s.update(envFrom=[{"configMapRef": {"name": "mine"}}])),
            "the sidecar container sets envFrom, which the injector does not",
        ),
        (
            _sidecar(
                lambda s: s["env"][2].update(
                    valueFrom={"fieldRef": {"fieldPath": "metadata.labels['sa']"}}
                )
            ),
            "the sidecar's SIDEGATE_SERVICE_ACCOUNT is not the downward API's spec.serviceAccountName",
        ),
        (
            _sidecar(lambda s: s["env"][2].update(value="someone-else")),
            "the sidecar's SIDEGATE_SERVICE_ACCOUNT is not the downward API's spec.serviceAccountName",
        ),
        (
            _sidecar(lambda s: s.update(workingDir="/shared")),
            "the sidecar container sets workingDir, which the injector does not",
        ),
        (
            _sidecar(lambda s: s.update(command=["python"])),
            "the sidecar container sets command, which the injector does not",
        ),
        (
            _sidecar(lambda s: s.update(args=[*s["args"], "--debug"])),
            "the sidecar container runs another command",
        ),
        (
            _sidecar(
                lambda s: s["volumeMounts"].append(
                    {"name": "shared", "mountPath": "/usr/local/lib/python3.12/site-packages"}
                )
            ),
            "the sidecar's volume mounts are not the injected ones",
        ),
        (
            _sidecar(lambda s: s["volumeMounts"][0].update(readOnly=False)),
            "the sidecar's volume mounts are not the injected ones",
        ),
        (
            _sidecar(lambda s: s["securityContext"].update(allowPrivilegeEscalation=True)),
            "the sidecar's securityContext is weaker than the injected one",
        ),
        (
            _sidecar(lambda s: s["securityContext"].update(readOnlyRootFilesystem=False)),
            "the sidecar's securityContext is weaker than the injected one",
        ),
        (
            _sidecar(lambda s: s["securityContext"].update(runAsNonRoot=False, runAsUser=0)),
            "the sidecar does not run as the injected user and group",
        ),
        (
            _sidecar(lambda s: s["securityContext"].update(capabilities={"drop": []})),
            "the sidecar's securityContext is weaker than the injected one",
        ),
        (
            _sidecar(lambda s: s.update(terminationMessagePath="/var/run/sidegate/token/token")),
            "the sidecar container sets terminationMessagePath",
        ),
        # The volumes behind the sidecar's mounts.
        (
            lambda p: p["spec"]["volumes"].__setitem__(
                0, {"name": "sidegate-token", "emptyDir": {}}
            ),
            "volume 'sidegate-token' is not the injected token volume",
        ),
        (
            lambda p: p["spec"]["volumes"].__setitem__(
                1, {"name": "sidegate-spool", "persistentVolumeClaim": {"claimName": "shared"}}
            ),
            "volume 'sidegate-spool' is not the injected emptyDir",
        ),
        # (C) any container reaching the kubelet's pod directory, where the token file is.
        (
            lambda p: p["spec"]["volumes"].append({"name": "node", "hostPath": {"path": "/"}}),
            "volume 'node' is a hostPath volume (it could reach the sidecar's token)",
        ),
        (
            lambda p: p["spec"]["volumes"].append(
                {"name": "inline", "csi": {"driver": "example.csi.io"}}
            ),
            "volume 'inline' is a csi volume (it could reach the sidecar's token)",
        ),
        (
            _app(lambda a: a.update(securityContext={"privileged": True})),
            "container 'app' is privileged",
        ),
        (
            _app(lambda a: a.update(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})),
            "container 'app' adds capabilities",
        ),
    ],
)
def test_a_hand_made_sidecar_or_a_reaching_pod_is_refused(change: Any, message: str) -> None:
    """What a namespace admin who can create pods changes in the injected sidecar to get the
    real keys, the token or another identity: nothing but the injector's container passes."""
    pod = injected()
    assert refusal(pod) is None
    change(pod)
    assert refused(pod) == ("pod_not_injected", message)


def test_the_pod_as_the_api_server_returns_it_passes() -> None:
    """The API server fills in defaults the injector does not write: they are not refusals."""
    pod = injected()
    sidecar = pod["spec"]["initContainers"][0]
    sidecar.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File")
    for probe in ("startupProbe", "livenessProbe"):
        sidecar[probe].setdefault("successThreshold", 1)
        sidecar[probe].setdefault("failureThreshold", 3)
    assert refusal(pod) is None


def test_the_broker_ca_must_be_its_own() -> None:
    ca = "-----BEGIN CERTIFICATE-----\nbroker\n-----END CERTIFICATE-----\n"
    expected = dataclasses.replace(EXPECTED, ca_pem=ca)
    pod = brokers.injected_pod("team-a", "p", TRUSTED)
    pod["metadata"]["uid"] = "u-1"
    with pytest.raises(pods.Refused):  # injected without the CA the broker holds
        pods.check(pod, uid="u-1", expected=expected)
    spec = brokers.sidecar_spec(TRUSTED, broker_ca_pem=ca)
    pod["spec"]["initContainers"][0] = injection.container(spec)
    pods.check(pod, uid="u-1", expected=expected)


def test_a_token_without_its_pod_in_the_extras_is_not_pod_bound() -> None:
    with pytest.raises(pods.Refused) as caught:
        pods.pod_identity({"authentication.kubernetes.io/credential-id": ["JTI=x"]})
    assert caught.value.code == "token_not_pod_bound"
    assert pods.pod_identity(
        {
            "authentication.kubernetes.io/pod-name": ["p"],
            "authentication.kubernetes.io/pod-uid": ["u-1"],
        }
    ) == ("p", "u-1")


def test_published_keys_are_a_json_list_of_strings_or_nothing() -> None:
    assert pods.published_keys('["a", "b"]') == ("a", "b")
    for bad in (None, "", "not json", '{"a": 1}', "[1]"):
        assert pods.published_keys(bad) == ()


def _with_metrics_listener(port: int | None) -> tuple[dict[str, Any], pods.Expectations]:
    """A pod injected with a chart config that turns the metrics listener on, as the chart's
    own values do, and the broker's expectations from that same config."""
    config = copy.deepcopy(brokers.CHART_CONFIG)
    config["metrics"] = {} if port is None else {"port": port}
    spec = dataclasses.replace(brokers.sidecar_spec(TRUSTED), config=yaml.safe_dump(config))
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team-a", "uid": "u-1"},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running"},
    }
    pod = injection.apply(pod, injection.inject(pod, spec))
    return pod, dataclasses.replace(EXPECTED, config=config)


@pytest.mark.parametrize("port", [None, 9100])
def test_the_injected_metrics_port_passes_and_nothing_else_does(port: int | None) -> None:
    pod, expected = _with_metrics_listener(port)
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["ports"] == [
        {"name": "sidegate-prom", "containerPort": port or 9464, "protocol": "TCP"}
    ]
    pods.check(pod, uid="u-1", expected=expected)  # the injected pod is served
    # A hostPort would publish the sidecar's listener on the node; another port, or one the
    # chart's config does not have, is not what the injector wrote.
    for ports in (
        [{**sidecar["ports"][0], "hostPort": 9464}],
        [{"name": "sidegate-prom", "containerPort": 4000, "protocol": "TCP"}],
        [*sidecar["ports"], {"name": "other", "containerPort": 8080, "protocol": "TCP"}],
    ):
        changed = copy.deepcopy(pod)
        changed["spec"]["initContainers"][0]["ports"] = ports
        with pytest.raises(pods.Refused) as caught:
            pods.check(changed, uid="u-1", expected=expected)
        assert caught.value.code == "pod_not_injected"
    # The same port on a pod, while the chart's config declares none: refused as well.
    with pytest.raises(pods.Refused):
        pods.check(pod, uid="u-1", expected=EXPECTED)


def test_the_chart_default_config_injects_a_pod_the_broker_serves() -> None:
    """The chart's own sidecar.config (values.yaml), through the injector and the broker's
    check: what a default install injects must be what its broker serves."""
    values = yaml.safe_load(
        (Path(__file__).parents[2] / "charts/sidegate/values.yaml").read_text(encoding="utf-8")
    )
    config = values["sidecar"]["config"]
    config["broker"] = {"url": "https://broker.invalid:8443"}
    spec = dataclasses.replace(brokers.sidecar_spec(TRUSTED), config=yaml.safe_dump(config))
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team-a", "uid": "u-1"},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running"},
    }
    pod = injection.apply(pod, injection.inject(pod, spec))
    pods.check(pod, uid="u-1", expected=dataclasses.replace(EXPECTED, config=config))


def _env(name: str, change: Any) -> Any:
    """Change the sidecar's environment variable ``name``."""

    def apply(pod: dict[str, Any]) -> None:
        env = pod["spec"]["initContainers"][0]["env"]
        change(next(item for item in env if item["name"] == name))

    return apply


def _probe(change: Any) -> Any:
    """Change the sidecar's livenessProbe (a copy: the injector's probes share their parts)."""

    def apply(sidecar: dict[str, Any]) -> None:
        sidecar["livenessProbe"] = copy.deepcopy(sidecar["livenessProbe"])
        change(sidecar["livenessProbe"])

    return _sidecar(apply)


def _probe_command(command: Any) -> Any:
    return _probe(lambda p: p["exec"].update(command=command))


def _app_mounts_another_broker_token(pod: dict[str, Any]) -> None:
    """A volume of the app's own projecting a token for the broker's audience."""
    token = {"serviceAccountToken": {"audience": "sidegate", "path": "t"}}
    pod["spec"]["volumes"].append(
        {"name": "mine", "projected": {"sources": [{"configMap": {"name": "x"}}, token]}}
    )
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "mine", "mountPath": "/t"}]


def _host_path_after_a_volume_that_is_not_an_object(pod: dict[str, Any]) -> None:
    pod["spec"]["volumes"].insert(0, None)
    pod["spec"]["volumes"].append({"name": "node", "hostPath": {"path": "/"}})


_INJECTED_SCRIPT = (
    "import sys, urllib.request; "
    "sys.exit(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"
)
_ENV_NOT_INJECTED = "the sidecar's environment is not the injected one"
_POD_NAME_NOT_DOWNWARD = "the sidecar's SIDEGATE_POD_NAME is not the downward API's metadata.name"
_PROBE = "the sidecar's livenessProbe is not the injected one"
_MOUNTS = "the sidecar's volume mounts are not the injected ones"
_WEAKER = "the sidecar's securityContext is weaker than the injected one"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # The pod: shared process or host namespaces reach into the sidecar's processes.
        (
            lambda p: p["spec"].update(shareProcessNamespace=True),
            "the pod sets shareProcessNamespace",
        ),
        (lambda p: p["spec"].update(hostPID=True), "the pod sets hostPID"),
        # Which container is the sidecar.
        (
            lambda p: p["spec"].update(ephemeralContainers=p["spec"].pop("initContainers")),
            "the pod has no single container named 'sidegate'",
        ),
        (
            _sidecar(lambda s: s.pop("restartPolicy")),
            "the sidecar init container is not a native sidecar",
        ),
        (
            lambda p: p["spec"]["containers"].append(p["spec"].pop("initContainers")[0]),
            "the sidecar container sets a restartPolicy",
        ),
        # Other containers reaching the token.
        (
            lambda p: p["spec"].update(
                ephemeralContainers=[
                    {"name": "debug", "image": "busybox", "targetContainerName": "sidegate"}
                ]
            ),
            "an ephemeral container targets the sidecar",
        ),
        (
            lambda p: p["spec"].update(
                ephemeralContainers=[
                    {
                        "name": "debug",
                        "image": "busybox",
                        "volumeMounts": [{"name": "sidegate-token", "mountPath": "/t"}],
                    }
                ]
            ),
            "container 'debug' mounts the sidecar token",
        ),
        (
            _app_mounts_another_broker_token,
            "container 'app' mounts the sidecar token",
        ),
        (
            _host_path_after_a_volume_that_is_not_an_object,
            "volume 'node' is a hostPath volume (it could reach the sidecar's token)",
        ),
        # The config.
        (
            _env("SIDEGATE_CONFIG", lambda e: e.update(value="[1, 2]")),
            "the sidecar's config is not the injected value",
        ),
        (
            _config(lambda c: c.update(policy="trusted_keys")),
            "the sidecar's config trusts a key the operator did not publish",
        ),
        (
            _config(lambda c: c.update(identity={"service_account": "x"}, audit=None)),
            "the sidecar's config is not the operator's (audit, identity differ)",
        ),
        (
            _config(lambda c: c.update(logging={"level": "TRACE"})),
            "the sidecar's config is not the operator's (logging differ)",
        ),
        # The environment.
        (_sidecar(lambda s: s.pop("env")), "the sidecar has no injected environment"),
        (_sidecar(lambda s: s["env"].append("PYTHONPATH=/shared")), _ENV_NOT_INJECTED),
        (
            _env("SIDEGATE_POD_NAME", lambda e: (e.pop("valueFrom"), e.update(value="p"))),
            _POD_NAME_NOT_DOWNWARD,
        ),
        (
            _env(
                "SIDEGATE_POD_NAME",
                lambda e: e["valueFrom"].update(configMapKeyRef={"name": "m", "key": "k"}),
            ),
            _POD_NAME_NOT_DOWNWARD,
        ),
        (
            _env("SIDEGATE_POD_NAME", lambda e: e["valueFrom"]["fieldRef"].update(apiVersion="v2")),
            _POD_NAME_NOT_DOWNWARD,
        ),
        (
            _env("SIDEGATE_POD_NAME", lambda e: e["valueFrom"]["fieldRef"].update(extra="x")),
            _POD_NAME_NOT_DOWNWARD,
        ),
        # The image, command and ports.
        (
            _sidecar(lambda s: s.update(image="sidegate:other")),
            "the sidecar container runs another image",
        ),
        (
            _sidecar(lambda s: s.update(command=["python"], workingDir="/shared")),
            "the sidecar container sets command, workingDir, which the injector does not",
        ),
        (
            _sidecar(lambda s: s.update(ports=[{"containerPort": 4000}])),
            "the sidecar's ports are not the injected ones",
        ),
        # The probes: exactly the injected command, with a port.
        (_probe(lambda p: p.pop("exec")), _PROBE),
        (_probe(lambda p: p.update(exec={"command": p["exec"]["command"], "x": 1})), _PROBE),
        (_probe_command(["python", "-c"]), _PROBE),
        (_probe_command({"python": 1, "-c": 2, "x": 3}), _PROBE),
        (_probe_command(["python", "-c", _INJECTED_SCRIPT.format(port=4000), "x"]), _PROBE),
        (_probe_command(["sh", "-c", _INJECTED_SCRIPT.format(port=4000)]), _PROBE),
        (_probe_command(["python", "-c", 4000]), _PROBE),
        (_probe_command(["python", "-c", _INJECTED_SCRIPT.format(port="x")]), _PROBE),
        (_probe_command(["python", "-c", _INJECTED_SCRIPT.format(port=None)]), _PROBE),
        (_probe_command(["python", "-c", _INJECTED_SCRIPT.format(port="")]), _PROBE),
        # The mounts.
        (_sidecar(lambda s: s.pop("volumeMounts")), _MOUNTS),
        (_sidecar(lambda s: s["volumeMounts"][0].update(subPath="token")), _MOUNTS),
        # The security context.
        (
            _sidecar(lambda s: s.pop("securityContext")),
            "the sidecar's securityContext is not the injected one",
        ),
        (
            _sidecar(lambda s: s["securityContext"].update(procMount="Unmasked")),
            "the sidecar's securityContext is not the injected one",
        ),
        (_sidecar(lambda s: s["securityContext"].update(runAsNonRoot=False)), _WEAKER),
        (_sidecar(lambda s: s["securityContext"].update(privileged=True)), _WEAKER),
        (
            _sidecar(lambda s: s["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
            _WEAKER,
        ),
    ],
)
def test_each_refusal_says_what_is_not_injected(change: Any, message: str) -> None:
    pod = injected()
    change(pod)
    assert refused(pod) == ("pod_not_injected", message)


def test_what_the_injector_may_have_written_passes() -> None:
    """A log level the pod asked for, a fieldRef without its default apiVersion, every probe
    timing, another projected token volume for another audience (and volumes that are not
    even objects: skipped, not a crash), and in platform mode any user id but root's."""
    pod = injected()
    _config(lambda c: c.update(logging={"level": "DEBUG"}))(pod)
    _env("SIDEGATE_POD_NAME", lambda e: e["valueFrom"]["fieldRef"].pop("apiVersion"))(pod)
    _probe(
        lambda p: p.update(
            timeoutSeconds=3,
            periodSeconds=30,
            failureThreshold=3,
            successThreshold=1,
            initialDelaySeconds=5,
        )
    )(pod)
    pod["spec"]["volumes"] += [None, {"name": "odd", "projected": {"sources": [None]}}]
    pod["spec"]["volumes"].append(
        {
            "name": "vault",
            "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}]},
        }
    )
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "vault", "mountPath": "/v"}]
    assert refused(pod) is None
    platform = dataclasses.replace(EXPECTED, fixed_user=False)
    for uid in (1, 1000650000):
        _sidecar(lambda s, uid=uid: s["securityContext"].update(runAsUser=uid, runAsGroup=uid))(pod)
        assert refused(pod, platform) is None, uid
        assert refused(pod) == (
            "pod_not_injected",
            "the sidecar does not run as the injected user and group",
        )


@pytest.mark.parametrize(
    "extra",
    [
        {"authentication.kubernetes.io/pod-name": ["p"]},
        {"authentication.kubernetes.io/pod-uid": ["u-1"]},
        {
            "authentication.kubernetes.io/pod-name": [],
            "authentication.kubernetes.io/pod-uid": ["u"],
        },
    ],
)
def test_a_token_needs_both_its_pod_name_and_uid(extra: dict[str, list[str]]) -> None:
    with pytest.raises(pods.Refused) as caught:
        pods.pod_identity(extra)
    assert (caught.value.code, str(caught.value)) == (
        "token_not_pod_bound",
        "the token is not bound to a pod",
    )
