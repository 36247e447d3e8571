"""The one translation layer between pynvml's exceptions and gpudra's discovery rules.

pynvml is called only through :class:`NvmlCalls`. What an error means:

* NOT_SUPPORTED, FUNCTION_NOT_FOUND, NOT_FOUND, NO_PERMISSION (or a function this pynvml lacks): that one
  value is unknown (``None``); the attribute is omitted, never defaulted.
* GPU_IS_LOST, UNKNOWN and other errors that mean the GPU itself is broken: :class:`DeviceFailure`, and
  discovery skips that GPU (with a line in ``Inventory.warnings`` and the log); the other GPUs are kept.
* any other error: the value is unknown and a warning says why — unless the caller said it expects that
  error (:meth:`NvmlCalls.outcome` ``expected=``), e.g. INVALID_ARGUMENT past the last NVLink.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, Final, cast

from gpudra.vendors.base import DiscoveryError

log = logging.getLogger(__name__)

MOCK_HINT: Final = "To run without GPUs, use `--backend mock --profile dgx-h100`."

_ABSENT_ERRORS: Final = ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND", "NOT_FOUND", "NO_PERMISSION")
_DEVICE_FATAL_ERRORS: Final = (
    "GPU_IS_LOST", "UNKNOWN", "RESET_REQUIRED", "GPU_NOT_FOUND", "UNINITIALIZED", "DRIVER_NOT_LOADED",
    "LIB_RM_VERSION_MISMATCH",
)  # fmt: skip
#: Every nvmlReturn_t error name, to name an error by its code (looked up on the module, so a fake works).
_ERROR_NAMES: Final = (
    "UNINITIALIZED", "INVALID_ARGUMENT", "NOT_SUPPORTED", "NO_PERMISSION", "ALREADY_INITIALIZED", "NOT_FOUND",
    "INSUFFICIENT_SIZE", "INSUFFICIENT_POWER", "DRIVER_NOT_LOADED", "TIMEOUT", "IRQ_ISSUE",
    "LIBRARY_NOT_FOUND", "FUNCTION_NOT_FOUND", "CORRUPTED_INFOROM", "GPU_IS_LOST", "RESET_REQUIRED",
    "OPERATING_SYSTEM",
    "LIB_RM_VERSION_MISMATCH", "IN_USE", "MEMORY", "NO_DATA", "VGPU_ECC_NOT_SUPPORTED",
    "INSUFFICIENT_RESOURCES", "FREQ_NOT_SUPPORTED", "ARGUMENT_VERSION_MISMATCH", "DEPRECATED", "NOT_READY",
    "GPU_NOT_FOUND", "INVALID_STATE", "RESET_TYPE_NOT_SUPPORTED", "UNKNOWN",
)  # fmt: skip
#: What :meth:`NvmlCalls.outcome` reports for a function this pynvml does not have.
FUNCTION_NOT_FOUND: Final = "FUNCTION_NOT_FOUND"


class DeviceFailure(Exception):
    """NVML reported that a GPU itself is lost or broken; discovery skips that GPU."""


class NvmlCalls:
    """Calls pynvml (the real module or a fake with the same functions) and translates its errors."""

    def __init__(self, nvml: ModuleType | object) -> None:
        self._nvml = cast(Any, nvml)
        self._error_class: type[Exception] = self._nvml.NVMLError
        self._absent = self._codes(_ABSENT_ERRORS)
        self._fatal = self._codes(_DEVICE_FATAL_ERRORS)
        self._names = {getattr(self._nvml, f"NVML_ERROR_{n}", None): n for n in _ERROR_NAMES}
        self.warnings: list[str] = []

    @property
    def module(self) -> Any:
        """The pynvml module, for its constants and structure types (never to call a function)."""
        return self._nvml

    def _codes(self, names: tuple[str, ...]) -> frozenset[int]:
        known = (getattr(self._nvml, f"NVML_ERROR_{name}", None) for name in names)
        return frozenset(code for code in known if isinstance(code, int))

    def has(self, function: str) -> bool:
        return callable(getattr(self._nvml, function, None))

    def constant(self, name: str, default: int) -> int:
        value = getattr(self._nvml, name, default)
        return value if isinstance(value, int) else default

    def value(self, function: str, *args: Any, what: str = "") -> Any:
        """Call ``function``; ``None`` for an unknown value; :class:`DeviceFailure` for a broken GPU."""
        return self.outcome(function, *args, what=what)[0]

    def outcome(
        self, function: str, *args: Any, what: str = "", expected: tuple[str, ...] = ()
    ) -> tuple[Any, str | None]:
        """``(value, None)``, or ``(None, "NOT_SUPPORTED")`` etc. naming the NVML error (without prefix).

        Errors in ``expected`` are answers, not problems: no warning. A broken GPU raises DeviceFailure.
        """
        fn = getattr(self._nvml, function, None)
        if not callable(fn):
            return None, FUNCTION_NOT_FOUND  # an older pynvml: same as NVML_ERROR_FUNCTION_NOT_FOUND
        try:
            return fn(*args), None
        except self._error_class as err:
            code = getattr(err, "value", None)
            name = self._names.get(code, str(code)) if isinstance(code, int) else "UNKNOWN_CODE"
            if code in self._fatal:
                raise DeviceFailure(f"{function}: {describe(err)}") from err
            if code not in self._absent and name not in expected:
                problem = f"{function} failed ({describe(err)}); value omitted"
                self.warnings.append(f"{what or function}: {problem}")
            return None, name

    def init(self) -> None:
        try:
            self._nvml.nvmlInit()
        except self._error_class as err:
            code = getattr(err, "value", None)
            if code == getattr(self._nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", None):
                raise DiscoveryError(
                    "cannot load the NVIDIA Management Library (libnvidia-ml.so.1): is the NVIDIA driver "
                    f"installed and its library visible to this process? {MOCK_HINT}"
                ) from err
            raise DiscoveryError(f"NVML initialisation failed: {describe(err)}. {MOCK_HINT}") from err

    def shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._error_class as err:
            log.warning("nvmlShutdown failed: %s", describe(err))


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def text(value: object) -> str | None:
    """pynvml 13 gives ``str`` (its structures decode ``char[]`` fields); raw ctypes would give ``bytes``."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        value = value.strip("\x00").strip()
        return value or None
    return None


def integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def field(struct: object, name: str) -> int | None:
    """An integer field of a pynvml structure, ``None`` when the structure or the field is missing."""
    return integer(getattr(struct, name, None))
