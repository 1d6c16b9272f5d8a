"""The kubelet's part for a pod's volumes, as strict as the kubelet about files: the same
directory layout, and, when given a pod, the same owners and modes, created as root.

Layout (``AtomicWriter``, pkg/volume/util/atomic_writer.go): a new ``..<timestamp>``
directory (0755) with the files, a ``..data_tmp`` symlink to it renamed over ``..data``,
user-visible names as symlinks through ``..data``, then the old timestamped directory removed.

Owners and modes, from the Kubernetes source (v1.19 and later; kubernetes/kubernetes):

* Secret, ConfigMap and projected volumes: each file gets the item's ``mode``, else the
  volume's ``defaultMode``, which the API server defaults to 0644
  (``SecretVolumeSourceDefaultMode``, ``ProjectedVolumeSourceDefaultMode``); owner root:root.
  The volume's root is a tmpfs ``emptyDir`` (0777).
* A projected ``serviceAccountToken`` (pkg/volume/projected/projected.go, ``collectData``):
  ``defaultMode``, unless the pod has an fsUser or an fsGroup: then 0600. The fsUser is the
  one ``runAsUser`` all the pod's containers share, init and ephemeral ones included, each
  container's own ``securityContext.runAsUser`` else the pod's (pkg/volume/util/util.go,
  ``FsUserFrom``: none when one container sets none, or two differ); the token file is then
  owned by it (``FileProjection.FsUser``, chowned by the AtomicWriter). Since Kubernetes
  1.19 (kubernetes/enhancements#1598, "file permission handling in projected service
  account volume"); the docs:
  kubernetes.io/docs/concepts/storage/projected-volumes/#securitycontext-interactions.
* ``fsGroup`` (pkg/volume/volume_linux.go, ``SetVolumeOwnership``/``changeFilePermission``):
  every file and directory of the volume is chowned to group fsGroup, files get 0440 added on
  a read-only volume (Secret, ConfigMap, projected) and 0660 on others (emptyDir),
  directories also 0110 and setgid; symlinks are skipped. So a token is 0640 root:fsGroup
  (or fsUser:fsGroup). The kubelet also adds fsGroup to every container's supplementary
  groups (kubernetes.io/docs/tasks/configure-pod-container/security-context/).
* ``emptyDir`` on disk (pkg/volume/emptydir/empty_dir.go): the directory is 0777, root:root,
  then fsGroup as above.

Without a pod (``ProjectedVolume(root).publish(files)``) files are the test user's: tests of
the standalone sidecar, whose files an operator puts in place, use that.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.helpers.unprivileged import Identity

_counter = itertools.count()

DEFAULT_MODE = 0o644  # the API server's default for defaultMode (Secret, ConfigMap, projected)
TOKEN_MODE = 0o600  # a projected token's mode once the pod has an fsUser or an fsGroup
EMPTY_DIR_MODE = 0o777
_READ_ONLY_GROUP = 0o440  # volume_linux.go roMask
_READ_WRITE_GROUP = 0o660  # rwMask
_DIRECTORY_GROUP = 0o110 | stat.S_ISGID  # execMask and setgid
IMAGE_USER = 65532  # the Sidegate image's USER (Dockerfile), when no runAsUser applies


@dataclasses.dataclass(frozen=True)
class Owner:
    """A file's owner, group and mode as the kubelet leaves them."""

    uid: int
    gid: int
    mode: int


