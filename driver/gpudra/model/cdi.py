"""Container Device Interface spec files: one transient spec per prepared claim.

The file is ``<cdi_root>/k8s.gpudra.io-claim_<claimUID>.yaml`` with kind ``k8s.gpudra.io/claim``. The
runtime's CDI cache indexes devices by name across ALL spec files of one kind, so every device is named
``<claimUID>-<deviceName>`` and its id is ``k8s.gpudra.io/claim=<claimUID>-<deviceName>``.

Everything here is pure; :class:`gpudra.state.cdi.CdiWriter` writes the files. Runtimes reject a spec whose
``cdiVersion`` they do not know, and the CDI library rejects one whose version is lower than the fields it
uses need, so the spec declares the LOWEST version that covers its fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from gpudra.model.names import CDI_CLASS, CDI_KIND, CDI_VENDOR

# cdiVersion history, from cncf-tags/container-device-interface SPEC.md ("Released versions") and
# specs-go/version.go (requiresVxyz), as of CDI 1.1.0:
#   0.3.0  earliest version the CDI library accepts (the baseline)
#   0.4.0  mounts[].type
#   0.5.0  deviceNodes[].hostPath; device names starting with a digit
#   0.6.0  annotations (spec and device level); dots in the class part of the kind
#   0.7.0  additionalGids; intelRdt
#   0.8.0  no spec change (Go API only: .ToOCI() removed)
#   1.0.0  no spec change (minimum-version logic moved into specs-go)
#   1.1.0  netDevices; intelRdt.schemata and intelRdt.enableMonitoring
BASELINE_CDI_VERSION: Final = "0.3.0"

SPEC_FILE_PREFIX: Final = f"{CDI_VENDOR}-{CDI_CLASS}_"
SPEC_FILE_SUFFIX: Final = ".yaml"

# A Kubernetes UID (a UUID in practice): it becomes part of a file name and of CDI device names.
_CLAIM_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
# CDI device names: alphanumeric first and last, [A-Za-z0-9_.:-] between (pkg/parser ValidateDeviceName).
_CDI_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")
_DEVICE_NODE_TYPES: Final = frozenset({"b", "c", "u", "p"})
#: OCI lifecycle hooks a CDI spec may add (pkg/cdi ``validHookNames``).
HOOK_NAMES: Final = frozenset(
    {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}
)


class CdiSpecError(ValueError):
    """A spec would be rejected by the CDI library (bad name, empty device, invalid edit)."""


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str  # inside the container
    host_path: str | None = None  # when it differs from ``path`` (needs cdiVersion 0.5.0)
    type: str | None = None  # "c", "b", "u", "p"
    major: int | None = None
    minor: int | None = None
    permissions: str | None = None  # cgroup permissions, some of "rwm"
    file_mode: int | None = None  # mode of the node created in the container (Go os.FileMode bits)
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str | None = None  # needs cdiVersion 0.4.0


@dataclass(frozen=True, slots=True)
class Hook:
    """An OCI hook the runtime runs on the host (``path`` is a host path; ``args`` includes argv[0])."""

    hook_name: str  # one of :data:`HOOK_NAMES`
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None  # seconds


_T = TypeVar("_T")


def _union(
    first: Iterable[_T], second: Iterable[_T], key: Callable[[_T], object], what: str
) -> tuple[_T, ...]:
    """Concatenate, collapsing exact duplicates; two different items with the same key are a conflict."""
    out: dict[object, _T] = {}
    for item in (*first, *second):
        k = key(item)
        if k in out and out[k] != item:
            raise CdiSpecError(f"conflicting {what}: {out[k]!r} and {item!r}")
        out.setdefault(k, item)
    return tuple(out.values())


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    env: tuple[str, ...] = ()  # "KEY=value"
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    additional_gids: tuple[int, ...] = ()
    hooks: tuple[Hook, ...] = ()  # in order; the runtime appends them to the OCI spec's hooks

    def merge(self, other: ContainerEdits) -> ContainerEdits:
        """Both sets of edits; exact duplicates collapse. The same env key, device path or mount target with
        different content raises :class:`CdiSpecError` (the runtime would silently keep one of them).
        Hooks are kept in order, exact duplicates once."""
        return ContainerEdits(
            env=_union(self.env, other.env, lambda e: e.partition("=")[0], "environment variables"),
            device_nodes=_union(self.device_nodes, other.device_nodes, lambda d: d.path, "device nodes"),
            mounts=_union(self.mounts, other.mounts, lambda m: m.container_path, "mounts"),
            additional_gids=_union(self.additional_gids, other.additional_gids, lambda g: g, "gids"),
            hooks=_union(self.hooks, other.hooks, lambda h: h, "hooks"),
        )

    def is_empty(self) -> bool:
        return not (self.env or self.device_nodes or self.mounts or self.additional_gids or self.hooks)

    def to_cdi(self) -> dict[str, Any]:
        """The ``containerEdits`` object of a CDI spec (empty fields left out)."""
        out: dict[str, Any] = {}
        if self.env:
            out["env"] = list(self.env)
        if self.device_nodes:
            out["deviceNodes"] = [_node_to_cdi(n) for n in self.device_nodes]
        if self.mounts:
            out["mounts"] = [_mount_to_cdi(m) for m in self.mounts]
        if self.additional_gids:
            out["additionalGids"] = list(self.additional_gids)
        if self.hooks:
            out["hooks"] = [_hook_to_cdi(h) for h in self.hooks]
        return out

    def validate(self, where: str) -> None:
        for env in self.env:
            if env.find("=") <= 0:
                raise CdiSpecError(f"{where}: invalid environment variable {env!r}")
        for node in self.device_nodes:
            if not node.path.startswith("/"):
                raise CdiSpecError(f"{where}: device node path {node.path!r} is not absolute")
            if node.type is not None and node.type not in _DEVICE_NODE_TYPES:
                raise CdiSpecError(f"{where}: device {node.path}: invalid type {node.type!r}")
            if node.permissions is not None and node.permissions.strip("rwm"):
                raise CdiSpecError(f"{where}: device {node.path}: invalid permissions {node.permissions!r}")
        for mount in self.mounts:
            if not mount.host_path or not mount.container_path:
                raise CdiSpecError(f"{where}: mount {mount!r} needs a host and a container path")
        for gid in self.additional_gids:
            if not 0 <= gid < 2**32:
                raise CdiSpecError(f"{where}: gid {gid} is out of range")
        for hook in self.hooks:
            _validate_hook(hook, where)


def _validate_hook(hook: Hook, where: str) -> None:
    if hook.hook_name not in HOOK_NAMES:
        raise CdiSpecError(f"{where}: invalid hook name {hook.hook_name!r}")
    if not hook.path.startswith("/"):
        raise CdiSpecError(f"{where}: hook path {hook.path!r} is not absolute")
    if any(e.find("=") <= 0 for e in hook.env):
        raise CdiSpecError(f"{where}: hook {hook.path}: invalid environment {hook.env!r}")
    if hook.timeout is not None and hook.timeout <= 0:
        raise CdiSpecError(f"{where}: hook {hook.path}: timeout must be positive")


def _node_to_cdi(node: DeviceNode) -> dict[str, Any]:
    out: dict[str, Any] = {"path": node.path}
    optional = {
        "hostPath": node.host_path,
        "type": node.type,
        "major": node.major,
        "minor": node.minor,
        "permissions": node.permissions,
        "fileMode": node.file_mode,
        "uid": node.uid,
        "gid": node.gid,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def _mount_to_cdi(mount: Mount) -> dict[str, Any]:
    out: dict[str, Any] = {"hostPath": mount.host_path, "containerPath": mount.container_path}
    if mount.options:
        out["options"] = list(mount.options)
    if mount.type:
        out["type"] = mount.type
    return out


def _hook_to_cdi(hook: Hook) -> dict[str, Any]:
    out: dict[str, Any] = {"hookName": hook.hook_name, "path": hook.path}
    if hook.args:
        out["args"] = list(hook.args)
    if hook.env:
        out["env"] = list(hook.env)
    if hook.timeout is not None:
        out["timeout"] = hook.timeout
    return out


@dataclass(frozen=True, slots=True)
class CdiDevice:
    name: str  # the full CDI device name, ``<claimUID>-<deviceName>`` (see :func:`cdi_device_name`)
    edits: ContainerEdits


def cdi_device_name(claim_uid: str, device_name: str) -> str:
    """The CDI device name of a claim's device: unique across every gpudra spec file."""
    return f"{claim_uid}-{device_name}"


