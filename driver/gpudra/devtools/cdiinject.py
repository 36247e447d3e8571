"""What a container runtime makes of CDI device ids: a development tool, never loaded by the plugin.

The kubelet hands the runtime a list of qualified CDI device ids per container; the runtime's CDI library
(``tags.cncf.io/container-device-interface``, ``pkg/cdi`` ``Cache.InjectDevices``) resolves each one in the
spec files of its spec directories and applies the edits to the container's OCI spec:

- a spec's own ``containerEdits`` once per spec that contributes at least one device, before that device's
  edits; then each device's ``containerEdits``, in the order of the ids;
- environment variables are set one by one, a later value replacing an earlier one of the same name (so
  across specs the last writer wins); mounts and device nodes replace an earlier one at the same container
  path; additional GIDs accumulate; hooks are appended;
- an id no spec defines fails the container ("unresolvable CDI devices"); spec directories later in the list
  take precedence over earlier ones for the same device, and two specs in one directory defining the same
  device make it unresolvable.

:func:`inject` does that over the real spec files on disk, so a test can assert exactly what a container
sees: its environment, its mounts (and the content of a mounted file) and its device nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class CdiInjectError(Exception):
    """The runtime would refuse to create the container."""


@dataclass(frozen=True, slots=True)
class MountedPath:
    host_path: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerView:
    """What the CDI edits of a container's devices give it."""

    cdi_ids: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Mapping[str, MountedPath] = field(default_factory=dict)  # container path -> host file
    device_nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # container path -> node
    additional_gids: tuple[int, ...] = ()
    hooks: tuple[Mapping[str, Any], ...] = ()

    def read(self, container_path: str) -> bytes:
        """A mounted file's content as the container reads it."""
        mount = self.mounts.get(container_path)
        if mount is None:
            raise FileNotFoundError(f"{container_path} is not mounted into the container")
        return Path(mount.host_path).read_bytes()

    def listdir(self, container_dir: str) -> list[str]:
        """The names of the mounts directly inside ``container_dir`` (what ``ls`` shows of them)."""
        prefix = container_dir.rstrip("/") + "/"
        inside = (p[len(prefix) :] for p in self.mounts if p.startswith(prefix))
        return sorted(name for name in inside if "/" not in name)


@dataclass(frozen=True, slots=True)
class _Entry:
    spec_path: Path
    spec: Mapping[str, Any]
    device: Mapping[str, Any]


def _load_spec(path: Path) -> Mapping[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str):
        raise CdiInjectError(f"CDI spec {path}: not a spec with a kind")
    if not isinstance(data.get("devices"), list):
        raise CdiInjectError(f"CDI spec {path}: no devices")
    return data


def registry(spec_dirs: Sequence[Path]) -> dict[str, _Entry]:
    """Every resolvable qualified device id of the spec files in ``spec_dirs`` (later dirs win)."""
    out: dict[str, _Entry] = {}
    for directory in spec_dirs:
        here: dict[str, _Entry] = {}
        conflicts: set[str] = set()
        paths = sorted(directory.glob("*")) if directory.is_dir() else []
        for path in (p for p in paths if p.suffix in (".yaml", ".json")):
            spec = _load_spec(path)
            for device in spec["devices"]:
                qualified = f"{spec['kind']}={device['name']}"
                if qualified in here:
                    conflicts.add(qualified)
                here[qualified] = _Entry(path, spec, device)
        for qualified in conflicts:
            del here[qualified]
        out.update(here)
    return out


def inject(cdi_ids: Iterable[str], spec_dirs: Sequence[Path]) -> ContainerView:
    """Resolve ``cdi_ids`` in the specs on disk and apply their edits in the runtime's order."""
    ids = tuple(cdi_ids)
    known = registry(spec_dirs)
    unresolved = [i for i in ids if i not in known]
    if unresolved:
        raise CdiInjectError(f"unresolvable CDI devices {', '.join(unresolved)}")
    edits: list[Mapping[str, Any]] = []
    seen_specs: set[Path] = set()
    for i in ids:
        entry = known[i]
        if entry.spec_path not in seen_specs:
            seen_specs.add(entry.spec_path)
            edits.append(entry.spec.get("containerEdits") or {})
        edits.append(entry.device.get("containerEdits") or {})
    return _apply(ids, edits)


def _apply(ids: tuple[str, ...], edits: Iterable[Mapping[str, Any]]) -> ContainerView:
    env: dict[str, str] = {}
    mounts: dict[str, MountedPath] = {}
    nodes: dict[str, Mapping[str, Any]] = {}
    gids: list[int] = []
    hooks: list[Mapping[str, Any]] = []
    for e in edits:
        for item in e.get("env") or []:
            key, _, value = str(item).partition("=")
            env[key] = value
        for m in e.get("mounts") or []:
            mounts[m["containerPath"]] = MountedPath(m["hostPath"], tuple(m.get("options") or ()))
        for d in e.get("deviceNodes") or []:
            nodes[d["path"]] = d
        gids.extend(g for g in e.get("additionalGids") or [] if g not in gids)
        hooks.extend(e.get("hooks") or [])
    return ContainerView(ids, env, mounts, nodes, tuple(gids), tuple(hooks))
