"""amdsmi, optional: a guarded import, and the one translation layer for its errors.

The PyPI ``amdsmi`` wrapper loads ``libamd_smi.so`` at import time. When the library is missing it *prints*
to stdout and then raises ``KeyError`` (an older library raises ``AttributeError`` for a missing symbol, a
broken one ``OSError``) - never ``ImportError``. :func:`load_amdsmi` therefore imports it with stdout
redirected (Python and C level, so ``gpudra discover -o json`` stays clean), catches broadly, and says once
in the log that discovery falls back to sysfs.

:class:`AmdSmi` is the only code that calls amdsmi functions or catches its exceptions:

* ``AmdSmiLibraryException`` with NOT_SUPPORTED, NOT_YET_IMPLEMENTED, NO_PERM, NOT_FOUND, NO_DATA,
  FILE_NOT_FOUND, SETTING_UNAVAILABLE or FAIL_LOAD_SYMBOL, or a function this amdsmi does not have: that value
  is unknown (``None``), silently.
* any other amdsmi error (or an unexpected exception from a mismatched wrapper): the value is unknown and
  one warning per function and cause says why.

amdsmi is a secondary source: its failures never skip a GPU, they only lose its values.

Its event half, :class:`~gpudra.vendors.amd.smi_events.SmiEventWatch` (from :meth:`AmdSmi.watch_events`), is
the only code that calls amdsmi's event API, with the same rules.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from gpudra.vendors.sysfs import normalize_pci_bus_id

if TYPE_CHECKING:  # the event half is imported when the health monitor starts it
    from gpudra.vendors.amd.smi_events import SmiEventWatch

log = logging.getLogger(__name__)

#: ``amdsmi_status_t`` values (amdsmi.h); the wrapper raises ``AmdSmiLibraryException(code)`` for them.
STATUS_CODES: Final[dict[str, int]] = {
    "AMDSMI_STATUS_INVAL": 1, "AMDSMI_STATUS_NOT_SUPPORTED": 2, "AMDSMI_STATUS_NOT_YET_IMPLEMENTED": 3,
    "AMDSMI_STATUS_FAIL_LOAD_MODULE": 4, "AMDSMI_STATUS_FAIL_LOAD_SYMBOL": 5, "AMDSMI_STATUS_DRM_ERROR": 6,
    "AMDSMI_STATUS_API_FAILED": 7, "AMDSMI_STATUS_TIMEOUT": 8, "AMDSMI_STATUS_RETRY": 9,
    "AMDSMI_STATUS_NO_PERM": 10, "AMDSMI_STATUS_INTERRUPT": 11, "AMDSMI_STATUS_IO": 12,
    "AMDSMI_STATUS_FILE_ERROR": 14, "AMDSMI_STATUS_OUT_OF_RESOURCES": 15,
    "AMDSMI_STATUS_INTERNAL_EXCEPTION": 16, "AMDSMI_STATUS_INIT_ERROR": 18, "AMDSMI_STATUS_BUSY": 30,
    "AMDSMI_STATUS_NOT_FOUND": 31, "AMDSMI_STATUS_NOT_INIT": 32, "AMDSMI_STATUS_DRIVER_NOT_LOADED": 34,
    "AMDSMI_STATUS_NO_DATA": 40, "AMDSMI_STATUS_UNEXPECTED_DATA": 43, "AMDSMI_STATUS_FILE_NOT_FOUND": 52,
    "AMDSMI_STATUS_SETTING_UNAVAILABLE": 55, "AMDSMI_STATUS_UNKNOWN_ERROR": 4294967295,
}  # fmt: skip
_ABSENT: Final = frozenset(
    STATUS_CODES[f"AMDSMI_STATUS_{name}"]
    for name in (
        "NOT_SUPPORTED", "NOT_YET_IMPLEMENTED", "FAIL_LOAD_SYMBOL", "NO_PERM", "NOT_FOUND", "NO_DATA",
        "FILE_NOT_FOUND", "SETTING_UNAVAILABLE",
    )
)  # fmt: skip
_MIB: Final = 1 << 20
_UNKNOWN_TEXT: Final = frozenset({"", "N/A", "NA"})


@contextlib.contextmanager
def quiet_stdout() -> Iterator[list[str]]:
    """Divert stdout - ``print`` and C ``printf`` alike - for the duration; the text lands in the list.

    For the short amdsmi calls only: other threads' stdout output is diverted too while it is active.
    """
    captured: list[str] = []
    buffer = io.StringIO()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
    except OSError:
        saved = None
    with tempfile.TemporaryFile() as sink:
        if saved is not None:
            os.dup2(sink.fileno(), 1)
        try:
            with contextlib.redirect_stdout(buffer):
                yield captured
        finally:
            _flush_c_stdio()
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)
            sink.seek(0)
            captured.append(buffer.getvalue() + sink.read().decode("utf-8", errors="replace"))


def _flush_c_stdio() -> None:
    """``fflush(NULL)``: printf output still buffered in libc must reach the diverted fd, not the real one."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