def cdi_device_id(claim_uid: str, device_name: str) -> str:
    """The fully qualified CDI device id the kubelet hands to the runtime."""
    return f"{CDI_KIND}={cdi_device_name(claim_uid, device_name)}"


def is_claim_uid(text: str) -> bool:
    return _CLAIM_UID.fullmatch(text) is not None


def check_claim_uid(claim_uid: str) -> str:
    if not _CLAIM_UID.fullmatch(claim_uid):
        raise CdiSpecError(f"claim UID {claim_uid!r} is not usable in a CDI file or device name")
    return claim_uid


def build_spec(claim_uid: str, devices: Sequence[CdiDevice], common: ContainerEdits) -> dict[str, Any]:
    """The CDI spec (a YAML/JSON-ready dict) for one claim. ``common`` applies when any device is requested.

    Every device name must start with ``<claimUID>-`` so names never collide across claims' spec files.
    """
    check_claim_uid(claim_uid)
    if not devices:
        raise CdiSpecError(f"claim {claim_uid}: a CDI spec needs at least one device")
    seen: set[str] = set()
    out_devices: list[dict[str, Any]] = []
    for dev in devices:
        if not dev.name.startswith(f"{claim_uid}-") or not _CDI_NAME.fullmatch(dev.name):
            raise CdiSpecError(f"claim {claim_uid}: invalid CDI device name {dev.name!r} "
                               f"(want {cdi_device_name(claim_uid, '<device>')})")
        if dev.name in seen:
            raise CdiSpecError(f"claim {claim_uid}: duplicate CDI device name {dev.name!r}")
        if dev.edits.is_empty():
            raise CdiSpecError(f"claim {claim_uid}: device {dev.name} has no container edits")
        dev.edits.validate(f"device {dev.name}")
        seen.add(dev.name)
        out_devices.append({"name": dev.name, "containerEdits": dev.edits.to_cdi()})
    common.validate(f"claim {claim_uid}")
    spec: dict[str, Any] = {"cdiVersion": BASELINE_CDI_VERSION, "kind": CDI_KIND, "devices": out_devices}
    if not common.is_empty():
        spec["containerEdits"] = common.to_cdi()
    spec["cdiVersion"] = min_cdi_version(spec)
    return spec