def _context(item: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (item or {}).get("securityContext") or {}


def _all_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    return [
        c
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(kind) or []
    ]


def run_as_user(pod: Mapping[str, Any], container: Mapping[str, Any]) -> int | None:
    """``securitycontext.DetermineEffectiveRunAsUser``: the container's, else the pod's."""
    found = _context(container).get("runAsUser", _context(pod.get("spec")).get("runAsUser"))
    return None if found is None else int(found)


def fs_user(pod: Mapping[str, Any]) -> int | None:
    """``FsUserFrom``: the one runAsUser every container shares, else none."""
    users = {run_as_user(pod, c) for c in _all_containers(pod)}
    if len(users) != 1 or None in users:
        return None
    return users.pop()


def fs_group(pod: Mapping[str, Any]) -> int | None:
    found = _context(pod.get("spec")).get("fsGroup")
    return None if found is None else int(found)


def identity(pod: Mapping[str, Any], container: Mapping[str, Any]) -> Identity:
    """The credentials of the container's processes: runAsUser/runAsGroup (container's, else
    the pod's, else the image's user), supplementalGroups and fsGroup as extra groups."""
    pod_context = _context(pod.get("spec"))
    uid = run_as_user(pod, container)
    gid = _context(container).get("runAsGroup", pod_context.get("runAsGroup"))
    groups = [int(g) for g in pod_context.get("supplementalGroups") or []]
    group = fs_group(pod)
    if group is not None:
        groups.append(group)
    return Identity(
        IMAGE_USER if uid is None else uid,
        IMAGE_USER if gid is None else int(gid),
        tuple(groups),
    )


def with_fs_group(owner: Owner, group: int | None, *, read_only: bool) -> Owner:
    """``changeFilePermission`` for a file (directories: ``directory_owner``)."""
    if group is None:
        return owner
    extra = _READ_ONLY_GROUP if read_only else _READ_WRITE_GROUP
    return Owner(owner.uid, group, owner.mode | extra)


def directory_owner(mode: int, group: int | None, *, read_only: bool) -> Owner:
    if group is None:
        return Owner(0, 0, mode)
    extra = (_READ_ONLY_GROUP if read_only else _READ_WRITE_GROUP) | _DIRECTORY_GROUP
    return Owner(0, group, mode | extra)


def _set(path: Path, owner: Owner) -> None:
    os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    os.chmod(path, owner.mode)


class ProjectedVolume:
    def __init__(self, root: Path, directory: Owner | None = None) -> None:
        self.root = root
        self.directory = directory  # the volume root's and timestamped directories' owner
        root.mkdir(parents=True, exist_ok=True)
        if directory is not None:
            _set(root, Owner(directory.uid, directory.gid, directory.mode | EMPTY_DIR_MODE))

    def publish(
        self, files: Mapping[str, str | bytes], owners: Mapping[str, Owner] | None = None
    ) -> None:
        """Write ``files`` as the kubelet does; with ``owners`` (by file name), as root with
        those owners and modes."""
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S") + f".{next(_counter):09d}"
        target = self.root / f"..{stamp}"
        target.mkdir()
        if self.directory is not None:
            _set(target, Owner(self.directory.uid, self.directory.gid, self.directory.mode))
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (target / name).write_bytes(data)
            if owners is not None:
                _set(target / name, owners[name])
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        temporary = self.root / "..data_tmp"
        os.symlink(target.name, temporary)
        os.replace(temporary, data_link)
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
        for entry in self.root.iterdir():
            if not entry.name.startswith("..") and entry.name not in files:
                entry.unlink()
        if old:
            shutil.rmtree(self.root / old)


# A TokenRequest for the pod: (the serviceAccountToken projection, the pod) -> the token.
TokenIssuer = Callable[[Mapping[str, Any], Mapping[str, Any]], str]


def projected(
    pod: Mapping[str, Any],
    source: Mapping[str, Any],
    issue: TokenIssuer,
    secrets: Mapping[str, Mapping[str, bytes]],
) -> tuple[dict[str, bytes], dict[str, Owner]]:
    """A projected volume's files and their owners (``collectData`` and fsGroup)."""
    default = int(source.get("defaultMode", DEFAULT_MODE))
    user, group = fs_user(pod), fs_group(pod)
    files: dict[str, bytes] = {}
    owners: dict[str, Owner] = {}
    for item in source.get("sources") or []:
        if "serviceAccountToken" in item:
            request = item["serviceAccountToken"]
            files[request["path"]] = issue(request, pod).encode()
            if user is None and group is None:
                owner = Owner(0, 0, default)
            else:
                owner = Owner(0 if user is None else user, 0, TOKEN_MODE)
            owners[request["path"]] = with_fs_group(owner, group, read_only=True)
        elif "secret" in item:
            data = secrets[item["secret"]["name"]]
            for key, path, mode in _items(item["secret"], data, default):
                files[path] = data[key]
                owners[path] = with_fs_group(Owner(0, 0, mode), group, read_only=True)
        else:
            raise NotImplementedError(f"projected source {sorted(item)}")
    return files, owners


def _items(
    source: Mapping[str, Any], data: Mapping[str, bytes], default: int
) -> list[tuple[str, str, int]]:
    """(key, path, mode) of a Secret's files: its ``items`` with their ``mode``, else every
    key at its own name with ``defaultMode``."""
    if source.get("items"):
        return [(i["key"], i["path"], int(i.get("mode", default))) for i in source["items"]]
    return [(key, key, default) for key in data]


def mount(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    root: Path,
    issue: TokenIssuer,
    secrets: Mapping[str, Mapping[str, bytes]] | None = None,
) -> None:
    """Set up every volume ``container`` mounts, under ``root`` (the container's filesystem),
    with the kubelet's owners and modes. Needs root, as the kubelet."""
    volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
    group = fs_group(pod)
    for volume_mount in container.get("volumeMounts") or []:
        path = root / volume_mount["mountPath"].lstrip("/")
        volume = volumes[volume_mount["name"]]
        if "emptyDir" in volume:
            path.mkdir(parents=True)
            _set(path, directory_owner(EMPTY_DIR_MODE, group, read_only=False))
        elif "projected" in volume:
            files, owners = projected(pod, volume["projected"], issue, secrets or {})
            writer = ProjectedVolume(path, directory_owner(0o755, group, read_only=True))
            writer.publish(files, owners)
        elif "secret" in volume:
            source = volume["secret"]
            data = (secrets or {})[source["secretName"]]
            default = int(source.get("defaultMode", DEFAULT_MODE))
            found = _items(source, data, default)
            writer = ProjectedVolume(path, directory_owner(0o755, group, read_only=True))
            writer.publish(
                {p: data[k] for k, p, _m in found},
                {p: with_fs_group(Owner(0, 0, m), group, read_only=True) for _k, p, m in found},
            )
        else:
            raise NotImplementedError(f"volume {sorted(volume)}")