def load_amdsmi(module_name: str = "amdsmi") -> object | None:
    """Import amdsmi with stdout diverted; ``None`` (and one log line) when it cannot be used."""
    failure: Exception | None = None
    module: object | None = None
    with quiet_stdout() as captured:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # the wrapper raises KeyError/OSError/AttributeError, not ImportError
            failure = err
    noise = "".join(captured).strip()
    if noise:
        log.debug("importing %s printed: %s", module_name, noise)
    if isinstance(failure, ModuleNotFoundError) and failure.name == module_name:
        log.info("%s is not installed; AMD discovery reads sysfs and KFD only", module_name)
        return None
    if failure is not None:
        log.warning(
            "%s cannot be loaded (%s: %s; libamd_smi.so missing or older than the Python wrapper); "
            "AMD discovery reads sysfs and KFD only",
            module_name, type(failure).__name__, failure,
        )  # fmt: skip
        return None
    return module


@dataclass(frozen=True, slots=True)
class SmiDevice:
    """What amdsmi says about one processor handle (a GPU, or one partition of it); ``None`` = unknown."""

    bus_id: str  # as amdsmi reports it: a partition's id is in the function digit ("0000:05:00.3")
    uuid: str | None = None
    market_name: str | None = None
    asic_serial: int | None = None
    device_id: int | None = None
    vram_bytes: int | None = None
    compute_partition: str | None = None
    memory_partition: str | None = None


@dataclass(frozen=True, slots=True)
class SmiSnapshot:
    """One pass over all handles, keyed by bus id; handles sharing a bus id are dropped (ambiguous)."""

    devices: Mapping[str, SmiDevice] = field(default_factory=dict)
    driver_version: str | None = None
    warnings: tuple[str, ...] = ()


