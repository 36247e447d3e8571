"""NVIDIA host facts for prepare: MIG capability minors, the ``nvidia-caps`` major, the Toolkit's CDI spec.

Parsers are pure (:func:`parse_mig_minors`, :func:`parse_char_majors`, :func:`container_edits_from_cdi`); the
readers take the host roots and raise :class:`~gpudra.vendors.edits.EditsError` naming the file they could
not use.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gpudra.model.cdi import SPEC_FILE_PREFIX, CdiSpecError, ContainerEdits, DeviceNode, Hook, Mount
from gpudra.vendors.base import EditsError

MIG_MINORS: Final = "driver/nvidia-caps/mig-minors"  # under the proc root
CAPS_DEVICE: Final = "nvidia-caps"  # its name in /proc/devices
TOOLKIT_KIND: Final = "nvidia.com/gpu"

# ---- /proc ---------------------------------------------------------------------------------------------


def parse_mig_minors(text: str) -> dict[str, int]:
    """``gpu0/gi1/access 3`` (also ``gpu0/gi1/ci0/access``, ``config``, ``monitor``) -> ``{name: minor}``.

    A line that is not exactly a name and a decimal minor is skipped; the first of repeated names wins.
    """
    out: dict[str, int] = {}
    for line in text.split("\n"):  # the kernel separates lines with \n only; \r is just a character
        fields = line.split()
        if len(fields) == 2 and fields[1].isascii() and fields[1].isdigit():
            out.setdefault(fields[0], int(fields[1]))
    return out


def parse_char_majors(text: str) -> dict[str, int]:
    """The ``Character devices:`` section of ``/proc/devices`` as ``{name: major}`` (block ones ignored)."""
    out: dict[str, int] = {}
    in_char = False
    for line in text.split("\n"):  # the kernel separates lines with \n only; \r is just a character
        stripped = line.strip()
        if stripped.endswith(":"):
            in_char = stripped == "Character devices:"
            continue
        fields = stripped.split()
        if in_char and len(fields) == 2 and fields[0].isascii() and fields[0].isdigit():
            out.setdefault(fields[1], int(fields[0]))
    return out


def gi_access_key(gpu_minor: int, gi_id: int) -> str:
    return f"gpu{gpu_minor}/gi{gi_id}/access"


def ci_access_key(gpu_minor: int, gi_id: int, ci_id: int) -> str:
    return f"gpu{gpu_minor}/gi{gi_id}/ci{ci_id}/access"


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise EditsError(f"cannot read {path} ({what}): {e.strerror or e}") from e


def read_mig_minors(proc: Path) -> dict[str, int]:
    return parse_mig_minors(_read(proc / MIG_MINORS, "MIG capability minors"))


def read_caps_major(proc: Path) -> int:
    path = proc / "devices"
    major = parse_char_majors(_read(path, "device majors")).get(CAPS_DEVICE)
    if major is None:
        raise EditsError(f"{path} lists no {CAPS_DEVICE} character device: is the NVIDIA driver loaded?")
    return major


# ---- CDI containerEdits from another vendor's spec -----------------------------------------------------

_EDIT_KEYS: Final = frozenset({"env", "deviceNodes", "mounts", "hooks", "additionalGids"})
_NODE_KEYS: Final = frozenset(
    {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}
)
_MOUNT_KEYS: Final = frozenset({"hostPath", "containerPath", "options", "type"})
_HOOK_KEYS: Final = frozenset({"hookName", "path", "args", "env", "timeout"})


def _obj(raw: object, keys: frozenset[str], where: str) -> Mapping[str, object]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise CdiSpecError(f"{where}: not an object")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise CdiSpecError(f"{where}: unsupported field(s) {', '.join(unknown)}")
    return raw


def _list(raw: object, where: str) -> list[object]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CdiSpecError(f"{where}: not a list")
    return raw


def _str(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise CdiSpecError(f"{where}: not a non-empty string")
    return raw


def _opt_str(raw: object, where: str) -> str | None:
    return None if raw is None or raw == "" else _str(raw, where)


def _opt_int(raw: object, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise CdiSpecError(f"{where}: not a non-negative integer")
    return raw


def _int(raw: object, where: str) -> int:
    value = _opt_int(raw, where)
    if value is None:
        raise CdiSpecError(f"{where}: missing")
    return value


def _strs(raw: object, where: str) -> tuple[str, ...]:
    items = _list(raw, where)
    if not all(isinstance(s, str) for s in items):
        raise CdiSpecError(f"{where}: not a list of strings")
    return tuple(str(s) for s in items)


def _node(raw: object, where: str) -> DeviceNode:
    o = _obj(raw, _NODE_KEYS, where)
    return DeviceNode(
        path=_str(o.get("path"), f"{where}.path"),
        host_path=_opt_str(o.get("hostPath"), f"{where}.hostPath"),
        type=_opt_str(o.get("type"), f"{where}.type"),
        major=_opt_int(o.get("major"), f"{where}.major") or None,  # 0 means "unset" in CDI
        minor=_opt_int(o.get("minor"), f"{where}.minor"),
        permissions=_opt_str(o.get("permissions"), f"{where}.permissions"),
        file_mode=_opt_int(o.get("fileMode"), f"{where}.fileMode"),
        uid=_opt_int(o.get("uid"), f"{where}.uid"),
        gid=_opt_int(o.get("gid"), f"{where}.gid"),
    )


def _mount(raw: object, where: str) -> Mount:
    o = _obj(raw, _MOUNT_KEYS, where)
    return Mount(
        host_path=_str(o.get("hostPath"), f"{where}.hostPath"),
        container_path=_str(o.get("containerPath"), f"{where}.containerPath"),
        options=_strs(o.get("options"), f"{where}.options"),
        type=_opt_str(o.get("type"), f"{where}.type"),
    )


def _hook(raw: object, where: str) -> Hook:
    o = _obj(raw, _HOOK_KEYS, where)
    return Hook(
        hook_name=_str(o.get("hookName"), f"{where}.hookName"),
        path=_str(o.get("path"), f"{where}.path"),
        args=_strs(o.get("args"), f"{where}.args"),
        env=_strs(o.get("env"), f"{where}.env"),
        timeout=_opt_int(o.get("timeout"), f"{where}.timeout"),
    )


def container_edits_from_cdi(raw: object, where: str = "containerEdits") -> ContainerEdits:
    """A CDI ``containerEdits`` object as :class:`ContainerEdits`; :class:`CdiSpecError` for anything this
    plugin cannot carry over exactly (``intelRdt``, ``netDevices``, unknown fields, bad types, conflicts)."""
    if raw is None:
        return ContainerEdits()
    o = _obj(raw, _EDIT_KEYS, where)
    gids = _list(o.get("additionalGids"), f"{where}.additionalGids")
    edits = ContainerEdits(
        env=_strs(o.get("env"), f"{where}.env"),
        device_nodes=tuple(
            _node(n, f"{where}.deviceNodes[{i}]") for i, n in enumerate(_list(o.get("deviceNodes"), where))
        ),
        mounts=tuple(_mount(m, f"{where}.mounts[{i}]") for i, m in enumerate(_list(o.get("mounts"), where))),
        hooks=tuple(_hook(h, f"{where}.hooks[{i}]") for i, h in enumerate(_list(o.get("hooks"), where))),
        additional_gids=tuple(_int(g, f"{where}.additionalGids") for g in gids),
    )
    edits.validate(where)
    return ContainerEdits().merge(edits)  # duplicates collapse; two edits of one target raise


# ---- the NVIDIA Container Toolkit's spec --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolkitSpec:
    """An ``nvidia.com/gpu`` spec (``nvidia-ctk cdi generate``) and its spec-level edits: the user-space
    driver (libraries, binaries, firmware, hooks, control nodes) every one of its devices gets."""

    path: Path
    common: ContainerEdits


@dataclass(frozen=True, slots=True)
class ToolkitLookup:
    spec: ToolkitSpec | None
    problems: tuple[str, ...] = ()  # toolkit specs found but unusable, and why


_Parsed = ToolkitSpec | str | None  # a spec, why it is unusable, or "not a toolkit spec"


def parse_toolkit_spec(path: Path, text: str) -> _Parsed:
    """Pure: the toolkit spec in ``text``, a reason it cannot be used, or None when it is another kind."""
    import yaml  # only when a toolkit spec is read: its import costs the plugin's start-up ~5 ms

    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc: Any = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=loader)
    except (ValueError, yaml.YAMLError) as e:
        return f"{path}: not valid {path.suffix[1:].upper()}: {e}"
    if not isinstance(doc, dict) or doc.get("kind") != TOOLKIT_KIND:
        return None
    try:
        common = container_edits_from_cdi(doc.get("containerEdits"))
    except CdiSpecError as e:
        return f"{path}: {e}"
    if not common.mounts:
        return f"{path}: its containerEdits mount no driver files"
    return ToolkitSpec(path, common)


class _SpecCache:
    """Parsed spec files by (path, mtime, size): a prepare re-reads only files that changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[tuple[int, int], _Parsed]] = {}

    def get(self, path: Path) -> _Parsed:
        try:
            st = path.stat()
        except OSError:
            return None  # vanished between listing and stat
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._entries.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            parsed = parse_toolkit_spec(path, path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            parsed = f"{path}: cannot read: {e}"
        with self._lock:
            self._entries[path] = (key, parsed)
        return parsed

    def retain(self, paths: set[Path]) -> None:
        """Forget files no longer listed (other drivers' transient claim specs come and go)."""
        with self._lock:
            for gone in self._entries.keys() - paths:
                del self._entries[gone]


_CACHE = _SpecCache()


def _spec_files(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [
        directory / n
        for n in sorted(names)
        if n.endswith((".yaml", ".json")) and not n.startswith(SPEC_FILE_PREFIX)
    ]


def find_toolkit_spec(cdi_dirs: Sequence[Path]) -> ToolkitLookup:
    """The toolkit spec a runtime would prefer: CDI gives later directories priority (``/var/run/cdi`` over
    ``/etc/cdi``), so the last directory holding a usable spec wins; inside one directory, the first by name.
    gpudra's own claim specs are never read."""
    listed = [path for directory in reversed(cdi_dirs) for path in _spec_files(directory)]
    _CACHE.retain(set(listed))
    problems: list[str] = []
    for path in listed:
        parsed = _CACHE.get(path)
        if isinstance(parsed, ToolkitSpec):
            return ToolkitLookup(parsed, tuple(problems))
        if parsed is not None:
            problems.append(parsed)
    return ToolkitLookup(None, tuple(problems))


_LIB_VERSION = re.compile(r"lib(?:cuda|nvidia-ml)\.so\.(\d+\.\d+(?:\.\d+)?)")


def driver_version_of(mounts: Iterable[Mount]) -> str | None:
    """The driver version a set of mounts was made for, from ``libcuda.so.<version>`` (or libnvidia-ml)."""
    for m in mounts:
        found = _LIB_VERSION.fullmatch(m.container_path.rpartition("/")[2])
        if found:
            return found.group(1)
    return None
