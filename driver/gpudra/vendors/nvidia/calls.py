"""The one translation of pynvml's exceptions: every NVML call gpudra makes goes through :class:`Nvml`.

:class:`Nvml` calls a pynvml function by name on the module it was given (the real ``pynvml`` or the fake,
:class:`~gpudra.vendors.mock.fake_nvml.FakeNvml`) and raises :class:`NvmlError` for any failure, a function
this pynvml lacks included (named ``FUNCTION_NOT_FOUND``, as NVML names a symbol its library lacks). What an
error means for a caller is its policy: discovery's is :mod:`~gpudra.vendors.nvidia.reader`; code that changes
the GPU lets the error propagate. The categories it needs are properties of the error:

* :attr:`NvmlError.value_absent` — NOT_SUPPORTED, FUNCTION_NOT_FOUND, NOT_FOUND, NO_PERMISSION: this GPU (or
  this driver, or this user) has no answer to that one question;
* :attr:`NvmlError.device_fatal` — GPU_IS_LOST, UNKNOWN and the other errors that mean the GPU itself (or
  NVML as a whole) is broken.

An :class:`Nvml` holds no mutable state after construction; it may be used from several threads at once
(NVML is thread-safe).
"""

from __future__ import annotations

import logging
from types import MappingProxyType, ModuleType
from typing import Any, Final, cast

from gpudra.vendors.base import DiscoveryError

log = logging.getLogger(__name__)

MOCK_HINT: Final = "To run without GPUs, use `--backend mock --profile dgx-h100`."

#: The error name of a function this pynvml does not have (same meaning as NVML_ERROR_FUNCTION_NOT_FOUND).
FUNCTION_NOT_FOUND: Final = "FUNCTION_NOT_FOUND"
#: The error name of an error whose code is not an integer.
UNKNOWN_CODE: Final = "UNKNOWN_CODE"

_ABSENT_ERRORS: Final = frozenset({"NOT_SUPPORTED", FUNCTION_NOT_FOUND, "NOT_FOUND", "NO_PERMISSION"})
_DEVICE_FATAL_ERRORS: Final = frozenset({
    "GPU_IS_LOST", "UNKNOWN", "RESET_REQUIRED", "GPU_NOT_FOUND", "UNINITIALIZED", "DRIVER_NOT_LOADED",
    "LIB_RM_VERSION_MISMATCH",
})  # fmt: skip
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


class NvmlError(Exception):
    """An NVML call failed. ``name`` is the NVML error without its prefix (``"NOT_SUPPORTED"``,
    ``"GPU_IS_LOST"``, ``"FUNCTION_NOT_FOUND"``; the code as text for a code NVML does not name),
    ``function`` the pynvml function, ``message`` what went wrong for humans, ``code`` NVML's return code."""

    def __init__(self, name: str, function: str, message: str, code: int | None = None) -> None:
        super().__init__(f"{function}: {message}")
        self.name = name
        self.function = function
        self.message = message
        self.code = code

    @property
    def value_absent(self) -> bool:
        """The value asked for does not exist here (unsupported, not found, not permitted, no function)."""
        return self.name in _ABSENT_ERRORS

    @property
    def device_fatal(self) -> bool:
        """The GPU itself (or NVML as a whole) is lost or broken: nothing more can be asked of it."""
        return self.name in _DEVICE_FATAL_ERRORS


class Nvml:
    """Calls pynvml (the real module or a fake with the same functions) and raises :class:`NvmlError`."""

    def __init__(self, nvml: ModuleType | object) -> None:
        self._nvml = cast(Any, nvml)
        self._error_class: type[Exception] = self._nvml.NVMLError
        names = {getattr(self._nvml, f"NVML_ERROR_{n}", None): n for n in _ERROR_NAMES}
        self._names: Final = MappingProxyType({code: n for code, n in names.items() if isinstance(code, int)})

    @property
    def module(self) -> Any:
        """The pynvml module, for its constants and structure types (never to call a function)."""
        return self._nvml

    def has(self, function: str) -> bool:
        """Whether this pynvml has ``function``."""
        return callable(getattr(self._nvml, function, None))

    def constant(self, name: str, default: int) -> int:
        """An integer constant of this pynvml, ``default`` when it lacks it."""
        value = getattr(self._nvml, name, default)
        return value if isinstance(value, int) else default

    def call(self, function: str, *args: Any) -> Any:
        """``function(*args)``'s result; :class:`NvmlError` for any NVML error or a missing function."""
        fn = getattr(self._nvml, function, None)
        if not callable(fn):
            raise NvmlError(FUNCTION_NOT_FOUND, function, f"this pynvml has no {function}")
        try:
            return fn(*args)
        except self._error_class as err:
            raise self.error(function, err) from err

    def error(self, function: str, err: BaseException) -> NvmlError:
        """``err`` (a pynvml exception raised by ``function``) as an :class:`NvmlError`."""
        code = getattr(err, "value", None)
        if not isinstance(code, int) or isinstance(code, bool):
            return NvmlError(UNKNOWN_CODE, function, describe(err))
        return NvmlError(self._names.get(code, str(code)), function, describe(err), code)

    def init(self) -> None:
        """``nvmlInit``; :class:`DiscoveryError` (saying how to run without GPUs) when it fails."""
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
        """``nvmlShutdown``; a failure is logged, never raised."""
        try:
            self._nvml.nvmlShutdown()
        except self._error_class as err:
            log.warning("nvmlShutdown failed: %s", describe(err))


def describe(err: BaseException) -> str:
    """An exception as ``"<class>: <message>"`` (``"NVMLError_GpuIsLost: GPU is lost"``)."""
    return f"{type(err).__name__}: {err}"
