"""Pods in the stand-in API: the checks of ``core/v1`` Pod creation that a driver-built Pod can fail.

Only what gpudra writes is checked (its MPS control daemon Pods, :mod:`gpudra.runtime.mps_pods`), with the
apiserver's field paths and messages: containers (name, image, unique names, volume mounts that name a
volume), volumes (name, one ``hostPath`` with an absolute path and a known type), restart policy, node name,
tolerations, labels. Nothing runs a Pod: it stays ``Pending`` unless a test writes its status. The spec is
immutable on update except for what the apiserver allows to change (images, tolerations added); the
stand-in refuses every spec change but ``containers[*].image``.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from gpudra.devtools.fakeapi import formats
from gpudra.devtools.fakeapi.formats import invalid_each, required
from gpudra.devtools.fakeapi.status import FieldError

__all__ = ["default_pod", "validate_pod"]

JSON = dict[str, Any]
RESTART_POLICIES: Final = ("Always", "OnFailure", "Never")
HOST_PATH_TYPES: Final = (
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
)
TOLERATION_OPERATORS: Final = ("Equal", "Exists")
TOLERATION_EFFECTS: Final = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_VOLUME_SOURCES: Final = ("hostPath", "emptyDir", "configMap", "secret", "projected", "downwardAPI")


def _supported(path: str, value: object, allowed: tuple[str, ...]) -> FieldError:
    shown = ", ".join(f'"{a}"' for a in allowed)
    return FieldError("FieldValueNotSupported", path, f"supported values: {shown}", value)


def default_pod(obj: JSON) -> None:
    """The defaults the apiserver fills in that gpudra reads back, and the status of a new Pod."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers") or []:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("imagePullPolicy", "IfNotPresent")
    obj["status"] = {"phase": "Pending"}


def validate_pod(obj: JSON, old: JSON | None) -> list[FieldError]:
    meta = obj.get("metadata") or {}
    errors = formats.object_name(meta.get("name", ""), meta.get("generateName", ""))
    errors += _labels(meta.get("labels") or {})
    spec: JSON = obj.get("spec") or {}
    if old is not None:
        return errors + _immutable(spec, old.get("spec") or {})
    volumes = spec.get("volumes") or []
    errors += _volumes(volumes)
    errors += _containers(spec.get("containers") or [], {v.get("name", "") for v in volumes})
    policy = spec.get("restartPolicy", "Always")
    if policy not in RESTART_POLICIES:
        errors.append(_supported("spec.restartPolicy", policy, RESTART_POLICIES))
    node = spec.get("nodeName", "")
    if node:
        errors += invalid_each("spec.nodeName", node, formats.dns_subdomain(node))
    for index, toleration in enumerate(spec.get("tolerations") or []):
        errors += _toleration(toleration, f"spec.tolerations[{index}]")
    return errors


def _labels(labels: JSON) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in labels.items():
        errors += invalid_each("metadata.labels", key, formats.label_key(key))
        errors += invalid_each("metadata.labels", str(value), formats.label_value(str(value)))
    return errors


def _containers(containers: list[JSON], volumes: set[str]) -> list[FieldError]:
    if not containers:
        return [required("spec.containers")]
    errors: list[FieldError] = []
    seen: set[str] = set()
    for index, container in enumerate(containers):
        path = f"spec.containers[{index}]"
        name = container.get("name", "")
        if not name:
            errors.append(required(f"{path}.name"))
        else:
            errors += invalid_each(f"{path}.name", name, formats.dns_label(name))
        if name in seen:
            errors.append(FieldError("FieldValueDuplicate", f"{path}.name", value=name))
        seen.add(name)
        if not container.get("image", "").strip():
            errors.append(required(f"{path}.image"))
        for m_index, mount in enumerate(container.get("volumeMounts") or []):
            m_path = f"{path}.volumeMounts[{m_index}]"
            if mount.get("name", "") not in volumes:
                errors.append(FieldError("FieldValueNotFound", f"{m_path}.name", value=mount.get("name", "")))
            if not mount.get("mountPath", ""):
                errors.append(required(f"{m_path}.mountPath"))
    return errors


def _volumes(volumes: list[JSON]) -> list[FieldError]:
    errors: list[FieldError] = []
    seen: set[str] = set()
    for index, volume in enumerate(volumes):
        path = f"spec.volumes[{index}]"
        name = volume.get("name", "")
        if not name:
            errors.append(required(f"{path}.name"))
        else:
            errors += invalid_each(f"{path}.name", name, formats.dns_label(name))
        if name in seen:
            errors.append(FieldError("FieldValueDuplicate", f"{path}.name", value=name))
        seen.add(name)
        sources = [s for s in _VOLUME_SOURCES if s in volume]
        if not sources:
            errors.append(required(path, "must specify a volume type"))
        elif len(sources) > 1:
            detail = "may not specify more than 1 volume type"
            errors.append(FieldError("FieldValueForbidden", f"{path}.{sources[1]}", detail))
        if "hostPath" in volume:
            errors += _host_path(volume["hostPath"] or {}, f"{path}.hostPath")
    return errors


def _host_path(source: JSON, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    target = source.get("path", "")
    if not target:
        errors.append(required(f"{path}.path"))
    elif ".." in target.split("/"):
        errors.append(FieldError("FieldValueInvalid", f"{path}.path", "must not contain '..'", target))
    kind = source.get("type", "")
    if kind not in HOST_PATH_TYPES:
        errors.append(_supported(f"{path}.type", kind, HOST_PATH_TYPES))
    return errors


def _toleration(toleration: JSON, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    operator = toleration.get("operator", "Equal")
    key = toleration.get("key", "")
    if operator not in TOLERATION_OPERATORS:
        errors.append(_supported(f"{path}.operator", operator, TOLERATION_OPERATORS))
    elif not key and operator != "Exists":
        detail = "operator must be Exists when `key` is empty, which means \"match all values and all keys\""
        errors.append(FieldError("FieldValueInvalid", f"{path}.operator", detail, operator))
    if operator == "Exists" and toleration.get("value"):
        detail = "value must be empty when `operator` is 'Exists'"
        errors.append(FieldError("FieldValueInvalid", f"{path}.operator", detail, toleration["value"]))
    effect = toleration.get("effect", "")
    if effect and effect not in TOLERATION_EFFECTS:
        errors.append(_supported(f"{path}.effect", effect, TOLERATION_EFFECTS))
    return errors


def _immutable(spec: JSON, old: JSON) -> list[FieldError]:
    """A Pod's spec changes only in its images (the stand-in's reading of the apiserver's update rule)."""
    mine, theirs = copy.deepcopy(spec), copy.deepcopy(old)
    for container in [*(mine.get("containers") or []), *(theirs.get("containers") or [])]:
        container.pop("image", None)
    if mine == theirs:
        return []
    detail = "pod updates may not change fields other than `spec.containers[*].image`"
    return [FieldError("FieldValueForbidden", "spec", detail)]