def _all_edits(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    edits = [spec.get("containerEdits") or {}]
    edits += [d.get("containerEdits") or {} for d in spec.get("devices") or ()]
    return edits


def _requires_0_4(spec: Mapping[str, Any]) -> bool:
    return any(m.get("type") for e in _all_edits(spec) for m in e.get("mounts") or ())


def _requires_0_5(spec: Mapping[str, Any]) -> bool:
    if any(str(d.get("name", ""))[:1].isdigit() for d in spec.get("devices") or ()):
        return True
    return any(n.get("hostPath") for e in _all_edits(spec) for n in e.get("deviceNodes") or ())


def _requires_0_6(spec: Mapping[str, Any]) -> bool:
    if spec.get("annotations") or any(d.get("annotations") for d in spec.get("devices") or ()):
        return True
    _, slash, cls = str(spec.get("kind", "")).partition("/")
    return bool(slash) and "." in cls


def _requires_0_7(spec: Mapping[str, Any]) -> bool:
    return any(e.get("intelRdt") is not None or e.get("additionalGids") for e in _all_edits(spec))


def _requires_1_1(spec: Mapping[str, Any]) -> bool:
    for e in _all_edits(spec):
        rdt = e.get("intelRdt") or {}
        if e.get("netDevices") or rdt.get("schemata") is not None or rdt.get("enableMonitoring"):
            return True
    return False


# Newest first: the first version whose feature the spec uses is the minimum.
_REQUIREMENTS: Final = (
    ("1.1.0", _requires_1_1),
    ("0.7.0", _requires_0_7),
    ("0.6.0", _requires_0_6),
    ("0.5.0", _requires_0_5),
    ("0.4.0", _requires_0_4),
)


def min_cdi_version(spec: Mapping[str, Any]) -> str:
    """The lowest ``cdiVersion`` that supports every field ``spec`` (a CDI spec dict) uses."""
    for version, required in _REQUIREMENTS:
        if required(spec):
            return version
    return BASELINE_CDI_VERSION
