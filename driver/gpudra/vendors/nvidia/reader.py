"""Discovery's rules for NVML errors, one :class:`Reader` per discovery pass.

Discovery never fails because one value cannot be read. What an
:class:`~gpudra.vendors.nvidia.calls.NvmlError` means while reading:

* a value that is absent (NOT_SUPPORTED, FUNCTION_NOT_FOUND, NOT_FOUND, NO_PERMISSION, or a function this
  pynvml lacks): that one value is unknown (``None``); the attribute is omitted, never defaulted.
* GPU_IS_LOST, UNKNOWN and other errors that mean the GPU itself is broken: :class:`DeviceFailure`, and
  discovery skips that GPU (with a line in ``Inventory.warnings`` and the log); the other GPUs are kept.
* any other error: the value is unknown and a warning says why — unless the caller said it expects that
  error (:meth:`Reader.outcome` ``expected=``), e.g. INVALID_ARGUMENT past the last NVLink.

The warnings belong to the one pass that made the reader; passes running at once never see each other's.
"""

from __future__ import annotations

from typing import Any

from gpudra.vendors.nvidia.calls import Nvml, NvmlError


class DeviceFailure(Exception):
    """NVML reported that a GPU itself is lost or broken; discovery skips that GPU."""


class Reader:
    """Reads values through ``nvml`` for one discovery pass, collecting that pass's warnings."""

    def __init__(self, nvml: Nvml) -> None:
        self._nvml = nvml
        self._warnings: list[str] = []

    @property
    def nvml(self) -> Nvml:
        """The call layer, for constants, structure types and whether a function exists."""
        return self._nvml

    @property
    def warnings(self) -> tuple[str, ...]:
        """This pass's warnings so far, in the order they were made."""
        return tuple(self._warnings)

    def warn(self, line: str) -> None:
        """Add a line to this pass's warnings."""
        self._warnings.append(line)

    def value(self, function: str, *args: Any, what: str = "") -> Any:
        """Call ``function``; ``None`` for an unknown value; :class:`DeviceFailure` for a broken GPU."""
        try:
            return self._nvml.call(function, *args)
        except NvmlError as err:
            self._failed(err, what or function, ())
            return None

    def outcome(
        self, function: str, *args: Any, what: str = "", expected: tuple[str, ...] = ()
    ) -> tuple[Any, str | None]:
        """``(value, None)``, or ``(None, "NOT_SUPPORTED")`` etc. naming the NVML error (without prefix).

        Errors in ``expected`` are answers, not problems: no warning. A broken GPU raises DeviceFailure.
        ``what`` names the device in the warning (default: the function).
        """
        try:
            return self._nvml.call(function, *args), None
        except NvmlError as err:
            self._failed(err, what or function, expected)
            return None, err.name

    def _failed(self, err: NvmlError, what: str, expected: tuple[str, ...]) -> None:
        if err.device_fatal:
            raise DeviceFailure(str(err)) from err
        if not err.value_absent and err.name not in expected:
            self.warn(f"{what}: {err.function} failed ({err.message}); value omitted")


def text(value: object) -> str | None:
    """pynvml 13 gives ``str`` (its structures decode ``char[]`` fields); raw ctypes would give ``bytes``."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        value = value.strip("\x00").strip()
        return value or None
    return None


def integer(value: object) -> int | None:
    """``value`` when it is an integer (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def field(struct: object, name: str) -> int | None:
    """An integer field of a pynvml structure, ``None`` when the structure or the field is missing."""
    return integer(getattr(struct, name, None))
