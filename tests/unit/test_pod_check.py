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
    try:
        pods.check(pod, uid=uid, expected=EXPECTED)
    except pods.Refused as exc:
        return exc.code
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
    ("change", "code"),
    [
        (lambda p: p["metadata"].update(uid="u-2"), "pod_not_found"),
        (lambda p: p["status"].update(phase="Succeeded"), "pod_terminated"),
        (
            lambda p: p["metadata"].update(deletionTimestamp="2026-11-23T00:00:00Z"),
            "pod_terminated",
        ),
        (lambda p: p["spec"].update(hostIPC=True), "pod_not_injected"),
        (lambda p: p["spec"].update(hostNetwork=True), "pod_not_injected"),
        # The config from a ConfigMap the namespace controls: not what the webhook wrote.
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                valueFrom={"configMapKeyRef": {"name": "mine", "key": "c"}}
            ),
            "pod_not_injected",
        ),
        # A key the operator never published, or no key at all: bundles it never signed.
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                value=brokers.sidecar_config(
                    [*TRUSTED[:1], *brokers.public_keys(signing.generate_private_key())]
                )
            ),
            "pod_not_injected",
        ),
        (
            lambda p: p["spec"]["initContainers"][0]["env"][0].update(
                value=brokers.sidecar_config([])
            ),
            "pod_not_injected",
        ),
        # Two containers named sidegate: which one holds the token is anyone's guess.
        (
            lambda p: p["spec"]["containers"].append(
                copy.deepcopy(p["spec"]["initContainers"][0]) | {"restartPolicy": None}
            ),
            "pod_not_injected",
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
        ),
    ],
)
def test_refusals(change: Any, code: str) -> None:
    pod = injected()
    change(pod)
    assert refusal(pod) == code


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
    "change",
    [
        # (a) the config: the keys go where the pod's author says.
        _config(lambda c: c["broker"].update(url=_LOOPBACK)),
        _config(
            lambda c: c["providers"]["openai"].update(
                base_url="http://127.0.0.1:8080/v1", allow_insecure_http=True
            )
        ),
        _config(lambda c: c["providers"]["openai"].update(base_url="https://evil.example/v1")),
        _config(lambda c: c.update(identity={"service_account": "someone-else"})),
        _config(lambda c: c.update(audit=None)),
        _config(lambda c: c["broker"].update(ca_pem="-----BEGIN CERTIFICATE-----\nx\n")),
        _config(lambda c: c["broker"].update(ca_file="/tmp/ca.pem")),
        _config(lambda c: c["broker"].update(token_file="/tmp/token")),
        # (b) the sidecar's own hooks and probes copying the token out.
        _sidecar(lambda s: s.update(lifecycle={"postStart": {"exec": {"command": _STEAL}}})),
        _sidecar(lambda s: s["startupProbe"].update(exec={"command": _STEAL})),
        _sidecar(lambda s: s["livenessProbe"].update(exec={"command": _STEAL})),
        _sidecar(lambda s: s["livenessProbe"].update(httpGet={"port": 4000})),
        # (c) environment, mounts, working directory, command.
        _sidecar(lambda s: s["env"].append({"name": "PYTHONPATH", "value": "/shared"})),
        _sidecar(lambda s: s["env"].append({"name": "HTTPS_PROXY", "value": _LOOPBACK})),
        _sidecar(lambda s: s.update(envFrom=[{"configMapRef": {"name": "mine"}}])),
        _sidecar(
            lambda s: s["env"][2].update(
                valueFrom={"fieldRef": {"fieldPath": "metadata.labels['sa']"}}
            )
        ),
        _sidecar(lambda s: s["env"][2].update(value="someone-else")),
        _sidecar(lambda s: s.update(workingDir="/shared")),
        _sidecar(lambda s: s.update(command=["python"])),
        _sidecar(lambda s: s.update(args=[*s["args"], "--debug"])),
        _sidecar(
            lambda s: s["volumeMounts"].append(
                {"name": "shared", "mountPath": "/usr/local/lib/python3.12/site-packages"}
            )
        ),
        _sidecar(lambda s: s["volumeMounts"][0].update(readOnly=False)),
        _sidecar(lambda s: s["securityContext"].update(allowPrivilegeEscalation=True)),
        _sidecar(lambda s: s["securityContext"].update(readOnlyRootFilesystem=False)),
        _sidecar(lambda s: s["securityContext"].update(runAsNonRoot=False, runAsUser=0)),
        _sidecar(lambda s: s["securityContext"].update(capabilities={"drop": []})),
        _sidecar(lambda s: s.update(terminationMessagePath="/var/run/sidegate/token/token")),
        # The volumes behind the sidecar's mounts.
        lambda p: p["spec"]["volumes"].__setitem__(0, {"name": "sidegate-token", "emptyDir": {}}),
        lambda p: p["spec"]["volumes"].__setitem__(
            1, {"name": "sidegate-spool", "persistentVolumeClaim": {"claimName": "shared"}}
        ),
        # (C) any container reaching the kubelet's pod directory, where the token file is.
        lambda p: p["spec"]["volumes"].append({"name": "node", "hostPath": {"path": "/"}}),
        lambda p: p["spec"]["volumes"].append(
            {"name": "inline", "csi": {"driver": "example.csi.io"}}
        ),
        _app(lambda a: a.update(securityContext={"privileged": True})),
        _app(lambda a: a.update(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})),
    ],
)
def test_a_hand_made_sidecar_or_a_reaching_pod_is_refused(change: Any) -> None:
    """What a namespace admin who can create pods changes in the injected sidecar to get the
    real keys, the token or another identity: nothing but the injector's container passes."""
    pod = injected()
    assert refusal(pod) is None
    change(pod)
    assert refusal(pod) == "pod_not_injected"


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