class AmdSmi:
    """The translation layer over an amdsmi module (the real one or ``FakeAmdSmi``)."""

    def __init__(self, module: object) -> None:
        self._m = cast(Any, module)
        self._errors = _error_classes(module)
        self._problems: Counter[str] = Counter()
        self._open = False

    @classmethod
    def open(cls, module: object) -> AmdSmi | None:
        """``amdsmi_init``; ``None`` and one log line when amdsmi cannot be initialised."""
        smi = cls(module)
        if not smi._errors:
            log.warning("amdsmi module has no AmdSmiException class; AMD discovery reads sysfs and KFD only")
            return None
        flag = getattr(getattr(smi._m, "AmdSmiInitFlags", None), "INIT_AMD_GPUS", None)
        args = () if flag is None else (flag,)
        with quiet_stdout():
            try:
                smi._m.amdsmi_init(*args)
            except Exception as err:  # AmdSmiLibraryException, or a missing/mismatched function
                log.warning("amdsmi_init failed (%s); AMD discovery reads sysfs and KFD only", _describe(err))
                return None
        smi._open = True
        return smi

    def close(self) -> None:
        """``amdsmi_shut_down`` once; later calls do nothing."""
        if self._open:
            self._open = False
            with quiet_stdout():
                self._call("amdsmi_shut_down")

    def snapshot(self) -> SmiSnapshot:
        """Read every processor handle once."""
        self._problems.clear()
        devices: dict[str, SmiDevice] = {}
        ambiguous: set[str] = set()
        driver: str | None = None
        with quiet_stdout():
            handles = self._call("amdsmi_get_processor_handles")
            for handle in handles if isinstance(handles, list | tuple) else ():
                device = self._device(handle)
                if device is None:
                    continue
                if device.bus_id in devices:
                    ambiguous.add(device.bus_id)
                devices[device.bus_id] = device
                if driver is None:
                    driver = _text(_get(self._call("amdsmi_get_gpu_driver_info", handle), "driver_version"))
        warnings = [
            f"amdsmi: {text} ({n}x)" if n > 1 else f"amdsmi: {text}" for text, n in self._problems.items()
        ]
        warnings += [
            f"amdsmi: several handles report bus id {b}; amdsmi ignored for it" for b in sorted(ambiguous)
        ]
        kept = {bus: device for bus, device in devices.items() if bus not in ambiguous}
        return SmiSnapshot(devices=kept, driver_version=driver, warnings=tuple(warnings))

    def watch_events(self, kinds: Iterable[str]) -> SmiEventWatch | None:
        """Event notification for the ``AmdSmiEvtNotificationType`` members named ``kinds``, on every
        processor handle; ``None`` (one log line) when amdsmi is shut down or this wrapper has no event API or
        none of those types. Not thread-safe: the caller serialises it with the other calls of this object."""
        if not self._open:
            return None
        names = list(kinds)
        reader = getattr(self._m, "AmdSmiEventReader", None)
        enum = getattr(self._m, "AmdSmiEvtNotificationType", None)
        types = [t for name in names if (t := getattr(enum, name, None)) is not None]
        if not callable(reader) or not types:
            log.info("this amdsmi has no event notification API (AmdSmiEventReader) for %s; AMD health "
                     "monitoring reads sysfs only", ", ".join(names))  # fmt: skip
            return None
        from gpudra.vendors.amd.smi_events import SmiEventWatch

        watch = SmiEventWatch(self._m, self._errors, lambda: self._open, reader, types)
        watch.refresh()
        return watch

    def processors(self) -> dict[str, object]:
        """Bus id (amdsmi's: a partition's index in the function digit) -> processor handle, now; empty when
        amdsmi is shut down. For the usage readings (:mod:`~gpudra.vendors.amd.usage`); not thread-safe."""
        if not self._open:
            return {}
        handles = self._call("amdsmi_get_processor_handles")
        out: dict[str, object] = {}
        for handle in handles if isinstance(handles, list | tuple) else ():
            raw = _text(self._call("amdsmi_get_gpu_device_bdf", handle))
            bus_id = normalize_pci_bus_id(raw) if raw else None
            if bus_id is not None:
                out[bus_id] = handle
        return out

    def answer(self, name: str, handle: object) -> Any:
        """``name(handle)`` under this layer's rules: the answer, or ``None`` when amdsmi has none (a failure
        other than "not there" is counted into the next :meth:`snapshot`'s warnings)."""
        return self._call(name, handle) if self._open else None

    def _device(self, handle: object) -> SmiDevice | None:
        raw_bdf = _text(self._call("amdsmi_get_gpu_device_bdf", handle))
        bus_id = normalize_pci_bus_id(raw_bdf) if raw_bdf else None
        if bus_id is None:
            self._problems[f"a handle without a readable bus id ({raw_bdf!r}) was ignored"] += 1
            return None
        asic = self._call("amdsmi_get_gpu_asic_info", handle)
        vram_mib = _int(_get(self._call("amdsmi_get_gpu_vram_info", handle), "vram_size"))
        return SmiDevice(
            bus_id=bus_id,
            uuid=_text(self._call("amdsmi_get_gpu_device_uuid", handle)),
            market_name=_text(_get(asic, "market_name")),
            asic_serial=_hex_int(_get(asic, "asic_serial")),
            device_id=_hex_int(_get(asic, "device_id")),
            vram_bytes=vram_mib * _MIB if vram_mib else None,
            compute_partition=_text(self._call("amdsmi_get_gpu_compute_partition", handle)),
            memory_partition=_text(self._call("amdsmi_get_gpu_memory_partition", handle)),
        )

    def _call(self, name: str, *args: object) -> Any:
        fn = getattr(self._m, name, None)
        if not callable(fn):
            return None  # an older amdsmi without this function: the value is unknown
        try:
            return fn(*args)
        except self._errors as err:
            if getattr(err, "err_code", None) in _ABSENT:
                return None
            self._problems[f"{name} failed ({_describe(err)}); value omitted"] += 1
        except Exception as err:  # a wrapper that does not match its library can raise anything
            self._problems[f"{name} raised {type(err).__name__}: {err}; value omitted"] += 1
        return None


def _error_classes(module: object) -> tuple[type[BaseException], ...]:
    found = (getattr(module, name, None) for name in ("AmdSmiException", "AmdSmiLibraryException"))
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def _describe(err: BaseException) -> str:
    code = getattr(err, "err_code", None)
    names = [name for name, value in STATUS_CODES.items() if value == code]
    return names[0] if names else f"{type(err).__name__}: {err}"


def _get(mapping: object, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or value.strip() in _UNKNOWN_TEXT:
        return None
    return value.strip()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _hex_int(value: object) -> int | None:
    """amdsmi's ``"0x74a1"`` / ``"0xE3AA140F9A5F9E31"`` strings (or a plain int) -> int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value)
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None
