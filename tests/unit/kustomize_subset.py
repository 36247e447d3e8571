"""Renders exactly the kustomize subset that ``daemonset/`` uses, for tests on machines without kustomize.

Supported ``kustomization.yaml`` keys, with kustomize's semantics:

- ``resources``: YAML files (several documents each) and directories holding a ``kustomization.yaml``;
- ``patches``: ``path`` or inline ``patch``, optional ``target`` (``kind``, ``name``, ``namespace``,
  ``group``, ``version``). A patch that is a YAML list is JSON 6902 (``add``, ``remove``, ``replace``; it
  needs a ``target``); a mapping is a strategic-merge patch, applied to the object it names. Strategic
  merge knows ``null`` (delete the field) and the merge keys of pod templates (containers and volumes by
  ``name``, ``volumeMounts`` by ``mountPath``, ``env`` by ``name``, ``ports`` by ``containerPort``); every
  other list is replaced, as for fields without a patch strategy. ``$patch`` directives are not supported;
- ``images``: ``name`` with ``newName``, ``newTag`` and/or ``digest``, on containers and init containers;
- ``labels``: ``pairs`` on ``metadata.labels``, plus ``spec.template.metadata.labels`` with
  ``includeTemplates: true``; ``includeSelectors: true`` is not supported.

Anything else raises :class:`Unsupported`, so a manifest change that needs more fails loudly here instead of
being rendered wrongly. Where ``kubectl`` is installed, tests compare this renderer's output with
``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "labels"}
#: Strategic-merge keys of the pod-template lists (k8s.io/api patchMergeKey tags).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}
_POD_TEMPLATE_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"}


class Unsupported(ValueError):
    """The kustomization uses something outside the supported subset."""


def render(directory: Path) -> list[Obj]:
    """The objects ``kustomize build directory`` would print (order: resources, depth first)."""
    path = directory / "kustomization.yaml"
    k = yaml.safe_load(path.read_text())
    unknown = set(k) - _KEYS
    if unknown:
        raise Unsupported(f"{path}: unsupported keys {sorted(unknown)}")
    objs: list[Obj] = []
    for res in k.get("resources", []):
        target = (directory / res).resolve()
        objs.extend(render(target) if target.is_dir() else load_documents(target))
    for patch in k.get("patches", []):
        _apply_patch(objs, patch, directory)
    for image in k.get("images", []):
        _set_images(objs, image)
    for label in k.get("labels", []):
        _set_labels(objs, label)
    return objs


def load_documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def identity(obj: Obj) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


# ---- patches ---------------------------------------------------------------------------------------------


def _apply_patch(objs: list[Obj], entry: Obj, directory: Path) -> None:
    if set(entry) - {"path", "patch", "target"}:
        raise Unsupported(f"patch entry keys {sorted(entry)}")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):
        if target is None:
            raise Unsupported("a JSON 6902 patch needs a target")
        matches = [o for o in objs if _selected(o, target)]
        for obj in matches:
            for op in body:
                _json6902(obj, op)
    else:
        selector = target or {
            "kind": body["kind"],
            "name": body["metadata"]["name"],
            **({"namespace": body["metadata"]["namespace"]} if "namespace" in body["metadata"] else {}),
        }
        matches = [o for o in objs if _selected(o, selector)]
        for obj in matches:
            strategic_merge(obj, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")})
    if not matches:
        raise Unsupported(f"patch {entry} matches no resource")


def _selected(obj: Obj, target: Obj) -> bool:
    if set(target) - {"kind", "name", "namespace", "group", "version"}:
        raise Unsupported(f"target keys {sorted(target)}")
    group, _, version = obj["apiVersion"].rpartition("/")
    meta = obj.get("metadata", {})
    wanted = {
        "kind": obj["kind"],
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "group": group,
        "version": version,
    }
    return all(wanted[k] == v for k, v in target.items())


def strategic_merge(base: Obj, patch: Obj) -> None:
    """Merge ``patch`` into ``base`` in place (the subset described in the module docstring)."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise Unsupported(f"strategic-merge directive {key}")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            base[key] = _merge_list(base[key], value, MERGE_KEYS[key])
        else:
            base[key] = copy.deepcopy(value)


def _merge_list(base: list[Obj], patch: list[Obj], key: str) -> list[Obj]:
    """Patch items first, in patch order (merged into their base item), then the untouched base items."""
    by_key = {item[key]: item for item in base}
    merged: list[Obj] = []
    for item in patch:
        if item[key] in by_key:
            current = copy.deepcopy(by_key[item[key]])
            strategic_merge(current, item)
            merged.append(current)
        else:
            merged.append(copy.deepcopy(item))
    patched = {item[key] for item in patch}
    return merged + [item for item in base if item[key] not in patched]


def _json6902(obj: Obj, op: Obj) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if kind not in ("add", "remove", "replace"):
        raise Unsupported(f"JSON 6902 op {kind}")
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "remove":
            del node[index]
        else:
            node[index] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    elif kind == "replace" and last not in node:
        raise Unsupported(f"replace of missing {op['path']}")
    else:
        node[last] = copy.deepcopy(op["value"])


# ---- images and labels -----------------------------------------------------------------------------------


def containers(obj: Obj) -> Iterable[Obj]:
    """Containers and init containers of a workload's pod template (or of a Pod)."""
    spec = obj.get("spec", {})
    pod = spec if obj["kind"] == "Pod" else spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def _set_images(objs: list[Obj], entry: Obj) -> None:
    if set(entry) - {"name", "newName", "newTag", "digest"}:
        raise Unsupported(f"image entry keys {sorted(entry)}")
    for obj in objs:
        if obj["kind"] not in _POD_TEMPLATE_KINDS | {"Pod"}:
            continue
        for c in containers(obj):
            name, tag, digest = _split_image(c["image"])
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            tag = entry.get("newTag", tag)
            digest = entry.get("digest", digest)
            c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _set_labels(objs: list[Obj], entry: Obj) -> None:
    if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or entry.get("includeSelectors"):
        raise Unsupported(f"labels entry {entry}")
    for obj in objs:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
        if entry.get("includeTemplates") and obj["kind"] in _POD_TEMPLATE_KINDS:
            template = obj["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(entry["pairs"])
