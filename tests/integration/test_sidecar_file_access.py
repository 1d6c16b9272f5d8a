"""The injected sidecar can read its token and write its spool on a real kubelet: the test
kubelet mounts its volumes as root with the kubelet's owners and modes (defaultMode, the
projected token's fsUser/fsGroup rules, fsGroup ownership), and a child process with the
container's uid, gid and groups (what the kubelet gives it) reads and writes them, for the
pod shapes platform teams run. A token volume the sidecar's user cannot read fails here as
it would fail in the cluster (the last test: the injector's first token volume, 0440)."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sidegate.operator import injection
from tests.helpers import admission, kubelet, unprivileged
from tests.helpers.unprivileged import sidecar_python  # noqa: F401 - a fixture

SPEC = injection.SidecarSpec(image="sidegate:test", config="listen: {port: 4000}\n")
OPENSHIFT_UID = 1000650000  # the first uid of a namespace's range (openshift.io/sa.scc.uid-range)

# The child: what the sidecar does with its files, as the container's user.
READER = """
import os, sys
token = open(sys.argv[1]).read()
assert token.startswith("issued-for-"), token
spool = os.path.join(sys.argv[2], "spool")
os.makedirs(spool, exist_ok=True)
with open(os.path.join(spool, "segment"), "wb") as out:
    out.write(b"audit")
print(os.getuid(), os.getgid(), sorted(os.getgroups()))
"""


def issue(request: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    return f"issued-for-{request['audience']}-{pod['metadata']['name']}"


def injected(pod: dict[str, Any], spec: injection.SidecarSpec = SPEC) -> dict[str, Any]:
    return injection.apply(pod, injection.inject(pod, spec))


def sidecar_of(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(c for c in pod["spec"]["initContainers"] if c["name"] == injection.CONTAINER)


def plain() -> dict[str, Any]:
    return injected(admission.pod({injection.LABEL: "true"}))


def app_user_and_fs_group() -> dict[str, Any]:
    pod = admission.pod({injection.LABEL: "true"})
    pod["spec"]["securityContext"] = {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000}
    return injected(pod)


def everyone_as_the_image_user() -> dict[str, Any]:
    pod = admission.pod({injection.LABEL: "true"})
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": injection.UID}
    return injected(pod)


def openshift_restricted() -> dict[str, Any]:
    """The chart's sidecar.fixedUser=false, then what the restricted-v2 SCC's admission does:
    a uid of the namespace's range on every container that sets none, and the pod's fsGroup."""
    pod = injected(
        admission.pod({injection.LABEL: "true"}), dataclasses.replace(SPEC, fixed_user=False)
    )
    for kind in ("initContainers", "containers"):
        for container in pod["spec"][kind]:
            context = container.setdefault("securityContext", {})
            assert "runAsUser" not in context
            context["runAsUser"] = OPENSHIFT_UID
    pod["spec"]["securityContext"] = {"fsGroup": OPENSHIFT_UID}
    return pod


@dataclasses.dataclass(frozen=True)
class Case:
    pod: Callable[[], dict[str, Any]]
    token: kubelet.Owner  # what the kubelet leaves: owner, group, mode
    identity: unprivileged.Identity  # the sidecar's processes


CASES = {
    # No fsUser (the app sets no runAsUser), no fsGroup: the volume's defaultMode.
    "plain pod": Case(plain, kubelet.Owner(0, 0, 0o444), unprivileged.Identity(65532, 65532)),
    # The app's pod-wide user differs from the sidecar's: no fsUser; fsGroup: 0600 | 0440.
    "app user and fsGroup": Case(
        app_user_and_fs_group,
        kubelet.Owner(0, 2000, 0o640),
        unprivileged.Identity(65532, 65532, (2000,)),
    ),
    # Every container runs as 65532: the token is the sidecar's own, 0600.
    "every container as 65532": Case(
        everyone_as_the_image_user,
        kubelet.Owner(65532, 0, 0o600),
        unprivileged.Identity(65532, 65532),
    ),
    # One uid assigned to all containers, and the fsGroup: owner and group.
    "OpenShift restricted SCC": Case(
        openshift_restricted,
        kubelet.Owner(OPENSHIFT_UID, OPENSHIFT_UID, 0o640),
        unprivileged.Identity(OPENSHIFT_UID, 65532, (OPENSHIFT_UID,)),
    ),
}


@pytest.fixture
def node() -> Iterator[Path]:
    """The container's filesystem, under a directory every user may enter."""
    root = unprivileged.readable_directory("sidegate-node-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_sidecar_reader(
    python: unprivileged.Python, pod: Mapping[str, Any], root: Path
) -> subprocess.CompletedProcess[str]:
    who = kubelet.identity(pod, sidecar_of(pod))
    return subprocess.run(
        python.argv(
            "-c",
            READER,
            str(root / injection.TOKEN_DIR.lstrip("/") / injection.TOKEN_PATH),
            str(root / injection.SPOOL.lstrip("/")),
        ),
        env={"PATH": os.defpath, **python.env},
        user=who.uid,
        group=who.gid,
        extra_groups=list(who.groups),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_sidecar_user_reads_its_token_and_writes_its_spool(
    name: str,
    node: Path,
    sidecar_python: unprivileged.Python,  # noqa: F811
) -> None:
    case = CASES[name]
    pod = case.pod()
    sidecar = sidecar_of(pod)
    assert kubelet.identity(pod, sidecar) == case.identity
    kubelet.mount(pod, sidecar, node, issue)

    token = node / injection.TOKEN_DIR.lstrip("/") / injection.TOKEN_PATH
    found = os.stat(token)
    assert kubelet.Owner(found.st_uid, found.st_gid, unprivileged.mode(token)) == case.token
    done = run_sidecar_reader(sidecar_python, pod, node)
    assert done.returncode == 0, done.stderr[-2000:]
    uid, gid, groups = case.identity.uid, case.identity.gid, sorted(case.identity.groups)
    assert done.stdout.strip().split(maxsplit=2) == [str(uid), str(gid), str(groups)]
    segment = node / injection.SPOOL.lstrip("/") / "spool" / "segment"
    assert segment.read_bytes() == b"audit" and os.stat(segment).st_uid == uid


def test_a_token_volume_the_sidecar_user_cannot_read_fails_as_on_a_node(
    node: Path,
    sidecar_python: unprivileged.Python,  # noqa: F811
) -> None:
    """The injector's first token volume (defaultMode 0440, no fsGroup): root:root 0440 on
    the node, which the sidecar's 65532 cannot read. The test kubelet is as strict."""
    pod = copy.deepcopy(plain())
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == injection.TOKEN_VOLUME]
    volume["projected"]["defaultMode"] = 0o440
    kubelet.mount(pod, sidecar_of(pod), node, issue)
    done = run_sidecar_reader(sidecar_python, pod, node)
    assert done.returncode != 0
    assert "PermissionError" in done.stderr
