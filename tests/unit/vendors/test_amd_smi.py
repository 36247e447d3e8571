"""The guarded amdsmi import and the translation layer over amdsmi's errors.

The import tests put small fake ``amdsmi``-like packages on ``sys.path`` that behave like the PyPI wrapper
without its library: print to stdout (Python and fd level) and raise KeyError / AttributeError / OSError.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gpudra.vendors.amd.smi import STATUS_CODES, AmdSmi, load_amdsmi, quiet_stdout
from gpudra.vendors.mock.amd_profile import load_amd_profile
from gpudra.vendors.mock.fake_amdsmi import AmdSmiException, AmdSmiLibraryException, FakeAmdSmi

WRAPPER_WITHOUT_LIBRARY = """
    import os
    print("libamd_smi.so: cannot open shared object file: No such file or directory")
    print("Unable to find amdsmi library try installing amd-smi-lib from your package manager")
    os.write(1, b"printf from C\\n")
    _libraries = {{}}
    {raise_line}
"""
FAILURES = {
    "keyerror": "amdsmi_init = _libraries['libamd_smi.so'].amdsmi_init",
    "attributeerror": "raise AttributeError('libamd_smi.so: undefined symbol: amdsmi_get_gpu_xcd_counter')",
    "oserror": "raise OSError('libamd_smi.so: wrong ELF class: ELFCLASS32')",
}


def fake_package(root: Path, name: str, body: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(textwrap.dedent(body))


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_wrapper_without_its_library_prints_nothing_and_logs_once(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    name = f"gpudra_test_amdsmi_{failure}"
    fake_package(tmp_path, name, WRAPPER_WITHOUT_LIBRARY.format(raise_line=FAILURES[failure]))
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="gpudra.vendors.amd.smi"):
        assert load_amdsmi(name) is None
    out, _ = capfd.readouterr()
    assert out == ""
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "reads sysfs and KFD only" in warnings[0].getMessage()
    debug = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert "Unable to find amdsmi library" in debug
    assert "printf from C" in debug


def test_amdsmi_not_installed_is_an_info_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gpudra.vendors.amd.smi"):
        assert load_amdsmi("gpudra_test_no_such_amdsmi") is None
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_a_working_wrapper_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_package(tmp_path, "gpudra_test_amdsmi_ok", "VERSION = '24.7.1'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = load_amdsmi("gpudra_test_amdsmi_ok")
    assert getattr(module, "VERSION", None) == "24.7.1"


def test_quiet_stdout_restores_both_levels(capfd: pytest.CaptureFixture[str]) -> None:
    before = sys.stdout
    with quiet_stdout() as captured:
        print("python")
        os.write(1, b"fd\n")
    print("after")
    assert captured == ["python\nfd\n"]
    assert capfd.readouterr().out == "after\n"
    assert sys.stdout is before


class _Module:
    """A bare amdsmi-like module for the translation layer: each function is given as an attribute."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException

    def __init__(self, **functions: Any) -> None:
        self.__dict__.update(functions)


def _raise(error: BaseException) -> Any:
    def fn(*_: object) -> Any:
        raise error

    return fn


def test_open_without_exception_classes_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert AmdSmi.open(object()) is None
    assert "no AmdSmiException class" in caplog.text


def test_init_failing_with_an_unexpected_exception_falls_back() -> None:
    assert AmdSmi.open(_Module(amdsmi_init=_raise(KeyError("libamd_smi.so")))) is None


def test_absent_values_are_silent_and_other_failures_are_one_warning(
    capfd: pytest.CaptureFixture[str],
) -> None:
    def bdf(handle: int) -> str:
        os.write(1, b"C noise\n")
        return f"0000:0{handle}:00.0"

    module = _Module(
        amdsmi_init=lambda *_: None,
        amdsmi_get_processor_handles=lambda: [1, 2],
        amdsmi_get_gpu_device_bdf=bdf,
        amdsmi_get_gpu_device_uuid=_raise(
            AmdSmiLibraryException(STATUS_CODES["AMDSMI_STATUS_NOT_SUPPORTED"])
        ),
        amdsmi_get_gpu_asic_info=lambda _: {"market_name": "N/A", "asic_serial": "0x00000000000000AB"},
        amdsmi_get_gpu_vram_info=_raise(KeyError("vram_size")),
        amdsmi_get_gpu_driver_info=_raise(AmdSmiLibraryException(STATUS_CODES["AMDSMI_STATUS_BUSY"])),
    )  # amdsmi_get_gpu_compute_partition / _memory_partition: an older library without them
    smi = AmdSmi.open(module)
    assert smi is not None
    snapshot = smi.snapshot()
    assert sorted(snapshot.devices) == ["0000:01:00.0", "0000:02:00.0"]
    device = snapshot.devices["0000:01:00.0"]
    assert (device.uuid, device.market_name, device.asic_serial, device.vram_bytes) == (
        None,
        None,
        0xAB,
        None,
    )
    assert device.compute_partition is None
    assert sorted(snapshot.warnings) == [
        "amdsmi: amdsmi_get_gpu_driver_info failed (AMDSMI_STATUS_BUSY); value omitted (2x)",
        "amdsmi: amdsmi_get_gpu_vram_info raised KeyError: 'vram_size'; value omitted (2x)",
    ]
    assert capfd.readouterr().out == ""


def test_handles_sharing_a_bus_id_are_dropped() -> None:
    module = _Module(
        amdsmi_init=lambda *_: None,
        amdsmi_get_processor_handles=lambda: [1, 2, 3],
        amdsmi_get_gpu_device_bdf=lambda h: "0000:05:00.0" if h < 3 else "0000:27:00.0",
    )
    smi = AmdSmi.open(module)
    assert smi is not None
    snapshot = smi.snapshot()
    assert list(snapshot.devices) == ["0000:27:00.0"]
    assert snapshot.warnings == ("amdsmi: several handles report bus id 0000:05:00.0; amdsmi ignored for it",)


def test_a_handle_with_an_unreadable_bus_id_is_ignored() -> None:
    module = _Module(
        amdsmi_init=lambda *_: None,
        amdsmi_get_processor_handles=lambda: [1],
        amdsmi_get_gpu_device_bdf=lambda _: "N/A",
    )
    smi = AmdSmi.open(module)
    assert smi is not None
    snapshot = smi.snapshot()
    assert (dict(snapshot.devices), len(snapshot.warnings)) == ({}, 1)


def test_snapshot_of_the_fake_reads_every_partition_handle() -> None:
    fake = FakeAmdSmi(load_amd_profile("mi300x-8-cpx-nps4-bmc"))
    smi = AmdSmi.open(fake)
    assert smi is not None
    snapshot = smi.snapshot()
    smi.close()
    assert len(snapshot.devices) == 63
    part = snapshot.devices["0000:05:00.3"]
    assert (part.compute_partition, part.memory_partition, part.vram_bytes) == ("CPX", "NPS4", 206141652992)
    assert part.uuid == snapshot.devices["0000:05:00.0"].uuid  # amdsmi: one UUID for all partitions
    assert snapshot.driver_version == "6.10.5"
    assert fake.calls.count("amdsmi_get_gpu_driver_info") == 1
    assert fake.init_count == 0
